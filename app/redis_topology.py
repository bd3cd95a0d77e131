"""Redis topologies: the one place that turns the configuration into Redis clients.

Standalone (``REDIS_URL``), Sentinel (``REDIS_SENTINELS`` + ``REDIS_SENTINEL_MASTER``) or
Cluster (``REDIS_CLUSTER_NODES``). Everything else (the device cache, its admin routes, the
Celery broker) asks a ``Topology`` for clients, the primaries to walk and the broker URL,
so nothing else knows which topology it runs on.

The cache's backends are Flask-Caching's own (``RedisCache``, ``RedisSentinelCache``,
``RedisClusterCache``) with two changes, each for a reason of correctness:
- Sentinel: reads go to the master, not a replica (Flask-Caching reads from ``slave_for``),
  so a lookup right after an invalidation can never read an entry the master already dropped.
- Cluster: the ``RedisCluster`` client is built on first use. Its constructor connects
  (CLUSTER SLOTS) and raises when no node answers, but the service must start, and serve,
  with Redis unreachable.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from flask_caching.backends.rediscache import RedisCache, RedisClusterCache, RedisSentinelCache
from redis import Redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import (
    ClusterDownError,
    ConnectionError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TimeoutError,
    TryAgainError,
)
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry
from redis.sentinel import Sentinel

# Everything a Redis call of the cache can raise when Redis fails (RedisClusterException is
# not a RedisError: a cluster no node of which answers raises it).
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, RedisClusterException)
# Failures that mean Redis is not answering, as opposed to answering with an error (out of
# memory, read-only, wrong type): only these open the circuit breaker.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    ClusterDownError,
    TryAgainError,
    RedisClusterException,
)
SENTINEL_BROKER_DB = 1


def client_options(timeout: float, name: str, connect_timeout: float | None = None) -> dict[str, Any]:
    """Fail fast: one short try, no retries (redis-py's defaults retry with backoff for seconds)."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": connect_timeout or timeout,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        "client_name": name,
    }


def parse_nodes(name: str, raw: str) -> tuple[tuple[str, int], ...]:
    """``host:port,host:port`` -> ((host, port), ...); ValueError with a one-line message."""
    nodes = []
    for part in raw.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{name} must be host:port[,host:port...], got {raw!r}")
        nodes.append((host.strip("[]"), int(port)))
    return tuple(nodes)


class MasterSentinelCache(RedisSentinelCache):
    """Flask-Caching's Sentinel backend, reading from the master like it writes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_client = self._write_client


class LazyCluster:
    """A ``RedisCluster`` built on first use, and again after a failed build.

    Considered: building it in ``create_app``; its constructor connects to the startup nodes,
    which the factory must not do, and raises when none answers. A failed build raises a
    ``ConnectionError`` here, so the cache fails open as for any unreachable Redis.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._client: RedisCluster | None = None
        self._lock = threading.Lock()

    @property
    def cluster(self) -> RedisCluster:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = RedisCluster(**self._kwargs)
                    except RedisClusterException as exc:
                        raise ConnectionError(f"Redis Cluster unreachable: {exc}") from exc
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster, name)

    def close(self) -> None:
        """Close the cluster's connections, if it was ever built (never builds it)."""
        if self._client is not None:
            self._client.close()


class LazyClusterCache(RedisClusterCache):
    """Flask-Caching's Cluster backend on a ``LazyCluster``."""

    def __init__(self, cluster: Any = "", password: str = "", key_prefix: str = "", **kwargs: Any) -> None:
        default_timeout = kwargs.pop("default_timeout", 300)
        kwargs.pop("redis_url", None)
        client = LazyCluster(startup_nodes=cluster, password=password or None, **kwargs)
        RedisCache.__init__(self, host=client, key_prefix=key_prefix, default_timeout=default_timeout)

    @classmethod
    def factory(cls, app: Any, config: dict[str, Any], args: list[Any], kwargs: dict[str, Any]) -> LazyClusterCache:
        kwargs.update(
            cluster=config["CACHE_REDIS_CLUSTER"],
            password=config.get("CACHE_REDIS_PASSWORD") or "",
            key_prefix=config.get("CACHE_KEY_PREFIX", ""),
        )
        return cls(*args, **kwargs)


