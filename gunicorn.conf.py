"""gunicorn settings of the web role; ``gunicorn wsgi:app`` reads this file from the working directory.

Command-line options (``scripts/run``'s Procfile, ``docker/entrypoint.sh``) override what is here.
It does two things the app cannot do from inside a worker:

- Prometheus multiprocess mode. Every worker writes its metric values to files in
  ``PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` sums them. The variable must be set before a
  worker imports prometheus_client, so it is set here, in the master, before any fork. When
  it is not given, each master makes its own temporary directory (two replicas started from one
  checkout never share or wipe each other's files) and removes it on exit; a given directory is
  created if missing. Either is emptied of metric files at start, and a dead worker's live
  gauges are dropped (``child_exit``). Nothing of the app is imported here: gevent workers
  must import it only after they patched the standard library.
- ``LOG_FORMAT=json``: gunicorn's own lines and its access line become JSON objects with the
  fields of ``app/logging.py`` (time, level, logger, message); the access line adds the
  request's id, Flask URL rule, status, duration and device-cache result.
"""

from __future__ import annotations

import glob
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime
from typing import Any

from gunicorn import glogging
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

# --- Prometheus multiprocess directory (module body: runs in the master, before any worker) ------
OWN_DIR_MARK = "_OPENSENSOR_OWN_METRICS_DIR"  # survives a config reload (SIGHUP re-runs this file)
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="opensensor-metrics-")
    os.environ[OWN_DIR_MARK] = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server: Any) -> None:
    path = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):  # a previous run's values are not ours
        os.remove(stale)


def child_exit(server: Any, worker: Any) -> None:
    from prometheus_client import multiprocess  # here, not at the top: see the module docstring

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    """In the worker, after a gevent worker patched the standard library: the cache's locks,
    events and thread are made again (a ``--preload`` master made them unpatched)."""
    from app.cache.shared import after_fork  # here, not at the top: see the module docstring

    after_fork()


def on_exit(server: Any) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and os.environ.get(OWN_DIR_MARK) == path:
        shutil.rmtree(path, ignore_errors=True)


# --- LOG_FORMAT=json -------------------------------------------------------------------------------
class _Json(JsonFormatter):
    """app/logging.py's JsonFormatter, rebuilt without importing the app (tests keep them equal)."""

    def __init__(self) -> None:
        super().__init__(
            ["asctime", "levelname", "name", "message"],
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            reserved_attrs=list(RESERVED_ATTRS),
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in log_data.items() if value is not None}


class JsonLogger(glogging.Logger):
    """gunicorn's logger with JSON lines: one object per error-log record and per request."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(_Json())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        status = str(getattr(resp, "status", "") or "").split(None, 1)[0]
        fields = {
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": int(status) if status.isdigit() else None,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "bytes": getattr(resp, "sent", None),
            "remote_addr": environ.get("REMOTE_ADDR"),
            # request_id, route and cache, set by the app (app/metrics.py) when it saw the request
            **(environ.get("opensensor.request") or {}),
        }
        self.access_log.info("%s %s %s", fields["method"], fields["path"], fields["status"], extra=fields)


if os.environ.get("LOG_FORMAT", "text").strip().lower() == "json":
    logger_class = JsonLogger
