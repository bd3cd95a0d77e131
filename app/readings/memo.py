"""A dashboard's answer, kept whole in the process and served before Flask while it is current.

A dashboard polls the same query (``readings/temp?resolution=30``: the last 24 h) every few
seconds. The query cache (``cache.py``) answers it without MongoDB, but still reads its chunks
and push log from Redis, decodes and folds them, and encodes the answer: about a millisecond of
CPU where the warm device read costs about twenty microseconds (``python -m bench.hot_profile``).
So the answer of a query that **ends now** (no ``end``) is kept in the near cache, keyed by the
pair, the measurement and the raw query string, and the warm read's lane (``app/devices/hot.py``)
serves it with this request's ``start`` and ``end`` in place, for as long as its items are what
the query cache would compute now:

- **no push or drop since**: every member has a *memo key* (``query:memo:{member}``, under a
  prefix Redis tracks for the near caches). The query's read script sets it (for 60 s, renewed
  below 30 s) and the answer is kept on a ticket taken before that read (``NearCache.ticket``):
  an invalidation of the key voids it. A push deletes the key in its append script and, if it
  existed, waits for the near caches' fence (``fence.py``) before it answers, as a key change
  does: so a reading answered 201 is in every answer served after. A member's drop
  (``drop_members``: the importer, ``demo-data``, a pair's last key deleted, ``/cache/invalidate
  query:*``, ``/cache/clear``) deletes it the same way. A push to a member nobody holds an
  answer over finds no key and waits for nothing.
- **the same readings in the range**: a reading is in it while ``start <= stamp < end``. The
  answer holds while ``start`` has not passed the earliest reading it includes (known from the
  range's partial first bucket, cached as readings: else the first whole bucket's start), and
  ``end`` has not reached the next reading already in the push log (a replica whose clock runs
  ahead stamps in the future).
- **at most ``MEMO_SECONDS``**, only from a read that found everything in Redis (chunks, edges
  and the push log), only while the near cache serves (coherent, breaker closed, lease current).

The device part of the answer (chain, public flag) is checked against the near cache's lookup
on every use; the caller's access as the warm read does. Counted as the query cache's hits (the
chunks and edges the answer stands for) and the lookups' near-cache hits, as the view counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from app.cache.keys import query_memo_key
from app.cache.shared import SharedCache
from app.readings.partials import to_ms
from app.readings.schema import MAX_SPAN
from app.timeutil import isoformat

if TYPE_CHECKING:
    from app.readings.plan import Found, Member, Plan

MEMO_SECONDS = 10.0  # the longest an answer is served: past it, recomputed from Redis
WATCH_MS = 60_000  # a memo key's life when set
RENEW_BELOW_MS = 30_000  # a read renews a memo key with less left (above MEMO_SECONDS: never gone under an answer)
DEFAULT_SPAN = timedelta(hours=24)  # ``parse_query``'s range without start
NEVER = 2**62  # ms: no reading is stamped that late


@dataclass
class Watch:
    """A query the view may keep: it ends now, from a fixed ``start`` or 24 h before. The query
    cache fills in what the answer depends on (``cache.py``), only if everything came from Redis:
    until then ``ticket`` is None, and nothing is kept."""

    moving: bool  # no start: 24 h before each request's now
    keys: tuple[str, ...] = ()  # the members' memo keys (full names)
    ticket: tuple[int, ...] | None = None
    start_until_ms: int = 0  # the answer holds while start <= this
    end_until_ms: int = 0  # ... and end <= this
    expires: float = 0.0  # monotonic
    units: int = 0  # the query cache's hits it stands for


@dataclass
class Answer:
    body_head: bytes  # up to ``"start":``
    body_tail: bytes  # from after ``end``'s value on
    start: datetime | None  # a fixed start; None: 24 h before now
    owner_id: str
    chain: list[str]
    public: bool
    watch: Watch  # what it holds while, and stands for

    def __len__(self) -> int:
        return len(self.body_head) + len(self.body_tail) + 200


def bounds(plan: Plan, found: dict[Member, Found]) -> tuple[int, int] | None:
    """While ``start`` is at most the first and ``end`` at most the second (ms), the query's range
    holds the readings it holds now: ``start`` has not passed the earliest it includes, nor ``end``
    reached the next one in the push logs. None: unknown (a log not read whole).

    The earliest is in the range's partial first bucket, whose readings the read brought
    (``found``), or else no earlier than the first whole bucket's start."""
    edges = plan.edges
    if not any(e.bucket is None for e in edges) or any(f.log_state != "ok" for f in found.values()):
        return None
    start_until = plan.first * plan.width
    if edges and edges[0].bucket == plan.first - 1:
        for got in found.values():
            for at_ms, _ in got.edges.get(0, ()):
                if edges[0].low <= at_ms < edges[0].high:
                    start_until = min(start_until, at_ms)
    end_until = min((f.after for f in found.values() if f.after >= 0), default=NEVER)
    return start_until, end_until


def memo_keys(cache: SharedCache, members: list[tuple[str, str, str]]) -> tuple[str, ...]:
    return tuple(cache.keys.value(query_memo_key(*member)) for member in members)


def answer_key(device_id: str, device_name: str, measurement: str, query_string: str) -> str:
    return f"{device_id}|{device_name}|{measurement}?{query_string}"


def keep(
    cache: SharedCache, device: dict[str, Any], measurement: str, query_string: str, q: dict[str, Any],
    body: bytes, watch: Watch,
) -> None:  # fmt: skip
    """Keep the view's answer (``body``, jsonify's bytes) if the query cache vouched for it."""
    if watch.ticket is None:
        return
    start, end = isoformat(q["start"]), isoformat(q["end"])
    marker = f'"start":"{start}","end":"{end}"'.encode()
    at = body.find(marker)
    if at < 0 or body.find(marker, at + 1) >= 0:
        return
    answer = Answer(
        body[:at], body[at + len(marker) :], None if watch.moving else q["start"],
        device["owner_id"], list(device["chain"]), device["public"], watch,
    )  # fmt: skip
    ttl = watch.expires - time.monotonic()
    if ttl > 0:
        key = answer_key(device["device_id"], device["device_name"], measurement, query_string)
        cache.near.keep(key, answer, watch.keys, watch.ticket, ttl)


def served(cache: SharedCache, device: dict[str, Any], measurement: str, query_string: str) -> Answer | None:
    """The kept answer for this request, if it is current; its body is ``body(answer, now)``."""
    answer = cache.near.held(answer_key(device["device_id"], device["device_name"], measurement, query_string))
    if (
        answer is None
        or answer.owner_id != device["owner_id"]
        or answer.chain != device["chain"]
        or answer.public != device["public"]
    ):
        return None
    return answer


def body(answer: Answer, now: datetime) -> bytes | None:
    """The answer's body for a request made at ``now``; None if its items may differ by then."""
    if to_ms(now) > answer.watch.end_until_ms:
        return None
    start = answer.start
    if start is None:
        start = now - DEFAULT_SPAN
        if to_ms(start) > answer.watch.start_until_ms:
            return None
    elif now - start > MAX_SPAN:  # the range has grown too long: a 400 now
        return None
    return b'%s"start":"%s","end":"%s"%s' % (
        answer.body_head, isoformat(start).encode(), isoformat(now).encode(), answer.body_tail,
    )  # fmt: skip
