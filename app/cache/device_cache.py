"""The shared device-lookup cache: a hit from the process's near cache (no Redis round trip)
or one Redis GET, fail-open, no stampede, every replica coherent before a response.

Key names are in ``keys.py``; counters and hotness in ``counters.py``; invalidation in
``invalidation.py`` (made durable by ``replicas.py``); the near cache in ``near.py``; which
Redis (standalone, Sentinel, Cluster) in ``app/redis_topology.py``. The verified bearer
tokens' users ride on the same machinery (``user_cache.py``).

One background thread per process (started by the first lookup or invalidation) does what
no request should wait for: it probes Redis while the circuit breaker is open and retries
pending invalidations, both every ``CACHE_PROBE_INTERVAL``, and flushes the counters every
``CACHE_FLUSH_INTERVAL``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import secrets
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app
from flask_caching.backends.rediscache import RedisCache
from redis.commands.core import Script

from app import metrics
from app.cache.breaker import CircuitBreaker
from app.cache.counters import COUNTERS, CounterBuffer
from app.cache.invalidation import Invalidator
from app.cache.keys import KeySpace, Pair, device_key
from app.cache.near import NearCache
from app.cache.replicas import Replicas
from app.devices.lookup import SCHEMA_VERSION
from app.redis_topology import OUTAGE_ERRORS, REDIS_ERRORS, Topology, client_options

log = logging.getLogger("app.cache")

Loader = Callable[[str, str], dict[str, Any]]
BatchLoader = Callable[[list[Pair]], list[dict[str, Any]]]
Load = Callable[[], dict[str, Any]]


@dataclass(frozen=True)
class Kind:
    """A kind of lookup the cache holds: its values' schema version and its counters' names.

    Device lookups are the cache's reason to be (their counters are the spec's ``hits``,
    ``misses``...; their hotness drives the warm-up); a verified token's user rides on the same
    machinery (``app/cache/user_cache.py``), counted apart as ``user_hits``...
    """

    name: str
    version: int
    hot: bool = False

    def counter(self, event: str) -> str:
        return event if self is DEVICE else f"{self.name}_{event}"


DEVICE = Kind("device", SCHEMA_VERSION, hot=True)
USER = Kind("user", 1)
QUERY = Kind("query", 1)  # the readings query cache (app/readings/cache.py): counted apart as query_hits...
REFRESH_BATCH = 200

# Take the fill lock unless the value is already there: one round trip for both checks.
# ARGV[3] is a value the caller found unusable (another schema version, not JSON): absent.
ACQUIRE = b"""
local value = redis.call('GET', KEYS[1])
if value and value ~= ARGV[3] then return {1, value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
"""
# Write the loaded value only if our lock token survived (no invalidation meanwhile).
STORE = b"""
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""


class _Flight:
    __slots__ = ("done", "value", "invalidated")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: dict[str, Any] | None = None
        self.invalidated = False  # the fill lost its token: an invalidation came during the load


class DeviceCache:
    def __init__(
        self, backend: RedisCache, topology: Topology, config: dict[str, Any], loader: Loader, batch_loader: BatchLoader
    ):
        self.backend = backend  # Flask-Caching's Redis backend: prefix, JSON serializer, client
        self.client = backend._write_client
        self.topology = topology
        self.keys = KeySpace(config["CACHE_KEY_PREFIX"])
        self.prefix = self.keys.prefix
        self.meta = self.keys.meta
        self.ttl: int = config["DEVICE_CACHE_TTL"]
        self.negative_ttl: int = min(config["NEGATIVE_CACHE_TTL"], self.ttl)
        self.lock_ms = int(config["CACHE_LOCK_TIMEOUT"] * 1000)
        self.flush_interval: float = config["CACHE_FLUSH_INTERVAL"]
        self.probe_interval: float = config["CACHE_PROBE_INTERVAL"]
        self.admin_timeout = 2.0
        self.loader = loader
        self.batch_loader = batch_loader
        self.breaker = CircuitBreaker(config["CACHE_BREAKER_THRESHOLD"], self.probe_interval)
        self.breaker.on_change = self._breaker_changed
        self.replicas = Replicas(config["CACHE_REPLICA_WAIT_MS"])
        self.counters_buffer = CounterBuffer(topology, self.keys, config["HOT_MAX_DEVICES"], self.replicas)
        self.invalidator = Invalidator(topology, self.client, self.replicas, self._failed)
        self.near = NearCache(
            config["L1_CACHE_SIZE"],
            config["L1_CACHE_TTL"],
            topology,
            self.client,
            [self.keys.value("device:"), self.keys.value("user:")],  # what L1 may hold, and Redis tracks
        )
        # Scripts from bytes: hashing them needs no client (a Cluster's is built on first use).
        self._acquire = Script(self.client, ACQUIRE)
        self._store = Script(self.client, STORE)
        self._admin_client: Any = None
        self._after_fork()
        _instances.add(self)

    def _after_fork(self) -> None:
        """In a forked child: the buffers, locks, flights and thread are the parent's, or gone."""
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._background_started = False
        self._next_flush = 0.0
        self.counters_buffer.after_fork()
        self.invalidator.after_fork()
        self.near.after_fork()

    # -- the hot path -------------------------------------------------------------------

    def get(self, device_id: str, device_name: str) -> dict[str, Any]:
        """The device lookup: from L1, else one GET, else one loader per key across all replicas."""
        return self.lookup(DEVICE, device_key(device_id, device_name), lambda: self.loader(device_id, device_name))

    def lookup(self, kind: Kind, key: str, load: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Any lookup this cache holds (a device, a verified token's user), by its relative key."""
        if not self._background_started:
            self._start_background()
        full = self.keys.value(key)
        near = self.near
        readable = self._readable()
        token = None
        if readable and near.enabled:
            raw = near.get(full)
            if raw is not None and (value := self._current(kind, self.backend.serializer.loads(raw))) is not None:
                metrics.cache_event("hits", kind.name)
                metrics.cache_event("l1_hits", kind.name)
                self.counters_buffer.count(kind.counter("hits"), key if kind.hot else None, kind.counter("l1_hits"))
                if kind is DEVICE:
                    metrics.note_cache_result("l1")
                return value
            token = near.reserve(full)
        raw = self._read(key) if readable else None
        value = self._current(kind, self.backend.serializer.loads(raw)) if raw is not None else None
        self._count(kind, "hits" if value is not None else "misses", key)
        if kind is DEVICE:
            metrics.note_cache_result("hit" if value is not None else "miss" if readable else "bypass")
        if value is not None:
            near.put(full, token, raw, self._ttl_of(value))
            return value
        value, raw = self._fill(kind, key, load)
        if raw is not None:
            near.put(full, token, raw, self._ttl_of(value))
        return value

    def _ttl_of(self, value: dict[str, Any]) -> int:
        return self.ttl if value["found"] else self.negative_ttl

    def _readable(self) -> bool:
        """Redis may serve this process: breaker closed, and none of its invalidations pending."""
        return self.breaker.allow() and not self.invalidator.pending

    def _read(self, key: str) -> bytes | None:
        """One GET of prefix + key: the raw JSON (decoded by the caller, and kept raw in L1)."""
        try:
            raw = self.client.get(self.keys.value(key))
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return None
        self.breaker.success()
        return raw

    @staticmethod
    def _current(kind: Kind, value: Any) -> dict[str, Any] | None:
        """A lookup of this code's schema version; anything else counts as a miss."""
        return value if isinstance(value, dict) and value.get("v") == kind.version else None

    # -- filling ------------------------------------------------------------------------

    def _fill(self, kind: Kind, key: str, load: Load) -> tuple[dict[str, Any], bytes | None]:
        """Single flight in this process: one thread fills, the others wait for its result.

        Returns the value and, when it was read from Redis under this request's placeholder
        (another replica filled it), its raw JSON for L1.
        """
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        assert flight is not None
        if not leader:
            flight.done.wait(self.lock_ms / 1000 * 2)
            if flight.invalidated:
                # This request may have started after the invalidation: the leader's value is stale.
                return self._fill(kind, key, load)
            if flight.value is not None:
                # Not for L1: this request's placeholder may be younger than the leader's read.
                return flight.value, None
            return self._load(kind, load), None
        try:
            flight.value, raw = self._fill_shared(kind, key, load, flight)
            return flight.value, raw
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _fill_shared(
        self, kind: Kind, key: str, load: Load, flight: _Flight | None = None
    ) -> tuple[dict[str, Any], bytes | None]:
        """Single flight across replicas: a short Redis lock; the others poll for the value."""
        if not self._readable():
            return self._load(kind, load), None
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self.lock_ms / 1000
        delay = 0.005
        unusable = b""
        while True:
            try:
                outcome = self._acquire(
                    keys=[self.keys.value(key), self.keys.lock(key)], args=[token, self.lock_ms, unusable]
                )
            except REDIS_ERRORS as exc:
                self._failed(exc)
                return self._load(kind, load), None
            if outcome[0] == 1:
                if value := self._current(kind, self.backend.serializer.loads(outcome[1])):
                    return value, outcome[1]  # filled by another replica meanwhile
                unusable = outcome[1]  # replace it: retry at once, taking the lock over it
                continue
            if outcome[0] == 2:
                break  # we hold the lock
            if time.monotonic() >= deadline:
                return self._load(kind, load), None  # last resort: the holder is stuck
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        value = self._load(kind, load)
        if self._write(key, token, value) is False and flight is not None:
            flight.invalidated = True
        # Not for L1: our own write's tracking message drops the placeholder; the next read keeps it.
        return value, None

    def _write(self, key: str, token: str, value: dict[str, Any]) -> bool | None:
        """Whether the value was stored; False when our token is gone, None when Redis failed."""
        raw = self.backend.serializer.dumps(value)
        try:
            stored = self._store(
                keys=[self.keys.value(key), self.keys.lock(key)], args=[token, raw, self._ttl_of(value)]
            )
        except REDIS_ERRORS as exc:
            self._failed(exc)
            return None
        return bool(stored)

    def _load(self, kind: Kind, load: Load) -> dict[str, Any]:
        self._count(kind, "loads")
        with metrics.load_timer(kind.name):
            return load()

    def refresh(self, pairs: list[Pair]) -> dict[str, int]:
        """Load and store these pairs through the fill lock (the warm task's path).

        Batches of ``REFRESH_BATCH`` pairs cost one lock pipeline, one MongoDB query and one
        store pipeline each. A pair whose lock is held is being filled right now: skipped.
        """
        result = {"warmed": 0, "skipped": 0, "errors": 0}
        for start in range(0, len(pairs), REFRESH_BATCH):
            batch = pairs[start : start + REFRESH_BATCH]
            try:
                done = self._refresh_batch(batch)
            except REDIS_ERRORS as exc:
                self._failed(exc)
                done = {"warmed": 0, "skipped": 0, "errors": len(batch)}
            for name, amount in done.items():
                result[name] += amount
        return result

    def _refresh_batch(self, pairs: list[Pair]) -> dict[str, int]:
        result = {"warmed": 0, "skipped": 0, "errors": 0}
        keys = [device_key(device_id, device_name) for device_id, device_name in pairs]
        tokens = [secrets.token_hex(8) for _ in keys]
        pipe = self.client.pipeline(transaction=False)
        for key, token in zip(keys, tokens, strict=True):
            pipe.set(self.keys.lock(key), token, nx=True, px=self.lock_ms)
        held = pipe.execute()
        mine = [i for i, ours in enumerate(held) if ours]
        result["skipped"] = len(pairs) - len(mine)
        if not mine:
            return result
        self._count(DEVICE, "loads")  # one MongoDB query for the whole batch
        with metrics.load_timer(DEVICE.name):
            values = self.batch_loader([pairs[i] for i in mine])
        pipe = self.client.pipeline(transaction=False)
        for i, value in zip(mine, values, strict=True):
            ttl = self._ttl_of(value)
            # EVAL, not EVALSHA: a pipeline cannot fall back on NOSCRIPT (a restarted Redis).
            pipe.eval(STORE, 2, self.keys.value(keys[i]), self.keys.lock(keys[i]), tokens[i],
                      self.backend.serializer.dumps(value), ttl)  # fmt: skip
        for stored in pipe.execute():
            result["warmed" if stored else "skipped"] += 1  # 0: invalidated meanwhile
        return result

    # -- invalidation -------------------------------------------------------------------

    def invalidate(self, pairs: Iterable[Pair]) -> None:
        """Drop the lookups (and in-flight fill tokens) of these pairs before the response.

        Attempted whatever the breaker says; what fails is retried in the background and,
        until then, this process reads nothing from Redis.
        """
        keys = set()
        for device_id, device_name in pairs:
            key = device_key(device_id, device_name)
            keys.update((self.keys.value(key), self.keys.lock(key)))
        if not keys:
            return
        self.invalidate_keys(keys, len(keys) // 2)  # two keys per pair: the lookup and its fill lock

    def invalidate_keys(self, keys: set[str], lookups: int, kind: Kind | None = None) -> None:
        """Drop full keys from Redis (durably, retried) and from this process's L1, at once."""
        metrics.cache_invalidated(lookups, (kind or DEVICE).name)
        self.near.discard(keys)
        if not self._background_started:
            self._start_background()
        if not self.invalidator.unlink(keys):
            self._wake.set()

    def wait_invalidated(self, timeout: float) -> bool:
        """Wait (a command line, not a request) until this process has no invalidation pending."""
        deadline = time.monotonic() + timeout
        while self.invalidator.pending:
            if time.monotonic() > deadline:
                return False
            self._wake.set()
            time.sleep(self.probe_interval / 2)
        return True

    # -- counters -----------------------------------------------------------------------

    def _count(self, kind: Kind, name: str, key: str | None = None) -> None:
        """One event of a kind of lookup; hotness (``key``) is kept for devices only."""
        metrics.cache_event(name, kind.name)
        self.counters_buffer.count(kind.counter(name), key if kind.hot else None)

    def _failed(self, exc: BaseException) -> None:
        self._count(DEVICE, "errors")
        self.breaker.failure(exc)

    def admin_failed(self, exc: BaseException) -> None:
        """An admin call (longer timeouts) found Redis failing: counted, and an outage trips the
        breaker at once."""
        self._count(DEVICE, "errors")
        if isinstance(exc, OUTAGE_ERRORS):
            self.breaker.trip(exc)

    def flush(self) -> None:
        """Send this process's buffered counters and hotness now (a batch that fails is kept)."""
        try:
            self.counters_buffer.flush(self.client)
        except REDIS_ERRORS as exc:
            self._failed(exc)  # counted with the next batch

    def pending_counts(self, kind: Kind | None = None) -> dict[str, int]:
        kind = kind or DEVICE
        return self.counters_buffer.pending({name: kind.counter(name) for name in COUNTERS})

    # -- the background thread ------------------------------------------------------------

    def _start_background(self) -> None:
        with self._lock:
            if self._background_started:
                return
            self._background_started = True
        self._thread = threading.Thread(target=self._run_background, name="device-cache", daemon=True)
        self._thread.start()

    def _breaker_changed(self, is_open: bool) -> None:
        metrics.breaker_changed(is_open)
        if is_open:
            self.near.suspend("the circuit breaker opened")
            self.replicas.forget()
            if not self._background_started:  # whatever opened it, something must probe
                self._start_background()
            self._wake.set()  # probe at the fast cadence from now on

    def _run_background(self) -> None:
        wake, stop = self._wake, self._stop
        while not stop.is_set():
            urgent = self.breaker.is_open or self.invalidator.pending
            wake.wait(self.probe_interval if urgent else max(0.0, self._next_flush - time.monotonic()))
            wake.clear()
            if stop.is_set():
                return
            try:
                self.tick()
            except Exception:  # a bug must not end the thread that closes the breaker
                log.exception("the cache's background round failed")
                stop.wait(1.0)

    def tick(self) -> None:
        """One background round: probe Redis if needed, retry invalidations, flush when due."""
        if self.breaker.is_open or self.invalidator.pending:
            self.probe()
        now = time.monotonic()
        if now >= self._next_flush and self.breaker.allow():
            self._next_flush = now + self.flush_interval
            self.flush()

    def probe(self) -> bool:
        """Retry pending invalidations, then close the breaker, if Redis answers a write.

        In that order: a process whose breaker is closed has nothing pending it could read
        past. Whether Redis is fully usable again (nothing left pending).
        """
        if self.breaker.is_open:
            try:
                self.topology.ping(self.client, self.keys.probe)
            except REDIS_ERRORS as exc:
                self.topology.refresh(self.client)
                self.breaker.trip(exc)
                return False
        done = not self.invalidator.pending or self.invalidator.retry()
        if not done:
            self.topology.refresh(self.client)
        self.breaker.close()
        return done

    def stop(self) -> None:
        """Stop the background work, send what is buffered, and close every connection."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(5)  # its round in progress ends first: it may be using the connections
        self.near.stop()
        if self._background_started and self.breaker.allow():
            self.flush()
        for client in (self.client, self._admin_client):
            if client is not None:
                with contextlib.suppress(*REDIS_ERRORS, OSError):
                    self.topology.close(client)

    # -- reading the shared state ---------------------------------------------------------

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
            self._wake.set()
        return True

    def counters(self, kind: Kind | None = None) -> dict[str, Any]:
        """A kind's counters summed over every replica (raises a Redis error when unreachable)."""
        kind = kind or DEVICE
        raw = self.client.hgetall(self.meta + "stats:device")
        values = {name: int(raw.get(kind.counter(name).encode(), 0)) for name in COUNTERS}
        looked_up = values["hits"] + values["misses"]
        values["hit_ratio"] = values["hits"] / looked_up if looked_up else None
        return values


_instances: weakref.WeakSet[DeviceCache] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for instance in list(_instances):
        instance._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


@atexit.register
def _flush_at_exit() -> None:
    for instance in list(_instances):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            instance.stop()


def init_device_cache(app: Flask, backend: RedisCache, loader: Loader, batch_loader: BatchLoader) -> DeviceCache:
    instance = DeviceCache(backend, Topology.from_config(app.config), app.config, loader, batch_loader)
    app.extensions["device_cache"] = instance
    return instance


def device_cache() -> DeviceCache:
    return current_app.extensions["device_cache"]
