"""gunicorn serving the service (``wsgi:app``, or the bench's app) on a free loopback port.

For what an in-process test client cannot show: several worker processes behind one port,
gunicorn's own hooks and logs, a browser, Prometheus, Schemathesis or a load generator talking HTTP.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devstack.ports import free_port
from devstack.processes import Group, Server, service_env, spawn, wait_started


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    """The status and body of a GET (an HTTP error status too); OSError if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def gunicorn_argv(app: str, port: int, *options: str) -> list[str]:
    return [sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{port}", *options]


def wait_serving(proc: subprocess.Popen, url: str, seconds: float, what: str) -> None:
    """Until ``url`` answers 200 (RuntimeError if ``proc`` exits first or time runs out)."""
    wait_started(proc, lambda: http_get(url, timeout=1)[0] == 200, seconds, what)


def start_gunicorn(
    group: Group,
    name: str,
    options: list[str],
    env: Mapping[str, str],
    log_path: Path,
    *,
    app: str = "wsgi:app",
    health: str = "/health/live",
    seconds: float = 30,
) -> tuple[subprocess.Popen, str]:
    """gunicorn in ``group`` on a free port; returns once ``health`` answers 200, with its base URL."""
    port = free_port()
    proc = group.start(name, gunicorn_argv(app, port, *options), log_path, env=dict(env))
    base = f"http://127.0.0.1:{port}"
    wait_serving(proc, base + health, seconds, name)
    return proc, base


class LiveReplica(Server):
    """``gunicorn wsgi:app`` from the repository root, started and stopped by a test.

    ``worker_class`` ``gthread`` with ``threads`` per worker by default; ``stop()`` sends
    SIGTERM and waits, then SIGKILL. Output goes to ``log_path`` (read it on failure).
    """

    def __init__(
        self,
        settings: Mapping[str, Any],
        log_path: Path,
        *,
        workers: int = 2,
        worker_class: str = "gthread",
        threads: int = 4,
        extra_args: list[str] | None = None,
        **env: Any,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.env = service_env(settings, **env)
        self.args = gunicorn_argv(
            "wsgi:app", self.port,
            "--workers", str(workers),
            "--worker-class", worker_class,
            "--threads", str(threads),
            "--graceful-timeout", "3",
            "--no-control-socket",
            *(extra_args or []),
        )  # fmt: skip
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> LiveReplica:
        self.proc = spawn(self.args, self.log_path, append=True, env=self.env)
        try:
            wait_serving(self.proc, self.url + "/health/live", timeout, "gunicorn")
        except RuntimeError as exc:
            self.stop()
            raise RuntimeError(f"{exc}:\n{self.output()}") from None
        return self
