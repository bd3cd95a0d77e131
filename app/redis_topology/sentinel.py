"""Redis Sentinel (``REDIS_SENTINELS`` + ``REDIS_SENTINEL_MASTER``): Flask-Caching's
``RedisSentinelCache`` with two changes, each for a reason of correctness:

- Reads go to the master, not a replica (Flask-Caching reads from ``slave_for``), so a lookup
  right after an invalidation can never read an entry the master already dropped.
- A failover is one event in every process: a watcher (``watch.py``) follows the sentinels'
  ``+switch-master`` announcements and points every pool built here at the new master at once
  (dropping the connections to the old one), instead of each process learning it when it next
  asks a sentinel itself (which may still name the old master for a moment: sentinels learn a
  switch from each other).
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from flask_caching.backends.rediscache import RedisSentinelCache
from redis import Redis
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelConnectionPoolProxy

from app.redis_topology.base import REDIS_ERRORS, SENTINEL_BROKER_DB, SwitchCallback, Topology
from app.redis_topology.watch import Address, watcher

# Seconds after an announced switch during which a sentinel naming the old master again is
# taken to be one that has not heard of the switch yet (sentinels converge within a few seconds).
ANNOUNCED_TRUST = 30.0

_pools: weakref.WeakSet[FollowingSentinelPool] = weakref.WeakSet()


def _addresses(sentinel: Sentinel) -> frozenset[Address]:
    return frozenset(
        (s.connection_pool.connection_kwargs["host"], int(s.connection_pool.connection_kwargs["port"]))
        for s in sentinel.sentinels
    )


class _FollowingProxy(SentinelConnectionPoolProxy):
    """Where new connections go: the sentinels' answer, unless it names a master that the
    sentinels themselves announced as replaced moments ago."""

    def reset(self) -> None:
        super().reset()
        self.replaced: tuple[Address, float] | None = None  # (old master, trusted until)

    def switched(self, old: Address, new: Address) -> None:
        self.replaced = (old, time.monotonic() + ANNOUNCED_TRUST)
        self.master_address = new

    def get_master_address(self) -> Address:
        address = self.sentinel_manager.discover_master(self.service_name)
        replaced = self.replaced
        if replaced and address == replaced[0] and time.monotonic() < replaced[1] and self.master_address:
            address = self.master_address  # that sentinel has not heard of the switch yet
        if self.is_master and self.master_address != address:
            self.master_address = address
            # Idle connections reconnect to the new master when next used.
            pool = self.connection_pool_ref()
            if pool is not None:
                pool.disconnect(inuse_connections=False)
        return address


class FollowingSentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, repointed by the watcher when the sentinels announce a switch."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)
        self.proxy = _FollowingProxy(self, self.is_master, self.check_connection, service_name, sentinel_manager)
        self.connection_kwargs["connection_pool"] = self.proxy
        self.sentinel_addresses = _addresses(sentinel_manager)
        _pools.add(self)

    def switch(self, old: Address, new: Address) -> None:
        """No command from now on goes to the old master: idle connections are closed, and those
        in use are closed when released (the pool no longer owns a connection to the old one)."""
        self.proxy.switched(old, new)
        self.disconnect(inuse_connections=False)
        self.update_active_connections_for_reconnect()


def repoint(master: str, sentinels: frozenset[Address], old: Address, new: Address) -> None:
    """Point every pool of this process on that master (of those sentinels) at the new one."""
    for pool in list(_pools):
        if pool.service_name == master and pool.sentinel_addresses == sentinels:
            pool.switch(old, new)


class MasterSentinelCache(RedisSentinelCache):
    """Flask-Caching's Sentinel backend, reading from the master like it writes, on a pool that
    follows the sentinels' announcements."""

    def __init__(self, sentinels: Any = None, master: str = "mymaster", *args: Any, **kwargs: Any) -> None:
        super().__init__(sentinels, master, *args, **kwargs)
        sentinel = self._write_client.connection_pool.sentinel_manager
        self._write_client = sentinel.master_for(master, connection_pool_class=FollowingSentinelPool)
        self._read_client = self._write_client


