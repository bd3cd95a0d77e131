"""The shared device-lookup cache: one Redis GET per hit, fail-open, no stampede.

Keys (all under ``CACHE_KEY_PREFIX``):
  ``device:<device_id>|<device_name>``       the lookup, JSON, TTL ``DEVICE_CACHE_TTL``
                                              (a negative entry for an unknown pair: ``NEGATIVE_CACHE_TTL``)
  ``lock:device:<device_id>|<device_name>``  the fill lock; its token is also the "precall" check
                                              that stops a fill started before an invalidation
                                              from writing its stale result after it
Bookkeeping (``meta:<prefix>``, outside the prefix so ``/cache/clear`` keeps it):
  ``stats:device`` hash of hits/misses/loads/errors summed over every process;
  ``hot:device`` sorted set of lookups per pair (hotness, decayed by the warm task);
  ``flushed:<process token>`` the number of this process's last batch added to them.

Counters and hotness are buffered in the process and flushed in one script call by a
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

from app import metrics
from app.cache.breaker import CircuitBreaker
from app.devices.lookup import SCHEMA_VERSION

log = logging.getLogger("app.cache")

Pair = tuple[str, str]
Loader = Callable[[str, str], dict[str, Any]]
BatchLoader = Callable[[list[Pair]], list[dict[str, Any]]]
REFRESH_BATCH = 200
COUNTERS = ("hits", "misses", "loads", "errors")
MAX_BUFFERED_PAIRS = 10_000

# Take the fill lock unless the value is already there: one round trip for both checks.
# ARGV[3] is a value the caller found unusable (another schema version, not JSON): absent.
ACQUIRE = """
local value = redis.call('GET', KEYS[1])
if value and value ~= ARGV[3] then return {1, value} end
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


# Add one numbered batch of counters and hotness, once: a batch whose reply was lost (a
# timeout after Redis applied it) is resent as is, and its number makes the resend a no-op.
FLUSH = """
local seq = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[3]) or '0') >= seq then return 0 end
redis.call('SET', KEYS[3], ARGV[1], 'EX', 86400)
local n = tonumber(ARGV[2])
for i = 4, 3 + 2 * n, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
for i = 4 + 2 * n, #ARGV, 2 do redis.call('ZINCRBY', KEYS[2], ARGV[i + 1], ARGV[i]) end
-- keep the hot set bounded between warm-ups: only the ARGV[3] hottest pairs stay
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(ARGV[3]) + 1))
return 1
"""


def device_key(device_id: str, device_name: str) -> str:
    return f"device:{device_id}|{device_name}"


def pair_of(key: str) -> Pair:
    device_id, _, device_name = key.removeprefix("device:").partition("|")
    return device_id, device_name


class _Flight:
    __slots__ = ("done", "value", "invalidated")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: dict[str, Any] | None = None
        self.invalidated = False  # the fill lost its token: an invalidation came during the load


