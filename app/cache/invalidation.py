"""Invalidation: dropping cached lookups from Redis, a correctness operation.

It is attempted against Redis whatever the circuit breaker says (bounded by the same short
timeouts), and made durable (see ``replicas.py``). Keys that could not be dropped, or whose
drop no replica acknowledged, stay pending: the cache's background thread retries them every
``CACHE_PROBE_INTERVAL``, and this process reads nothing from Redis while any are pending (it
would read the entries it failed to drop). What keeps them beyond this process's life is the
outbox record they came from (``outbox.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from app.cache.replicas import Replicas
from app.redis_topology import REDIS_ERRORS, Topology


class Invalidator:
    def __init__(
        self,
        topology: Topology,
        client: Any,
        replicas: Replicas,
        on_error: Callable[[BaseException], None],
        trusts_new_primary: Callable[[str], bool] = lambda key: False,
    ):
        self.topology = topology
        self.client = client
        self.replicas = replicas
        self.on_error = on_error  # counts the error and tells the breaker
        # Keys whose drop counts on a primary first seen alone (``Replicas.write``'s first_alone_ok):
        # the readings cache's, which the push log's appends write on the same terms.
        self.trusts_new_primary = trusts_new_primary
        self.after_fork()

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._pending: set[str] = set()  # the hot path reads this attribute: empty means nothing pending

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def unlink(self, keys: Iterable[str]) -> bool:
        """Drop these keys now; False when some are left pending for the background retry.

        On Sentinel or Cluster a drop that failed is tried once more, at once, after asking where
        the primaries are now: a process that has not used a failed-over primary since the
        failover still sends its keys to the old one.
        """
        failed = self._apply(set(keys))
        if failed and self.topology.may_move:
            self.topology.refresh(self.client)
            failed = self._apply(failed)
        if failed:
            with self._lock:
                self._pending |= failed
        return not failed

    def retry(self) -> bool:
        """Drop the pending keys (the background thread); whether none is left."""
        with self._lock:
            keys = set(self._pending)
        if not keys:
            return True
        failed = self._apply(keys)
        with self._lock:
            # Keys added meanwhile stay; those applied now leave.
            self._pending -= keys - failed
            return not self._pending

    def _apply(self, keys: set[str]) -> set[str]:
        """UNLINK on every primary concerned (one pipeline each); the keys not durably dropped."""
        failed: set[str] = set()
        try:
            groups = self.topology.by_slot(self.client, keys)
        except REDIS_ERRORS as exc:
            self.on_error(exc)
            return keys
        for name, (node, slots) in groups.items():
            lenient = all(self.trusts_new_primary(key) for slot in slots for key in slot)
            add = lambda pipe, slots=slots: [pipe.unlink(*s) for s in slots]  # noqa: E731
            try:
                durable = self.replicas.write(name, node, add, first_alone_ok=lenient)[1]
            except REDIS_ERRORS as exc:
                self.on_error(exc)
                durable = False
            if not durable:
                failed.update(key for slot in slots for key in slot)
        return failed
