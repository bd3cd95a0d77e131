"""A Redis Cluster on free loopback ports: three primaries and three replicas."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time

import redis

from devstack.ports import free_cluster_port
from devstack.redis_server import DataNodes, RedisServer, wait_redis


class ClusterSet(DataNodes):
    """A Redis Cluster of three primaries and three replicas (``redis-cli --cluster create``).

    Its node timeout is long, so pausing or killing every node is an outage, not a failover;
    ``fail_primary`` shortens it to fail over one primary for real.
    """

    kind = "cluster"
    NODE_TIMEOUT_MS = 30000

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="cluster-test-")
        self.created = False
        self.nodes = []
        for _ in range(6):
            port = free_cluster_port()
            extra = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                     "--cluster-node-timeout", str(self.NODE_TIMEOUT_MS)]  # fmt: skip
            self.nodes.append(RedisServer(extra=extra, port=port, dir=self.dir))

    def start(self) -> None:
        """The first time: create the cluster; later: start its nodes (after ``stop`` or ``kill``)."""
        if self.created:
            self.ensure_running()
            return
        for node in self.nodes:
            node.start()
        self.created = True
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_ok()

    def wait_ok(self) -> None:
        def ok() -> bool:
            for node in self.nodes:
                with node.client(decode_responses=True) as c:
                    info = c.cluster("info")
                    if info["cluster_state"] != "ok" or int(info["cluster_known_nodes"]) != 6:
                        return False
                    if int(info["cluster_slots_ok"]) != 16384:
                        return False
            roles = [node.probe.info("replication") for node in self.nodes]
            masters = [r for r in roles if r["role"] == "master"]
            return len(masters) == 3 and all(r.get("slave0", {}).get("state") == "online" for r in masters)

        wait_redis(ok, 60, "the cluster to be ok")

    def settings(self, broker: str | None = None) -> dict[str, str]:
        assert broker, "a Cluster needs another Redis (or RabbitMQ) as the Celery broker"
        return {
            "REDIS_CLUSTER_NODES": ",".join(f"127.0.0.1:{node.port}" for node in self.nodes[:3]),
            "CELERY_BROKER_URL": broker,
        }

    def raw(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=2)

    def primary_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.alive() and n.probe.info("replication")["role"] == "master"]

    def primaries(self) -> list[redis.Redis]:
        return [node.probe for node in self.primary_nodes()]

    def primary_of(self, key: str) -> RedisServer:
        """The node that is the primary of this key's slot now."""
        with self.raw() as client:
            port = client.get_node_from_key(key).port
        return next(node for node in self.nodes if node.port == port)

    def replica_of(self, key: str) -> RedisServer:
        primary = self.primary_of(key)
        for node in self.nodes:
            if node is not primary and node.alive():
                info = node.probe.info("replication")
                if info["role"] == "slave" and int(info["master_port"]) == primary.port:
                    return node
        raise RuntimeError(f"no replica of the primary of {key!r}")

    def fail_primary(self, key: str, node_timeout_ms: int = 1000) -> float:
        """SIGKILL the primary holding ``key`` and wait until its replica is promoted (the
        cluster's own failure detection, with a short node timeout); returns the promotion's
        time (monotonic). ``settle()`` brings the killed node back as a replica."""
        primary, replica = self.primary_of(key), self.replica_of(key)
        self.set_node_timeout(node_timeout_ms)
        primary.kill()
        wait_redis(lambda: replica.probe.info("replication")["role"] == "master", 30, "the promotion")
        return time.monotonic()

    def settle(self) -> None:
        self.ensure_running()  # the killed node rejoins, as a replica of the promoted one
        self.set_node_timeout(self.NODE_TIMEOUT_MS)

    def ensure_running(self) -> None:
        restarted = False
        for node in self.nodes:
            if node.alive():
                node.resume()
            else:
                node.start()
                restarted = True
        if restarted:
            self.wait_ok()

    def set_node_timeout(self, ms: int) -> None:
        for node in self.nodes:
            if node.alive():
                with node.client() as c:
                    c.config_set("cluster-node-timeout", ms)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)
