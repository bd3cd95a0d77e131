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
- Draining on SIGTERM (issue 14). The master flips readiness (``GET /health``) to 503 in every
  worker at once (a flag in memory shared with the workers it forks) and keeps serving normally for
  ``SHUTDOWN_DRAIN_SECONDS``, so load balancers stop sending before anything is refused. Then it
  stops accepting without resetting anyone: a filter on the listening socket drops new connection
  attempts (their retry meets the closed port: refused, not reset), the workers accept what was
  already queued (however long that takes, within ``--graceful-timeout``), and only then is
  gunicorn's graceful stop run with what is left of that timeout; a
  gthread worker closes its listener copy as soon as it stops accepting, not after its kept-alive
  connections. Each worker stops the device cache on exit, sending its buffered counters.
  A second SIGTERM ends the drain early; SIGINT and SIGQUIT stop at once, as before.
- ``LOG_FORMAT=json``: gunicorn's own lines and its access line become JSON objects with the
  fields of ``app/logging.py`` (time, level, logger, message); the access line adds the
  request's id, Flask URL rule, status, duration and device-cache result.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import logging
import math
import mmap
import os
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
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


def on_exit(server: Any) -> None:
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and os.environ.get(OWN_DIR_MARK) == path:
        shutil.rmtree(path, ignore_errors=True)


# --- Draining on SIGTERM (module body: runs in the master, before any worker) --------------------
DRAIN_SETTING = "SHUTDOWN_DRAIN_SECONDS"
DRAIN_DEFAULT = "5"  # app/config.py's Setting row has the same default (a test keeps them equal)
_SO_ATTACH_FILTER = 26  # Linux <asm-generic/socket.h>
_DRAINING = mmap.mmap(-1, 1)  # 1 once the master got SIGTERM; every worker forked later shares it


def drain_seconds(environ: dict[str, str] | os._Environ = os.environ) -> float:
    """``SHUTDOWN_DRAIN_SECONDS`` (app/config.py validates it again in each worker)."""
    raw = environ.get(DRAIN_SETTING, DRAIN_DEFAULT)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # NaN too
        raise SystemExit(f"{DRAIN_SETTING} must be a number >= 0, got {raw!r}")
    return seconds


def draining() -> bool:
    return _DRAINING[0] == 1


def drop_new_connections(listener: socket.socket) -> bool:
    """Attach a socket filter that drops every packet: new SYNs are ignored (the client retries
    in a second and then meets a closed port), while the accept queue stays as it is."""
    if listener.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    insn = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))  # BPF_RET|BPF_K, 0: drop
    program = struct.pack("HL", 1, ctypes.addressof(insn))  # struct sock_fprog
    try:
        listener.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)
    except OSError:
        return False  # not Linux: gunicorn's own stop, as before
    return True


def accept_queue(listener: socket.socket) -> int:
    """Connections waiting in a listening TCP socket's accept queue (``tcpi_unacked``)."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 24)[0]


def stop_accepting(server: Any) -> None:
    """Stop new connections without resetting queued ones: filter, then wait for the queue.

    The queue empties only as fast as the workers serve (slow requests on sync workers can hold
    several connections queued for seconds), so the wait is bounded by the graceful timeout, and
    what it used is taken off the graceful stop that follows: drain + graceful timeout stays the
    whole budget."""
    listeners = [lnr.sock for lnr in server.LISTENERS if drop_new_connections(lnr.sock)]
    started = time.monotonic()
    budget = float(server.cfg.graceful_timeout)
    queued = 0
    while listeners:
        with contextlib.suppress(OSError):
            queued = sum(accept_queue(listener) for listener in listeners)
        if not queued or time.monotonic() - started >= budget:
            break
        time.sleep(0.01)
    if queued:
        server.log.warning("%d queued connections not accepted within the graceful timeout", queued)
    time.sleep(0.01)  # a connection the last accept() took may still be handed to a thread
    server.cfg.set("graceful_timeout", max(1, math.ceil(budget - (time.monotonic() - started))))


def when_ready(server: Any) -> None:
    """Replace the arbiter's SIGTERM handling: drain first, then gunicorn's graceful stop."""
    seconds = drain_seconds()
    state = {"timer": None}

    def handle_term() -> None:
        _DRAINING[0] = 1
        if state["timer"] is None and seconds > 0:
            server.log.info("SIGTERM: draining for %gs (readiness answers 503), then stopping", seconds)
            state["timer"] = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGTERM))
            state["timer"].daemon = True
            state["timer"].start()
            return
        if state["timer"] is not None:
            state["timer"].cancel()
        server.log.info("Stopping: no new connections; finishing the accepted ones")
        stop_accepting(server)
        raise StopIteration  # the arbiter's own handle_term: halt(), graceful stop of the workers

    server.handle_term = handle_term


def post_worker_init(worker: Any) -> None:
    """In the worker, once initialised (a gevent worker has patched the standard library): the
    cache's locks, events and thread are made again (a ``--preload`` master made them unpatched);
    the app gets the drain flag; a gthread worker closes its listeners as soon as it stops accepting."""
    from app.cache.shared import after_fork  # here, not at the top: see the module docstring

    after_fork()
    extensions = getattr(worker.wsgi, "extensions", None) or {}
    if "shutdown" in extensions:
        extensions["shutdown"].watch(draining)
    accept_switch = getattr(worker, "set_accept_enabled", None)
    if accept_switch is None:
        return

    def set_accept_enabled(enabled: bool) -> None:
        accept_switch(enabled)
        if not enabled and not worker.alive:  # stopping, not merely at worker_connections
            for listener in worker.sockets:
                listener.close()

    worker.set_accept_enabled = set_accept_enabled


def worker_exit(server: Any, worker: Any) -> None:
    """Send the shared cache's buffered counters (and remove its applied outbox records) before
    the worker is gone."""
    extensions = getattr(getattr(worker, "wsgi", None), "extensions", None) or {}
    if "shared_cache" in extensions:
        with contextlib.suppress(Exception):
            extensions["shared_cache"].stop()


drain_seconds()  # a malformed value stops the master at start, with one line


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
