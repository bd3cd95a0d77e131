"""The cache's background thread: what no request should wait for.

One per process, started by its first lookup or change (never before a fork or a gevent
worker's monkey-patching: the thread and its events are created in the process that runs it).
Each round it

- polls the outbox every ``OUTBOX_POLL_INTERVAL`` (applies what others left, renews the lease:
  ``outbox.py``);
- while the circuit breaker is open or an invalidation is pending, probes Redis every
  ``CACHE_PROBE_INTERVAL``: retries the pending invalidations, then closes the breaker;
- flushes the counters every ``CACHE_FLUSH_INTERVAL``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from app.redis_topology import REDIS_ERRORS

if TYPE_CHECKING:
    from app.cache.shared import SharedCache

log = logging.getLogger("app.cache")


class Background:
    def __init__(self, cache: SharedCache, config: dict[str, Any]) -> None:
        self.cache = cache
        self.flush_interval: float = config["CACHE_FLUSH_INTERVAL"]
        self.probe_interval: float = config["CACHE_PROBE_INTERVAL"]
        self.poll_interval: float = config["OUTBOX_POLL_INTERVAL"]
        self.after_fork()

    def after_fork(self) -> None:
        """In a forked child the parent's thread is gone: a fresh one starts on first use."""
        self._lock = threading.Lock()
        self.wake = threading.Event()
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.started = False
        self._next_flush = 0.0
        self._next_poll = 0.0

    def start(self) -> None:
        with self._lock:
            if self.started:
                return
            self.started = True
        self._next_flush = time.monotonic() + self.flush_interval  # nothing to send before then
        self.thread = threading.Thread(target=self._run, name="shared-cache", daemon=True)
        self.thread.start()
        self.cache.topology.watch()  # a Sentinel set's failover announcements (a no-op elsewhere)

    def _urgent(self) -> bool:
        return self.cache.breaker.is_open or self.cache.invalidator.pending

    def _run(self) -> None:
        with self.cache.app.app_context():
            self._loop()

    def _loop(self) -> None:
        wake, stop = self.wake, self._stop
        while not stop.is_set():
            now = time.monotonic()
            due = min(self._next_poll, self._next_flush) - now
            wake.wait(max(0.0, min(due, self.probe_interval) if self._urgent() else due))
            wake.clear()
            if stop.is_set():
                return
            try:
                self.tick()
            except Exception:  # a bug must not end the thread that closes the breaker
                log.exception("the cache's background round failed")
                stop.wait(1.0)

    def tick(self) -> None:
        """One round: probe Redis if needed, poll the outbox when due, flush when due."""
        cache = self.cache
        if self._urgent():
            self.probe()
        now = time.monotonic()
        if now >= self._next_poll:
            self._next_poll = now + self.poll_interval
            cache.outbox.poll()
        if now >= self._next_flush and cache.breaker.allow():
            self._next_flush = now + self.flush_interval
            cache.flush()

    def probe(self) -> bool:
        """Retry pending invalidations, then close the breaker, if Redis answers a write.

        In that order: a process whose breaker is closed has nothing pending it could read
        past. Whether Redis is fully usable again (nothing left pending).
        """
        cache = self.cache
        if cache.breaker.is_open:
            try:
                cache.topology.ping(cache.client, cache.keys.probe)
            except REDIS_ERRORS as exc:
                cache.topology.refresh(cache.client)
                cache.breaker.trip(exc)
                return False
        done = not cache.invalidator.pending or cache.invalidator.retry()
        if not done:
            cache.topology.refresh(cache.client)
        cache.breaker.close()
        return done

    def stop(self) -> None:
        """End the thread; its round in progress ends first (it may be using the connections)."""
        self._stop.set()
        self.wake.set()
        thread = self.thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(5)
