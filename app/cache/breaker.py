"""A per-process circuit breaker for the cache's Redis.

It opens after ``threshold`` outages in a row (no answer: refused, timed out, cluster down),
never for an answer that is an error (out of memory, read-only): those cost no waiting, and
opening for them would make the cache flap. While open, requests do not touch Redis; the
cache's background thread probes Redis every ``CACHE_PROBE_INTERVAL`` and closes it as soon
as Redis answers, so no request pays for the probe and none bypasses a Redis that is back.

Considered: pybreaker; it counts failures the same way, but its half-open probe is a user
request and its reopening waits out a fixed cool-down.
"""

from __future__ import annotations

import logging
import threading
import time

from app.redis_topology import OUTAGE_ERRORS

log = logging.getLogger("app.cache")


class CircuitBreaker:
    def __init__(self, threshold: int, probe_interval: float):
        self.threshold = threshold
        self.probe_interval = probe_interval
        self.after_fork()
        self._failures = 0
        self._opened_at: float | None = None
        self.on_change = lambda is_open: None  # set by the cache: wakes its background thread

    def after_fork(self) -> None:
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """Whether a request may use Redis: never while open (the background probe closes it)."""
        return self._opened_at is None

    def success(self) -> None:
        if self._failures:
            self._failures = 0

    def failure(self, exc: BaseException) -> None:
        if not isinstance(exc, OUTAGE_ERRORS):
            return
        with self._lock:
            self._failures += 1
            if self._opened_at is not None or self._failures < self.threshold:
                return
            self._opened_at = time.monotonic()
        log.warning(
            "cache disabled: Redis failed %d times in a row (%s); serving from MongoDB, probing every %.1fs",
            self._failures,
            exc.__class__.__name__,
            self.probe_interval,
        )
        self.on_change(True)

    def trip(self, exc: BaseException) -> None:
        """Open at once (a failed probe, or an outage seen where no request waits)."""
        with self._lock:
            opened = self._opened_at is None
            self._failures = max(self._failures, self.threshold)
            if opened:
                self._opened_at = time.monotonic()
        if opened:
            log.warning("cache disabled: Redis unreachable (%s); serving from MongoDB", exc.__class__.__name__)
            self.on_change(True)

    def close(self) -> None:
        with self._lock:
            closed = self._opened_at is not None
            self._failures = 0
            self._opened_at = None
        if closed:
            log.warning("cache enabled: Redis reachable again")
            self.on_change(False)
