"""Writes that must survive a failover: an invalidation, a batch of counters.

Redis replicates asynchronously, so a primary that fails right after a write can be replaced
by a replica that never saw it: an UNLINK undone brings a stale lookup back. After such a
write we send ``WAIT <replicas> <CACHE_REPLICA_WAIT_MS>`` on the same connection (one pipeline)
when the primary has replicas, and call the write done only once every connected replica has
acknowledged it (whichever one a failover promotes has it).
Whether a primary has replicas is read from ``INFO replication`` and kept a few seconds.

A primary that had replicas and suddenly has none may be the losing side of a failover (a
Sentinel failover detaches the promoted replica first, and demotes the old master up to ten
seconds later; what it is sent meanwhile is lost). Writes to it count as durable only once it
has had no replicas for ``LOST_GRACE`` seconds; until then they are retried, and the retry
asks the topology again where the primary is. On Sentinel and Cluster, so is a primary first
seen without replicas: this process cannot tell a primary long alone from the losing side of a
failover in progress (the chaos run: a fresh ``users rotate-token`` process asked a sentinel that
still named the old master, found it without replicas, called its drop done, and the drop was
lost with that master's demotion), nor from a replica just promoted, which a second failover
could replace before its own replicas attach.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from redis import Redis

REPLICAS_TTL = 5.0  # seconds a primary's replica count is trusted (one with none: NO_REPLICAS_TTL)
NO_REPLICAS_TTL = 1.0  # a replica that (re)attaches is waited for within a second
LOST_GRACE = 10.0  # seconds a primary that lost its replicas is suspected of being demoted


class _Primary:
    __slots__ = ("count", "expires", "lost_at", "lost_replicas")

    def __init__(self, count: int, expires: float, lost_at: float | None, lost_replicas: bool = False) -> None:
        self.count, self.expires, self.lost_at = count, expires, lost_at
        self.lost_replicas = lost_replicas  # lost_at is when it lost its replicas, not when first seen alone


class Replicas:
    def __init__(self, wait_ms: int, may_move: bool = False) -> None:
        self.wait_ms = wait_ms
        self.may_move = may_move  # Sentinel, Cluster: a primary can be replaced by a replica
        self.after_fork()

    def after_fork(self) -> None:
        self._lock = threading.Lock()
        self._known: dict[str, _Primary] = {}

    def count(self, name: str, node: Redis, fresh: bool = False) -> int:
        """Replicas connected to this primary (``name`` as the topology names it: its address)."""
        known = self._known.get(name)
        now = time.monotonic()
        if known is not None and not fresh and known.expires > now:
            return known.count
        connected = int(node.info("replication").get("connected_slaves", 0))
        with self._lock:
            known = self._known.get(name)
            alone = known is not None and not connected
            lost_at = known.lost_at if alone else None
            lost_replicas = known.lost_replicas if alone else False
            if known is not None and known.count and not connected:
                lost_at, lost_replicas = now, True
            elif known is None and not connected and self.may_move:
                lost_at = now  # first seen alone: alone for long, or about to be replaced?
            expires = now + (REPLICAS_TTL if connected else NO_REPLICAS_TTL)
            self._known[name] = _Primary(connected, expires, lost_at, lost_replicas)
        return connected

    def _settled_alone(self, name: str, first_alone_ok: bool = False) -> bool:
        """No replica to fail over to, and not for a moment only (see the module's docstring).
        ``first_alone_ok``: a primary first seen alone counts as settled (only losing its
        replicas makes it suspect)."""
        known = self._known.get(name)
        if known is None or known.lost_at is None or (first_alone_ok and not known.lost_replicas):
            return True
        return time.monotonic() - known.lost_at >= LOST_GRACE

    def forget(self) -> None:
        """After an outage or a failover the primaries may have changed."""
        with self._lock:
            self._known.clear()

    def write(
        self, name: str, node: Redis, add: Callable[[Any], object], first_alone_ok: bool = False
    ) -> tuple[list[Any], bool]:
        """Run the commands ``add`` puts in a pipeline on this primary: (their replies, durable).

        Not durable: applied on the primary, but no replica acknowledged them in time (the
        caller retries; the commands must be idempotent). Raises what Redis raised.
        ``first_alone_ok``: see ``_settled_alone`` (a push log's append: ``app/readings/log.py``).
        """
        replicas = self.count(name, node)
        pipe = node.pipeline(transaction=False)
        add(pipe)
        if replicas:
            # Every connected replica, not one: a failover promotes one of them, not always the
            # one that acknowledged (a primary killed and its best replica with it).
            pipe.execute_command("WAIT", replicas, self.wait_ms)
        replies = pipe.execute()
        if not replicas:
            return replies, self._settled_alone(name, first_alone_ok)
        acknowledged = replies.pop()
        if acknowledged >= replicas:
            return replies, True
        connected = self.count(name, node, fresh=True)  # a replica gone meanwhile is not waited for
        if connected:
            return replies, acknowledged >= connected
        return replies, self._settled_alone(name, first_alone_ok)