@dataclass(frozen=True)
class Topology:
    """Where the cache's Redis is, and how to reach it; built from the settings."""

    kind: str  # "standalone", "sentinel" or "cluster"
    url: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str | None = None
    nodes: tuple[tuple[str, int], ...] = ()
    password: str | None = None
    sentinel_password: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Topology:
        if config.get("REDIS_CLUSTER_NODES"):
            return cls("cluster", nodes=config["REDIS_CLUSTER_NODES"], password=config.get("REDIS_PASSWORD"))
        if config.get("REDIS_SENTINELS"):
            return cls(
                "sentinel",
                sentinels=config["REDIS_SENTINELS"],
                master=config["REDIS_SENTINEL_MASTER"],
                password=config.get("REDIS_PASSWORD"),
                sentinel_password=config.get("REDIS_SENTINEL_PASSWORD"),
            )
        return cls("standalone", url=config["REDIS_URL"], password=config.get("REDIS_PASSWORD"))

    def describe(self) -> str:
        if self.kind == "sentinel":
            return f"Sentinel master {self.master!r} via {len(self.sentinels)} sentinels"
        if self.kind == "cluster":
            return f"Redis Cluster via {len(self.nodes)} startup nodes"
        return "standalone Redis"

    # -- clients ------------------------------------------------------------------------

    def cache_config(self, options: dict[str, Any]) -> dict[str, Any]:
        """Flask-Caching's settings for this topology (database 0 on Sentinel; Cluster has one)."""
        if self.kind == "sentinel":
            return {
                "CACHE_TYPE": "app.redis_topology.MasterSentinelCache",
                "CACHE_REDIS_SENTINELS": list(self.sentinels),
                "CACHE_REDIS_SENTINEL_MASTER": self.master,
                "CACHE_REDIS_PASSWORD": self.password,
                "CACHE_REDIS_SENTINEL_PASSWORD": self.sentinel_password,
                "CACHE_REDIS_DB": 0,
                "CACHE_OPTIONS": {**options, **self._sentinel_options(options)},
            }
        if self.kind == "cluster":
            return {
                "CACHE_TYPE": "app.redis_topology.LazyClusterCache",
                "CACHE_REDIS_CLUSTER": [ClusterNode(host, port) for host, port in self.nodes],
                "CACHE_REDIS_PASSWORD": self.password,
                "CACHE_OPTIONS": options,
            }
        extra = {"password": self.password} if self.password else {}
        return {"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": self.url, "CACHE_OPTIONS": {**options, **extra}}

    @staticmethod
    def _sentinel_options(options: dict[str, Any]) -> dict[str, Any]:
        """The sentinels are asked with the same short timeouts (``sentinel_`` options)."""
        keys = ("socket_timeout", "socket_connect_timeout", "retry", "client_name")
        return {f"sentinel_{k}": options[k] for k in keys if k in options}

    def new_client(self, options: dict[str, Any]) -> Any:
        """Another client on the same Redis (admin work, listeners), with its own options."""
        if self.kind == "sentinel":
            sentinel_kwargs = {k.removeprefix("sentinel_"): v for k, v in self._sentinel_options(options).items()}
            if self.sentinel_password:
                sentinel_kwargs["password"] = self.sentinel_password
            sentinel = Sentinel(
                list(self.sentinels), sentinel_kwargs=sentinel_kwargs, password=self.password, db=0, **options
            )
            return sentinel.master_for(self.master)
        if self.kind == "cluster":
            nodes = [ClusterNode(host, port) for host, port in self.nodes]
            return LazyCluster(startup_nodes=nodes, password=self.password, **options)
        extra = {"password": self.password} if self.password else {}
        return Redis.from_url(self.url, **options, **extra)

    # -- what differs between topologies, on a client built above ---------------------------

    def primaries(self, client: Any) -> list[tuple[str, Redis]]:
        """(address, plain client) of every primary: what SCAN, INFO and PING must visit.

        On Sentinel this asks a sentinel where the master is now: the pool drops its
        connections to a former master at once, instead of when that master is demoted.
        """
        if self.kind == "cluster":
            cluster = client.cluster
            return [(node.name, cluster.get_redis_connection(node)) for node in cluster.get_primaries()]
        if self.kind == "sentinel":
            host, port = client.connection_pool.get_master_address()
            return [(f"{host}:{port}", client)]
        kwargs = client.connection_pool.connection_kwargs
        return [(f"{kwargs.get('host', kwargs.get('path'))}:{kwargs.get('port', '')}", client)]

    def primary_names(self, client: Any) -> list[str]:
        """Where the primaries are, as far as this client knows without asking anyone."""
        if self.kind == "cluster":
            return [node.name for node in client.cluster.get_primaries()]
        if self.kind == "sentinel":
            address = client.connection_pool.master_address
            return [f"{address[0]}:{address[1]}"] if address else []
        return [name for name, _ in self.primaries(client)]

    def listener_connections(self, client: Any, options: dict[str, Any]) -> list[tuple[str, Any]]:
        """A new, unpooled connection to every primary (the near cache's tracking connections)."""
        connections = []
        for name, node in self.primaries(client):
            pool = node.connection_pool
            kwargs = {k: v for k, v in pool.connection_kwargs.items() if not k.startswith("maint_notifications")}
            # RESP2 (pub/sub invalidations); redis-py's maintenance notifications need RESP3.
            kwargs.update(options, maint_notifications_config=MaintNotificationsConfig(enabled=False))
            connections.append((name, pool.connection_class(**kwargs)))
        return connections

    def by_slot(self, client: Any, keys: Iterable[str]) -> dict[str, tuple[Redis, list[list[str]]]]:
        """The keys grouped by the primary that holds them, then by slot (multi-key commands
        on a Cluster must stay within one slot): ``{node name: (node client, [keys of a slot])}``."""
        keys = list(keys)
        if self.kind != "cluster":
            [(name, primary)] = self.primaries(client)
            return {name: (primary, [keys])} if keys else {}
        cluster = client.cluster
        slots: dict[int, list[str]] = {}
        for key in keys:
            slots.setdefault(cluster.keyslot(key), []).append(key)
        grouped: dict[str, tuple[Redis, list[list[str]]]] = {}
        for slot, slot_keys in slots.items():
            node = cluster.nodes_manager.get_node_from_slot(slot)
            entry = grouped.setdefault(node.name, (cluster.get_redis_connection(node), []))
            entry[1].append(slot_keys)
        return grouped

    def ping(self, client: Any, probe_key: str) -> None:
        """Raise unless every primary takes a write: ``SET <probe_key>{n} 1 PX 1000``, with a hash
        tag that puts it on that primary.

        A write, not a PING: a primary that pauses writes (a graceful shutdown waiting for its
        replicas, a failover in progress) answers PING but would time out every fill, and a
        Cluster node answers PING while it still refuses keys (CLUSTERDOWN) after a restart.
        An error reply (out of memory, read-only) still means Redis answers: it does not raise.
        """
        if self.kind != "cluster":
            [(_, node)] = self.primaries(client)
            _probe_write(node, probe_key + "{0}")
            return
        cluster = client.cluster
        slots_cache = cluster.nodes_manager.slots_cache
        for primary in cluster.get_primaries():
            owned = {slot for slot, nodes in slots_cache.items() if nodes and nodes[0].name == primary.name}
            key = next(k for k in (f"{probe_key}{{{n}}}" for n in itertools.count()) if key_slot(k.encode()) in owned)
            _probe_write(cluster.get_redis_connection(primary), key)

    def close(self, client: Any) -> None:
        """Close every connection of a client built here (a Sentinel pool's sentinels too)."""
        client.close()
        manager = getattr(client.connection_pool, "sentinel_manager", None) if self.kind == "sentinel" else None
        for sentinel in getattr(manager, "sentinels", ()):
            sentinel.close()

    def refresh(self, client: Any) -> None:
        """After a failure, learn where the primaries are now: a Cluster re-reads its slot map
        (commands sent to a node directly never learn of a failover), a Sentinel pool asks
        the sentinels. Failures are left to the next probe."""
        try:
            if self.kind == "cluster":
                client.cluster.nodes_manager.initialize()
            elif self.kind == "sentinel":
                client.connection_pool.get_master_address()
        except REDIS_ERRORS:
            pass

    # -- the Celery broker -------------------------------------------------------------------

    def default_broker_url(self) -> str | None:
        """The spec's default broker: database 1 of the same Redis (a Cluster has none)."""
        if self.kind == "cluster":
            return None
        if self.kind == "sentinel":
            auth = f":{quote(self.password, safe='')}@" if self.password else ""
            return ";".join(f"sentinel://{auth}{host}:{port}/{SENTINEL_BROKER_DB}" for host, port in self.sentinels)
        return None  # derived from REDIS_URL by app.config.broker_url_from


def _probe_write(node: Redis, key: str) -> None:
    try:
        node.set(key, b"1", px=1000)
    except ResponseError as exc:
        if isinstance(exc, OUTAGE_ERRORS):
            raise


def broker_transport_options(broker_url: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Options kombu needs besides the URL: the master's name (and password) for ``sentinel://``."""
    if not broker_url.startswith("sentinel://"):
        return {}
    options: dict[str, Any] = {"master_name": config["CELERY_BROKER_SENTINEL_MASTER"]}
    if config.get("REDIS_SENTINEL_PASSWORD"):
        options["sentinel_kwargs"] = {"password": config["REDIS_SENTINEL_PASSWORD"]}
    return options