class SentinelTopology(Topology):
    name = "sentinel"
    may_move = True

    def __init__(
        self,
        sentinels: tuple[tuple[str, int], ...],
        master: str,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        super().__init__(password)
        self.sentinels = sentinels
        self.master = master
        self.sentinel_password = sentinel_password

    def describe(self) -> str:
        return f"Sentinel master {self.master!r} via {len(self.sentinels)} sentinels"

    # -- clients ------------------------------------------------------------------------

    def cache_config(self, options: dict[str, Any]) -> dict[str, Any]:
        """Database 0 of the master; the sentinels asked with the same short timeouts."""
        return {
            "CACHE_TYPE": "app.redis_topology.sentinel.MasterSentinelCache",
            "CACHE_REDIS_SENTINELS": list(self.sentinels),
            "CACHE_REDIS_SENTINEL_MASTER": self.master,
            "CACHE_REDIS_PASSWORD": self.password,
            "CACHE_REDIS_SENTINEL_PASSWORD": self.sentinel_password,
            "CACHE_REDIS_DB": 0,
            "CACHE_OPTIONS": {**options, **self._sentinel_options(options)},
        }

    @staticmethod
    def _sentinel_options(options: Mapping[str, Any]) -> dict[str, Any]:
        """The sentinels are asked with the same short timeouts (``sentinel_`` options)."""
        keys = ("socket_timeout", "socket_connect_timeout", "retry", "client_name")
        return {f"sentinel_{k}": options[k] for k in keys if k in options}

    def new_client(self, options: dict[str, Any]) -> Any:
        sentinel_kwargs = {k.removeprefix("sentinel_"): v for k, v in self._sentinel_options(options).items()}
        if self.sentinel_password:
            sentinel_kwargs["password"] = self.sentinel_password
        sentinel = Sentinel(
            list(self.sentinels), sentinel_kwargs=sentinel_kwargs, password=self.password, db=0, **options
        )
        return sentinel.master_for(self.master, connection_pool_class=FollowingSentinelPool)

    # -- the one primary, wherever it is now ---------------------------------------------------

    def primaries(self, client: Any) -> list[tuple[str, Redis]]:
        """Asks a sentinel where the master is now: the pool drops its connections to a former
        master at once, instead of when that master is demoted."""
        self.watch()
        host, port = client.connection_pool.get_master_address()
        return [(f"{host}:{port}", client)]

    def primary_names(self, client: Any) -> list[str]:
        address = client.connection_pool.master_address
        return [f"{address[0]}:{address[1]}"] if address else []

    def by_slot(self, client: Any, keys: Iterable[str]) -> dict[str, tuple[Redis, list[list[str]]]]:
        """The master this process follows, without asking a sentinel (every push's append comes
        here): the watcher repoints the pool on a switch, and a write that fails there asks the
        sentinels (``refresh``) before its retry. Asks them only while no master is known yet."""
        self.watch()  # as primaries() did: a forked child inherits the address, not the watcher
        names = self.primary_names(client)
        if not names:
            return super().by_slot(client, keys)
        keys = list(keys)
        return {names[0]: (client, [keys])} if keys else {}

    def close(self, client: Any) -> None:
        """Close every connection of a client built here, its pool's sentinels too."""
        client.close()
        for sentinel in getattr(client.connection_pool.sentinel_manager, "sentinels", ()):
            sentinel.close()

    def refresh(self, client: Any) -> None:
        """Ask the sentinels where the master is (failures are left to the next probe)."""
        self.watch()
        with contextlib.suppress(REDIS_ERRORS):
            client.connection_pool.get_master_address()

    # -- failover announcements ------------------------------------------------------------------

    def _watcher(self) -> Any:
        kwargs = {"password": self.sentinel_password} if self.sentinel_password else {}
        return watcher(self.sentinels, self.master, kwargs, repoint)

    def on_switch(self, callback: SwitchCallback) -> None:
        self._watcher().add(callback)

    def watch(self) -> None:
        self._watcher().start()

    # -- the Celery broker -------------------------------------------------------------------

    def default_broker_url(self) -> str | None:
        """kombu's ``sentinel://`` on database 1 of the same set."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return ";".join(f"sentinel://{auth}{host}:{port}/{SENTINEL_BROKER_DB}" for host, port in self.sentinels)
