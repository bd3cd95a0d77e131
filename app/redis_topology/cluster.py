"""Redis Cluster (``REDIS_CLUSTER_NODES``): Flask-Caching's ``RedisClusterCache``, its client
built on first use.

The ``RedisCluster`` constructor connects (CLUSTER SLOTS) and raises when no node answers, but
the service must start, and serve, with Redis unreachable.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import Any

from flask_caching.backends.rediscache import RedisCache, RedisClusterCache
from redis import Redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError, RedisClusterException

from app.redis_topology.base import REDIS_ERRORS, Topology, probe_write

# How many hash tags ``{0}``, ``{1}``... the probe tries to find a key of a primary's slots. A
# primary owning a single slot needs about 16,384 on average; past this bound it gets a PING.
MAX_PROBE_TAGS = 16384 * 8


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


def probe_key_for(probe_key: str, owned: set[int]) -> str | None:
    """A key ``<probe_key>{n}`` whose slot is one of ``owned``; None when there is none to find
    (a primary that owns no slot: freshly added, or all its slots moved away)."""
    if not owned:
        return None
    for n in range(MAX_PROBE_TAGS):
        if key_slot(f"{{{n}}}".encode()) in owned:  # the slot of a key with a hash tag is the tag's
            return f"{probe_key}{{{n}}}"
    return None


class ClusterTopology(Topology):
    name = "cluster"
    sums_primaries = True
    may_move = True
    pipelines_scripts = False
    has_broker = False  # kombu cannot use a Cluster

    def __init__(self, nodes: tuple[tuple[str, int], ...], password: str | None = None) -> None:
        super().__init__(password)
        self.nodes = nodes

    def describe(self) -> str:
        return f"Redis Cluster via {len(self.nodes)} startup nodes"

    def _startup_nodes(self) -> list[ClusterNode]:
        return [ClusterNode(host, port) for host, port in self.nodes]

    def cache_config(self, options: dict[str, Any]) -> dict[str, Any]:
        return {
            "CACHE_TYPE": "app.redis_topology.cluster.LazyClusterCache",
            "CACHE_REDIS_CLUSTER": self._startup_nodes(),
            "CACHE_REDIS_PASSWORD": self.password,
            "CACHE_OPTIONS": options,
        }

    def new_client(self, options: dict[str, Any]) -> Any:
        return LazyCluster(startup_nodes=self._startup_nodes(), password=self.password, **options)

    def primaries(self, client: Any) -> list[tuple[str, Redis]]:
        cluster = client.cluster
        return [(node.name, cluster.get_redis_connection(node)) for node in cluster.get_primaries()]

    def primary_names(self, client: Any) -> list[str]:
        return [node.name for node in client.cluster.get_primaries()]

    def by_slot(self, client: Any, keys: Iterable[str]) -> dict[str, tuple[Redis, list[list[str]]]]:
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
        """A write on every primary (see ``Topology.ping``), with a key of one of its slots; a
        primary that owns none (freshly added, or emptied by a resharding) holds no key of the
        cache, so it only has to answer a PING."""
        cluster = client.cluster
        owned: dict[str, set[int]] = {}
        for slot, nodes in list(cluster.nodes_manager.slots_cache.items()):
            if nodes:
                owned.setdefault(nodes[0].name, set()).add(slot)
        for primary in cluster.get_primaries():
            node = cluster.get_redis_connection(primary)
            key = probe_key_for(probe_key, owned.get(primary.name, set()))
            if key is None:
                node.ping()
            else:
                probe_write(node, key)

    def refresh(self, client: Any) -> None:
        """Re-read the slot map: commands sent to a node directly never learn of a failover.
        Failures are left to the next probe."""
        with contextlib.suppress(REDIS_ERRORS):
            client.cluster.nodes_manager.initialize()
