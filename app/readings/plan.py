"""One readings query's plan: which buckets come from which chunks and edges in Redis, and which
MongoDB computes (``cache.py`` has the design; ``log.py`` the push log; ``stretches.py`` MongoDB's side).

Chunks and edge buckets are JSON values under the member's generation token (``SCHEMA``); the
read script also creates the member's generation and push log when they are missing.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.cache.keys import query_chunk_key, query_gen_key, query_log_keys, query_memo_key, query_raw_key
from app.readings.log import FILL_TIMEOUT_MS, WINDOW_MS, decode
from app.readings.memo import RENEW_BELOW_MS, WATCH_MS
from app.readings.partials import Partial, Unfit, family, finish, merge, of_reading, to_ms
from app.readings.stretches import MAX_PER_MEMBER, MAX_QUERIES, Stretch, aggregate, bucket_readings, union

if TYPE_CHECKING:
    from app.readings.cache import QueryStore

SCHEMA = 1  # of a chunk's JSON value
CHUNK_BUCKETS = 64  # buckets per chunk: 32 h at the default 30 minutes, 64 min at one minute
MAX_CHUNK_KEYS = 512  # (member, chunk) pairs one query may use; beyond, the query is not cached
MAX_CHUNK_BYTES = 64 * 1024  # a larger chunk (long lists of relays...) is not written
MAX_WRITE_BYTES = 1024 * 1024  # what one query writes at most


# Per member: KEYS[1] its generation, KEYS[2] and KEYS[3] its push log (``log.py``), KEYS[4] its
# memo key (``memo.py``), the rest its chunks. ARGV: a new token (the generation if it is missing;
# the log's filler if this read makes it one), the TTL, now (ms), the log's window and fill
# timeout, the [from, to) the query wants from the log ('' '': nothing), then, for an answer to
# keep ('' ''  otherwise), the memo key's life and the life below which it is renewed. Returns the
# generation, the log's state and the wanted readings, the stamp of the log's first reading at
# or after ``to`` (-1: none, or not asked), then the chunks (nil where absent).
READ = """
local g = redis.call('GET', KEYS[1])
if not g then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  g = ARGV[1]
end
local state, entries = '', {}
if ARGV[6] ~= '' then
  local now = tonumber(ARGV[3])
  local meta = redis.call('HMGET', KEYS[2], 'g', 'from', 'done', 'at')
  if meta[1] ~= g or not redis.call('ZSCORE', KEYS[3], '') then
    redis.call('DEL', KEYS[3])
    redis.call('ZADD', KEYS[3], -1, '')
    redis.call('HSET', KEYS[2], 'g', g, 'from', now - tonumber(ARGV[4]), 'done', '0', 'filler', ARGV[1], 'at', now)
    redis.call('EXPIRE', KEYS[2], ARGV[2])
    redis.call('EXPIRE', KEYS[3], ARGV[2])
    state = 'fill'
  elseif meta[3] == '1' then
    if tonumber(meta[2]) <= tonumber(ARGV[6]) then
      state = 'ok'
      entries = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[6], '(' .. ARGV[7])
    else
      state = 'short'
    end
  elseif now - tonumber(meta[4]) > tonumber(ARGV[5]) then
    redis.call('HSET', KEYS[2], 'filler', ARGV[1], 'at', now)
    state = 'fill'
  else
    state = 'filling'
  end
