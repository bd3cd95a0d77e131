"""Celery, created in the app factory the way Flask documents it.

Tasks run inside the app context, so they call the same service functions (and write
the same cache keys) as the views. The beat schedule is data, its cadence from config.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from flask import Flask

from app.redis_topology import broker_transport_options

TASK_MODULES = ["tasks.warm", "tasks.stats"]
AMQP = ("amqp://", "amqps://", "pyamqp://")


def beat_schedule(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each entry expires after its own interval, so ticks queued while no worker runs do not pile up."""
    return {
        "warm-hot-devices": {
            "task": "tasks.warm.warm_hot_devices",
            "schedule": float(config["WARM_INTERVAL"]),
            "options": {"expires": float(config["WARM_INTERVAL"])},
        },
        "collect-cache-stats": {
            "task": "tasks.stats.collect_cache_stats",
            "schedule": float(config["STATS_INTERVAL"]),
            "options": {"expires": float(config["STATS_INTERVAL"])},
        },
    }


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    broker = app.config["CELERY_BROKER_URL"]
    longest = max(app.config["WARM_INTERVAL"], app.config["STATS_INTERVAL"], app.config["TASK_TIME_LIMIT"])
    transport = broker_transport_options(broker, app.config)
    celery = Celery(app.name, task_cls=FlaskTask, include=TASK_MODULES)
    celery.conf.update(
        broker_url=broker,
        # Results beside the tasks: the same Redis (or Sentinel) database; on RabbitMQ, replies
        # sent back to the caller (nothing reads them but `celery call` and the tests).
        result_backend="rpc://" if broker.startswith(AMQP) else broker,
        result_backend_transport_options=transport,
        result_expires=3600,
        task_default_queue=app.config["CELERY_QUEUE"],
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        timezone="UTC",
        enable_utc=True,
        worker_hijack_root_logger=False,
        worker_prefetch_multiplier=1,
        task_time_limit=app.config["TASK_TIME_LIMIT"],
        task_soft_time_limit=app.config["TASK_TIME_LIMIT"] * 0.8,
        # Above the longest countdown/ETA we use, so Redis never redelivers a task in progress.
        broker_transport_options={"visibility_timeout": max(3600, longest * 4), **transport},
        broker_connection_retry_on_startup=True,
        # Enqueueing from a request must not hang on a dead broker: one short try, then 503.
        task_publish_retry=False,
        broker_connection_timeout=1.0,
        beat_schedule=beat_schedule(app.config),
        # Task events for the Prometheus exporter of Celery (prometheus-exporter-celery, docs/DEPLOY.md).
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    celery.set_default()
    app.extensions["celery"] = celery
    return celery
