"""The servers of a chaos run: Redis (one topology), SecantusDB as a process, gunicorn replicas.

Standalone: each replica reaches Redis through its own ``devstack.proxy.TcpProxy``, so one replica
can be cut off while the others still reach it. Sentinel and Cluster: the replicas learn the data
nodes' addresses from the sentinels or the cluster itself and connect to them directly, so a proxy
in front of the address they were given would not sit on their data path: no partition there.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pymongo import MongoClient

from devstack.cluster import ClusterSet
from devstack.mongo import start_secantusd
from devstack.processes import ROOT, Group, service_env
from devstack.proxy import TcpProxy
from devstack.redis_server import RedisServer
from devstack.sentinel import SentinelSet
from devstack.web import LiveReplica

PREFIX = "chaos:"
DB = "chaos"


class Stack:
    def __init__(self, topology: str, replicas: int = 2, keep_logs: bool = False) -> None:
        self.topology = topology
        self.workdir = Path(tempfile.mkdtemp(prefix=f"chaos-{topology}-"))
        self.keep_logs = keep_logs
        self.group = Group()
        self.redis: RedisServer | SentinelSet | ClusterSet = {
            "standalone": RedisServer, "sentinel": SentinelSet, "cluster": ClusterSet,
        }[topology]()  # fmt: skip
        self.broker = RedisServer() if topology == "cluster" else None
        self.proxies: list[TcpProxy] = []
        self.replicas: list[LiveReplica] = []
        self.n_replicas = replicas
        self.mongo_proc: subprocess.Popen | None = None
        self.mongo_port = 0

    @property
    def mongo_uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.mongo_port}/{DB}"

    def settings(self, redis_url: str | None = None) -> dict[str, str]:
        broker = self.broker.url(1) if self.broker else None
        settings = self.redis.settings(broker)
        if redis_url is not None:
            settings["REDIS_URL"] = redis_url
        return {**settings, "MONGO_URI": self.mongo_uri, "CACHE_KEY_PREFIX": PREFIX, "LOG_LEVEL": "WARNING",
                "PYTHONDONTWRITEBYTECODE": "1"}  # fmt: skip

    def start(self) -> None:
        self.redis.start()
        if self.broker:
            self.broker.start()
        self.mongo_proc, self.mongo_port = start_secantusd(
            self.group, self.workdir / "mongo", self.workdir / "secantusd.log", extra=("--enable-test-commands",)
        )
        for n in range(self.n_replicas):
            url = None
            if self.topology == "standalone":
                self.proxies.append(TcpProxy(self.redis.port))
                url = self.proxies[-1].url(0)
            replica = LiveReplica(self.settings(url), self.workdir / f"replica{n}.log", workers=2, threads=2,
                                  extra_args=["--log-level", "warning", "--timeout", "30"])  # fmt: skip
            self.replicas.append(replica.start(60))

    @property
    def bases(self) -> list[str]:
        return [r.url for r in self.replicas]

    def cli_env(self) -> dict[str, str]:
        return service_env(self.settings())

    def create_user(self, name: str) -> str:
        argv = [sys.executable, "-m", "flask", "--app", "wsgi", "users", "create", name]
        out = subprocess.run(argv, env=self.cli_env(), cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])["token"]

    def stored_values(self) -> dict[tuple[str, str], set[float]]:
        """Every reading's temp in MongoDB, by pair, read directly (not through the service)."""
        client = MongoClient(self.mongo_uri, serverSelectionTimeoutMS=10000)
        try:
            stored: dict[tuple[str, str], set[float]] = {}
            for doc in client[DB]["readings"].find({}, {"_id": 0, "meta": 1, "temp": 1}):
                pair = (doc["meta"]["device_id"], doc["meta"]["device_name"])
                stored.setdefault(pair, set()).add(float(doc.get("temp", "nan")))
            return stored
        finally:
            client.close()

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()
        for proxy in self.proxies:
            proxy.close()
        self.group.stop_all(grace=0)  # SecantusDB: the history is checked, its data of no further use
        self.redis.cleanup()
        if self.broker:
            self.broker.cleanup()
        if self.keep_logs:
            print(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
