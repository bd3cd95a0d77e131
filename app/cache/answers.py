"""Whole answers a process keeps over keys Redis tracks for its near cache (``near.py``).

A dashboard's answer (``app/readings/memo.py``) is computed from many Redis values; it depends on
a few *watched* keys (its members' memo keys) that every change of those values deletes. A
**ticket**, taken before the read the answer is computed from, records how many invalidations of
each watched key this process has applied (and how often L1 was emptied); the answer is kept and
served only while they are unchanged, under the near cache's own coherence rules (a hit's: what
has arrived applied first, the heartbeat fresh). A change that deletes a watched key answers
after its fence (``fence.py``), so no answer over it is served once the change has answered.

Kept in an LRU of 1/16 of L1's bounds (entries and bytes), each at most ``MEMO``'s own TTL.
"""

from __future__ import annotations

import time
from typing import Any

from app.cache.lru import Lru

MAX_WATCHED = 65_536  # keys with tickets out; beyond, all tickets are voided at once


class Answers:
    """Mixed into ``NearCache``: its lock, ``_sync``, heartbeat and bounds guard these too."""

    _lock: Any
    _serving: bool
    _fresh_until: float
    _acks: list[str]
    _epochs: dict[str, int]  # per watched key: its invalidations applied (``_forget`` counts)
    _epoch: int  # L1 emptied (``_empty`` counts): every ticket is void
    _answers: Lru
    max_entry_bytes: int

    def _sync(self) -> bool: ...
    def _send_acks(self) -> None: ...

    def _answers_after_fork(self, max_entries: int, max_bytes: int) -> None:
        self._answers = Lru(max_entries, max_bytes)
        self._epochs = {}
        self._epoch = 0

    def _changed(self, key: str) -> None:
        """An invalidation of ``key`` applied (lock held)."""
        if key in self._epochs:
            self._epochs[key] += 1

    def _void(self) -> None:
        """L1 emptied (lock held): every answer and ticket goes."""
        self._epoch += 1
        self._epochs.clear()
        self._answers.clear()

    def ticket(self, keys: tuple[str, ...]) -> tuple[int, ...] | None:
        """Taken before reading from Redis what an answer depends on (``keys``, which Redis tracks
        for this cache): an invalidation of any of them since, or L1 emptied, voids it. None: L1
        is off or not coherent."""
        if not self._serving:
            return None
        with self._lock:
            if len(self._epochs) + len(keys) > MAX_WATCHED:
                self._epoch += 1  # a rare full reset keeps the table bounded
                self._epochs.clear()
            epochs = self._epochs
            return (self._epoch, *(epochs.setdefault(key, 0) for key in keys))

    def keep(self, key: str, answer: Any, keys: tuple[str, ...], ticket: tuple[int, ...], ttl: float) -> None:
        """Hold ``answer`` (its bytes: ``len``) while nothing in ``keys`` is invalidated: unless
        something was since ``ticket``. In an LRU of 1/16 of L1's bounds."""
        with self._lock:
            if self._sync() and self._unchanged(keys, ticket) and len(key) + len(answer) <= self.max_entry_bytes:
                self._answers.add(key, (answer, keys, ticket), time.monotonic() + ttl, len(answer))
        if self._acks:
            self._send_acks()

    def held(self, key: str) -> Any:
        """The answer kept under ``key`` if none of its keys was invalidated and L1 is coherent
        now (what has arrived applied first, the heartbeat fresh): a hit's test. Else None."""
        if not self._serving:
            return None
        with self._lock:
            answer = self._held(key)
        if self._acks:
            self._send_acks()
        return answer

    def _held(self, key: str) -> Any:
        if not self._sync():
            return None
        now = time.monotonic()
        entry = self._answers.entries.get(key)
        if entry is None or now > self._fresh_until:
            return None
        (answer, keys, ticket), expires, _ = entry
        if expires < now or not self._unchanged(keys, ticket):
            self._answers.pop(key)
            return None
        self._answers.entries.move_to_end(key)
        return answer

    def _unchanged(self, keys: tuple[str, ...], ticket: tuple[int, ...]) -> bool:
        epochs = self._epochs
        return ticket[0] == self._epoch and all(epochs.get(k) == seen for k, seen in zip(keys, ticket[1:], strict=True))
