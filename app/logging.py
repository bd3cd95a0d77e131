"""Logging to stdout in one format for web and worker, configured once.

``LOG_FORMAT=text`` (the default) is one human line per record; ``json`` is one JSON object per
line (``time``, ``level``, ``logger``, ``message``, then the record's context: the request id
inside a request, the task name and id inside a Celery task) for a log store to index.
gunicorn's own lines and its access line use the same fields (``gunicorn.conf.py``).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import click
from celery import current_task, signals
from celery.apps.worker import install_worker_term_handler
from flask import g, has_request_context
from flask.cli import FlaskGroup
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

# ``%(task)s`` is empty outside a Celery task and `` task_name[task_id]`` inside one.
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]%(task)s %(message)s"
# JSON: these record attributes under these names first; every other extra attribute follows.
JSON_FIELDS = {"asctime": "time", "levelname": "level", "name": "logger", "message": "message"}

log = logging.getLogger("app")


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


class RequestContextFilter(logging.Filter):
    """Tag a record logged while a request is handled with its ``request_id`` (app/metrics.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = g.get("request_id") if has_request_context() else None
        return True


def utc_timestamp(created: float) -> str:
    """A record's time as the API writes timestamps: ISO-8601 UTC, milliseconds, ``Z``."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(_JsonFormatter):
    """One JSON object per record; fields that are None (no task, no request) are left out.

    python-json-logger does the serialising (extras, exceptions, non-JSON values); this class
    only fixes the field names and the time format.
    """

    def __init__(self) -> None:
        super().__init__(
            list(JSON_FIELDS),
            rename_fields={k: v for k, v in JSON_FIELDS.items() if k != v},
            reserved_attrs=[*RESERVED_ATTRS, "task"],  # ``task`` is the text format's decoration
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        return utc_timestamp(record.created)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in log_data.items() if value is not None}


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(FORMAT)


def loaded_by_flask_cli() -> bool:
    """Whether the ``flask`` command line is loading the app (``flask --app wsgi users …``)."""
    ctx = click.get_current_context(silent=True)
    return ctx is not None and isinstance(ctx.find_root().command, FlaskGroup)


def configure_logging(level: str, log_format: str = "text") -> None:
    """Idempotent: a second ``create_app`` (tests, the worker) only adjusts the level and format.

    Logs go to stdout, except in a ``flask`` command: its stdout is its result (the JSON line an
    operator's script parses), so its logs, down to the cache's at exit, go to stderr.
    """
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_opensensor", False)), None)
    if handler is None:
        handler = logging.StreamHandler(sys.stderr if loaded_by_flask_cli() else sys.stdout)
        handler.addFilter(TaskContextFilter())
        handler.addFilter(RequestContextFilter())
        handler._opensensor = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    handler.setFormatter(formatter(log_format))
    root.setLevel(level)
    logging.getLogger("app").setLevel(level)
    if log_format == "json":
        # Python's warnings would otherwise be bare text lines on stderr.
        logging.captureWarnings(True)
        signals.worker_ready.connect(_log_worker_shutdown_as_json, weak=False, dispatch_uid="opensensor-json")


def _log_worker_shutdown_as_json(sender: Any = None, **_: Any) -> None:
    """Celery prints "worker: Warm shutdown" on SIGTERM straight to the terminal, past logging;
    in JSON mode the same handler is installed without that print and the notice is logged."""
    install_worker_term_handler(sender.controller, verbose=False)
    signals.worker_shutting_down.connect(_log_shutdown, weak=False, dispatch_uid="opensensor-json")


def _log_shutdown(sig: str = "", how: str = "", **_: Any) -> None:
    log.warning("worker: %s shutdown on %s", how, sig)
