"""The shared cache of device lookups and verified tokens' users, one per process.

Built on Flask-Caching's Redis backend (its client, key prefix and JSON serializer: the
``CACHE_*`` settings), and made of parts named for what they do:

- ``lookups.py``: the read/fill path (near cache, one GET, single flight, the fill lock);
- ``outbox.py``: changes record their invalidations in MongoDB first; the lease;
- ``invalidation.py`` and ``replicas.py``: UNLINK, acknowledged by a replica;
- ``near.py``: the process's near cache, kept coherent by Redis's tracking;
- ``background.py``: the thread that polls the outbox, probes Redis and flushes the counters;
- ``counters.py``, ``breaker.py``, ``keys.py`` (every key name), ``admin.py`` (``/cache/*``).

Which Redis (standalone, Sentinel, Cluster) is ``app/redis_topology``'s concern. The features
give the cache what it needs when the app is built (loaders, the lookups' schema version, how
to resolve a chain); a request, a task and the CLI all reach it through ``shared_cache()``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app
from flask_caching.backends.rediscache import RedisCache
from pymongo.collection import Collection
from pymongo.errors import PyMongoError

from app import metrics
from app.cache import fence
from app.cache.background import Background
from app.cache.breaker import CircuitBreaker
from app.cache.counters import COUNTERS, CounterBuffer
from app.cache.invalidation import Invalidator
from app.cache.keys import NEAR_KINDS, QUERY_KEYS, KeySpace, Pair, device_key
from app.cache.lookups import Kind, Lookups
from app.cache.near import NearCache
from app.cache.outbox import Outbox, Record
from app.cache.replicas import Replicas
from app.redis_topology import OUTAGE_ERRORS, REDIS_ERRORS, Topology, client_options

# A verified bearer token's user (``app/auth.py``). An unknown user id (a well-formed token made
# up) is not kept: random ids would each cost a Redis entry.
USER = Kind("user", 1, keep_missing=False)
QUERY = Kind("query", 1)  # the readings query cache (app/readings/cache.py): counted apart as query_hits...


@dataclass(frozen=True)
class Sources:
    """What the device feature gives the cache: its loaders, its schema version, its chains."""

    load_device: Callable[[str, str], dict[str, Any]]
    load_devices: Callable[[list[Pair]], list[dict[str, Any]]]
    chain_of: Callable[[str, str], list[Pair]]  # (owner_id, device_name) -> the chain's pairs
    schema_version: int
    outbox: Callable[[], Collection]


class SharedCache:
    def __init__(self, app: Flask, backend: RedisCache, topology: Topology, sources: Sources):
        config = app.config
        self.app = app  # the background thread runs in its context (the sources use its MongoDB)
        self.backend = backend
        self.client = backend._write_client
        self.topology = topology
        self.sources = sources
        self.loader = sources.load_device
        self.batch_loader = sources.load_devices
        self.keys = KeySpace(config["CACHE_KEY_PREFIX"])
        self.prefix = self.keys.prefix
        self.ttl: int = config["DEVICE_CACHE_TTL"]
        self.device = Kind("device", sources.schema_version, hot=True)
        self.admin_timeout = 2.0
        self.breaker = CircuitBreaker(config["CACHE_BREAKER_THRESHOLD"], config["CACHE_PROBE_INTERVAL"])
        self.breaker.on_change = self._breaker_changed
        self.replicas = Replicas(config["CACHE_REPLICA_WAIT_MS"], topology.may_move)
        self.counters_buffer = CounterBuffer(topology, self.keys, config["HOT_MAX_DEVICES"], self.replicas)
        query_keys = self.keys.value(QUERY_KEYS)
        self.invalidator = Invalidator(
            topology, self.client, self.replicas, self.failed, lambda key: key.startswith(query_keys)
        )
        self.near = NearCache(
            config["L1_CACHE_SIZE"],
            config["L1_CACHE_TTL"],
            topology,
            self.client,
            self.keys,
            max_bytes=config["L1_CACHE_MAX_BYTES"],
        )
        self.lookups = Lookups(self, config)
        self.outbox = Outbox(self, config, sources.outbox)
        self.background = Background(self, config)
        self._admin_client: Any = None
        topology.on_switch(self._primary_switched)  # a Sentinel failover, announced by the sentinels
        _instances.add(self)

    def after_fork(self) -> None:
        """In a forked child: the buffers, locks, flights and thread are the parent's, or gone.
        Run again in a gunicorn worker once it is initialised (``gunicorn.conf.py``): a gevent
        worker patches the standard library after the fork, and a lock made before that (by
        ``--preload``) would block the whole worker when held across Redis or MongoDB I/O."""
        parts = (self.breaker, self.replicas, self.counters_buffer, self.invalidator, self.near, self.lookups)
        for part in (*parts, self.outbox, self.background):
            part.after_fork()

    # -- lookups --------------------------------------------------------------------------

    def get(self, device_id: str, device_name: str) -> dict[str, Any]:
        """The device lookup: from L1, else one GET, else one loader per key across all replicas."""
        load = self.loader
        return self.lookups.lookup(
            self.device, device_key(device_id, device_name), lambda: load(device_id, device_name)
        )

    def lookup(self, kind: Kind, key: str, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return self.lookups.lookup(kind, key, load)

    def refresh(self, pairs: list[Pair]) -> dict[str, int]:
        """Load and store these pairs through the fill lock (the warm task)."""
        return self.lookups.refresh(self.device, pairs, self.batch_loader)

    def readable(self) -> bool:
        """Redis may serve this process: breaker closed, none of its invalidations pending, and
        its outbox lease current (``outbox.py``)."""
        if not self.background.started:
            self.background.start()
        return self.breaker.allow() and not self.invalidator.pending and self.outbox.lease_valid()

    def warm_readable(self) -> bool:
        """``readable()`` as it stands, without starting the background work or polling MongoDB
        for a lease run out (which needs an app context): false then, and the request's own
        lookup through ``readable()`` does that."""
        return (
            self.background.started
            and self.breaker.allow()
            and not self.invalidator.pending
            and self.outbox.lease_current()
        )

    # -- changes ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def change(
        self,
        keys: Iterable[str] = (),
        chains: Iterable[Pair] = (),
        globs: Iterable[str] = (),
        scope: Iterable[str] = (),
    ) -> Iterator[Record]:
        """Around a change in MongoDB: record what it makes stale first, apply it after.

        ``keys`` are relative (``device:…``, ``user:…``), ``chains`` (owner, device name) pairs
        resolved when applied. Once the block has run (even if it raised: the change may have
        been made in part), no process reads what the record names from the cache.
        """
        record = self.outbox.open(Record(list(keys), list(chains), list(globs), list(scope)))
        try:
            yield record
        finally:
            self.apply_own(record)

    def apply_own(self, record: Record) -> None:
        if not self.apply(record):
            self.outbox.hold(record)  # every process applies it itself, its L1 too, before reading
            return
        self.outbox.applied(record)
        if self.near.enabled and self._near_may_hold(record):
            self.fence()

    @staticmethod
    def _near_may_hold(record: Record) -> bool:
        """Whether a record names what a near cache may hold (device lookups, users)."""
        return bool(record.chains or record.globs) or any(key.startswith(NEAR_KINDS) for key in record.keys)

    def fence(self) -> str:
        """Return once every near cache of the prefix, this process's too, has applied a drop just
        made, or the heartbeat rule vouches for it (``fence.py``)."""
        return fence.wait(self.topology, self.client, self.keys)

    def settle(self, *scopes: str) -> None:
        """Before a change answers that nothing was left to change (a 404, no such user)."""
        self.outbox.settle(scopes)

    def apply(self, record: Record) -> bool:
        """Drop what a record names, from Redis (durably) and this process's L1; whether all of it."""
        keys: set[str] = set()
        complete = True
        for key in record.keys:
            keys.add(self.keys.value(key))
            if not key.startswith(QUERY_KEYS):  # the readings cache's keys have no fill lock
                keys.add(self.keys.lock(key))
        try:
            for owner, name in record.chains:
                for device_id, device_name in self.sources.chain_of(owner, name):
                    key = device_key(device_id, device_name)
                    keys.update((self.keys.value(key), self.keys.lock(key)))
        except PyMongoError:
            complete = False  # the named keys are still dropped; the chains wait for the next try
        if keys:
            metrics.cache_invalidated(len(keys) // 2, self.device.name)
            self.near.discard(keys)
            if not self.invalidator.unlink(keys):
                complete = False
                self.background.start()
                self.background.wake.set()
        for glob in record.globs:
            from app.cache.admin import drop_glob  # the admin operations build on this module

            self.near.clear()
            complete = drop_glob(self, glob) and complete
        return complete

    # -- counters and errors ------------------------------------------------------------------

    def count(self, kind: Kind, name: str, key: str | None = None, amount: int = 1) -> None:
        """Events of a kind of lookup; hotness (``key``) is kept for devices only."""
        if amount:
            metrics.cache_event(name, kind.name, amount)
            self.counters_buffer.count(kind.counter(name), key if kind.hot else None, amount=amount)

    def failed(self, exc: BaseException) -> None:
        self.count(self.device, "errors")
        self.breaker.failure(exc)

    def admin_failed(self, exc: BaseException) -> None:
        """An admin call (longer timeouts) found Redis failing: counted, and an outage trips the
        breaker at once."""
        self.count(self.device, "errors")
        if isinstance(exc, OUTAGE_ERRORS):
            self.breaker.trip(exc)

    def flush(self) -> None:
        """Send this process's buffered counters and hotness now (a batch that fails is kept)."""
        try:
            self.counters_buffer.flush(self.client)
        except REDIS_ERRORS as exc:
            self.failed(exc)  # counted with the next batch

    def pending_counts(self, kind: Kind | None = None) -> dict[str, int]:
        kind = kind or self.device
        return self.counters_buffer.pending({name: kind.counter(name) for name in COUNTERS})

    def counters(self, kind: Kind | None = None) -> dict[str, Any]:
        """A kind's counters summed over every replica (raises a Redis error when unreachable)."""
        kind = kind or self.device
        raw = self.client.hgetall(self.keys.stats)
        values = {name: int(raw.get(kind.counter(name).encode(), 0)) for name in COUNTERS}
        looked_up = values["hits"] + values["misses"]
        values["hit_ratio"] = values["hits"] / looked_up if looked_up else None
        return values

    def _primary_switched(self) -> None:
        """The pools point at the new primary already: L1 (subscribed to the old one) and the
        replica counts are stale; pending invalidations are retried there at once."""
        self.near.suspend("the primary switched")
        self.replicas.forget()
        self.background.wake.set()

    def _breaker_changed(self, is_open: bool) -> None:
        metrics.breaker_changed(is_open)
        if is_open:
            self.near.suspend("the circuit breaker opened")
            self.replicas.forget()
            self.background.start()  # whatever opened it, something must probe
            self.background.wake.set()  # probe at the fast cadence from now on

    # -- Redis itself ----------------------------------------------------------------------------

    def admin_client(self) -> Any:
        """A client for admin work (SCAN, INFO): a longer read timeout, still no retries.

        Each admin call first learns where the primaries are now: the admin client is used
        rarely, and a Cluster client that last looked before a failover would walk a dead node.
        """
        if self._admin_client is None:
            options = client_options(self.admin_timeout, "opensensor-admin", connect_timeout=0.5)
            self._admin_client = self.topology.new_client(options)
        else:
            self.topology.refresh(self._admin_client)
        return self._admin_client

    def ping(self) -> bool:
        """Whether every primary answers now (``/health``); a success wakes the probe at once."""
        try:
            self.topology.ping(self.client, self.keys.probe)
        except REDIS_ERRORS:
            return False
        if self.breaker.is_open or self.invalidator.pending:
            self.background.wake.set()
        return True

    def stop(self) -> None:
        """Stop the background work, send what is buffered, and close every connection."""
        self.background.stop()
        self.near.stop()
        if self.background.started and self.breaker.allow():
            self.flush()
        with contextlib.suppress(PyMongoError), self.app.app_context():
            self.outbox.remove_applied()
        for client in (self.client, self._admin_client):
            if client is not None:
                with contextlib.suppress(*REDIS_ERRORS, OSError):
                    self.topology.close(client)


_instances: weakref.WeakSet[SharedCache] = weakref.WeakSet()


def after_fork() -> None:
    """Every cache of the process starts afresh: its locks, buffers and thread are made anew."""
    for instance in list(_instances):
        instance.after_fork()


os.register_at_fork(after_in_child=after_fork)


@atexit.register
def _stop_at_exit() -> None:
    for instance in list(_instances):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            instance.stop()


def init_cache(app: Flask, backend: RedisCache, sources: Sources) -> SharedCache:
    instance = SharedCache(app, backend, Topology.from_config(app.config), sources)
    app.extensions["shared_cache"] = instance
    return instance


def shared_cache() -> SharedCache:
    """The cache of the current app: from a request, a task or a command alike."""
    return current_app.extensions["shared_cache"]
