"""The OpenAPI description of the /cache admin routes (``app/cache/views.py``).

Here rather than beside the routes while those move to a package of their own above the cache;
it follows them there. Their bounds and field sets are ``app/cache/admin_schema.py``'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.cache_admin.schema import INVALIDATE_FIELDS, MAX_PATTERN, MAX_WARM_LIMIT
from app.openapi import BEARER, Schema, json_body, obj, ok, operation, query_param, ref

COUNTER: Schema = {"type": "integer", "minimum": 0}
RATIO: Schema = {"type": ["number", "null"], "minimum": 0, "maximum": 1}


def stats_schema() -> Schema:
    """/cache/stats: the spec allows extra fields at every level (l1_hits, per-node figures...)."""
    lookups = obj(
        {"hits": COUNTER, "misses": COUNTER, "loads": COUNTER, "errors": COUNTER, "hit_ratio": RATIO},
        ["hits", "misses", "loads", "errors", "hit_ratio"],
        closed=False,
    )
    return obj(
        {
            "redis": obj({"reachable": {"type": "boolean"}}, ["reachable"], closed=False),
            "keys": obj(
                {"prefix": {"type": "string"}, "count": {"type": ["integer", "null"], "minimum": 0}},
                ["prefix", "count"],
                closed=False,
            ),
            # query: the readings query cache's chunks (issue 16), present while Redis answers.
            "lookups": obj({"device": lookups, "query": lookups}, ["device"], closed=False),
            "collector": obj(
                {"last_run": {"type": ["string", "null"], "format": "date-time"}}, ["last_run"], closed=False
            ),
        },
        ["redis", "keys", "lookups", "collector"],
        closed=False,
    )


def history_schema(config: Mapping[str, Any]) -> Schema:
    snapshot = obj(
        {
            "at": {"type": "string", "format": "date-time"},
            "hits": COUNTER,
            "misses": COUNTER,
            "loads": COUNTER,
            "hit_ratio": RATIO,
            "keys": {"type": ["integer", "null"], "minimum": 0},
        },
        ["at", "hits", "misses", "loads", "hit_ratio", "keys"],
        closed=False,
    )
    return obj(
        {"snapshots": {"type": "array", "maxItems": config["STATS_HISTORY_SIZE"], "items": snapshot}}, ["snapshots"]
    )


def schemas(config: Mapping[str, Any]) -> dict[str, Schema]:
    warm_limit = {
        "type": ["integer", "null"],
        "minimum": 1,
        "maximum": MAX_WARM_LIMIT,
        "description": "null: the default.",
    }
    pattern = {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_PATTERN,
        "description": "A glob relative to CACHE_KEY_PREFIX: `device:*`, `device:<device_id>|*`, `*`.",
    }
    return {
        "CacheStats": stats_schema(),
        "CacheHistory": history_schema(config),
        "WarmRequest": obj({"limit": warm_limit}),
        "WarmAccepted": obj({"task_id": {"type": "string"}}, ["task_id"]),
        "ClearRequest": {"type": "object", "description": "Any JSON object (ignored), or no body."},
        "Cleared": obj({"deleted": COUNTER}, ["deleted"]),
        "InvalidateRequest": obj({"pattern": pattern}, sorted(INVALIDATE_FIELDS)),
        "Invalidated": obj({"deleted": COUNTER, "pattern": {"type": "string"}}, ["deleted", "pattern"]),
    }


def admin(operation_id: str, summary: str, responses: dict[int, dict[str, Any]], **more: Any) -> dict[str, Any]:
    """An admin operation: a bearer token of an admin (401 without one, 403 with another's)."""
    return operation(operation_id, summary, "cache", responses, security=BEARER, **more)


def paths(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    stats_example = {
        "redis": {"reachable": True, "version": "7.0.15", "used_memory_human": "2.15M"},
        "keys": {"prefix": config["CACHE_KEY_PREFIX"], "count": 3},
        "lookups": {"device": {"hits": 4, "misses": 3, "loads": 4, "errors": 0, "hit_ratio": 0.571}},
        "collector": {"last_run": "2026-11-25T19:13:54.773Z"},
    }
    snapshot = {"at": "2026-11-25T19:13:54.773Z", "hits": 4, "misses": 3, "loads": 4, "hit_ratio": 0.571, "keys": 3}
    limit = query_param(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": config["STATS_HISTORY_SIZE"]},
        "How many snapshots; default 60.",
    )
    read, write = (401, 403, 503), (401, 403, 413, 415, 503)
    return {
        "/cache/stats": {
            "get": admin(
                "cache_stats",
                "Cache statistics (whatever the state of Redis)",
                {200: ok("Statistics; more fields may come.", ref("CacheStats"), stats_example)},
                errors=read,
            )
        },
        "/cache/stats/history": {
            "get": admin(
                "cache_history",
                "Snapshots of the statistics, newest last",
                {200: ok("Snapshots.", ref("CacheHistory"), {"snapshots": [snapshot]})},
                errors=read,
                parameters=[limit],
            )
        },
        "/cache/warm": {
            "post": admin(
                "cache_warm",
                "Enqueue a warm-up of the hottest devices",
                {202: ok("Enqueued (or a run is already in progress).", ref("WarmAccepted"), {"task_id": "3f2c…"})},
                errors=write,
                body={"required": False, "content": json_body(ref("WarmRequest"), {"limit": 100})},
            )
        },
        "/cache/clear": {
            "post": admin(
                "cache_clear",
                "Remove every key under CACHE_KEY_PREFIX",
                {200: ok("Removed.", ref("Cleared"), {"deleted": 3})},
                errors=write,
                body={"required": False, "content": json_body(ref("ClearRequest"), {})},
            )
        },
        "/cache/invalidate": {
            "post": admin(
                "cache_invalidate",
                "Remove the keys matching a glob under the prefix",
                {200: ok("Removed.", ref("Invalidated"), {"deleted": 1, "pattern": "device:pi-01|*"})},
                errors=write,
                body={"required": True, "content": json_body(ref("InvalidateRequest"), {"pattern": "device:*"})},
            )
        },
    }
