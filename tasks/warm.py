from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from app.cache.warming import warm_hot_devices as warm

log = logging.getLogger("app.tasks")


@shared_task(name="tasks.warm.warm_hot_devices", ignore_result=False)
def warm_hot_devices(limit: int | None = None) -> dict[str, Any]:
    """Refresh-ahead of the hottest devices; an overlapping run is a no-op."""
    result = warm(limit)
    log.info("warm-up: %s", result)
    return result