class DeviceCache:
    def __init__(self, backend: RedisCache, config: dict[str, Any], loader: Loader, batch_loader: BatchLoader):
        self.backend = backend  # Flask-Caching's Redis backend: prefix, JSON serializer, client
        self.client: Redis = backend._write_client
        self.prefix: str = config["CACHE_KEY_PREFIX"]
        self.meta: str = "meta:" + self.prefix
        self.ttl: int = config["DEVICE_CACHE_TTL"]
        self.negative_ttl: int = min(config["NEGATIVE_CACHE_TTL"], self.ttl)
        self.lock_ms = int(config["CACHE_LOCK_TIMEOUT"] * 1000)
        self.flush_interval: float = config["CACHE_FLUSH_INTERVAL"]
        self.hot_max: int = config["HOT_MAX_DEVICES"]
        self.loader = loader
        self.batch_loader = batch_loader
        self.breaker = CircuitBreaker(config["CACHE_BREAKER_THRESHOLD"], config["CACHE_BREAKER_COOLDOWN"])
        self._acquire = self.client.register_script(ACQUIRE)
        self._store = self.client.register_script(STORE)
        self._add_batch = self.client.register_script(FLUSH)
        self._flush_lock = threading.Lock()  # one batch on the wire at a time, resent in order
        self._batch_token = secrets.token_hex(8)
        self._batch_seq = 0
        self._unsent: tuple[int, Counter[str], Counter[str]] | None = None
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._counts: Counter[str] = Counter()
        self._hot: Counter[str] = Counter()
        self._pending_invalidations: set[str] = set()
        self._flusher_started = False
        self._stop = threading.Event()
        self._admin_client: Redis | None = None
        _instances.add(self)

    # -- the hot path -------------------------------------------------------------------

    def get(self, device_id: str, device_name: str) -> dict[str, Any]:
        """The lookup: one GET when warm; on a miss one loader per key across all replicas."""
        self._ensure_flusher()
        key = device_key(device_id, device_name)
        allowed = self.breaker.allow()
        value = self._read(key) if allowed else None
        self._count("hits" if value is not None else "misses", key)
        metrics.note_cache_result("hit" if value is not None else "miss" if allowed else "bypass")
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
            if flight.invalidated:
                # This request may have started after the invalidation: the leader's value is stale.
                return self._fill(key, device_id, device_name)
            return flight.value if flight.value is not None else self._load(device_id, device_name)
        try:
            flight.value = self._fill_shared(key, device_id, device_name, flight)
            return flight.value
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()

    def _fill_shared(self, key: str, device_id: str, device_name: str, flight: _Flight | None = None) -> dict[str, Any]:
        """Single flight across replicas: a short Redis lock; the others poll for the value."""
        if not self.breaker.allow():
            return self._load(device_id, device_name)
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self.lock_ms / 1000
        delay = 0.005
        unusable = b""
        while True:
            try:
                outcome = self._acquire(
                    keys=[self.prefix + key, self._lock_key(key)], args=[token, self.lock_ms, unusable]
                )
            except RedisError as exc:
                self._failed(exc)
                return self._load(device_id, device_name)
            if outcome[0] == 1:
                if value := self._current(self.backend.serializer.loads(outcome[1])):
                    return value  # filled by another replica meanwhile
                unusable = outcome[1]  # replace it: retry at once, taking the lock over it
                continue
            if outcome[0] == 2:
                break  # we hold the lock
            if time.monotonic() >= deadline:
                return self._load(device_id, device_name)  # last resort: the holder is stuck
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        value = self._load(device_id, device_name)
        if self._write(key, token, value) is False and flight is not None:
            flight.invalidated = True
        return value

    def _write(self, key: str, token: str, value: dict[str, Any]) -> bool | None:
        """Whether the value was stored; False when our token is gone, None when Redis failed."""
        ttl = self.ttl if value["found"] else self.negative_ttl
        try:
            stored = self._store(
                keys=[self.prefix + key, self._lock_key(key)],
                args=[token, self.backend.serializer.dumps(value), ttl],
            )
        except RedisError as exc:
            self._failed(exc)
            return None
        return bool(stored)

    def _load(self, device_id: str, device_name: str) -> dict[str, Any]:
        self._count("loads")
        with metrics.load_timer():
            return self.loader(device_id, device_name)

    def _lock_key(self, key: str) -> str:
        return f"{self.prefix}lock:{key}"

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
            except RedisError as exc:
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
            pipe.set(self._lock_key(key), token, nx=True, px=self.lock_ms)
        held = pipe.execute()
        mine = [i for i, ours in enumerate(held) if ours]
        result["skipped"] = len(pairs) - len(mine)
        if not mine:
            return result
        self._count("loads")  # one MongoDB query for the whole batch
        with metrics.load_timer():
            values = self.batch_loader([pairs[i] for i in mine])
        pipe = self.client.pipeline(transaction=False)
        for i, value in zip(mine, values, strict=True):
            ttl = self.ttl if value["found"] else self.negative_ttl
            self._store(
                keys=[self.prefix + keys[i], self._lock_key(keys[i])],
                args=[tokens[i], self.backend.serializer.dumps(value), ttl],
                client=pipe,
            )
        for stored in pipe.execute():
            result["warmed" if stored else "skipped"] += 1  # 0: invalidated meanwhile
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
        metrics.cache_invalidated(len(keys) // 2)  # two keys per pair: the lookup and its fill lock
        error: RedisError | None = None
        if self.breaker.allow():
            try:
                self.client.unlink(*keys)
                return
            except RedisError as exc:
                self._count("errors")
                error = exc
        with self._lock:
            self._pending_invalidations.update(keys)
            if not self.breaker.is_open:
                # Nothing may be read from Redis here until the probe has dropped these keys.
                self.breaker.trip(error or RedisError("invalidation pending"))

    # -- counters, hotness and the background flusher -------------------------------------

    def _count(self, name: str, key: str | None = None) -> None:
        metrics.cache_event(name)
        with self._lock:
            self._counts[name] += 1
            if key is not None and (key in self._hot or len(self._hot) < MAX_BUFFERED_PAIRS):
                self._hot[key] += 1

    def _failed(self, exc: BaseException) -> None:
        self._count("errors")
        self.breaker.failure(exc)

    def _ensure_flusher(self) -> None:
        if self._flusher_started:  # the hot path's only check: a plain attribute
            return
        with self._lock:
            if self._flusher_started:
                return
            self._flusher_started = True
        thread = threading.Thread(target=self._run_flusher, name="cache-flusher", daemon=True)
        thread.start()

    def _after_fork(self) -> None:
        """In a forked child: the buffers, locks and flights are the parent's, the thread is gone."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._counts, self._hot, self._flights = Counter(), Counter(), {}
        self._unsent, self._batch_token, self._batch_seq = None, secrets.token_hex(8), 0
        self._stop = threading.Event()
        self._flusher_started = False

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
            while True:
                with self._lock:  # close only with nothing pending (invalidate adds under this lock)
                    pending = list(self._pending_invalidations)
                    if not pending:
                        self.breaker.close()
                        return True
                self.client.unlink(*pending)
                with self._lock:
                    self._pending_invalidations.difference_update(pending)
        except RedisError as exc:
            self.breaker.trip(exc)
            return False

    def flush(self) -> None:
        """Send the buffered counters and hotness to Redis: one script call per batch.

        A batch that failed is kept and resent unchanged (before the newer buffer), so the
        counters neither lose a lookup nor count one twice when Redis applied it but the
        reply timed out.
        """
        with self._flush_lock:
            for _ in range(2):  # a batch left unsent last time, then the current buffer
                batch = self._unsent
                if batch is None:
                    with self._lock:
                        counts, self._counts = self._counts, Counter()
                        hot, self._hot = self._hot, Counter()
                    if not counts and not hot:
                        return
                    self._batch_seq += 1
                    batch = (self._batch_seq, counts, hot)
                seq, counts, hot = batch
                args: list[Any] = [seq, len(counts), self.hot_max]
                for name, amount in counts.items():
                    args += (name, amount)
                for key, amount in hot.items():
                    args += (key, amount)
                try:
                    self._add_batch(
                        keys=[
                            self.meta + "stats:device",
                            self.meta + "hot:device",
                            f"{self.meta}flushed:{self._batch_token}",
                        ],
                        args=args,
                    )
                except RedisError as exc:
                    self.breaker.failure(exc)
                    self._unsent = batch
                    return
                self._unsent = None

    def stop(self) -> None:
        self._stop.set()
        if self._flusher_started and self.breaker.allow():
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
        unsent = self._unsent
        with self._lock:
            return {name: self._counts[name] + (unsent[1][name] if unsent else 0) for name in COUNTERS}


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
    instance = DeviceCache(backend, app.config, loader, batch_loader)
    app.extensions["device_cache"] = instance
    return instance


def device_cache() -> DeviceCache:
    return current_app.extensions["device_cache"]