end
local after = -1
if ARGV[8] ~= '' then
  if state == 'ok' then
    local first = redis.call('ZRANGEBYSCORE', KEYS[3], ARGV[7], '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if first[2] then after = tonumber(first[2]) end
  end
  if redis.call('PTTL', KEYS[4]) < tonumber(ARGV[9]) then
    redis.call('SET', KEYS[4], '1', 'PX', ARGV[8])
  end
end
local out = {g, state, entries, after}
if #KEYS > 4 then
  local values = redis.call('MGET', unpack(KEYS, 5))
  for i = 1, #KEYS - 4 do out[i + 4] = values[i] end
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


@dataclass
class Edge:
    """A part of the range outside its cacheable buckets: [low, high) of one ended ``bucket``,
    whose readings are cached as partials (the range's partial first or last bucket), or, with
    no bucket, the buckets that have not ended past the margin, read from the push log."""

    low: int
    high: int
    bucket: int | None


@dataclass
class Found:
    """What one member's read brought: generation, usable chunks and edges, the log's state."""

    token: bytes
    filler: str
    log_state: str
    after: int  # the log's first stamp at or after the range's end (-1: none, or not asked)
    chunks: dict[int, list] = field(default_factory=dict)
    edges: dict[int, list[tuple[int, Partial]]] = field(default_factory=dict)  # edge index -> (ms, partial)


@dataclass
class Work:
    """What MongoDB still computes: aggregations per stretch, and ended edge buckets to read."""

    stretches: list[Stretch]
    raws: list[tuple[Member, int]]  # (member, edge index)


class Plan:
    """Which buckets of one query come from which chunks, and which are computed live."""

    def __init__(self, device: dict[str, Any], measurement: str, q: dict[str, Any], ended_before_ms: int) -> None:
        self.device, self.measurement, self.q = device, measurement, q
        self.fam = family(measurement, q["agg"])
        self.width = width = q["resolution"] * 60_000
        self.start, self.end = to_ms(q["start"]), to_ms(q["end"])
        self.ended = ended_before_ms // width  # buckets below this one are final
        self.first = -(-self.start // width)  # the first bucket wholly in the range
        self.stop = min(self.end // width, self.ended)  # past the last cacheable bucket
        self.members: list[Member] = [(device["owner_id"], d, device["device_name"]) for d in device["chain"]]
        self.chunks: list[int] = []
        self.edges: list[Edge] = []
        if self.first < 0 or self.first >= self.stop:
            self.cacheable = False  # nothing final in the range (or before 1970, bucketed otherwise)
            return
        low, high = self.first // CHUNK_BUCKETS, (self.stop - 1) // CHUNK_BUCKETS
        self.cacheable = (high - low + 1) * len(self.members) <= MAX_CHUNK_KEYS
        self.chunks = list(range(low, high + 1))
        if self.start < self.first * width:
            self.edges.append(Edge(self.start, self.first * width, self.first - 1))
        if self.stop * width < self.end:
            # Within the ended bucket the range ends in, or from the first bucket not yet final on.
            self.edges.append(Edge(self.stop * width, self.end, self.stop if self.stop < self.ended else None))

    def needed(self, chunk: int) -> int:
        """The bucket a chunk must be complete up to (exclusive) to serve this query."""
        return min((chunk + 1) * CHUNK_BUCKETS, self.stop)

    def complete_to(self, chunk: int) -> int:
        """The bucket a freshly computed chunk is complete up to (exclusive): every ended one."""
        return min((chunk + 1) * CHUNK_BUCKETS, self.ended)

    def chunk_key(self, member: Member, chunk: int) -> str:
        return query_chunk_key(*member, self.measurement, self.fam, self.q["resolution"], chunk)

    def raw_key(self, member: Member, bucket: int) -> str:
        return query_raw_key(*member, self.measurement, self.fam, self.q["resolution"], bucket)

    def add(self, answer: dict[int, Partial], bucket_ms: int, partial: Partial) -> None:
        have = answer.get(bucket_ms)
        answer[bucket_ms] = partial if have is None else merge(self.fam, have, partial)

    def fold(self, answer: dict[int, Partial], edge: Edge, readings: list[tuple[int, Partial]]) -> None:
        """An edge's readings (ms, partial) into the answer, those inside it only."""
        for at_ms, partial in readings:
            if edge.low <= at_ms < edge.high:
                self.add(answer, at_ms - at_ms % self.width, partial)

    # -- Redis ---------------------------------------------------------------------------

    def read(self, shared: QueryStore, ttl: int, watch: bool = False) -> dict[Member, Found]:
        """One round trip: each member's generation, chunks, ended edge buckets and push log;
        ``watch``: and its memo key set (``memo.py``), and the log's next stamp past the range."""
        now_ms = time.time_ns() // 1_000_000
        log_edge = next((e for e in self.edges if e.bucket is None), None)
        span = (log_edge.low, log_edge.high) if log_edge else ("", "")
        memo = (WATCH_MS, RENEW_BELOW_MS) if watch else ("", "")
        raw_edges = [(i, e) for i, e in enumerate(self.edges) if e.bucket is not None]
        calls: list[Script] = []
        fillers: list[str] = []
        for member in self.members:
            keys = [shared.key(query_gen_key(*member)), *(shared.key(k) for k in query_log_keys(*member))]
            keys.append(shared.key(query_memo_key(*member)))
            keys += [shared.key(self.chunk_key(member, c)) for c in self.chunks]
            keys += [shared.key(self.raw_key(member, e.bucket)) for _, e in raw_edges]  # type: ignore[arg-type]
            fillers.append(secrets.token_hex(8))
            calls.append((READ, keys, (fillers[-1], ttl, now_ms, WINDOW_MS, FILL_TIMEOUT_MS, *span, *memo)))
        found: dict[Member, Found] = {}
        for member, filler, reply in zip(self.members, fillers, run_scripts(shared, calls), strict=True):
            token = reply[0]
            got = found[member] = Found(token, filler, reply[1].decode(), reply[3])
            values = reply[4:]
            for chunk, raw in zip(self.chunks, values, strict=False):
                value = _usable(raw, token.decode(), chunk * CHUNK_BUCKETS, self.needed(chunk))
                if value is not None:
                    got.chunks[chunk] = value
            for (index, _), raw in zip(raw_edges, values[len(self.chunks) :], strict=False):
                readings = _usable_raw(raw, token.decode())
                if readings is not None:
                    got.edges[index] = readings
            if log_edge is not None and got.log_state == "ok":
                readings = self.from_log(reply[2])
                if readings is not None:
                    got.edges[self.edges.index(log_edge)] = readings
        return found

    def from_log(self, entries: list[bytes]) -> list[tuple[int, Partial]] | None:
        """The log's readings as partials (each ``_id`` once); None if one is unfit."""
        seen: set[str] = set()
        out = []
        try:
            for raw in entries:
                at_ms, oid, values = decode(raw)
                if oid in seen:
                    continue
                seen.add(oid)
                partial = of_reading(self.fam, self.measurement, at_ms, oid, values)
                if partial is not None:
                    out.append((at_ms, partial))
        except (Unfit, ValueError, TypeError):  # a value Python does not aggregate as MongoDB does; a bad entry
            return None
        return out

    def write(
        self,
        shared: QueryStore,
        found: dict[Member, Found],
        fetched: dict[tuple[str, int], Partial],
        raws: dict[tuple[Member, int], list[tuple[int, Partial]]],
        ttl: int,
    ) -> None:
        """Store the chunks and edge buckets this query computed, under the tokens it read (bounded in bytes)."""
        budget = MAX_WRITE_BYTES
        calls: list[Script] = []
        for member in self.members:
            keys, values = [shared.key(query_gen_key(*member))], []
            token = found[member].token.decode()
            pending: list[tuple[str, str]] = []
            for chunk in self.chunks:
                if chunk in found[member].chunks:
                    continue
                base, upto = chunk * CHUNK_BUCKETS, self.complete_to(chunk)
                buckets = [[b - base, p] for b in range(base, upto) if (p := fetched.get((member[1], b))) is not None]
                raw = json.dumps({"v": SCHEMA, "g": token, "u": upto - base, "b": buckets}, separators=(",", ":"))
                pending.append((self.chunk_key(member, chunk), raw))
            for (who, index), readings in raws.items():
                if who == member:
                    raw = json.dumps({"v": SCHEMA, "g": token, "r": readings}, separators=(",", ":"))
                    pending.append((self.raw_key(member, self.edges[index].bucket), raw))  # type: ignore[arg-type]
            for key, raw in pending:
                if len(raw) > MAX_CHUNK_BYTES or len(raw) > budget:
                    continue
                budget -= len(raw)
                keys.append(shared.key(key))
                values.append(raw)
            if values:
                calls.append((WRITE, keys, (token, ttl, *values)))
        run_scripts(shared, calls)

    # -- MongoDB -------------------------------------------------------------------------

    def work(self, found: dict[Member, Found]) -> Work | None:
        """What must be computed live, per member: the edges not found (an ended bucket's readings,
        or aggregated with the rest) and the missing chunks, as disjoint stretches
        (``stretches.py``). An edge that a missing chunk's stretch overlaps is aggregated with
        it. A member left with more than ``MAX_PER_MEMBER`` stretches is recomputed whole (its
        chunks and edges dropped from ``found``, to be rewritten). None: more than
        ``MAX_QUERIES`` in all (the query is not cached)."""
        width = self.width
        every = [(c * CHUNK_BUCKETS * width, self.complete_to(c) * width) for c in self.chunks]
        stretches: list[Stretch] = []
        raws: list[tuple[Member, int]] = []
        for member in self.members:
            got = found[member]
            missing = [span for c, span in zip(self.chunks, every, strict=True) if c not in got.chunks]
            live, reads = list(missing), []
            for index, edge in enumerate(self.edges):
                if any(edge.low < high and low < edge.high for low, high in missing):
                    got.edges.pop(index, None)
                    live.append((edge.low, edge.high))
                elif index in got.edges:
                    continue
                elif edge.bucket is not None:
                    reads.append((member, index))
                else:
                    live.append((edge.low, edge.high))
            spans = union(live)
            if len(spans) + len(reads) > MAX_PER_MEMBER:
                got.chunks, got.edges, reads = {}, {}, []
                spans = union(every + [(e.low, e.high) for e in self.edges])
            stretches += [(member[1], low, high) for low, high in spans]
            raws += reads
        return Work(stretches, raws) if len(stretches) + len(raws) <= MAX_QUERIES else None

    def fetch(
        self, work: Work, answer: dict[int, Partial]
    ) -> tuple[dict[tuple[str, int], Partial], dict[tuple[Member, int], list[tuple[int, Partial]]]]:
        """One aggregation per stretch (``stretches.py``), one read per ended edge bucket.

        Live partials go into ``answer``; the missing chunks' partials, per (device id, bucket), and
        the edge buckets' readings are returned for writing. Groups are split by whether a reading
        lies inside the query's range (``s``): a chunk needs every reading of its buckets, the
        answer only those in the range.
        """
        fetched: dict[tuple[str, int], Partial] = {}
        if work.stretches:
            groups = aggregate(self.device, self.measurement, self.fam, self.q, work.stretches, self.width)
            for device_id, bucket_ms, inside, partial in groups:
                if inside:
                    self.add(answer, bucket_ms, partial)
                if bucket_ms >= 0:
                    index = (device_id, bucket_ms // self.width)
                    have = fetched.get(index)
                    fetched[index] = partial if have is None else merge(self.fam, have, partial)
        raws: dict[tuple[Member, int], list[tuple[int, Partial]]] = {}
        for member, index in work.raws:
            edge = self.edges[index]
            low = edge.bucket * self.width  # type: ignore[operator]
            try:
                readings = bucket_readings(self.device, member[1], self.measurement, self.fam, low, low + self.width)
            except Unfit:  # left to the aggregation, and not cached
                groups = aggregate(self.device, self.measurement, self.fam, self.q, [(member[1], edge.low, edge.high)],
                                   self.width)  # fmt: skip
                for _, bucket_ms, inside, partial in groups:
                    if inside:
                        self.add(answer, bucket_ms, partial)
                continue
            self.fold(answer, edge, readings)
            raws[(member, index)] = readings
        return fetched, raws

    def rows(self, answer: dict[int, Partial]) -> Rows:
        done = []
        for bucket_ms in sorted(answer):
            result = finish(self.fam, self.q["agg"], answer[bucket_ms])
            if result is not None:
                done.append((bucket_ms, result[0], result[1]))
        begin = (self.q["page"] - 1) * self.q["size"]
        return len(done), done[begin : begin + self.q["size"]]


Script = tuple[str, list[str], tuple]  # a script, its keys (one member's: one slot), its arguments


def run_scripts(shared: QueryStore, calls: list[Script]) -> list[Any]:
    """Each script on its keys' primary: one pipeline, or on a Cluster one call each (redis-py's
    cluster pipeline sends no scripts; each call's keys share one slot, which routes it)."""
    if not calls:
        return []
    if not shared.cache.topology.pipelines_scripts:
        return [shared.client.eval(script, len(keys), *keys, *args) for script, keys, args in calls]
    pipe = shared.client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.eval(script, len(keys), *keys, *args)
    return pipe.execute()


def _usable(raw: bytes | None, token: str, base: int, needed: int) -> list | None:
    """A chunk's (bucket, partial) pairs if it is of this schema and generation and complete up to
    ``needed``; else None (a miss). Bucket numbers in the value are relative to ``base``."""
    value = _value(raw, token)
    if value is None:
        return None
    buckets, upto = value.get("b"), value.get("u")
    if not isinstance(buckets, list) or not isinstance(upto, int) or base + upto < needed:
        return None
    return [(base + b, p) for b, p in buckets]


def _usable_raw(raw: bytes | None, token: str) -> list[tuple[int, Partial]] | None:
    """An ended bucket's readings (ms, partial) if of this schema and generation; else None."""
    value = _value(raw, token)
    readings = None if value is None else value.get("r")
    return [(at_ms, p) for at_ms, p in readings] if isinstance(readings, list) else None


def _value(raw: bytes | None, token: str) -> dict | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("v") != SCHEMA or value.get("g") != token:
        return None
    return value
