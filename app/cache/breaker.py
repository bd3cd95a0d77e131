"""A per-process circuit breaker for the cache's Redis.

Considered: pybreaker; it counts failures the same way but its half-open probe is a
user request, and we probe from the background flusher so no request ever pays for it.
"""

from __future__ import annotations

import logging
import threading
import time

from app import metrics

log = logging.getLogger("app.cache")


class CircuitBreaker:
    def __init__(self, threshold: int, cooldown: float):
        self.threshold = threshold
        self.cooldown = cooldown
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """Whether a request may use Redis: never while open (the background probe closes it)."""
        return self._opened_at is None

    def probe_due(self) -> bool:
        opened = self._opened_at
        return opened is not None and time.monotonic() - opened >= self.cooldown

    def success(self) -> None:
        if self._failures:
            self._failures = 0

    def failure(self, exc: BaseException) -> None:
        with self._lock:
            self._failures += 1
            if self._opened_at is None and self._failures >= self.threshold:
                self._opened_at = time.monotonic()
                metrics.breaker_changed(True)
                log.warning(
                    "cache disabled: Redis failed %d times in a row (%s); serving from MongoDB, probing every %.0fs",
                    self._failures,
                    exc.__class__.__name__,
                    self.cooldown,
                )

    def trip(self, exc: BaseException) -> None:
        """Open at once (Redis unreachable at start-up or on a failed probe)."""
        with self._lock:
            if self._opened_at is None:
                log.warning("cache disabled: Redis unreachable (%s); serving from MongoDB", exc.__class__.__name__)
            self._failures = max(self._failures, self.threshold)
            self._opened_at = time.monotonic()
            metrics.breaker_changed(True)

    def close(self) -> None:
        with self._lock:
            if self._opened_at is not None:
                log.warning("cache enabled: Redis reachable again")
                metrics.breaker_changed(False)
            self._failures = 0
            self._opened_at = None
