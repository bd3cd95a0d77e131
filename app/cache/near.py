"""The near cache (L1): the shared entries a process has read lately, held in the process.

A hit here costs no Redis round trip. It stays coherent through Redis's server-assisted
client-side caching, in broadcast mode: one dedicated connection per primary, opened in the
process that uses it (after fork), runs

    CLIENT TRACKING ON REDIRECT <its own id> BCAST PREFIX <prefix>device: PREFIX <prefix>user:

and is subscribed to ``__redis__:invalidate``. Whoever changes or drops such a key (another
replica's invalidation, ``/cache/clear``, a warm-up's refresh, a TTL running out), Redis sends
its name there, and the entry leaves L1; a null message (FLUSHDB, FLUSHALL) empties it.

Guarantees, and how:
- Never stale after a response: before serving a hit, every message already received on those
  connections is applied (a non-blocking read). Redis writes an invalidation before the reply
  of the write that caused it, so a request that starts after the writer's response finds it.
- A fill racing an invalidation stores nothing: a placeholder is set before the Redis read and
  the value kept only if the placeholder is still there after it (Redis's client-side caching
  documentation describes this race).
- Only while coherent: L1 serves only while every listener is subscribed and its heartbeat (a
  PING every 0.1 s) is answered within 0.25 s. Otherwise (an error, a disconnect, a restart, a
  primary that changed, the breaker open) it is emptied and bypassed until subscribed again.
  The one staleness it adds: while Redis is unreachable no invalidation can travel, so a write
  made then may go unseen here for up to those 0.25 s.

Entries are the raw JSON of the shared entry (decoded on each hit, so no caller can change
what the next one gets), bounded by ``L1_CACHE_SIZE`` (least recently used first out) and
``L1_CACHE_TTL`` seconds.

Considered: redis-py's own client-side cache (``cache_config``); it tracks per connection in
default mode, keeps no heartbeat (a silent connection leaves it serving stale entries), and
applies invalidations only when that connection is next used.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import time
from collections import OrderedDict
from typing import Any

from gevent.monkey import get_original

from app.redis_topology import REDIS_ERRORS, Topology

log = logging.getLogger("app.cache")
# A readiness check with no timeout never blocks, so the hot path uses the real select even under
# gevent (whose cooperative select costs more, for nothing here).
_poll = get_original("select", "select")

CHANNEL = b"__redis__:invalidate"
PING_INTERVAL = 0.1  # seconds between heartbeats
PONG_DEADLINE = 0.25  # an unanswered heartbeat older than this: not coherent
RETRY_INTERVAL = 0.1  # seconds between reconnection attempts


class _Listener:
    """One primary's tracking connection (RESP2: invalidations arrive as pub/sub messages)."""

    def __init__(self, name: str, connection: Any) -> None:
        self.name = name
        self.connection = connection
        self.ping_sent: float | None = None  # the heartbeat awaiting its PONG

    def open(self, prefixes: list[str]) -> None:
        conn = self.connection
        conn.connect()
        conn.send_command("CLIENT", "ID")
        own_id = conn.read_response()
        tracking = ["CLIENT", "TRACKING", "ON", "REDIRECT", own_id, "BCAST"]
        for prefix in prefixes:
            tracking += ["PREFIX", prefix]
        conn.send_command(*tracking)
        conn.read_response()
        conn.send_command("SUBSCRIBE", CHANNEL)
        reply = conn.read_response()
        if not (isinstance(reply, list) and reply[:1] == [b"subscribe"]):
            raise ConnectionError(f"unexpected reply to SUBSCRIBE: {reply!r}")

    def close(self) -> None:
        self.connection.disconnect()


