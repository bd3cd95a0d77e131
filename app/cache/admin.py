"""Admin operations on the shared cache: statistics, clear and glob invalidation.

The keyspace of every primary is walked with SCAN (COUNT 1000) and deleted with UNLINK in
batches, always under ``CACHE_KEY_PREFIX``: never KEYS, never FLUSHDB, so the Celery broker
and beat schedule in the same Redis survive. On a Cluster every primary is visited.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from redis import Redis

from app.cache.outbox import Record
from app.cache.shared import QUERY, USER, SharedCache
from app.errors import APIError
from app.redis_topology import REDIS_ERRORS
from app.timeutil import isoformat, parse_iso, utcnow_ms

log = logging.getLogger("app.cache")

SCAN_COUNT = 1000
UNLINK_BATCH = 500
MAX_COUNT_SCANS = 200  # /cache/stats counts at most ~200k keys per primary, then reports null
INFO_FIELDS = ("keyspace_hits", "keyspace_misses", "evicted_keys")


def cache_unavailable() -> APIError:
    return APIError(503, "cache_unavailable", "the cache's Redis is unreachable")


def _unlink_matching(dc: SharedCache, name: str, node: Redis, match: str) -> tuple[int, bool]:
    """UNLINK what SCAN finds on one primary (one key per command: on a Cluster the keys of a
    batch may sit in different slots): how many, and whether a replica acknowledged them all."""
    prefix = dc.prefix.encode()
    deleted, durable, batch = 0, True, []

    def unlink(keys: list[bytes]) -> None:
        nonlocal deleted, durable
        replies, acknowledged = dc.replicas.write(name, node, lambda pipe: [pipe.unlink(key) for key in keys])
        deleted += sum(replies)
        durable = durable and acknowledged

    for key in node.scan_iter(match=match, count=SCAN_COUNT):
        if key.startswith(prefix):  # the glob can never reach outside the prefix
            batch.append(key)
        if len(batch) >= UNLINK_BATCH:
            unlink(batch)
            batch = []
    if batch:
        unlink(batch)
    return deleted, durable


def _drop(dc: SharedCache, pattern: str) -> tuple[int, bool]:
    """UNLINK every key under the prefix that matches the glob, on every primary."""
    deleted, durable = 0, True
    for name, node in dc.topology.primaries(dc.admin_client()):
        # Locks first: in-flight fills of those keys lose their token, so they cannot write back
        # behind the value pass (the other order lets a fill finishing in between survive).
        # The count is of keys removed, fill locks included (so clear's is every key under the prefix).
        for match in (dc.keys.lock_glob(pattern), dc.keys.value(pattern)):
            count, acknowledged = _unlink_matching(dc, name, node, match)
            deleted, durable = deleted + count, durable and acknowledged
    return deleted, durable


def drop_glob(dc: SharedCache, pattern: str) -> bool:
    """Apply an outbox record's glob (another process's ``/cache/invalidate``): whether durably."""
    try:
        return _drop(dc, pattern)[1]
    except REDIS_ERRORS as exc:
        failed(dc, exc)
        return False


def available(dc: SharedCache) -> None:
    """503 at once while this process knows Redis is down (its breaker is open): an admin call
    would only wait out its timeouts on every node."""
    if not dc.breaker.allow():
        raise cache_unavailable()


def failed(dc: SharedCache, exc: BaseException) -> None:
    """An admin call that found Redis down opens the breaker at once (it waited seconds for it)."""
    log.warning("cache admin operation failed: %s", exc)
    dc.admin_failed(exc)


def delete_matching(dc: SharedCache, pattern: str) -> int:
    """UNLINK every key under the prefix that matches the glob, on every primary; how many.

    Recorded in the outbox first, like any change: if a primary fails or no replica acknowledges,
    the record is held and every other process applies it before it reads the cache again."""
    available(dc)
    record = dc.outbox.open(Record(globs=[pattern], scope=["admin"]))
    dc.near.clear()
    try:
        deleted, durable = _drop(dc, pattern)
    except REDIS_ERRORS as exc:
        failed(dc, exc)
        dc.outbox.hold(record)
        raise cache_unavailable() from None
    if durable:
        dc.outbox.applied(record)
    else:
        dc.outbox.hold(record)
    return deleted


def count_keys(dc: SharedCache, client: Any) -> int | None:
    """Keys under the prefix over every primary; None past ``MAX_COUNT_SCANS`` on one of them."""
    total = 0
    for _, node in dc.topology.primaries(client):
        cursor, count = 0, 0
        for _ in range(MAX_COUNT_SCANS):
            cursor, keys = node.scan(cursor=cursor, match=dc.prefix + "*", count=SCAN_COUNT)
            count += len(keys)
            if cursor == 0:
                break
        else:
            return None
        total += count
    return total


def human_bytes(size: int) -> str:
    """As Redis writes ``used_memory_human`` (1024-based, two decimals)."""
    for unit in ("B", "K", "M", "G", "T"):
        if size < 1024 or unit == "T":
            return f"{size}{unit}" if unit == "B" else f"{size:.2f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def redis_info(dc: SharedCache, client: Any) -> dict[str, Any]:
    """Redis's own figures: of the one primary, or on a Cluster summed over the primaries
    (``figures`` says so) with each primary's beside them in ``nodes``."""
    infos = [(name, node.info()) for name, node in dc.topology.primaries(client)]
    nodes = [
        {
            "node": name,
            "version": info.get("redis_version"),
            "used_memory": info.get("used_memory", 0),
            "used_memory_human": info.get("used_memory_human"),
            **{field: info.get(field, 0) for field in INFO_FIELDS},
            "maxmemory_policy": info.get("maxmemory_policy"),
        }
        for name, info in infos
    ]
    if not dc.topology.sums_primaries:
        return {"topology": dc.topology.name, **{k: v for k, v in nodes[0].items() if k != "node"}}
    policies = {node["maxmemory_policy"] for node in nodes}
    used = sum(node["used_memory"] for node in nodes)
    return {
        "topology": dc.topology.name,
        "figures": f"summed over {len(nodes)} primaries",
        "version": min((node["version"] for node in nodes), default=None),
        "used_memory": used,
        "used_memory_human": human_bytes(used),
        **{field: sum(node[field] for node in nodes) for field in INFO_FIELDS},
        "maxmemory_policy": policies.pop() if len(policies) == 1 else "mixed",
        "nodes": nodes,
    }


