"""The readings query cache: partials of ended buckets in Redis, the fresh edge from MongoDB.

A readings query is split like a time-series query frontend (Cortex's results cache, Trickster)
splits a range: buckets that lie wholly inside the range and **ended at least ``margin`` ago** come
from aligned chunks of ``CHUNK_BUCKETS`` buckets in Redis; the rest (the range's partial first and
last buckets, the open bucket, the buckets that ended within the margin) is computed live. Both
sides are partials (``partials.py``) that combine exactly, so the answer equals the uncached one.

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
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

from flask import current_app

from app import metrics
from app.cache.keys import query_chunk_key, query_gen_key
from app.cache.shared import QUERY, SharedCache, shared_cache
from app.readings.partials import Partial, family, finish, merge, to_ms
from app.readings.stretches import MAX_PER_MEMBER, MAX_QUERIES, Span, Stretch, aggregate, union
from app.redis_topology import REDIS_ERRORS

log = logging.getLogger("app.readings")

SCHEMA = 1  # of a chunk's JSON value
CHUNK_BUCKETS = 64  # buckets per chunk: 32 h at the default 30 minutes, 64 min at one minute
MAX_CHUNK_KEYS = 512  # (member, chunk) pairs one query may use; beyond, the query is not cached
MAX_CHUNK_BYTES = 64 * 1024  # a larger chunk (long lists of relays...) is not written
MAX_WRITE_BYTES = 1024 * 1024  # what one query writes at most
MIN_MARGIN_MS = 120_000

# Per member: KEYS[1] its generation, the rest its chunks. ARGV: a new token (used if the generation
# is missing), the TTL. Returns the current token, then the chunks (nil where absent).
READ = """
local g = redis.call('GET', KEYS[1])
if not g then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  g = ARGV[1]
end
local out = {g}
if #KEYS > 1 then
  local values = redis.call('MGET', unpack(KEYS, 2))
  for i = 1, #KEYS - 1 do out[i + 1] = values[i] end
end
return out
"""
# Per member: write the chunks only if the token read is still the member's generation.
WRITE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[2])
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[2]) end
return 1
"""

Member = tuple[str, str, str]  # owner_id, device_id, device_name
Rows = tuple[int, list[tuple[int, Any, int]]]  # total buckets, this page's (bucket ms, value, count)


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
        for _ in range(amount):
            self.cache.count(QUERY, event)

    def failed(self, exc: BaseException) -> None:
        self.cache.count(QUERY, "errors")
        self.cache.breaker.failure(exc)

    def succeeded(self) -> None:
        self.cache.breaker.success()


def drop_members(members: set[Member]) -> None:
    """Drop every cached chunk of these (owner, device id, device name) before returning: their
    generation keys go through the shared cache's outbox like any invalidation."""
    if not members:
        return
    with shared_cache().change([query_gen_key(*member) for member in members]):
        pass


def margin_ms(config: dict[str, Any]) -> int:
    return max(MIN_MARGIN_MS, 10 * config["MONGO_TIMEOUT_MS"])


def cached_rows(device: dict[str, Any], measurement: str, q: dict[str, Any]) -> Rows | None:
    """The query's buckets through the cache; None: not cacheable or Redis failed (run uncached)."""
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
    try:
        tokens, found = plan.read(shared, ttl)
    except REDIS_ERRORS as exc:
        shared.failed(exc)
        return None
    shared.succeeded()
    stretches = plan.stretches(found)
    if stretches is None:
        return None
    hits = sum(len(chunks) for chunks in found.values())
    misses = len(plan.members) * len(plan.chunks) - hits
    shared.count("hits", hits)
    shared.count("misses", misses)
    answer: dict[int, Partial] = {}
    for chunks in found.values():
        for buckets in chunks.values():
            for b, partial in buckets:
                if plan.first <= b < plan.stop:
                    plan.add(answer, b * plan.width, partial)
    fetched = plan.fetch(stretches, shared if misses else None, answer)
    if misses:
        try:
            plan.write(shared, tokens, found, fetched, ttl)
        except REDIS_ERRORS as exc:
            shared.failed(exc)
    return plan.rows(answer)


