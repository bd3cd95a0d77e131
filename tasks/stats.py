from __future__ import annotations

from typing import Any

from celery import shared_task
from flask import current_app

from app.cache.locks import run_lock
from app.cache.service import collect_snapshot


@shared_task(name="tasks.stats.collect_cache_stats", ignore_result=False)
def collect_cache_stats() -> dict[str, Any]:
    """Snapshot the cache's statistics into the capped history; a duplicate tick is skipped."""
    dc = current_app.extensions["device_cache"]
    interval_ms = current_app.config["STATS_INTERVAL"] * 1000
    with run_lock(dc.client, dc.meta + "lock:stats", max(1, interval_ms // 2), release=False) as held:
        if not held:
            return {"overlap": True}
        return collect_snapshot(dc, current_app.config["STATS_HISTORY_SIZE"])
