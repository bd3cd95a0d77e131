"""The readings query cache: partials of ended buckets, the range's edges and recent readings in Redis.

A readings query is split like a time-series query frontend (Cortex's results cache, Trickster)
splits a range (``plan.py``): buckets that lie wholly inside the range and **ended at least
``margin`` ago** come from aligned chunks of ``CHUNK_BUCKETS`` buckets in Redis. The rest are the
query's **edges**: the range's partial first bucket and, when the range ends in an ended bucket,
its partial last one (each cached whole, as its readings' partials, so any instant in it can start
or end a range), and the buckets not yet final, read from the **push log** (``log.py``: every push
adds its reading before it answers). All of it comes in one round trip per member; MongoDB
computes only what is missing (one aggregation per stretch, ``stretches.py``). Every part is
partials (``partials.py``) that combine exactly, so the answer equals the uncached one.

Keys (``app/cache/keys.py``) are per chain **member** (owner, device id, device name), measurement,
family of partials, resolution and chunk: a chain that grows or shrinks only reads other members'
chunks, nothing to invalidate. The owner in the key means a later owner of a pair never reads an
earlier owner's aggregates (their readings carry another ``owner_id`` anyway).

Each member has a generation key: a random token created by the first read that finds it missing,
and stored inside every chunk written under it. A chunk counts only while its token is the
member's current one, and the write script stores chunks only if the token is still current.
Dropping a member's chunks (anything that writes readings into ended buckets: the importer,
``demo-data``; a pair whose last key is deleted) is one UNLINK of the generation key, made through
the lookup cache's durable invalidation (retried, and this process reads nothing from Redis while
one is pending); the orphaned chunks expire with their TTL. A query that read the old token before
the drop cannot write behind it: its token is no longer current.

**The margin**: readings are stamped by the clock of whichever replica took the push, then
inserted. A bucket is final only once no reading stamped inside it can still arrive, i.e. after
the slowest insert (at most a few times ``MONGO_TIMEOUT_MS``: server selection, socket timeout,
one retried write) plus the skew between replicas' clocks (milliseconds under NTP). We take
``max(120 s, 10 × MONGO_TIMEOUT_MS)``: a wide safety factor, and it costs only that about two
minutes more of readings are aggregated live.

**Bounded**: a query uses the cache only when its cacheable part needs at most ``MAX_CHUNK_KEYS``
(member, chunk) pairs (so a year at one-minute buckets, 527,040 buckets, is not cached at all: it
runs as today); it writes chunks of at most ``MAX_CHUNK_BYTES`` each and ``MAX_WRITE_BYTES`` in all.

Fail-open: the lookup cache's breaker, timeouts and error counting. Redis unreachable, or any
Redis error, and the query runs on MongoDB exactly as it does without the cache.

**Kept whole**: a query that ends now and found everything here may be kept whole in the near
cache and served before Flask while it is current (``memo.py``: its ``Watch``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import current_app

from app import metrics
from app.cache.keys import query_gen_key, query_memo_key
from app.cache.shared import QUERY, SharedCache, shared_cache
from app.readings.log import fill
from app.readings.memo import MEMO_SECONDS, Watch, bounds, memo_keys
from app.readings.partials import Partial
from app.readings.plan import Member, Plan, Rows
from app.redis_topology import REDIS_ERRORS

log = logging.getLogger("app.readings")

MIN_MARGIN_MS = 120_000


class QueryStore:
    """The one door from the readings cache to the shared cache (``app/cache/shared.py``): its
    client, key prefix, breaker, counters and changes."""

    def __init__(self, cache: SharedCache) -> None:
        self.cache = cache
        self.client = cache.client

    @classmethod
    def current(cls) -> QueryStore:
        return cls(shared_cache())

    def key(self, relative: str) -> str:
        return self.cache.keys.value(relative)

    def readable(self) -> bool:
        return self.cache.readable()

    def count(self, event: str, amount: int = 1) -> None:
        self.cache.count(QUERY, event, amount=amount)

    def failed(self, exc: BaseException) -> None:
        self.cache.count(QUERY, "errors")
        self.cache.breaker.failure(exc)

    def succeeded(self) -> None:
        self.cache.breaker.success()


def drop_members(members: set[Member]) -> None:
    """Drop every cached chunk of these (owner, device id, device name) before returning: their
    generation keys go through the shared cache's outbox like any invalidation, with their memo
    keys (the answers processes keep whole, ``memo.py``: the change waits for their fence)."""
    if not members:
        return
    keys = [key for member in members for key in (query_gen_key(*member), query_memo_key(*member))]
    with shared_cache().change(keys):
        pass


def margin_ms(config: dict[str, Any]) -> int:
    return max(MIN_MARGIN_MS, 10 * config["MONGO_TIMEOUT_MS"])


def cached_rows(device: dict[str, Any], measurement: str, q: dict[str, Any], watch: Watch | None = None) -> Rows | None:
    """The query's buckets through the cache; None: not cacheable or Redis failed (run uncached).

    ``watch``: a query ending now, whose answer the view may keep whole (``memo.py``): filled in
    with what it depends on when everything came from Redis."""
    config = current_app.config
    if not config["QUERY_CACHE_ENABLED"]:
        return None
    shared = QueryStore.current()
    if not shared.readable():
        return None
    plan = Plan(device, measurement, q, time.time_ns() // 1_000_000 - margin_ms(config))
    if not plan.cacheable:
        return None
    ttl = config["QUERY_CACHE_TTL"]
    keys = memo_keys(shared.cache, plan.members) if watch is not None else ()
    ticket = shared.cache.near.ticket(keys) if keys else None  # before the read: a push since voids it
    began = time.monotonic()
    try:
        found = plan.read(shared, ttl, watch=ticket is not None)
    except REDIS_ERRORS as exc:
        shared.failed(exc)
        return None
    shared.succeeded()
    work = plan.work(found)
    if work is None:
        return None
    hits = sum(len(f.chunks) + len(f.edges) for f in found.values())
    misses = len(plan.members) * (len(plan.chunks) + len(plan.edges)) - hits
    shared.count("hits", hits)
    shared.count("misses", misses)
    holds = bounds(plan, found) if ticket is not None and not misses else None
    if holds is not None:  # (so ``watch`` was given)
        watch.keys, watch.ticket, watch.units = keys, ticket, hits
        watch.start_until_ms, watch.end_until_ms = holds
        watch.expires = began + MEMO_SECONDS
    answer: dict[int, Partial] = {}
    for f in found.values():
        for buckets in f.chunks.values():
            for b, partial in buckets:
                if plan.first <= b < plan.stop:
                    plan.add(answer, b * plan.width, partial)
        for index, readings in f.edges.items():
            plan.fold(answer, plan.edges[index], readings)
    if misses:
        shared.count("loads")
        with metrics.load_timer(QUERY.name):
            fetched, raws = plan.fetch(work, answer)
            fills = [(member, f) for member, f in found.items() if f.log_state == "fill"]
            for member, f in fills:
                fill(shared, member, f.token, f.filler, ttl)
        try:
            plan.write(shared, found, fetched, raws, ttl)
        except REDIS_ERRORS as exc:
            shared.failed(exc)
    return plan.rows(answer)
