"""The OpenAPI description of ``/metrics`` (``app/monitoring/views.py``) and the cache's dashboard
page (``app/monitoring/dashboard.py``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.openapi import operation, page_operation, static_operation

DASHBOARD_STATIC_DIR = Path(__file__).parent / "static"  # the dashboard blueprint's static folder


def paths(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    metrics = operation(
        "metrics",
        "This replica's Prometheus metrics (every gunicorn worker of it)",
        "monitoring",
        {
            200: {
                "description": "Prometheus text format 0.0.4.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
        errors=(401, 404),
        security=[{"metricsToken": []}] if config.get("METRICS_TOKEN") else [],
        description="Open unless METRICS_TOKEN is set; 404 when METRICS_ENABLED=false.",
    )
    return {
        "/metrics": {"get": metrics},
        "/cache/dashboard": {
            "get": page_operation(
                "cache_dashboard",
                "A live page of the cache (it asks for an admin token and calls the admin routes)",
                "monitoring",
            )
        },
        "/cache/dashboard/static/{filename}": {
            "get": static_operation("cache_dashboard_static", "monitoring", DASHBOARD_STATIC_DIR)
        },
    }
