"""The service's machine-readable description (``GET /openapi.json``) and its page (``GET /docs``)."""
