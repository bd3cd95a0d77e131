"""The sentinels' failover announcements, followed by one daemon thread per process and master.

The thread subscribes to ``+switch-master`` on every sentinel it reaches (one socket each, one
``select`` over them; a sentinel that fails or leaves a heartbeat unanswered is reconnected
every ``RETRY_INTERVAL``) and, on the first announcement of a switch of our master, repoints
this process's pools at the new master and calls the registered callbacks (the cache empties
its near cache and forgets what it knew of the old master's replicas). Every sentinel, not one:
the leader of a failover announces it first, the others only once they hear of it from the
leader (a few hundred milliseconds later), and a process listening to a late one would write to
the old master meanwhile while others already read from the new one. Whenever a subscription
is (re)opened, that sentinel is also asked where the master is, so a switch announced while
nobody listened is not missed.

It is started on first use, in the process that uses it: never before a fork (a forked child
has no thread; ``os.register_at_fork`` resets the watcher, which the child starts again on its
own first use), and so after gevent's monkey-patching, where it runs as a greenlet.

Considered: redis-py's ``Sentinel`` client, which only ever asks (no subscription), and
``PubSub.run_in_thread``, one thread per sentinel that notices neither a silent sentinel nor
the other threads' news.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from redis import Redis

from app.redis_topology.base import REDIS_ERRORS, SwitchCallback

log = logging.getLogger("app.cache")

Address = tuple[str, int]
Repoint = Callable[[str, frozenset[Address], Address, Address], None]

CHANNEL = "+switch-master"
HEARTBEAT = 0.5  # seconds of silence on a subscription before a PING on it
HEARTBEAT_DEADLINE = 2.0  # nothing heard for this long: that sentinel is reconnected
CONNECT_TIMEOUT = 0.5  # a sentinel that does not answer its subscription within this is retried later
RETRY_INTERVAL = 1.0  # seconds between two attempts to reach a sentinel
REPLACED_DOUBT = 30.0  # seconds a sentinel naming a replaced master is taken to lag behind


class _Subscription:
    """One sentinel's ``+switch-master`` subscription."""

    def __init__(self, address: Address, kwargs: dict[str, Any]) -> None:
        self.address = address
        self.kwargs = kwargs
        self.client: Redis | None = None
        self.pubsub: Any = None
        self.retry_at = 0.0
        self.heard = 0.0

    def open(self, master: str) -> Address | None:
        """Subscribe; where that sentinel says the master is now."""
        host, port = self.address
        self.client = Redis(host, port, socket_timeout=CONNECT_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT,
                            client_name="opensensor-watch", **self.kwargs)  # fmt: skip
        self.pubsub = self.client.pubsub()
        self.pubsub.subscribe(CHANNEL)
        found = self.client.sentinel_get_master_addr_by_name(master)
        self.heard = time.monotonic()
        return (found[0], int(found[1])) if found else None

    def messages(self, now: float) -> list[Any]:
        """What has arrived (without waiting); a PING when silent; raises when dead."""
        received = []
        while (message := self.pubsub.get_message(timeout=0)) is not None:
            received.append(message)
        if received:
            self.heard = now
        elif now - self.heard > HEARTBEAT_DEADLINE:
            raise ConnectionError(f"sentinel {self.address[0]}:{self.address[1]} silent for {HEARTBEAT_DEADLINE}s")
        elif now - self.heard > HEARTBEAT:
            self.pubsub.ping()
        return received

    def socket(self) -> Any:
        connection = self.pubsub.connection if self.pubsub is not None else None
        return connection._sock if connection is not None else None

    def close(self, now: float) -> None:
        for closable in (self.pubsub, self.client):
            if closable is not None:
                with contextlib.suppress(Exception):
                    closable.close()
        self.pubsub = self.client = None
        self.retry_at = now + RETRY_INTERVAL


