"""A Redis Sentinel set on free loopback ports: a primary, a replica and three sentinels."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import redis
import redis.sentinel

from devstack.ports import free_port
from devstack.processes import spawn
from devstack.redis_server import DataNodes, RedisServer, redis_binary, wait_redis


class SentinelSet(DataNodes):
    """A primary, a replica and three sentinels, all real processes on free loopback ports.

    Sentinels only fail over when told to (``failover()``): their down-after is longer than any
    outage a test makes, so pausing or killing the data nodes is an outage, not a failover.
    """

    kind = "sentinel"
    MASTER = "opensensor"

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="sentinel-test-")
        first = RedisServer(dir=self.dir)
        self.nodes = [first, RedisServer(extra=["--replicaof", "127.0.0.1", str(first.port)], dir=self.dir)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[subprocess.Popen] = []

    def start(self) -> None:
        """The first time: the whole set; later: the data nodes (after ``stop`` or ``kill``)."""
        if self.sentinels:
            self.ensure_running()
            return
        for node in self.nodes:
            node.start()
        master_port = self.nodes[0].port
        for port in self.sentinel_ports:
            conf = os.path.join(self.dir, f"sentinel-{port}.conf")
            with open(conf, "w") as f:
                f.write(
                    f"port {port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir}/sentinel-{port}.log\n"
                    f"sentinel monitor {self.MASTER} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {self.MASTER} 60000\n"
                    f"sentinel failover-timeout {self.MASTER} 10000\n"
                )
            command = [redis_binary(), conf, "--sentinel"]
            self.sentinels.append(spawn(command))
        self.wait_settled()

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=1, decode_responses=True)

    def wait_settled(self) -> None:
        """Every sentinel knows the master, its replica and the other sentinels; replication is up."""

        def settled() -> bool:
            host, port = self.master_address()
            for sentinel_port in self.sentinel_ports:
                with self.sentinel(sentinel_port) as s:
                    master = s.sentinel_master(self.MASTER)
                    if int(master["num-slaves"]) < 1 or int(master["num-other-sentinels"]) < 2:
                        return False
                    if (master["ip"], int(master["port"])) != (host, port) or master["flags"] != "master":
                        return False
            with redis.Redis(host=host, port=port, socket_timeout=1) as primary:
                info = primary.info("replication")
                return info["role"] == "master" and info.get("slave0", {}).get("state") == "online"

        wait_redis(settled, 30, "the sentinel set to settle")

    def master_address(self) -> tuple[str, int]:
        for port in self.sentinel_ports:
            try:
                with self.sentinel(port) as s:
                    host, master_port = s.sentinel_get_master_addr_by_name(self.MASTER)
                    return host, int(master_port)
            except redis.RedisError:
                continue
        raise RuntimeError("no sentinel answers")

    def primary(self) -> RedisServer:
        _, port = self.master_address()
        return next(node for node in self.nodes if node.port == port)

    def replica(self) -> RedisServer:
        _, port = self.master_address()
        return next(node for node in self.nodes if node.port != port)

    @property
    def port(self) -> int:
        return self.primary().port

    def url(self, db: int = 0) -> str:
        return self.primary().url(db)

    def settings(self, broker: str | None = None) -> dict[str, str]:
        return {
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports),
            "REDIS_SENTINEL_MASTER": self.MASTER,
        }

    def raw(self) -> redis.Redis:
        """A client that follows the master through failovers."""
        sentinel = redis.sentinel.Sentinel([("127.0.0.1", p) for p in self.sentinel_ports], socket_timeout=2)
        return sentinel.master_for(self.MASTER, socket_timeout=2)

    def primaries(self) -> list[redis.Redis]:
        return [self.primary().probe]

    def failover(self, settle: bool = True) -> float:
        """``SENTINEL FAILOVER``: returns when the sentinels name the promoted replica (the
        promotion's time, monotonic); with ``settle``, only once the old master is its replica."""
        old = self.port
        with self.sentinel(self.sentinel_ports[0]) as s:
            s.execute_command("SENTINEL", "FAILOVER", self.MASTER)
        wait_redis(lambda: self.master_address()[1] != old, 30, "the failover")
        promoted = time.monotonic()
        if settle:
            self.wait_settled()
        return promoted

    def wait_replica_reported(self) -> None:
        """Until every sentinel's last INFO of the replica reported it a replica, before a failover
        that follows another within seconds. A sentinel polls a replica every 10 s: one whose last
        poll of the old master was from before it was made a replica has seen it as a master for
        over 8 s when it reports "master" again (promoted), takes it for a stale master, turns it
        back into a replica, and the forced failover aborts (``-failover-abort-slave-timeout``:
        the chaos run's failovers that never happened)."""

        def reported() -> bool:
            port = self.replica().port
            for sentinel_port in self.sentinel_ports:
                with self.sentinel(sentinel_port) as s:
                    replicas = [r for r in s.sentinel_slaves(self.MASTER) if int(r["port"]) == port]
                    if not replicas or replicas[0].get("role-reported") != "slave":
                        return False
            return True

        wait_redis(reported, 30, "every sentinel to have seen the replica as one")

    def replica_of(self, key: str) -> RedisServer:
        return self.replica()

    def primary_of(self, key: str) -> RedisServer:
        return self.primary()

    def fail_primary(self, key: str) -> float:
        """Fail over the primary that holds ``key``: a Sentinel failover."""
        return self.failover(settle=False)

    def settle(self) -> None:
        """The old master follows the new one now (Sentinel would tell it within ten seconds)."""
        host, port = self.master_address()
        with self.replica().client() as old:
            if old.info("replication")["role"] != "slave":
                old.replicaof(host, port)
        self.wait_settled()

    def ensure_running(self) -> None:
        host, master_port = self.master_address()
        restarted = False
        for node in self.nodes:
            if node.alive():
                node.resume()
                continue
            node.extra = [] if node.port == master_port else ["--replicaof", host, str(master_port)]
            node.start()
            restarted = True
        if restarted:
            self.wait_settled()

    def cleanup(self) -> None:
        for proc in self.sentinels:
            proc.terminate()
        for proc in self.sentinels:
            proc.wait(10)
        for node in self.nodes:
            node.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)
