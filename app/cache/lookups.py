"""The read/fill path: a lookup from the near cache, else one Redis GET, else one fill.

A fill is single-flight twice over. In the process, concurrent misses of a key share one load,
but only a load that *started after they arrived*: a request never gets a value read from
MongoDB before it started, so never the state a change acknowledged before it replaced (a
request that finds a load in progress waits for it, then joins or leads the next one). Across
replicas, a short Redis lock (``lock:{…}``) elects one filler; the others poll for its value.
The filler stores its value only if its lock token survived: an invalidation drops the lock
with the value, so a fill that raced a change stores nothing.

Why this goes around Flask-Caching's ``get``/``memoize`` (the backend still builds the client,
the prefix and the serializer): a hit must cost one round trip, or none from the near cache
(``near_bench``: the near cache serves a warm lookup 1.3–1.5× the requests/s of one GET), and a
miss needs the lock and the conditional store in one script each, which ``memoize`` has not.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.commands.core import Script

from app import metrics
from app.cache.keys import Pair, device_key
from app.redis_topology import REDIS_ERRORS

if TYPE_CHECKING:
    from app.cache.shared import SharedCache

Load = Callable[[], dict[str, Any]]
BatchLoader = Callable[[list[Pair]], list[dict[str, Any]]]
REFRESH_BATCH = 200


@dataclass(frozen=True)
class Kind:
    """A kind of lookup the cache holds: its values' schema version and its counters' names.

    Device lookups are the cache's reason to be (their counters are the spec's ``hits``,
    ``misses``...; their hotness drives the warm-up); a verified token's user rides on the same
    machinery, counted apart as ``user_hits``...
    """

    name: str
    version: int
    hot: bool = False
    keep_missing: bool = True  # cache "not found" too (a user id from a random token: no)

    def counter(self, event: str) -> str:
        return event if self.hot else f"{self.name}_{event}"


# Take the fill lock unless the value is already there: one round trip for both checks.
# ARGV[3] is a value the caller found unusable (another schema version, not JSON): absent.
ACQUIRE = b"""
local value = redis.call('GET', KEYS[1])
if value and value ~= ARGV[3] then return {1, value} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}
"""
# Write the loaded value only if our lock token survived (no invalidation meanwhile); an empty
# value only releases the lock (a miss not worth keeping).
STORE = b"""
if redis.call('GET', KEYS[2]) == ARGV[1] then
  if ARGV[2] ~= '' then redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""


