"""Hotness and refresh-ahead: keep the devices people look at warm.

Every lookup adds to its pair's score in the ``hot:device`` sorted set and sets its last
lookup time in ``seen:device`` (both buffered with the counters, so no extra round trip).
Scores decay with a half-life (``HOT_HALF_LIFE``), so yesterday's hot devices cool down; both
sets are trimmed to ``HOT_MAX_DEVICES``.
"""

from __future__ import annotations

import time
from typing import Any

from flask import current_app

from app.cache.keys import device_key, pair_of
from app.cache.locks import run_lock
from app.cache.shared import SharedCache, shared_cache
from app.redis_topology import REDIS_ERRORS
from app.timeutil import isoformat, utcnow_ms

DECAY = """
local now = tonumber(ARGV[1])
local last = tonumber(redis.call('GET', KEYS[2]) or ARGV[1])
local factor = math.pow(0.5, (now - last) / tonumber(ARGV[2]))
if factor < 1 then
  redis.call('ZUNIONSTORE', KEYS[1], 1, KEYS[1], 'WEIGHTS', factor)
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[4])
end
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('SET', KEYS[2], ARGV[1])
return redis.call('ZCARD', KEYS[1])
"""
FORGET_BELOW = 0.01  # a score this low is a device nobody looks at any more


def decay_hotness(dc: SharedCache, now: float | None = None) -> int:
    """Apply the decay since the last call atomically; returns how many pairs stay tracked."""
    config = current_app.config
    return int(
        dc.client.eval(
            DECAY,
            2,
            dc.keys.hot,
            dc.keys.hot_decayed_at,
            now if now is not None else time.time(),
            config["HOT_HALF_LIFE"],
            config["HOT_MAX_DEVICES"],
            FORGET_BELOW,
        )
    )


def recently_looked_up(dc: SharedCache, since: float, limit: int) -> list[tuple[str, str]]:
    """Every pair looked up since ``since`` (Unix time), the hottest first; at most ``limit``."""
    seen = dc.keys.seen
    dc.client.zremrangebyscore(seen, "-inf", f"({since}")  # forgotten: not looked up within WARM_WINDOW
    keys = dc.client.zrangebyscore(seen, since, "+inf")
    if not keys:
        return []
    scores = dc.client.zmscore(dc.keys.hot, keys)
    ranked = sorted(zip(keys, scores, strict=True), key=lambda pair: -(pair[1] or 0.0))
    return [pair_of(key.decode()) for key, _ in ranked[:limit]]


def refresh_below(config: dict[str, Any]) -> float:
    """Refresh an entry that would expire before the next run (with 10% slack for jitter)."""
    return min(float(config["DEVICE_CACHE_TTL"]), config["WARM_INTERVAL"] * 1.1)


def warm_hot_devices(limit: int | None = None) -> dict[str, Any]:
    """Refresh the devices looked up within the last ``WARM_WINDOW`` seconds whose entries are
    missing or would expire before the next run: all of them (at most ``HOT_MAX_DEVICES``, the
    bound of the set that remembers them), or the hottest ``limit`` / ``WARM_TOP_N`` when given.

    A device costs one miss per TTL in which it is looked up unless it is refreshed: warming only
    a top 100 barely moves the hit ratio of a long tail. Warming every device seen within the
    window keeps an entry alive for between ``WARM_WINDOW + TTL - WARM_INTERVAL`` and
    ``WARM_WINDOW + TTL`` after its device's last lookup; only lookups after a longer gap miss.
    The default window (3 TTLs) trades about three times the warmed entries of a one-TTL window
    for the long tail's misses (docs/BENCHMARKS.md).
    """
    dc: SharedCache = shared_cache()
    config = current_app.config
    limit = limit or config.get("WARM_TOP_N")
    result: dict[str, Any] = {"warmed": 0, "skipped": 0, "errors": 0}
    try:
        with run_lock(dc.client, dc.keys.warm_lock, config["TASK_TIME_LIMIT"] * 1000) as held:
            if not held:
                return {**result, "overlap": True}
            decay_hotness(dc)
            cap = min(limit or config["HOT_MAX_DEVICES"], config["HOT_MAX_DEVICES"])
            pairs = recently_looked_up(dc, time.time() - config["WARM_WINDOW"], cap)
            pipe = dc.client.pipeline(transaction=False)
            for device_id, device_name in pairs:
                pipe.pttl(dc.keys.value(device_key(device_id, device_name)))
            remaining = pipe.execute() if pairs else []
            threshold_ms = refresh_below(config) * 1000
            due = [pair for pair, ttl in zip(pairs, remaining, strict=True) if ttl < threshold_ms]
            result["skipped"] = len(pairs) - len(due)
            refreshed = dc.refresh(due)
            for name in result:
                result[name] += refreshed[name]
            dc.client.set(dc.keys.warmer_last_run, isoformat(utcnow_ms()))
    except REDIS_ERRORS as exc:
        result["errors"] += 1
        result["error"] = exc.__class__.__name__
    # The loads counted by refresh(): a worker serves no lookups, so no flusher thread sends them.
    dc.flush()
    return result
