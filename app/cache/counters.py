"""The cache's own counters and hotness, buffered in the process and added to Redis in batches.

A lookup only bumps in-process counters (no extra round trip); the cache's background thread
sends them every ``CACHE_FLUSH_INTERVAL`` seconds in one script call. Each batch is numbered:
a batch whose reply was lost (Redis applied it, the client timed out) is resent as is, and its
number makes the resend a no-op, so a lookup is never lost nor counted twice. When the primary
has replicas, a batch counts as sent only once a replica has acknowledged it (``WAIT``), so a
failover cannot drop counts that were already taken off the buffer.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from typing import Any

from app.cache.keys import KeySpace
from app.cache.replicas import Replicas
from app.redis_topology import Topology

COUNTERS = ("hits", "misses", "loads", "errors", "l1_hits")  # l1_hits: the part of hits answered in process
MAX_BUFFERED_PAIRS = 10_000

# KEYS: stats hash, hot set (decayed lookups per pair), seen set (last lookup time per pair),
# this process's last batch number. ARGV: batch number, how many counters, the sets' bound, the
# batch's time (Unix seconds), then counter/amount pairs and hot key/amount pairs.
FLUSH = """
local seq = tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[4]) or '0') >= seq then return 0 end
redis.call('SET', KEYS[4], ARGV[1], 'EX', 86400)
local n = tonumber(ARGV[2])
local bound = tonumber(ARGV[3])
for i = 5, 4 + 2 * n, 2 do redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1]) end
for i = 5 + 2 * n, #ARGV, 2 do
  redis.call('ZINCRBY', KEYS[2], ARGV[i + 1], ARGV[i])
  redis.call('ZADD', KEYS[3], 'GT', ARGV[4], ARGV[i])
end
-- both sets stay bounded between warm-ups: the hottest pairs, the most recently looked up
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(bound + 1))
redis.call('ZREMRANGEBYRANK', KEYS[3], 0, -(bound + 1))
return 1
"""


class CounterBuffer:
    def __init__(self, topology: Topology, keys: KeySpace, hot_max: int, replicas: Replicas) -> None:
        self.topology = topology
        self.keys = keys
        self.hot_max = hot_max
        self.replicas = replicas
        self.after_fork()

    def after_fork(self) -> None:
        """Fresh buffers and a fresh batch token: a forked child never resends its parent's counts."""
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one batch on the wire at a time, resent in order
        self._counts: Counter[str] = Counter()
        self._hot: Counter[str] = Counter()
        self._token = secrets.token_hex(8)
        self._seq = 0
        self._unsent: tuple[int, Counter[str], Counter[str], float] | None = None

    def count(self, name: str, key: str | None = None, also: str | None = None, amount: int = 1) -> None:
        """Events (``also``: a second name they count under, in the same lock), and a key's hotness."""
        with self._lock:
            self._counts[name] += amount
            if also is not None:
                self._counts[also] += amount
            if key is not None and (key in self._hot or len(self._hot) < MAX_BUFFERED_PAIRS):
                self._hot[key] += amount

    def pending(self, fields: dict[str, str]) -> dict[str, int]:
        """What this process counted that Redis does not have yet (``{name: field}``)."""
        unsent = self._unsent
        with self._lock:
            return {name: self._counts[field] + (unsent[1][field] if unsent else 0) for name, field in fields.items()}

    def flush(self, client: Any) -> None:
        """Send the unsent batch, then the current buffer; raise (keeping the batch) on failure."""
        with self._flush_lock:
            for _ in range(2):
                batch = self._unsent
                if batch is None:
                    with self._lock:
                        counts, self._counts = self._counts, Counter()
                        hot, self._hot = self._hot, Counter()
                    if not counts and not hot:
                        return
                    self._seq += 1
                    batch = self._unsent = (self._seq, counts, hot, time.time())
                if not self._send(client, *batch):
                    return  # applied, but no replica has it yet: resent (as a no-op) next time
                self._unsent = None

    def _send(self, client: Any, seq: int, counts: Counter[str], hot: Counter[str], at: float) -> bool:
        args: list[Any] = [seq, len(counts), self.hot_max, at]
        for name, amount in counts.items():
            args += (name, amount)
        for key, amount in hot.items():
            args += (key, amount)
        keys = [
            self.keys.stats,
            self.keys.hot,
            self.keys.seen,
            self.keys.flushed(self._token),
        ]
        [(name, (node, _))] = self.topology.by_slot(client, keys).items()  # one slot: one primary
        return self.replicas.write(name, node, lambda pipe: pipe.eval(FLUSH, len(keys), *keys, *args))[1]