class _Flight:
    __slots__ = ("done", "started", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.started = time.monotonic()
        self.value: dict[str, Any] | None = None


class Lookups:
    def __init__(self, cache: SharedCache, config: dict[str, Any]) -> None:
        self.cache = cache
        self.ttl: int = config["DEVICE_CACHE_TTL"]
        self.negative_ttl: int = min(config["NEGATIVE_CACHE_TTL"], self.ttl)
        self.lock_ms = int(config["CACHE_LOCK_TIMEOUT"] * 1000)
        self.serializer = cache.backend.serializer
        self._acquire = Script(cache.client, ACQUIRE)  # from bytes: hashing needs no client
        self.after_fork()

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}

    # -- the hot path -------------------------------------------------------------------

    def lookup(self, kind: Kind, key: str, load: Load) -> dict[str, Any]:
        """Any lookup the cache holds (a device, a verified token's user), by its relative key."""
        cache = self.cache
        full = cache.keys.value(key)
        near = cache.near
        readable = cache.readable()
        token = None
        if readable and near.enabled:
            raw = near.get(full)
            if raw is not None and (value := self._current(kind, self.serializer.loads(raw))) is not None:
                self.count_near_hit(kind, key)
                if kind.hot:
                    metrics.note_cache_result("l1")
                return value
            token = near.reserve(full)
        raw = self._read(full) if readable else None
        value = self._current(kind, self.serializer.loads(raw)) if raw is not None else None
        cache.count(kind, "hits" if value is not None else "misses", key)
        if kind.hot:
            metrics.note_cache_result("hit" if value is not None else "miss" if readable else "bypass")
        if value is not None:
            near.put(full, token, raw, self.ttl_of(value))
            return value
        value, raw = self._fill(kind, key, load)
        if raw is not None:
            near.put(full, token, raw, self.ttl_of(value))
        return value

    def near_value(self, kind: Kind, key: str) -> dict[str, Any] | None:
        """What ``lookup`` would answer from the near cache now, counted as nothing (None: it would
        not). The warm read before Flask (``app/devices/hot.py``) looks first, and counts the hit
        only if it answers; else Flask's request makes the lookup, counted once."""
        cache = self.cache
        if not cache.near.serving or not cache.warm_readable():
            return None
        raw = cache.near.get(cache.keys.value(key))
        return None if raw is None else self._current(kind, self.serializer.loads(raw))

    def count_near_hit(self, kind: Kind, key: str) -> None:
        metrics.cache_event("hits", kind.name)
        metrics.cache_event("l1_hits", kind.name)
        self.cache.counters_buffer.count(kind.counter("hits"), key if kind.hot else None, kind.counter("l1_hits"))

    def ttl_of(self, value: dict[str, Any]) -> int:
        return self.ttl if value["found"] else self.negative_ttl

    def _read(self, full: str) -> bytes | None:
        """One GET: the raw JSON (decoded by the caller, and kept raw in L1)."""
        try:
            raw = self.cache.client.get(full)
        except REDIS_ERRORS as exc:
            self.cache.failed(exc)
            return None
        self.cache.breaker.success()
        return raw

    @staticmethod
    def _current(kind: Kind, value: Any) -> dict[str, Any] | None:
        """A lookup of this code's schema version; anything else counts as a miss."""
        return value if isinstance(value, dict) and value.get("v") == kind.version else None

    # -- filling ------------------------------------------------------------------------

    def _fill(self, kind: Kind, key: str, load: Load) -> tuple[dict[str, Any], bytes | None]:
        """Single flight in this process, among requests that arrived before its load began.

        Returns the value and, when it was read from Redis under this request's placeholder
        (another replica filled it), its raw JSON for L1.
        """
        arrived = time.monotonic()
        wait = self.lock_ms / 1000 * 2
        while True:
            with self._lock:
                flight = self._flights.get(key)
                if flight is None:
                    flight = self._flights[key] = _Flight()
                    break  # this request leads a new flight
            if flight.started < arrived:
                flight.done.wait(wait)  # began before us: it may hold the replaced state
                continue
            flight.done.wait(wait)
            if flight.value is not None:
                # Not for L1: this request's placeholder may be younger than the leader's read.
                return flight.value, None
            return self._load(kind, load), None
        try:
            flight.value, raw = self._fill_shared(kind, key, load)
            return flight.value, raw
        finally:
            with self._lock:
                if self._flights.get(key) is flight:
                    del self._flights[key]
            flight.done.set()

    def _fill_shared(self, kind: Kind, key: str, load: Load) -> tuple[dict[str, Any], bytes | None]:
        """Single flight across replicas: a short Redis lock; the others poll for the value."""
        cache = self.cache
        if not cache.readable():
            return self._load(kind, load), None
        token = secrets.token_hex(8)
        deadline = time.monotonic() + self.lock_ms / 1000
        delay = 0.005
        unusable = b""
        value_key, lock_key = cache.keys.value(key), cache.keys.lock(key)
        while True:
            try:
                outcome = self._acquire(keys=[value_key, lock_key], args=[token, self.lock_ms, unusable])
            except REDIS_ERRORS as exc:
                cache.failed(exc)
                return self._load(kind, load), None
            if outcome[0] == 1:
                if value := self._current(kind, self.serializer.loads(outcome[1])):
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
        self._store(value_key, lock_key, token, value if value["found"] or kind.keep_missing else None)
        # Not for L1: our own write's tracking message drops the placeholder; the next read keeps it.
        return value, None

    def _store(self, value_key: str, lock_key: str, token: str, value: dict[str, Any] | None) -> None:
        """Store the value (None: only release the lock) if our lock token survived. EVAL, not
        EVALSHA: one round trip even on a Redis restarted since (no NOSCRIPT to fall back on)."""
        raw = self.serializer.dumps(value) if value is not None else b""
        try:
            self.cache.client.eval(
                STORE, 2, value_key, lock_key, token, raw, self.ttl if value is None else self.ttl_of(value)
            )
        except REDIS_ERRORS as exc:
            self.cache.failed(exc)

    def _load(self, kind: Kind, load: Load) -> dict[str, Any]:
        self.cache.count(kind, "loads")
        with metrics.load_timer(kind.name):
            return load()

    # -- refresh-ahead (the warm task) ------------------------------------------------------

    def refresh(self, kind: Kind, pairs: list[Pair], batch_loader: BatchLoader) -> dict[str, int]:
        """Load and store these pairs through the fill lock (the warm task's path).

        Batches of ``REFRESH_BATCH`` pairs cost one lock pipeline, one MongoDB query and one
        store pipeline each. A pair whose lock is held is being filled right now: skipped.
        """
        result = {"warmed": 0, "skipped": 0, "errors": 0}
        for start in range(0, len(pairs), REFRESH_BATCH):
            batch = pairs[start : start + REFRESH_BATCH]
            try:
                done = self._refresh_batch(kind, batch, batch_loader)
            except REDIS_ERRORS as exc:
                self.cache.failed(exc)
                done = {"warmed": 0, "skipped": 0, "errors": len(batch)}
            for name, amount in done.items():
                result[name] += amount
        return result

    def _refresh_batch(self, kind: Kind, pairs: list[Pair], batch_loader: BatchLoader) -> dict[str, int]:
        cache = self.cache
        keys = [device_key(device_id, device_name) for device_id, device_name in pairs]
        tokens = [secrets.token_hex(8) for _ in keys]
        pipe = cache.client.pipeline(transaction=False)
        for key, token in zip(keys, tokens, strict=True):
            pipe.set(cache.keys.lock(key), token, nx=True, px=self.lock_ms)
        held = pipe.execute()
        mine = [i for i, ours in enumerate(held) if ours]
        result = {"warmed": 0, "skipped": len(pairs) - len(mine), "errors": 0}
        if not mine:
            return result
        cache.count(kind, "loads")  # one MongoDB query for the whole batch
        with metrics.load_timer(kind.name):
            values = batch_loader([pairs[i] for i in mine])
        pipe = cache.client.pipeline(transaction=False)
        for i, value in zip(mine, values, strict=True):
            # EVAL, not EVALSHA: a pipeline cannot fall back on NOSCRIPT (a restarted Redis).
            pipe.eval(STORE, 2, cache.keys.value(keys[i]), cache.keys.lock(keys[i]), tokens[i],
                      self.serializer.dumps(value), self.ttl_of(value))  # fmt: skip
        for stored in pipe.execute():
            result["warmed" if stored else "skipped"] += 1  # 0: invalidated meanwhile
        return result