class SwitchWatcher:
    def __init__(self, sentinels: tuple[Address, ...], master: str, kwargs: dict[str, Any], repoint: Repoint) -> None:
        self.sentinels = tuple(sentinels)
        self.master = master
        self.kwargs = kwargs  # the sentinels' password, if any
        self.repoint = repoint
        self._callbacks: list[Callable[[], SwitchCallback | None]] = []
        self.after_fork()

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.master_address: Address | None = None  # as the sentinels last told this process
        self.switched_at: float | None = None  # when this process last applied a switch (monotonic)
        self._replaced: dict[Address, float] = {}  # former masters, and until when to doubt them

    def add(self, callback: SwitchCallback) -> None:
        """Call ``callback()`` on each switch; a bound method is held weakly (its cache may go)."""
        ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)
        with self._lock:
            self._callbacks.append(ref)

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="sentinel-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        subscriptions = [_Subscription(address, self.kwargs) for address in self.sentinels]
        try:
            while not self._stop.is_set():
                try:
                    self._round(subscriptions)
                except Exception:  # a bug must not end the thread
                    log.exception("following the sentinels' announcements failed")
                    self._stop.wait(RETRY_INTERVAL)
        finally:
            for subscription in subscriptions:
                subscription.close(0.0)

    def _round(self, subscriptions: list[_Subscription]) -> None:
        """(Re)subscribe where due, wait for news (at most ``HEARTBEAT``), apply it."""
        for subscription in subscriptions:
            if subscription.pubsub is None and time.monotonic() >= subscription.retry_at:
                try:
                    found = subscription.open(self.master)
                except REDIS_ERRORS + (OSError,):
                    subscription.close(time.monotonic())
                    continue
                if found:
                    self._observe(found)
        sockets = [sock for sock in (s.socket() for s in subscriptions) if sock is not None]
        if not sockets:
            self._stop.wait(RETRY_INTERVAL / 4)
            return
        with contextlib.suppress(OSError, ValueError):  # closed under us: its read below fails
            select.select(sockets, [], [], HEARTBEAT)
        now = time.monotonic()
        for subscription in subscriptions:
            if subscription.pubsub is None:
                continue
            try:
                messages = subscription.messages(now)
            except REDIS_ERRORS + (OSError,):
                subscription.close(now)
                continue
            for message in messages:
                if message["type"] == "message":
                    self._announced(message["data"])

    def _announced(self, data: bytes | str) -> None:
        """``<master> <old ip> <old port> <new ip> <new port>``."""
        fields = (data.decode() if isinstance(data, bytes) else data).split()
        if len(fields) == 5 and fields[0] == self.master:
            self._observe((fields[3], int(fields[4])), (fields[1], int(fields[2])))

    def _observe(self, new: Address, old: Address | None = None) -> None:
        known = self.master_address
        if old is None and self._replaced.get(new, 0.0) > time.monotonic():
            return  # a sentinel that has not heard of the switch yet names the former master
        self.master_address = new
        if known is None or known == new:
            return  # the first answer, or a switch this process has already applied
        old = old or known
        self._replaced = {old: time.monotonic() + REPLACED_DOUBT}
        log.warning("Sentinel failover: master %r moved from %s:%d to %s:%d", self.master, *old, *new)
        self.repoint(self.master, frozenset(self.sentinels), old, new)
        self.switched_at = time.monotonic()
        with self._lock:
            self._callbacks = [ref for ref in self._callbacks if ref() is not None]
            callbacks = [ref() for ref in self._callbacks]
        for callback in callbacks:
            if callback is None:
                continue
            try:
                callback()
            except Exception:
                log.exception("a failover callback failed")


_watchers: dict[tuple[frozenset[Address], str], SwitchWatcher] = {}
_registry_lock = threading.Lock()


def watcher(sentinels: tuple[Address, ...], master: str, kwargs: dict[str, Any], repoint: Repoint) -> SwitchWatcher:
    """This process's watcher of that master on those sentinels (one thread however many apps)."""
    key = (frozenset(sentinels), master)
    found = _watchers.get(key)
    if found is None:
        with _registry_lock:
            found = _watchers.setdefault(key, SwitchWatcher(sentinels, master, kwargs, repoint))
    return found


def _reset_after_fork() -> None:
    global _registry_lock
    _registry_lock = threading.Lock()
    for found in _watchers.values():
        found.after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
