"""The near cache (L1): the shared entries a process has read lately, held in the process.

A hit here costs no Redis round trip. It stays coherent through Redis's client-side caching in
broadcast mode: one connection per primary runs ``CLIENT TRACKING ON REDIRECT <its own id> BCAST``
for ``<prefix>device:``, ``user:`` and ``query:memo:`` and is subscribed to ``__redis__:invalidate``:
whoever changes or drops such a key, Redis sends its name there and the entry leaves L1 (a null
message, FLUSHDB, empties it). Guarantees, and how:
- Never stale after a response: a hit first applies every message already received (a
  non-blocking read, parsed by ``tracking.py``; while part of one is buffered L1 answers
  nothing). An invalidation and the reply of the write that caused it travel on different
  routes, so a change answers once every near cache has acknowledged its fence, or the
  heartbeat rule below says it has applied the drop or stopped serving (``fence.py``).
- A fill racing an invalidation stores nothing: a placeholder set before the Redis read must
  still be there after it (the race Redis's client-side caching documentation describes).
- Only while coherent: L1 serves only while every listener is subscribed and the last answer to
  its heartbeat (a PING every 0.1 s) is for a PING sent at most 0.25 s ago (messages on one
  connection arrive in order: a PONG means every invalidation sent before its PING is applied).
  Every get checks the clock, so a silent connection stops hits within 0.25 s. A PING unanswered
  for 0.25 s, an error, a disconnect, a restart, a primary that changed or the breaker opening
  empty L1, bypassed until subscribed again. The one staleness it adds: while Redis is
  unreachable no invalidation travels, so a write made then may go unseen for those 0.25 s.

Entries are the raw JSON of the shared entry (decoded on each hit), bounded by ``L1_CACHE_SIZE``
entries, ``L1_CACHE_MAX_BYTES`` bytes (values and keys; least recently used out first) and
``L1_CACHE_TTL`` seconds; one over 1/16 of the bytes is served, not kept. Negative entries live
in their own LRU of 1/16 of both bounds: a flood of random ids never pushes real entries out.

Whole answers over tracked keys: ``answers.py``. Nothing (lock, thread, connection) is made before
first use in the process using it (made before gevent's patching, by ``--preload``, it would block
the worker); no lock is held across a socket wait. redis-py's client-side cache: no heartbeat.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
import threading
import time
from typing import Any

from gevent.monkey import get_original

from app.cache.answers import Answers
from app.cache.fence import acknowledge, fence_of
from app.cache.keys import KeySpace
from app.cache.lru import Lru
from app.cache.tracking import CHANNEL, PONG_DEADLINE, Listener, ReplyError
from app.redis_topology import REDIS_ERRORS, Topology

log = logging.getLogger("app.cache")
# A readiness check with no timeout never blocks: the real select, even under gevent (cheaper).
_poll = get_original("select", "select")

PING_INTERVAL = 0.1  # seconds between heartbeats
RETRY_INTERVAL = 0.1  # seconds between reconnection attempts
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
NEGATIVE_SHARE = 16  # the negatives' LRU: 1/16 of both bounds; and no entry above 1/16 of the bytes
NEGATIVE_MARK = b'"found":false'  # at the top level of the serializer's compact JSON, within its head


class NearCache(Answers):
    def __init__(
        self,
        size: int,
        ttl: float,
        topology: Topology,
        client: Any,
        keys: KeySpace,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_bytes // NEGATIVE_SHARE  # larger: served, not kept
        self.ttl = ttl
        self.enabled = size > 0
        self.topology = topology
        self.client = client
        self.keys = keys
        self._presence = keys.near_presence.encode()  # where changes publish their fences
        self.after_fork()

    def after_fork(self) -> None:
        """Forget the parent's state. The lock, event, thread and connections come on first use."""
        self._lock: Any = None
        self._wake: Any = None
        self._thread: Any = None
        self._lru = Lru(self.size, self.max_bytes)
        self._negatives = Lru(max(1, self.size // NEGATIVE_SHARE), max(1, self.max_entry_bytes))
        self._entries = self._lru.entries  # the real entries (tests look here)
        self._reserved: dict[str, object] = {}
        self._answers_after_fork(max(1, self.size // NEGATIVE_SHARE), max(1, self.max_entry_bytes))
        self._listeners: list[Listener] = []
        self._sockets: list[Any] = []  # the listeners' sockets, for the hot path's readiness check
        self._doomed: list[Listener] = []  # dropped; the listener thread closes them
        self._serving = False  # subscribed everywhere: L1 may answer while the heartbeat is fresh
        self._fresh_until = 0.0  # min over the listeners of their last PONG's PING + PONG_DEADLINE
        self._partial = False  # part of a message is buffered: answer nothing until the rest
        self._acks: list[str] = []  # fences applied here, to acknowledge (outside the lock)
        self._started = False
        self._starts = itertools.count()  # next() is atomic: exactly one caller starts
        self._stopped = False

    # -- the hot path -------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The raw entry if L1 holds it and is coherent now; first applies what has arrived."""
        if not self._serving:
            if self.enabled and not self._started:
                self._start()
            return None
        with self._lock:
            raw = self._get(key)
        if self._acks:
            self._send_acks()
        return raw

    def _get(self, key: str) -> bytes | None:
        if not self._sync():
            return None
        now = time.monotonic()
        if now > self._fresh_until:  # no heartbeat answered lately: the connection may be silent
            return None
        lru = self._lru
        entry = lru.entries.get(key)
        if entry is None:
            lru = self._negatives
            entry = lru.entries.get(key)
            if entry is None:
                return None
        if entry[1] < now:
            lru.pop(key)
            return None
        lru.entries.move_to_end(key)
        return entry[0]

    def reserve(self, key: str) -> object | None:
        """A placeholder, set before reading ``key`` from Redis (None: L1 is off or not coherent)."""
        if not self._serving:
            return None
        token = object()
        with self._lock:
            self._reserved[key] = token
        return token

    def put(self, key: str, token: object | None, raw: bytes, ttl: float) -> None:
        """Keep what was read under ``token``, unless an invalidation came since the placeholder."""
        if token is None:
            return
        negative = raw.find(NEGATIVE_MARK, 0, 64) >= 0
        with self._lock:
            if self._sync() and self._reserved.get(key) is token:
                del self._reserved[key]
                self._lru.pop(key)
                self._negatives.pop(key)
                if len(key) + len(raw) <= self.max_entry_bytes:  # else served, not kept: bounded share
                    lru = self._negatives if negative else self._lru
                    lru.add(key, raw, time.monotonic() + min(ttl, self.ttl))
        if self._acks:
            self._send_acks()

    def discard(self, keys: list[str] | set[str]) -> None:
        """Drop keys this process invalidates itself (without waiting for Redis to say so)."""
        if (lock := self._lock) is None:  # never started here: nothing held
            return
        with lock:
            for key in keys:
                self._forget(key)

    def clear(self) -> None:
        with self._lock or contextlib.nullcontext():
            self._empty()

    def __len__(self) -> int:
        return len(self._lru.entries) + len(self._negatives.entries)

    @property
    def nbytes(self) -> int:
        """Bytes held (raw values and keys), real and negative entries."""
        return self._lru.nbytes + self._negatives.nbytes

    @property
    def serving(self) -> bool:
        return self._serving

    # -- coherence ------------------------------------------------------------------------

    def _sync(self) -> bool:
        """Apply every complete message already received; whether L1 may answer (lock held).

        One ``select`` with no timeout tells whether anything arrived (a drain reads until the
        socket has nothing more, so a readable socket is the only sign of a message). Never waits.
        """
        if self._sockets and _poll(self._sockets, (), (), 0)[0]:
            try:
                for listener in self._listeners:
                    for message in listener.receive():
                        self._handle(listener, message)
            except (OSError, ValueError) as exc:
                self._incoherent(f"tracking connection failed ({exc.__class__.__name__}: {exc})")
                return False
            self._partial = any(listener.parser.pending for listener in self._listeners)
        return self._serving and not self._partial

    def _handle(self, listener: Listener, message: Any) -> None:
        kind = message[0] if isinstance(message, list) and message else None
        if kind == b"message" and message[1] == CHANNEL:
            keys = message[2]
            if keys is None:  # FLUSHDB / FLUSHALL
                self._empty()
                return
            for key in keys:
                self._forget(key.decode())
        elif kind == b"message" and message[1] == self._presence:  # a fence: what came before is applied
            token = fence_of(message[2], listener.name, len(self._listeners))
            if token is not None:
                self._acks.append(token)
        elif kind == b"pong":
            if listener.ping_sent is not None:
                listener.fresh_until = listener.ping_sent + PONG_DEADLINE
                listener.ping_sent = None
                self._fresh_until = min(each.fresh_until for each in self._listeners)
        elif isinstance(message, ReplyError):
            raise ConnectionError(f"tracking connection answered {message}")

    def _send_acks(self) -> None:
        """Acknowledge the fences applied here, outside the lock (``fence.py``)."""
        with self._lock:
            acks, self._acks = self._acks, []
        acknowledge(self.client, self.keys, acks)

    def _forget(self, key: str) -> None:
        self._changed(key)
        self._lru.pop(key)
        self._negatives.pop(key)
        self._reserved.pop(key, None)

    def _empty(self) -> None:
        self._void()
        self._lru.clear()
        self._negatives.clear()
        self._reserved.clear()

    def _incoherent(self, why: str) -> None:
        """Empty and bypass L1; the listener thread closes the connections and reconnects (lock held)."""
        if self._serving:
            log.warning("near cache off: %s; lookups go to Redis until it is subscribed again", why)
        self._serving = False
        self._fresh_until = 0.0
        self._partial = False
        self._empty()
        self._doomed += self._listeners
        self._listeners = []
        self._sockets = []
        if self._wake is not None:
            self._wake.set()

    def suspend(self, why: str) -> None:
        """Stop serving now (the breaker opened): emptied until the listener is subscribed again."""
        if (lock := self._lock) is None:  # never started here: nothing to stop
            return
        with lock:
            self._incoherent(why)

    # -- the listener thread ----------------------------------------------------------------

    def _start(self) -> None:
        """Make the lock, event and thread now, in the process (and, under gevent, after the
        monkey-patching) that uses them."""
        if next(self._starts):
            return
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._started = True
        if self._stopped:
            return
        self._thread = threading.Thread(target=self._run, name="near-cache", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving now; the listener thread closes its connections as it ends, within its
        next wait (at most 0.25 s)."""
        self._stopped = True
        if (lock := self._lock) is None:
            return
        with lock:
            self._serving = False  # (quietly: nothing went wrong)
            self._incoherent("stopped")
        self._wake.set()
        if self._thread is None or not self._thread.is_alive():
            self._close_doomed()

    def _close_doomed(self) -> None:
        """Close the dropped connections, outside the lock (the listener thread's, or after it)."""
        with self._lock:
            doomed, self._doomed = self._doomed, []
        for listener in doomed:
            with contextlib.suppress(*REDIS_ERRORS, OSError):
                listener.close()

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _subscribe(self) -> None:
        """A tracking connection on every primary, then serve (L1 starts empty)."""
        options = {"socket_timeout": PONG_DEADLINE, "socket_connect_timeout": PONG_DEADLINE, "protocol": 2,
                   "client_name": "opensensor-near"}  # fmt: skip
        listeners = [Listener(name, conn) for name, conn in self.topology.listener_connections(self.client, options)]
        try:
            for listener in listeners:
                listener.open(self.keys.near_prefixes, self.keys.near_presence)
        except BaseException:
            for listener in listeners:
                with contextlib.suppress(*REDIS_ERRORS, OSError):
                    listener.close()
            raise
        with self._lock:
            if self._stopped:
                self._doomed += listeners
                return
            self._listeners = listeners
            self._sockets = [listener.sock for listener in listeners]
            self._empty()
            self._partial = any(listener.parser.pending for listener in listeners)
            self._fresh_until = min(listener.fresh_until for listener in listeners)
            self._serving = True
        log.info("near cache on: tracking %d primar%s", len(listeners), "y" if len(listeners) == 1 else "ies")

    def _run(self) -> None:
        try:
            self._listen()
        finally:
            with self._lock:
                self._serving = False
                self._incoherent("stopped")
            self._close_doomed()

    def _listen(self) -> None:
        failed = False
        next_ping = 0.0
        while not self._stopped:
            self._close_doomed()
            if not self._serving:
                try:
                    self._subscribe()
                except REDIS_ERRORS + (OSError, ValueError):
                    self.topology.refresh(self.client)  # after a failover: where the primaries are now
                    self._wait(RETRY_INTERVAL)
                    continue
                except Exception:  # a bug must not end the thread: L1 stays off, and says why once
                    if not failed:
                        log.exception("near cache cannot subscribe; it stays off")
                    failed = True
                    self._wait(RETRY_INTERVAL * 10)
                    continue
                next_ping = 0.0  # at once: the first answer extends what subscribing vouched for
            result = self._round(next_ping)
            if self._acks:
                self._send_acks()
            if result is None:
                continue
            next_ping, sockets = result
            if sockets:
                with contextlib.suppress(OSError, ValueError):  # closed under us: the next round notices
                    select.select(sockets, [], [], max(0.0, min(next_ping - time.monotonic(), PONG_DEADLINE)))
            else:
                self._wait(RETRY_INTERVAL)

    def _round(self, next_ping: float) -> tuple[float, list[Any]] | None:
        """Send the heartbeat when due, apply what arrived, drop a silent connection; the next
        heartbeat's time and the sockets to wait on (None: L1 went off, start over)."""
        now = time.monotonic()
        with self._lock:
            if not self._serving:
                return None
            if self._primaries_changed():
                self._incoherent("the primaries changed")
                return None
            if now >= next_ping:
                next_ping = now + PING_INTERVAL
                try:
                    for listener in self._listeners:
                        if listener.ping_sent is None:
                            listener.ping(now)
                except (OSError, ValueError) as exc:
                    self._incoherent(f"heartbeat failed ({exc.__class__.__name__})")
                    return None
            self._sync()
            now = time.monotonic()
            for listener in self._listeners:
                if listener.ping_sent is not None and now - listener.ping_sent > PONG_DEADLINE:
                    self._incoherent(f"heartbeat unanswered for {PONG_DEADLINE}s on {listener.name}")
                    return None
            return next_ping, list(self._sockets)

    def _primaries_changed(self) -> bool:
        return sorted(listener.name for listener in self._listeners) != sorted(self.topology.primary_names(self.client))
