"""A redis-server the caller owns (tests stop, kill and hang it), and outages of a set's data nodes."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

import redis

from devstack.ports import free_port
from devstack.processes import spawn, wait_started
from devstack.wait import wait_until

# What a Redis that is not up yet (or down) raises.
REDIS_DOWN = (redis.RedisError, OSError)


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return binary


def redis_argv(port: int, dir: str, *extra: str) -> list[str]:
    """A redis-server on 127.0.0.1 that keeps nothing on disk (no RDB, no AOF).

    ``save ""`` is not enough: a replica writes the RDB of a full sync to ``dir`` and keeps it,
    and a restart loads it. In a shared ``dir`` (a Sentinel set's), a primary killed and
    "restarted empty" came back with the entries of its replica's last sync, deleted keys
    included: the chaos run's stale reads after a restart. So the sync file is deleted once
    loaded (``rdb-del-sync-files``), and each node has its own (``dump-<port>.rdb``). A full
    sync starts at once (``repl-diskless-sync-delay 0``; Redis waits 5 s for more replicas).
    """
    return [
        redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--rdb-del-sync-files", "yes", "--repl-diskless-sync-delay", "0",
        "--dir", dir, "--dbfilename", f"dump-{port}.rdb", *extra,
    ]  # fmt: skip


def wait_redis(check: Callable[[], Any], seconds: float, what: str) -> None:
    """``wait_until`` for Redis: connection errors count as not yet; RuntimeError on time-out."""
    wait_until(check, seconds, what=what, ignore=REDIS_DOWN, interval=0.02)


class RedisServer:
    """A redis-server the tests own, so they can stop, kill or hang it.

    ``extra`` are more command-line settings (``["--replicaof", "127.0.0.1", "6380"]``).
    """

    def __init__(self, extra: list[str] | None = None, port: int | None = None, dir: str | None = None) -> None:
        self.port = port or free_port()
        self.dir = dir or tempfile.mkdtemp(prefix="redis-test-")
        self.extra = list(extra or [])
        self.proc: subprocess.Popen | None = None
        self._probe: redis.Redis | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, **kwargs) -> redis.Redis:
        """A new client (close it: ``with node.client() as c``); ``probe`` is a kept one."""
        return redis.Redis(port=self.port, socket_timeout=kwargs.pop("socket_timeout", 2), **kwargs)

    @property
    def probe(self) -> redis.Redis:
        """This node's own long-lived client, for the tests' checks (closed by ``cleanup``)."""
        if self._probe is None:
            self._probe = self.client()
        return self._probe

    def start(self) -> None:
        """Start (or restart) the server, empty: whatever file a previous run left is removed."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.dir, f"dump-{self.port}.rdb"))
        argv = redis_argv(self.port, self.dir, "--maxmemory-policy", "volatile-lru", *self.extra)
        self.proc = spawn(argv)
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        try:
            wait_started(self.proc, client.ping, 10, f"redis-server on port {self.port}", REDIS_DOWN, 0.02)
        finally:
            client.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM (after SIGCONT, if paused), without waiting for the exit: ``stop`` waits."""
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()

    def stop(self) -> None:
        self.terminate()
        if self.proc:
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections but nothing answers (a hung Redis)."""
        assert self.proc
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def ensure_running(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self.start()
        else:
            self.resume()

    def cleanup(self) -> None:
        self.stop()
        if self._probe is not None:
            self._probe.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the deployment interface shared with SentinelSet and ClusterSet -----------------------

    kind = "standalone"

    def settings(self, broker: str | None = None) -> dict[str, str]:
        return {"REDIS_URL": self.url(0), "CELERY_BROKER_URL": broker or self.url(1)}

    def raw(self) -> redis.Redis:
        return self.client()

    def primaries(self) -> list[redis.Redis]:
        return [self.probe]


class DataNodes:
    """Outages of every data node of a set at once (a Sentinel set's sentinels stay up)."""

    nodes: list[RedisServer]

    def stop(self) -> None:
        """SIGTERM to every node at once: a primary told alone waits for its replicas to catch up
        (about a second, their next acknowledgement), which this outage is not about."""
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.stop()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    def pause(self) -> None:
        for node in self.nodes:
            node.pause()

    def resume(self) -> None:
        for node in self.nodes:
            node.resume()