def stats(dc: SharedCache, stats_interval: int) -> dict[str, Any]:
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
        available(dc)
        dc.flush()  # this process's buffer, so what the caller just did is counted
        info = redis_info(dc, client)
        info.pop("used_memory", None)
        body["redis"] = {"reachable": True, **info}
        body["keys"]["count"] = count_keys(dc, client)
        body["lookups"]["device"] = {**dc.counters(), "scope": "all replicas"}
        body["lookups"]["user"] = {**dc.counters(USER), "scope": "all replicas"}  # verified bearer tokens
        query = dc.counters(QUERY)  # readings chunks (app/readings/cache.py): never in the near cache
        query.pop("l1_hits", None)
        body["lookups"]["query"] = {**query, "scope": "all replicas"}
        body["collector"] = collector_state(dc, client, stats_interval)
    except (*REDIS_ERRORS, APIError) as exc:
        if not isinstance(exc, APIError):
            failed(dc, exc)
        body["redis"] = {"reachable": False}
        local = dc.pending_counts()
        looked_up = local["hits"] + local["misses"]
        body["lookups"]["device"] = {
            **local,
            "hit_ratio": local["hits"] / looked_up if looked_up else None,
            "scope": "this process (Redis unreachable)",
        }
    return body


def collector_state(dc: SharedCache, client: Any, stats_interval: int) -> dict[str, Any]:
    """When the stats task last ran; ``stale`` when beat (or every worker) seems dead."""
    last_run, warmed = client.mget(dc.keys.collector_last_run, dc.keys.warmer_last_run)
    state: dict[str, Any] = {"last_run": last_run.decode() if last_run else None, "stale": True}
    if last_run:
        age = (utcnow_ms() - parse_iso(state["last_run"])).total_seconds()
        state["stale"] = age > 3 * stats_interval
    state["warmer_last_run"] = warmed.decode() if warmed else None
    return state


def collect_snapshot(dc: SharedCache, history_size: int) -> dict[str, Any]:
    """Append one snapshot of the counters, key count and Redis's memory to the capped history."""
    client = dc.admin_client()
    dc.flush()
    info = redis_info(dc, client)
    counters = dc.counters()
    snapshot = {
        "at": isoformat(utcnow_ms()),
        "hits": counters["hits"],
        "misses": counters["misses"],
        "loads": counters["loads"],
        "errors": counters["errors"],
        "hit_ratio": counters["hit_ratio"],
        "keys": count_keys(dc, client),
        "used_memory": info["used_memory"],
        **{field: info[field] for field in INFO_FIELDS},
    }
    history_key, last_run_key = dc.keys.history, dc.keys.collector_last_run
    [(_, (node, _))] = dc.topology.by_slot(client, [history_key, last_run_key]).items()  # one slot
    pipe = node.pipeline(transaction=True)
    pipe.rpush(history_key, json.dumps(snapshot))
    pipe.ltrim(history_key, -history_size, -1)
    pipe.set(last_run_key, snapshot["at"])
    pipe.execute()
    return snapshot


def history(dc: SharedCache, limit: int) -> list[dict[str, Any]]:
    available(dc)
    try:
        raw = dc.admin_client().lrange(dc.keys.history, -limit, -1)
    except REDIS_ERRORS as exc:
        failed(dc, exc)
        raise cache_unavailable() from None
    return [json.loads(item) for item in raw]
