"""What the benchmarks share: their own servers, the service's settings and data, gunicorn, figures.

Servers and processes are started the one way the tests and ``scripts/run`` start them
(``devstack``); the load generator and the CPU meter are in ``bench/load.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path
from urllib.parse import quote

from devstack.mongo import start_secantusd
from devstack.processes import ROOT, Group
from devstack.redis_server import RedisServer
from devstack.web import start_gunicorn

PREFIX = "bench:"  # CACHE_KEY_PREFIX of the bench
CEILING_KEY = PREFIX + "bench:ceiling"  # bench/benchapp.py reads it
GUNICORN_SETTINGS = [
    "--workers", "2",
    "--worker-class", "gevent",
    "--worker-connections", "100",
    "--keep-alive", "5",
    "--timeout", "30",
    "--graceful-timeout", "5",
    "--log-level", "warning",
    "--no-control-socket",
]  # fmt: skip
# Two replicas of the service as the failover and coherence runs serve it (gunicorn.conf.py read).
REPLICA_SETTINGS = ["--workers", "2", "--worker-class", "gthread", "--threads", "4", "--log-level", "warning"]
HIT_DEVICE = ("demo-00001", "Room 1")  # public (demo-data makes every fifth device private)


class Servers:
    """A redis-server and a SecantusDB of the bench's own on free ports, logs in a temp dir; the
    context stops them (and every process started in ``group``) and removes the dir unless ``keep_logs``."""

    def __init__(self, prefix: str, keep_logs: bool = False) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix))
        self.group = Group()
        self.redis = RedisServer()
        self.mongo_port = 0
        self.keep_logs = keep_logs

    def __enter__(self) -> Servers:
        try:
            self.redis.start()
            _, self.mongo_port = start_secantusd(self.group, self.workdir / "mongo", self.workdir / "secantusd.log")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.group.stop_all()
        self.redis.cleanup()
        if self.keep_logs:
            print(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


def export(rev: str, into: Path) -> Path:
    """The tree of revision ``rev`` (``git archive``), written into ``into``: a baseline to run beside this checkout."""
    archive = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def bench_env(redis_server: RedisServer, mongo_port: int) -> dict[str, str]:
    """The environment of the bench's service processes: its own servers, a warm entry that cannot expire."""
    env = {
        **os.environ,
        "MONGO_URI": f"mongodb://127.0.0.1:{mongo_port}/bench",
        "REDIS_URL": redis_server.url(0),
        "CELERY_BROKER_URL": redis_server.url(1),
        "CACHE_KEY_PREFIX": PREFIX,
        "DEVICE_CACHE_TTL": "3600",
        "LOG_LEVEL": "WARNING",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each gunicorn master makes its own (gunicorn.conf.py)
    return env


def seed(env: dict, workdir: Path, devices: int) -> dict:
    argv = [sys.executable, "-m", "flask", "--app", "bench.benchapp", "demo-data", "--devices", str(devices)]
    out = subprocess.run(
        [*argv, "--days", "0"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    (workdir / "seed.log").write_text(out.stdout + out.stderr)
    if out.returncode != 0:
        raise RuntimeError(f"demo-data failed:\n{out.stdout}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_bench_app(group: Group, env: dict, workdir: Path, name: str) -> tuple[subprocess.Popen, str]:
    """gunicorn (GUNICORN_SETTINGS) serving ``bench.benchapp:app``: the service plus the bench routes."""
    log_path = workdir / f"{name}.log"
    return start_gunicorn(group, name, GUNICORN_SETTINGS, env, log_path, app="bench.benchapp:app")


def start_replica(group: Group, env: dict, workdir: Path, name: str) -> str:
    """A replica of ``wsgi:app`` (REPLICA_SETTINGS), once ``/health`` answers 200: its base URL."""
    _, base = start_gunicorn(group, name, REPLICA_SETTINGS, env, workdir / f"{name}.log", health="/health", seconds=60)
    return base


def lookup_path(device: tuple[str, str]) -> str:
    return f"{quote(device[0])}/{quote(device[1])}"


def variant_urls(base: str, device: tuple[str, str]) -> dict[str, str]:
    pair = lookup_path(device)
    return {
        "hit": f"{base}/api/v1/devices/{pair}",
        "ceiling": f"{base}/bench/ceiling",
        "memoize": f"{base}/bench/memoize/{pair}",
        "uncached": f"{base}/bench/uncached/{pair}",
    }


def med(runs: list[dict], field: str) -> float:
    return statistics.median(r[field] for r in runs)


def fmt_ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "n/a"


def versions() -> dict[str, str]:
    found = {}
    for dist in ("gunicorn", "gevent", "Flask", "Flask-Caching", "redis", "pymongo", "SecantusDB"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[dist] = metadata.version(dist)
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
    if m := re.search(r"v=(\S+)", out):
        found["redis-server"] = m.group(1)
    if shutil.which("wrk"):
        out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        if m := re.search(r"wrk (\S+)", out.stdout + out.stderr):
            found["wrk"] = m.group(1)
    found["Python"] = platform.python_version()
    return found


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"
