from __future__ import annotations

from typing import Any

from celery import shared_task

from app.cache.warming import warm_hot_devices as warm


@shared_task(name="tasks.warm.warm_hot_devices", ignore_result=False)
def warm_hot_devices(limit: int | None = None) -> dict[str, Any]:
    """Refresh-ahead of the hottest devices; an overlapping run is a no-op."""
    return warm(limit)