class Plan:
    """Which buckets of one query come from which chunks, and which are computed live."""

    def __init__(self, device: dict[str, Any], measurement: str, q: dict[str, Any], ended_before_ms: int) -> None:
        self.device, self.measurement, self.q = device, measurement, q
        self.fam = family(measurement, q["agg"])
        self.width = q["resolution"] * 60_000
        self.start, self.end = to_ms(q["start"]), to_ms(q["end"])
        self.ended = ended_before_ms // self.width  # buckets below this one are final
        self.first = -(-self.start // self.width)  # the first bucket wholly in the range
        self.stop = min(self.end // self.width, self.ended)  # past the last cacheable bucket
        self.members: list[Member] = [(device["owner_id"], d, device["device_name"]) for d in device["chain"]]
        self.chunks: list[int] = []
        if self.first < 0 or self.first >= self.stop:
            self.cacheable = False  # nothing final in the range (or before 1970, bucketed otherwise)
            return
        low, high = self.first // CHUNK_BUCKETS, (self.stop - 1) // CHUNK_BUCKETS
        self.cacheable = (high - low + 1) * len(self.members) <= MAX_CHUNK_KEYS
        self.chunks = list(range(low, high + 1))

    def needed(self, chunk: int) -> int:
        """The bucket a chunk must be complete up to (exclusive) to serve this query."""
        return min((chunk + 1) * CHUNK_BUCKETS, self.stop)

    def complete_to(self, chunk: int) -> int:
        """The bucket a freshly computed chunk is complete up to (exclusive): every ended one."""
        return min((chunk + 1) * CHUNK_BUCKETS, self.ended)

    def chunk_key(self, member: Member, chunk: int) -> str:
        return query_chunk_key(*member, self.measurement, self.fam, self.q["resolution"], chunk)

    def add(self, answer: dict[int, Partial], bucket_ms: int, partial: Partial) -> None:
        have = answer.get(bucket_ms)
        answer[bucket_ms] = partial if have is None else merge(self.fam, have, partial)

    # -- Redis ---------------------------------------------------------------------------

    def read(self, shared: QueryStore, ttl: int) -> tuple[dict[Member, bytes], dict[Member, dict[int, list]]]:
        """One round trip: each member's generation and chunks. The usable chunks by member."""
        pipe = shared.client.pipeline(transaction=False)
        for member in self.members:
            keys = [shared.key(query_gen_key(*member))] + [shared.key(self.chunk_key(member, c)) for c in self.chunks]
            pipe.eval(READ, len(keys), *keys, secrets.token_hex(8), ttl)
        replies = pipe.execute()
        tokens: dict[Member, bytes] = {}
        found: dict[Member, dict[int, list]] = {}
        for member, reply in zip(self.members, replies, strict=True):
            tokens[member] = reply[0]
            found[member] = {}
            token = reply[0].decode()
            for chunk, raw in zip(self.chunks, reply[1:], strict=False):
                value = _usable(raw, token, chunk * CHUNK_BUCKETS, self.needed(chunk))
                if value is not None:
                    found[member][chunk] = value
        return tokens, found

    def write(
        self,
        shared: QueryStore,
        tokens: dict[Member, bytes],
        found: dict[Member, dict[int, list]],
        fetched: dict[tuple[str, int], Partial],
        ttl: int,
    ) -> None:
        """Store the chunks this query computed, under the tokens it read (bounded in bytes)."""
        budget = MAX_WRITE_BYTES
        pipe = shared.client.pipeline(transaction=False)
        writes = 0
        for member in self.members:
            keys, values = [shared.key(query_gen_key(*member))], []
            token = tokens[member].decode()
            for chunk in self.chunks:
                if chunk in found[member]:
                    continue
                base, upto = chunk * CHUNK_BUCKETS, self.complete_to(chunk)
                buckets = [[b - base, p] for b in range(base, upto) if (p := fetched.get((member[1], b))) is not None]
                raw = json.dumps({"v": SCHEMA, "g": token, "u": upto - base, "b": buckets}, separators=(",", ":"))
                if len(raw) > MAX_CHUNK_BYTES or len(raw) > budget:
                    continue
                budget -= len(raw)
                keys.append(shared.key(self.chunk_key(member, chunk)))
                values.append(raw)
            if values:
                pipe.eval(WRITE, len(keys), *keys, token, ttl, *values)
                writes += 1
        if writes:
            pipe.execute()

    # -- MongoDB -------------------------------------------------------------------------

    def stretches(self, found: dict[Member, dict[int, list]]) -> list[Stretch] | None:
        """What must be computed live, per member: the range's partial first and last buckets and
        the missing chunks, as disjoint stretches (``stretches.py``). A member left with more than
        ``MAX_PER_MEMBER`` is recomputed whole (its chunks dropped from ``found``, to be rewritten).
        None: more than ``MAX_QUERIES`` in all (the query is not cached)."""
        width = self.width
        edges: list[Span] = [(self.start, self.first * width), (self.stop * width, self.end)]
        out: list[Stretch] = []
        for member in self.members:
            missing = [c for c in self.chunks if c not in found[member]]
            spans = union(edges + [(c * CHUNK_BUCKETS * width, self.complete_to(c) * width) for c in missing])
            if len(spans) > MAX_PER_MEMBER:
                found[member] = {}
                spans = union(edges + [(c * CHUNK_BUCKETS * width, self.complete_to(c) * width) for c in self.chunks])
            out += [(member[1], low, high) for low, high in spans]
        return out if len(out) <= MAX_QUERIES else None

    def fetch(
        self, stretches: list[Stretch], shared: QueryStore | None, answer: dict[int, Partial]
    ) -> dict[tuple[str, int], Partial]:
        """One aggregation per stretch (``stretches.py``): the missing chunks and the live edges.

        Live partials go into ``answer``; the missing chunks' partials, per (device id, bucket), are
        returned for writing. Groups are split by whether a reading lies inside the query's range
        (``s``): a chunk needs every reading of its buckets, the answer only those in the range.
        """
        if not stretches:
            return {}
        args = (self.device, self.measurement, self.fam, self.q, stretches, self.width)
        if shared is not None:
            shared.count("loads")
            with metrics.load_timer(QUERY.name):
                groups = aggregate(*args)
        else:
            groups = aggregate(*args)
        fetched: dict[tuple[str, int], Partial] = {}
        for device_id, bucket_ms, inside, partial in groups:
            if inside:
                self.add(answer, bucket_ms, partial)
            if bucket_ms >= 0:
                index = (device_id, bucket_ms // self.width)
                have = fetched.get(index)
                fetched[index] = partial if have is None else merge(self.fam, have, partial)
        return fetched

    def rows(self, answer: dict[int, Partial]) -> Rows:
        done = []
        for bucket_ms in sorted(answer):
            result = finish(self.fam, self.q["agg"], answer[bucket_ms])
            if result is not None:
                done.append((bucket_ms, result[0], result[1]))
        begin = (self.q["page"] - 1) * self.q["size"]
        return len(done), done[begin : begin + self.q["size"]]


def _usable(raw: bytes | None, token: str, base: int, needed: int) -> list | None:
    """A chunk's (bucket, partial) pairs if it is of this schema and generation and complete up to
    ``needed``; else None (a miss). Bucket numbers in the value are relative to ``base``."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("v") != SCHEMA or value.get("g") != token:
        return None
    buckets, upto = value.get("b"), value.get("u")
    if not isinstance(buckets, list) or not isinstance(upto, int) or base + upto < needed:
        return None
    return [(base + b, p) for b, p in buckets]
