"""The whole service locally: ``scripts/run`` (which sets up ``.venv`` first) runs ``python -m devstack.run``.

``.env`` (python-dotenv) adds defaults: a variable already set in the environment keeps its value.
Redis: a Sentinel set or a Cluster is used as given; otherwise ``REDIS_URL``, with a local
redis-server started when nothing answers there. MongoDB: embedded SecantusDB (data in
``$INSTANCE_DIR/mongo``) unless ``MONGO_URI`` is set. Then init-db, demo data on the first run,
``env.sh``, and web + Celery worker + beat under honcho (``Procfile``). Ctrl-C (or SIGTERM, SIGHUP)
stops everything this run started, in reverse order. ``PORT`` (8000) and ``INSTANCE_DIR`` (instance).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
from dotenv import load_dotenv

from devstack import demo
from devstack.mongo import mongo_ping, secantusd_argv
from devstack.ports import first_free_port, listening
from devstack.processes import ROOT, Group, alive, command_line, signals_exit, wait_started
from devstack.redis_server import redis_argv
from devstack.tools import ensure_redis_binary
from devstack.wait import wait_until

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# How long each process may take to stop after SIGTERM before SIGKILL.
GRACE = {"honcho": 20, "SecantusDB": 15, "redis-server": 10}


def log(message: str) -> None:
    print(f"scripts/run: {message}", file=sys.stderr, flush=True)


def die(message: str) -> None:
    log(message)
    raise SystemExit(1)


def redis_answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def claim(instance: Path) -> None:
    """One run per instance dir; stop the servers a run that was SIGKILLed left behind."""
    old = read_pid(instance / "run.pid")
    if old and alive(old) and re.search(r"scripts/run|devstack\.run", command_line(old)):
        die(f"already running for {instance} (pid {old}); stop it or set INSTANCE_DIR")
    (instance / "run.pid").write_text(f"{os.getpid()}\n")
    for name in ("redis", "mongo"):
        old = read_pid(instance / f"{name}.pid")
        if old and alive(old) and re.search(r"redis-server|secantusd", command_line(old)):
            log(f"stopping {name} (pid {old}) left over from an earlier run")
            with contextlib.suppress(OSError):
                os.kill(old, signal.SIGTERM)
            wait_until(lambda old=old: not alive(old), 10, interval=0.1)
        (instance / f"{name}.pid").unlink(missing_ok=True)


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def started(
    group: Group, name: str, argv: list[str], pid_file: Path, check: Callable[[], Any], seconds: float, **options: Any
) -> None:
    """Start a server in ``group``, its pid in ``pid_file`` (for a next run, should this one be
    SIGKILLed); return once ``check()`` is true."""
    proc = group.start(name, argv, grace=GRACE[name], **options)
    pid_file.write_text(f"{proc.pid}\n")
    try:
        wait_started(proc, check, seconds, name, interval=0.25)
    except RuntimeError as exc:
        die(f"{exc} (see its log in {pid_file.parent})")


def use_redis(group: Group, instance: Path) -> None:
    """REDIS_URL answers, or a local redis-server is started on its port (a Sentinel set or Cluster as given)."""
    if not os.environ.get("REDIS_SENTINELS") and not os.environ.get("REDIS_CLUSTER_NODES"):
        os.environ["REDIS_URL"] = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    url = os.environ.get("REDIS_URL")
    if not url:
        sentinels, nodes = os.environ.get("REDIS_SENTINELS"), os.environ.get("REDIS_CLUSTER_NODES")
        log("using the Redis " + (f"Sentinel set at {sentinels}" if sentinels else f"Cluster at {nodes}"))
        return
    if redis_answers(url):
        log(f"using the Redis that answers at {url}")
        return
    parts = urlsplit(url)
    if (parts.hostname or "") not in LOCAL_HOSTS:
        die(f"nothing answers at REDIS_URL={url} (not local, so not started here)")
    ensure_redis_binary()
    port = parts.port or 6379
    (instance / "redis").mkdir(exist_ok=True)
    log(f"starting redis-server on 127.0.0.1:{port} (log: {instance}/redis.log)")
    argv = redis_argv(port, str(instance / "redis"), "--logfile", str(instance / "redis.log"))
    started(group, "redis-server", argv, instance / "redis.pid", lambda: redis_answers(url), 15)


def use_mongo(group: Group, instance: Path) -> None:
    """MONGO_URI as set, or SecantusDB on the first free port from 27017, its data in the instance dir."""
    if os.environ.get("MONGO_URI"):
        log("using MONGO_URI from the environment")
        return
    port = first_free_port(range(27017, 27117))
    if port is None:
        die("no free port in 27017-27116 for SecantusDB")
    storage = instance / "mongo"
    storage.mkdir(exist_ok=True)
    log(f"starting SecantusDB on 127.0.0.1:{port}, data in {storage} (log: {instance}/mongo.log)")
    base = f"mongodb://127.0.0.1:{port}/"
    options = {"log_path": instance / "mongo.log", "append": True}
    started(group, "SecantusDB", secantusd_argv(port, storage), instance / "mongo.pid", lambda: mongo_ping(base), 60,
            **options)  # fmt: skip
    os.environ["MONGO_URI"] = f"mongodb://127.0.0.1:{port}/opensensor"


def serve(group: Group, port: int) -> int:
    """web, worker and beat under honcho until it ends (or a signal ends this run); its exit code."""
    # -e /dev/null: .env is already in the environment; honcho gives web (first line) $PORT.
    argv = [sys.executable, "-m", "honcho", "start", "-f", "Procfile", "-e", "/dev/null", "-p", str(port)]
    proc = group.start("web/worker/beat (honcho)", argv, grace=GRACE["honcho"], stdout=None, stderr=None)
    if wait_until(lambda: proc.poll() is not None or listening(port), 60, interval=0.25) and proc.poll() is None:
        log(f"ready: http://127.0.0.1:{port}")
    return proc.wait()


def settings() -> tuple[int, Path]:
    """.env under the environment; PORT and INSTANCE_DIR (created, made absolute) exported."""
    load_dotenv(ROOT / ".env", override=False)
    port = os.environ.get("PORT") or "8000"
    if not port.isdigit():
        die(f"PORT={port} is not a port number")
    instance = ROOT / (os.environ.get("INSTANCE_DIR") or "instance")
    instance.mkdir(parents=True, exist_ok=True)
    instance = instance.resolve()
    os.environ.update(PORT=port, INSTANCE_DIR=str(instance), PYTHONUNBUFFERED="1")
    return int(port), instance


def run(group: Group, port: int, instance: Path) -> int:
    claim(instance)
    if listening(port):
        die(f"port {port} is already in use; run with PORT=<another port> scripts/run")
    use_redis(group, instance)
    use_mongo(group, instance)
    demo_json = demo.prepare(instance, log)
    demo.show(instance, f"http://127.0.0.1:{port}", demo_json)
    return serve(group, port)


def cleanup(group: Group, instance: Path) -> None:
    """Stop what this run started, in reverse order; a second Ctrl-C does not cut it short."""
    for sig in EXIT_CODES:
        signal.signal(sig, signal.SIG_IGN)
    group.stop_all()
    for name in ("mongo", "redis"):
        (instance / f"{name}.pid").unlink(missing_ok=True)
    if read_pid(instance / "run.pid") == os.getpid():
        (instance / "run.pid").unlink()


def main() -> int:
    port, instance = settings()
    group = Group(log=log)
    with signals_exit(EXIT_CODES):
        try:
            return run(group, port, instance)
        except subprocess.CalledProcessError as exc:
            log(f"{' '.join(map(str, exc.cmd[2:]))} failed with exit code {exc.returncode}")  # after python -m
            return exc.returncode
        finally:
            cleanup(group, instance)


if __name__ == "__main__":
    sys.exit(main())
