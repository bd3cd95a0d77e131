"""The OpenAPI description of the probes (``app/health/views.py``)."""

from __future__ import annotations

from typing import Any

from app.openapi import Schema, obj, ok, operation, ref


def schemas() -> dict[str, Schema]:
    return {
        "Liveness": obj({"status": {"const": "ok"}}, ["status"]),
        "Health": obj(
            {
                "status": {"enum": ["ok", "degraded", "down"]},
                "checks": obj(
                    {"mongo": {"enum": ["ok", "unavailable"]}, "redis": {"enum": ["ok", "unavailable"]}},
                    ["mongo", "redis"],
                ),
            },
            ["status", "checks"],
        ),
    }


def paths() -> dict[str, dict[str, Any]]:
    return {
        "/health/live": {
            "get": operation(
                "health_live",
                "Liveness: checks nothing",
                "health",
                {200: ok("Alive.", ref("Liveness"), {"status": "ok"})},
            )
        },
        "/health": {
            "get": operation(
                "health_ready",
                "Readiness: MongoDB required, Redis optional",
                "health",
                {
                    200: ok(
                        "Ready (degraded without Redis).",
                        ref("Health"),
                        {"status": "ok", "checks": {"mongo": "ok", "redis": "ok"}},
                    ),
                    503: ok(
                        "MongoDB is down, or the process is draining before it stops (health keeps its own shape).",
                        ref("Health"),
                        {"status": "down", "checks": {"mongo": "unavailable", "redis": "ok"}},
                    ),
                },
            )
        },
    }
