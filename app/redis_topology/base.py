"""The interface every Redis topology offers, and the helpers they share.

A topology turns the settings into clients (the cache's, admin ones, the near cache's tracking
connections, the broker URL) and answers, on a client it built, what differs between
topologies: the primaries to walk, which primary holds which keys, how to probe them, how to
learn where they are after a failure. Each topology is one subclass (``standalone.py``,
``sentinel.py``, ``cluster.py``); nothing outside this package asks which one it runs on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from redis import Redis
from redis.backoff import NoBackoff
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

# Called when the primaries moved (a Sentinel failover announced by the sentinels).
SwitchCallback = Callable[[], None]


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


def broker_transport_options(broker_url: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """Options kombu needs besides the URL: the master's name (and password) for ``sentinel://``."""
    if not broker_url.startswith("sentinel://"):
        return {}
    options: dict[str, Any] = {"master_name": config["CELERY_BROKER_SENTINEL_MASTER"]}
    if config.get("REDIS_SENTINEL_PASSWORD"):
        options["sentinel_kwargs"] = {"password": config["REDIS_SENTINEL_PASSWORD"]}
    return options


def probe_write(node: Redis, key: str) -> None:
    """``SET key 1 PX 1000`` on one node; raises only when the node does not answer."""
    try:
        node.set(key, b"1", px=1000)
    except ResponseError as exc:
        if isinstance(exc, OUTAGE_ERRORS):
            raise


def address_of(client: Redis) -> str:
    """``host:port`` of a plain client (``path:`` for a Unix socket)."""
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', kwargs.get('path'))}:{kwargs.get('port', '')}"


class Topology:
    """Where the cache's Redis is, and how to reach it; built from the settings.

    The defaults below are those of a topology with one primary that never moves; a subclass
    overrides what differs.
    """

    name: ClassVar[str]  # what /cache/stats reports as ``redis.topology``
    sums_primaries: ClassVar[bool] = False  # several primaries: Redis's figures are summed over them
    may_move: ClassVar[bool] = False  # a failover can move a primary: a failed write asks where it is now
    pipelines_scripts: ClassVar[bool] = True  # EVAL in a pipeline (redis-py's cluster pipeline has none)
    has_broker: ClassVar[bool] = True  # Celery can use this Redis as its broker

    def __init__(self, password: str | None = None) -> None:
        self.password = password

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Topology:
        from app.redis_topology import topology_from_config

        return topology_from_config(config)

    def describe(self) -> str:
        raise NotImplementedError

    # -- clients ------------------------------------------------------------------------

    def cache_config(self, options: dict[str, Any]) -> dict[str, Any]:
        """Flask-Caching's settings for this topology."""
        raise NotImplementedError

    def new_client(self, options: dict[str, Any]) -> Any:
        """Another client on the same Redis (admin work, listeners), with its own options."""
        raise NotImplementedError

    # -- what differs between topologies, on a client built above ---------------------------

    def primaries(self, client: Any) -> list[tuple[str, Redis]]:
        """(address, plain client) of every primary: what SCAN, INFO and PING must visit."""
        return [(address_of(client), client)]

    def primary_names(self, client: Any) -> list[str]:
        """Where the primaries are, as far as this client knows without asking anyone."""
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
        [(name, primary)] = self.primaries(client)
        return {name: (primary, [keys])} if keys else {}

    def ping(self, client: Any, probe_key: str) -> None:
        """Raise unless every primary takes a write: ``SET <probe_key>{n} 1 PX 1000``, with a hash
        tag that puts it on that primary.

        A write, not a PING: a primary that pauses writes (a graceful shutdown waiting for its
        replicas, a failover in progress) answers PING but would time out every fill, and a
        Cluster node answers PING while it still refuses keys (CLUSTERDOWN) after a restart.
        An error reply (out of memory, read-only) still means Redis answers: it does not raise.
        """
        [(_, node)] = self.primaries(client)
        probe_write(node, probe_key + "{0}")

    def close(self, client: Any) -> None:
        """Close every connection of a client built here."""
        client.close()

    def refresh(self, client: Any) -> None:
        """After a failure, learn where the primaries are now (nothing to learn on one Redis)."""

    def on_switch(self, callback: SwitchCallback) -> None:
        """Call ``callback`` (in a background thread) whenever the primaries are announced to
        have moved; topologies that announce nothing never call it. Held weakly if a method."""

    def watch(self) -> None:
        """Start following announcements in this process (after fork; idempotent)."""

    # -- the Celery broker -------------------------------------------------------------------

    def default_broker_url(self) -> str | None:
        """The spec's default broker, when this topology builds it (None: derived from REDIS_URL)."""
        return None
