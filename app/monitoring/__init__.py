"""What operators look at: ``GET /metrics`` for Prometheus and the ``/cache/dashboard`` page."""
