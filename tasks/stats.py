from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from flask import current_app

from app.cache.admin import collect_snapshot
from app.cache.locks import run_lock
from app.cache.shared import shared_cache

log = logging.getLogger("app.tasks")


@shared_task(name="tasks.stats.collect_cache_stats", ignore_result=False)
def collect_cache_stats() -> dict[str, Any]:
    """Snapshot the cache's statistics into the capped history; a duplicate tick is skipped."""
    dc = shared_cache()
    # Kept for 3/4 of the interval: more than half, so a second beat at any phase is swallowed,
    # and a quarter of slack for a late tick of the one beat.
    window_ms = max(1, current_app.config["STATS_INTERVAL"] * 750)
    with run_lock(dc.client, dc.keys.stats_lock, window_ms, release=False) as held:
        if not held:
            log.info("stats snapshot skipped: a duplicate tick")
            return {"overlap": True}
        snapshot = collect_snapshot(dc, current_app.config["STATS_HISTORY_SIZE"])
    log.info("stats snapshot: %d keys, hit ratio %s", snapshot["keys"] or 0, snapshot["hit_ratio"])
    return snapshot
