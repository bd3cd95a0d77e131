"""The shared device-lookup cache: one Redis GET per hit, fail-open, no stampede.

Keys (all under ``CACHE_KEY_PREFIX``):
  ``device:<device_id>|<device_name>``       the lookup, JSON, TTL ``DEVICE_CACHE_TTL``
                                              (a negative entry for an unknown pair: ``NEGATIVE_CACHE_TTL``)
  ``lock:device:<device_id>|<device_name>``  the fill lock; its token is also the "precall" check
                                              that stops a fill started before an invalidation
                                              from writing its stale result after it
Bookkeeping (``meta:<prefix>``, outside the prefix so ``/cache/clear`` keeps it):
  ``stats:device`` hash of hits/misses/loads/errors summed over every process;
  ``hot:device`` sorted set of lookups per pair (hotness, decayed by the warm task).

Counters and hotness are buffered in the process and flushed in one pipeline by a
background thread every ``CACHE_FLUSH_INTERVAL`` seconds; that thread also probes Redis
while the circuit breaker is open, so no request ever waits on a dead Redis twice.
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
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, current_app
from flask_caching.backends.rediscache import RedisCache
from redis import Redis
from redis.exceptions import RedisError

from app.cache.breaker import CircuitBreaker
from app.devices.lookup import SCHEMA_VERSION

log = logging.getLogger("app.cache")

Pair = tuple[str, str]
Loader = Callable[[str, str], dict[str, Any]]
COUNTERS = ("hits", "misses", "loads", "errors")
MAX_BUFFERED_PAIRS = 10_000

# Take the fill lock unless the value is already there: one round trip for both checks.
ACQUIRE = """
local value = redis.call('GET', KEYS[1])
if value then return {1, value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
"""
# Write the loaded value only if our lock token survived (no invalidation meanwhile).
STORE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""


def device_key(device_id: str, device_name: str) -> str:
    return f"device:{device_id}|{device_name}"


def pair_of(key: str) -> Pair:
    device_id, _, device_name = key.removeprefix("device:").partition("|")
    return device_id, device_name


class _Flight:
    __slots__ = ("done", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: dict[str, Any] | None = None


class DeviceCache:
    def __init__(self, backend: RedisCache, config: dict[str, Any], loader: Loader):
        self.backend = backend  # Flask-Caching's Redis backend: prefix, JSON serializer, client
        self.client: Redis = backend._write_client
        self.prefix: str = config["CACHE_KEY_PREFIX"]
        self.meta: str = "meta:" + self.prefix
        self.ttl: int = config["DEVICE_CACHE_TTL"]
        self.negative_ttl: int = min(config["NEGATIVE_CACHE_TTL"], self.ttl)
        self.lock_ms = int(config["CACHE_LOCK_TIMEOUT"] * 1000)
        self.flush_interval: float = config["CACHE_FLUSH_INTERVAL"]
        self.loader = loader
        self.breaker = CircuitBreaker(config["CACHE_BREAKER_THRESHOLD"], config["CACHE_BREAKER_COOLDOWN"])
        self._acquire = self.client.register_script(ACQUIRE)
        self._store = self.client.register_script(STORE)
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._counts: Counter[str] = Counter()
        self._hot: Counter[str] = Counter()
        self._pending_invalidations: set[str] = set()
        self._flusher_pid: int | None = None
        self._stop = threading.Event()
        self._admin_client: Redis | None = None

    # -- the hot path -------------------------------------------------------------------

    def get(self, device_id: str, device_name: str) -> dict[str, Any]:
        """The lookup: one GET when warm; on a miss one loader per key across all replicas."""
        self._ensure_flusher()
        key = device_key(device_id, device_name)
        value = self._read(key) if self.breaker.allow() else None
        self._count("hits" if value is not None else "misses", key)
        if value is not None:
            return value
        return self._fill(key, device_id, device_name)

    def _read(self, key: str) -> dict[str, Any] | None:
        try:
            value = self.backend.get(key)  # one GET of prefix + key, JSON-decoded
        except RedisError as exc:
            self._failed(exc)
            return None
        self.breaker.success()
        return self._current(value)

    @staticmethod
    def _current(value: Any) -> dict[str, Any] | None:
        """A lookup of this code's schema version; anything else counts as a miss."""
        return value if isinstance(value, dict) and value.get("v") == SCHEMA_VERSION else None

    # -- filling ------------------------------------------------------------------------

    def _fill(self, key: str, device_id: str, device_name: str) -> dict[str, Any]:
        """Single flight in this process: one thread fills, the others wait for its result."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        assert flight is not None
        if not leader:
            flight.done.wait(self.lock_ms / 1000 * 2)
            return flight.value if flight.value is not None else self._load(device_id, device_name)
        try:
            flight.value = self._fill_shared(key, device_id, device_name)
            return flight.value
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _fill_shared(self, key: str, device_id: str, device_name: str) -> dict[str, Any]:
        """Single flight across replicas: a short Redis lock; the others poll for the value."""
        if not self.breaker.allow():
            return self._load(device_id, device_name)
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self.lock_ms / 1000
        delay = 0.005
        while True:
            try:
                outcome = self._acquire(keys=[self.prefix + key, self._lock_key(key)], args=[token, self.lock_ms])
            except RedisError as exc:
                self._failed(exc)
                return self._load(device_id, device_name)
            if outcome[0] == 1 and (value := self._current(self.backend.serializer.loads(outcome[1]))):
                return value  # filled by another replica meanwhile
            if outcome[0] == 2:
                break  # we hold the lock
            if time.monotonic() >= deadline:
                return self._load(device_id, device_name)  # last resort: the holder is stuck
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        value = self._load(device_id, device_name)
        self._write(key, token, value)
        return value

    def _write(self, key: str, token: str, value: dict[str, Any]) -> bool:
        ttl = self.ttl if value["found"] else self.negative_ttl
        try:
            stored = self._store(
                keys=[self.prefix + key, self._lock_key(key)],
                args=[token, self.backend.serializer.dumps(value), ttl],
            )
        except RedisError as exc:
            self._failed(exc)
            return False
        return bool(stored)

    def _load(self, device_id: str, device_name: str) -> dict[str, Any]:
        self._count("loads")
        return self.loader(device_id, device_name)

    def _lock_key(self, key: str) -> str:
        return f"{self.prefix}lock:{key}"

    def refresh(self, pairs: list[Pair]) -> dict[str, int]:
        """Load and store these pairs through the fill lock, in two pipelines (the warm task's path).

        A pair whose lock is held is being filled by a request right now: skipped.
        """
        result = {"warmed": 0, "skipped": 0, "errors": 0}
        if not pairs:
            return result
        keys = [device_key(device_id, device_name) for device_id, device_name in pairs]
        tokens = [secrets.token_hex(8) for _ in keys]
        try:
            pipe = self.client.pipeline(transaction=False)
            for key, token in zip(keys, tokens, strict=True):
                pipe.set(self._lock_key(key), token, nx=True, px=self.lock_ms)
            held = pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            for key, token, pair, ours in zip(keys, tokens, pairs, held, strict=True):
                if not ours:
                    result["skipped"] += 1
                    continue
                value = self._load(*pair)
                ttl = self.ttl if value["found"] else self.negative_ttl
                self._store(
                    keys=[self.prefix + key, self._lock_key(key)],
                    args=[token, self.backend.serializer.dumps(value), ttl],
                    client=pipe,
                )
            for stored in pipe.execute():
                result["warmed" if stored else "skipped"] += 1  # 0: invalidated meanwhile
        except RedisError as exc:
            self._failed(exc)
            result["errors"] += len(pairs) - result["skipped"] - result["warmed"]
        return result

    # -- invalidation -------------------------------------------------------------------

    def invalidate(self, pairs: Iterable[Pair]) -> None:
        """Drop the lookups (and in-flight fill tokens) of these pairs before the response.

        If Redis cannot be reached now, the keys are kept and dropped by the background
        probe before this process reads from Redis again.
        """
        keys = set()
        for device_id, device_name in pairs:
            key = device_key(device_id, device_name)
            keys.update((self.prefix + key, self._lock_key(key)))
        if not keys:
            return
        if self.breaker.allow():
            try:
                self.client.unlink(*keys)
                return
            except RedisError as exc:
                self._failed(exc)
        with self._lock:
            self._pending_invalidations.update(keys)

    # -- counters, hotness and the background flusher -------------------------------------

    def _count(self, name: str, key: str | None = None) -> None:
        with self._lock:
            self._counts[name] += 1
            if key is not None and (key in self._hot or len(self._hot) < MAX_BUFFERED_PAIRS):
                self._hot[key] += 1

    def _failed(self, exc: BaseException) -> None:
        self._count("errors")
        self.breaker.failure(exc)

    def _ensure_flusher(self) -> None:
        if self._flusher_pid == os.getpid():
            return
        with self._lock:
            if self._flusher_pid == os.getpid():
                return
            # A fork copies the buffers but not the thread: start afresh in this process.
            self._counts.clear()
            self._hot.clear()
            self._flights.clear()
            self._flusher_pid = os.getpid()
            self._stop = threading.Event()
        thread = threading.Thread(target=self._run_flusher, name="cache-flusher", daemon=True)
        thread.start()
        _flushers.add(self)

    def _run_flusher(self) -> None:
        stop = self._stop
        while not stop.wait(self.flush_interval):
            self.tick()

    def tick(self) -> None:
        """One background round: probe Redis if the breaker is open, then flush the buffers."""
        if self.breaker.probe_due():
            self.probe()
        if self.breaker.allow():
            self.flush()

    def probe(self) -> bool:
        try:
            self.client.ping()
            with self._lock:
                pending = list(self._pending_invalidations)
            if pending:
                self.client.unlink(*pending)
                with self._lock:
                    self._pending_invalidations.difference_update(pending)
        except RedisError as exc:
            self.breaker.trip(exc)
            return False
        self.breaker.close()
        return True

    def flush(self) -> None:
        """Send the buffered counters and hotness to Redis in one pipeline."""
        with self._lock:
            counts, self._counts = self._counts, Counter()
            hot, self._hot = self._hot, Counter()
        if not counts and not hot:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for name, amount in counts.items():
                pipe.hincrby(self.meta + "stats:device", name, amount)
            if hot:
                for key, amount in hot.items():
                    pipe.zincrby(self.meta + "hot:device", amount, key)
            pipe.execute()
        except RedisError as exc:
            self.breaker.failure(exc)
            with self._lock:  # keep them for the next round: counters never lose a lookup
                self._counts.update(counts)
                self._hot.update(hot)

    def stop(self) -> None:
        self._stop.set()
        if self._flusher_pid == os.getpid() and self.breaker.allow():
            self.flush()

    # -- reading the shared state ---------------------------------------------------------

    def admin_client(self) -> Redis:
        """A client for admin work (SCAN, INFO): a longer read timeout, still no retries."""
        if self._admin_client is None:
            kwargs = dict(self.client.connection_pool.connection_kwargs)
            kwargs.update(socket_timeout=2.0, socket_connect_timeout=0.5)
            self._admin_client = Redis(
                connection_pool=self.client.connection_pool.__class__(
                    connection_class=self.client.connection_pool.connection_class, **kwargs
                )
            )
        return self._admin_client

    def ping(self) -> bool:
        try:
            return bool(self.client.ping())
        except RedisError:
            return False

    def counters(self) -> dict[str, Any]:
        """The counters summed over every replica (raises RedisError when unreachable)."""
        raw = self.client.hgetall(self.meta + "stats:device")
        values = {name: int(raw.get(name.encode(), 0)) for name in COUNTERS}
        looked_up = values["hits"] + values["misses"]
        values["hit_ratio"] = values["hits"] / looked_up if looked_up else None
        return values

    def pending_counts(self) -> dict[str, int]:
        with self._lock:
            return {name: self._counts[name] for name in COUNTERS}


_flushers: weakref.WeakSet[DeviceCache] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    for instance in list(_flushers):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            instance.stop()


def init_device_cache(app: Flask, backend: RedisCache, loader: Loader) -> DeviceCache:
    instance = DeviceCache(backend, app.config, loader)
    app.extensions["device_cache"] = instance
    return instance


def device_cache() -> DeviceCache:
    return current_app.extensions["device_cache"]
