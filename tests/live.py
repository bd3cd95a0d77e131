"""Live replicas for the tests: the real ``wsgi:app`` under gunicorn on a free loopback port.

For what an in-process test client cannot show: several worker processes behind one port,
gunicorn's own hooks and logs, a browser, Prometheus or Schemathesis talking HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
# Settings of the ``settings`` fixture that are not environment variables of the service.
NOT_ENV = {"TESTING"}


def service_env(settings: Mapping[str, Any], **extra: Any) -> dict[str, str]:
    """The process environment of a replica (or worker, or beat) on a test's settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMETHEUS_", "GUNICORN_"))}
    for name, value in {**settings, **extra}.items():
        if name in NOT_ENV or value is None:
            continue
        env[name] = str(value)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def stop_process(proc: subprocess.Popen, grace: float = 15) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class LiveReplica:
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
        self.args = [
            sys.executable, "-m", "gunicorn", "wsgi:app",
            "--bind", f"127.0.0.1:{self.port}",
            "--workers", str(workers),
            "--worker-class", worker_class,
            "--threads", str(threads),
            "--graceful-timeout", "3",
            "--no-control-socket",
            *(extra_args or []),
        ]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> LiveReplica:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.url + "/health/live", timeout=1) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gunicorn did not answer within {timeout}s:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-20000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LiveReplica:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
