"""Real servers for the tests: a redis-server per session and SecantusDB as MongoDB."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import redis
import redis.sentinel


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is a free port too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return binary


def wait_for(check, seconds: float = 15.0, what: str = "condition") -> None:
    """Poll ``check`` (exceptions count as not yet) until it returns true."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


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
        self.proc = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--maxmemory-policy",
                "volatile-lru",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        try:
            wait_for(client.ping, 10, f"redis-server on port {self.port}")
        finally:
            client.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
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
                    f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                    f"sentinel monitor {self.MASTER} 127.0.0.1 {master_port} 2\n"
                    f"sentinel down-after-milliseconds {self.MASTER} 60000\n"
                    f"sentinel failover-timeout {self.MASTER} 10000\n"
                )
            command = [redis_binary(), conf, "--sentinel"]
            self.sentinels.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
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

        wait_for(settled, 30, "the sentinel set to settle")

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
        wait_for(lambda: self.master_address()[1] != old, 30, "the failover")
        promoted = time.monotonic()
        if settle:
            self.wait_settled()
        return promoted

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

        wait_for(ok, 60, "the cluster to be ok")

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
        wait_for(lambda: replica.probe.info("replication")["role"] == "master", 30, "the promotion")
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


class MongoServer:
    """SecantusDB in-process (a MongoDB wire server on WiredTiger), restartable on its port."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="secantus-test-")
        self.port = free_port()
        self.server = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> None:
        from secantus import SecantusDBServer

        self.server = SecantusDBServer(port=self.port, storage_path=self.dir, ttl_sweep_seconds=3600)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def mongo_base_uri() -> str | None:
    """A set MONGO_URI (without its database) replaces the embedded server."""
    uri = os.environ.get("MONGO_URI")
    if not uri:
        return None
    head, _, _ = uri.partition("?")
    scheme, _, rest = head.partition("://")
    hosts = rest.split("/", 1)[0]
    return f"{scheme}://{hosts}"
