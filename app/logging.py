"""Logging to stdout in one format for web and worker, configured once."""

from __future__ import annotations

import logging
import sys

from celery import current_task

# ``%(task)s`` is empty outside a Celery task and `` task_name[task_id]`` inside one.
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]%(task)s %(message)s"


class TaskContextFilter(logging.Filter):
    """Tag each record with the Celery task being run (``task_name``, ``task_id``, ``task``).

    Considered Celery's ``TaskFormatter``: it does the same as a formatter, but prints
    ``???`` on every web line; a filter keeps one format for web and worker.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        task = current_task._get_current_object()  # None outside a task
        request = getattr(task, "request", None)
        if task is None or request is None or request.id is None:
            record.task_name = record.task_id = None
            record.task = ""
        else:
            record.task_name, record.task_id = task.name, request.id
            record.task = f" {task.name}[{request.id}]"
        return True


def configure_logging(level: str) -> None:
    """Idempotent: a second ``create_app`` (tests, the worker) only adjusts the level."""
    root = logging.getLogger()
    if not any(getattr(h, "_opensensor", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(TaskContextFilter())
        handler._opensensor = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("app").setLevel(level)
