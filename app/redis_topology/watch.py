"""The sentinels' failover announcements, followed by one daemon thread per process and master.

The thread subscribes to ``+switch-master`` on one reachable sentinel (rotating through them on
any error or a heartbeat left unanswered) and, on a switch of our master, repoints this
process's pools at the new master and calls the registered callbacks (the cache empties its
near cache and forgets what it knew of the old master's replicas). Whenever it (re)subscribes
it also asks that sentinel where the master is, so a switch announced while it was not
listening is not missed.

It is started on first use, in the process that uses it: never before a fork (a forked child
has no thread; ``os.register_at_fork`` resets the watcher, which the child starts again on its
own first use), and so after gevent's monkey-patching, where it runs as a greenlet.

Considered: redis-py's ``Sentinel`` client, which only ever asks (no subscription), and a
``PubSub.run_in_thread``, which neither rotates sentinels nor notices a silent one.
"""

from __future__ import annotations

import logging
import os
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
HEARTBEAT = 0.5  # seconds of silence before a PING on the subscription
HEARTBEAT_DEADLINE = 2.0  # nothing heard for this long: that sentinel is left for the next
RETRY_INTERVAL = 0.2  # seconds between two sentinels tried
REPLACED_DOUBT = 30.0  # seconds a sentinel naming a replaced master is taken to lag behind


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
        turn = 0
        while not self._stop.is_set():
            host, port = self.sentinels[turn % len(self.sentinels)]
            turn += 1
            try:
                self._follow(host, port)
            except REDIS_ERRORS + (OSError,):
                pass
            except Exception:  # a bug must not end the thread: try the next sentinel
                log.exception("following the sentinels' announcements failed")
            self._stop.wait(RETRY_INTERVAL)

    def _follow(self, host: str, port: int) -> None:
        """Listen to one sentinel until it fails or stops answering."""
        client = Redis(host, port, socket_timeout=HEARTBEAT_DEADLINE, socket_connect_timeout=HEARTBEAT_DEADLINE,
                       client_name="opensensor-watch", **self.kwargs)  # fmt: skip
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(CHANNEL)
            found = client.sentinel_get_master_addr_by_name(self.master)
            if found:
                self._observe((found[0], int(found[1])))
            heard = time.monotonic()
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=HEARTBEAT)
                now = time.monotonic()
                if message is not None:
                    heard = now
                    if message["type"] == "message":
                        self._announced(message["data"])
                elif now - heard > HEARTBEAT_DEADLINE:
                    raise ConnectionError(f"sentinel {host}:{port} silent for {HEARTBEAT_DEADLINE}s")
                elif now - heard > HEARTBEAT:
                    pubsub.ping()
        finally:
            pubsub.close()
            client.close()

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