class NearCache:
    def __init__(self, size: int, ttl: float, topology: Topology, client: Any, prefixes: list[str]) -> None:
        self.size = size
        self.ttl = ttl
        self.enabled = size > 0
        self.topology = topology
        self.client = client
        self.prefixes = prefixes
        self.after_fork()

    def after_fork(self) -> None:
        """A forked child owns no listener yet: it opens its own on first use."""
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._reserved: dict[str, object] = {}
        self._listeners: list[_Listener] = []
        self._sockets: list[Any] = []  # the listeners' sockets, for the hot path's readiness check
        self._serving = False  # subscribed everywhere, heartbeat fresh: L1 may answer
        self._started = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- the hot path -------------------------------------------------------------------

    def get(self, key: str) -> bytes | None:
        """The raw entry if L1 holds it and is coherent now; first applies what has arrived."""
        if not self._serving:
            if self.enabled and not self._started:
                self._start()
            return None
        with self._lock:
            if not self._sync():
                return None
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[1] < time.monotonic():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
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
        with self._lock:
            if not self._sync() or self._reserved.get(key) is not token:
                return
            del self._reserved[key]
            self._entries[key] = (raw, time.monotonic() + min(ttl, self.ttl))
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def discard(self, keys: list[str] | set[str]) -> None:
        """Drop keys this process invalidates itself (without waiting for Redis to say so)."""
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)
                self._reserved.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._reserved.clear()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def serving(self) -> bool:
        return self._serving

    # -- coherence ------------------------------------------------------------------------

    def _sync(self) -> bool:
        """Apply every message already received; whether L1 is still coherent (lock held).

        One ``select`` with no timeout tells whether anything arrived (a drain always reads
        until redis-py's buffer is empty, so a readable socket is the only sign of a message).
        """
        try:
            if self._sockets and _poll(self._sockets, (), (), 0)[0]:
                for listener in self._listeners:
                    conn = listener.connection
                    while conn.can_read(timeout=0):
                        self._handle(listener, conn.read_response())
        except REDIS_ERRORS + (OSError, ValueError) as exc:
            self._incoherent(f"tracking connection failed ({exc.__class__.__name__})")
            return False
        now = time.monotonic()
        for listener in self._listeners:
            if listener.ping_sent is not None and now - listener.ping_sent > PONG_DEADLINE:
                self._incoherent(f"heartbeat unanswered for {PONG_DEADLINE}s on {listener.name}")
                return False
        return self._serving

    def _handle(self, listener: _Listener, message: Any) -> None:
        kind = message[0] if isinstance(message, list) and message else None
        if kind == b"message" and message[1] == CHANNEL:
            keys = message[2]
            if keys is None:  # FLUSHDB / FLUSHALL
                self._entries.clear()
                self._reserved.clear()
                return
            for key in keys:
                name = key.decode()
                self._entries.pop(name, None)
                self._reserved.pop(name, None)
        elif kind == b"pong":
            listener.ping_sent = None

    def _incoherent(self, why: str) -> None:
        """Empty and bypass L1; the listener thread reconnects (lock held)."""
        if self._serving:
            log.warning("near cache off: %s; lookups go to Redis until it is subscribed again", why)
        self._serving = False
        self._entries.clear()
        self._reserved.clear()
        for listener in self._listeners:
            listener.close()
        self._listeners = []
        self._sockets = []

    def suspend(self, why: str) -> None:
        """Stop serving now (the breaker opened): emptied until the listener is subscribed again."""
        with self._lock:
            self._incoherent(why)

    # -- the listener thread ----------------------------------------------------------------

    def _start(self) -> None:
        with self._lock:
            if self._started:
                return
            self._started = True
        self._thread = threading.Thread(target=self._run, name="near-cache", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving now; the listener thread closes its connections as it ends (it may be
        reading them), within its next wait (at most 0.25 s)."""
        self._stop.set()
        with self._lock:
            self._serving = False  # (quietly: nothing went wrong)
            self._entries.clear()
            self._reserved.clear()
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                self._incoherent("stopped")

    def _subscribe(self) -> None:
        """A tracking connection on every primary, then serve (L1 starts empty)."""
        options = {"socket_timeout": PONG_DEADLINE, "socket_connect_timeout": PONG_DEADLINE, "protocol": 2,
                   "client_name": "opensensor-near"}  # fmt: skip
        listeners = [_Listener(name, conn) for name, conn in self.topology.listener_connections(self.client, options)]
        try:
            for listener in listeners:
                listener.open(self.prefixes)
        except BaseException:
            for listener in listeners:
                listener.close()
            raise
        with self._lock:
            if self._stop.is_set():
                for listener in listeners:
                    listener.close()
                return
            self._listeners = listeners
            self._sockets = [listener.connection._sock for listener in listeners]
            self._entries.clear()
            self._reserved.clear()
            self._serving = True
        log.info("near cache on: tracking %d primar%s", len(listeners), "y" if len(listeners) == 1 else "ies")

    def _run(self) -> None:
        try:
            self._listen()
        finally:
            with self._lock:
                self._serving = False
                self._incoherent("stopped")

    def _listen(self) -> None:
        stop = self._stop
        next_ping = 0.0
        failed = False
        while not stop.is_set():
            if not self._serving:
                try:
                    self._subscribe()
                except REDIS_ERRORS + (OSError,):
                    self.topology.refresh(self.client)  # after a failover: where the primaries are now
                    stop.wait(RETRY_INTERVAL)
                    continue
                except Exception:  # a bug must not end the thread: L1 stays off, and says why once
                    if not failed:
                        log.exception("near cache cannot subscribe; it stays off")
                    failed = True
                    stop.wait(RETRY_INTERVAL * 10)
                    continue
            now = time.monotonic()
            with self._lock:
                if self._serving and self._primaries_changed():
                    self._incoherent("the primaries changed")
                    continue
                if now >= next_ping:
                    next_ping = now + PING_INTERVAL
                    try:
                        for listener in self._listeners:
                            if listener.ping_sent is None:
                                listener.connection.send_command("PING")
                                listener.ping_sent = now
                    except REDIS_ERRORS + (OSError,) as exc:
                        self._incoherent(f"heartbeat failed ({exc.__class__.__name__})")
                        continue
                self._sync()
                sockets = [listener.connection._sock for listener in self._listeners]
            if sockets and all(sock is not None for sock in sockets):
                with contextlib.suppress(OSError, ValueError):  # closed under us: the next round notices
                    select.select(sockets, [], [], max(0.0, min(next_ping - time.monotonic(), PONG_DEADLINE)))
            else:
                stop.wait(RETRY_INTERVAL)

    def _primaries_changed(self) -> bool:
        return sorted(listener.name for listener in self._listeners) != sorted(self.topology.primary_names(self.client))
