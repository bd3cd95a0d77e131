"""Admin operations on the shared cache: statistics, clear and glob invalidation.

The keyspace is walked with SCAN (COUNT 1000) and deleted with UNLINK in batches,
always under ``CACHE_KEY_PREFIX``: never KEYS, never FLUSHDB, so the Celery broker and
beat schedule in the same Redis survive.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from app.cache.device_cache import DeviceCache
from app.errors import APIError
from app.timeutil import isoformat, parse_iso, utcnow_ms

log = logging.getLogger("app.cache")

SCAN_COUNT = 1000
UNLINK_BATCH = 500
MAX_COUNT_SCANS = 200  # /cache/stats counts at most ~200k keys, then reports null


def cache_unavailable() -> APIError:
    return APIError(503, "cache_unavailable", "the cache's Redis is unreachable")


def _unlink_matching(client: Redis, match: str, prefix: bytes) -> int:
    deleted, batch = 0, []
    for key in client.scan_iter(match=match, count=SCAN_COUNT):
        if key.startswith(prefix):  # the glob can never reach outside the prefix
            batch.append(key)
        if len(batch) >= UNLINK_BATCH:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def delete_matching(dc: DeviceCache, pattern: str) -> int:
    """UNLINK every key under the prefix that matches the glob; returns how many."""
    client = dc.admin_client()
    prefix = dc.prefix.encode()
    try:
        # Locks first: in-flight fills of those keys lose their token, so they cannot write back
        # behind the value pass (the other order lets a fill finishing in between survive).
        # The count is of keys removed, fill locks included (so clear's is every key under the prefix).
        deleted = _unlink_matching(client, f"{dc.prefix}lock:{pattern}", prefix)
        deleted += _unlink_matching(client, dc.prefix + pattern, prefix)
    except RedisError as exc:
        log.warning("cache admin operation failed: %s", exc)
        raise cache_unavailable() from None
    return deleted


def count_keys(client: Redis, prefix: str) -> int | None:
    cursor, count = 0, 0
    for _ in range(MAX_COUNT_SCANS):
        cursor, keys = client.scan(cursor=cursor, match=prefix + "*", count=SCAN_COUNT)
        count += len(keys)
        if cursor == 0:
            return count
    return None


def stats(dc: DeviceCache, stats_interval: int) -> dict[str, Any]:
    """Our counters (summed over every process) beside Redis's own; answers whatever Redis's state."""
    client = dc.admin_client()
    body: dict[str, Any] = {
        "redis": {"reachable": False},
        "keys": {"prefix": dc.prefix, "count": None},
        "lookups": {"device": None},
        "collector": {"last_run": None},
        "breaker": {"open": dc.breaker.is_open},
    }
    try:
        dc.flush()  # this process's buffer, so what the caller just did is counted
        info = client.info()
        body["redis"] = {
            "reachable": True,
            "version": info.get("redis_version"),
            "used_memory_human": info.get("used_memory_human"),
            "keyspace_hits": info.get("keyspace_hits"),
            "keyspace_misses": info.get("keyspace_misses"),
            "evicted_keys": info.get("evicted_keys"),
            "maxmemory_policy": info.get("maxmemory_policy"),
        }
        body["keys"]["count"] = count_keys(client, dc.prefix)
        body["lookups"]["device"] = {**dc.counters(), "scope": "all replicas"}
        body["collector"] = collector_state(dc, client, stats_interval)
    except RedisError as exc:
        log.info("cache stats without Redis: %s", exc.__class__.__name__)
        local = dc.pending_counts()
        looked_up = local["hits"] + local["misses"]
        body["lookups"]["device"] = {
            **local,
            "hit_ratio": local["hits"] / looked_up if looked_up else None,
            "scope": "this process (Redis unreachable)",
        }
    return body


def collector_state(dc: DeviceCache, client: Redis, stats_interval: int) -> dict[str, Any]:
    """When the stats task last ran; ``stale`` when beat (or every worker) seems dead."""
    last_run, warmed = client.mget(dc.meta + "collector:last_run", dc.meta + "warmer:last_run")
    state: dict[str, Any] = {"last_run": last_run.decode() if last_run else None, "stale": True}
    if last_run:
        age = (utcnow_ms() - parse_iso(state["last_run"])).total_seconds()
        state["stale"] = age > 3 * stats_interval
    state["warmer_last_run"] = warmed.decode() if warmed else None
    return state


def collect_snapshot(dc: DeviceCache, history_size: int) -> dict[str, Any]:
    """Append one snapshot of the counters, key count and Redis's memory to the capped history."""
    client = dc.admin_client()
    dc.flush()
    info = client.info()
    counters = dc.counters()
    snapshot = {
        "at": isoformat(utcnow_ms()),
        "hits": counters["hits"],
        "misses": counters["misses"],
        "loads": counters["loads"],
        "errors": counters["errors"],
        "hit_ratio": counters["hit_ratio"],
        "keys": count_keys(client, dc.prefix),
        "used_memory": info.get("used_memory"),
        "keyspace_hits": info.get("keyspace_hits"),
        "keyspace_misses": info.get("keyspace_misses"),
        "evicted_keys": info.get("evicted_keys"),
    }
    pipe = client.pipeline(transaction=True)
    pipe.rpush(dc.meta + "stats:history", json.dumps(snapshot))
    pipe.ltrim(dc.meta + "stats:history", -history_size, -1)
    pipe.set(dc.meta + "collector:last_run", snapshot["at"])
    pipe.execute()
    return snapshot


def history(dc: DeviceCache, limit: int) -> list[dict[str, Any]]:
    try:
        raw = dc.admin_client().lrange(dc.meta + "stats:history", -limit, -1)
    except RedisError:
        raise cache_unavailable() from None
    return [json.loads(item) for item in raw]
