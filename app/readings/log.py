"""The push log: each chain member's recent readings in Redis, kept up to date by the pushes.

The buckets a readings query cannot take from chunks (``cache.py``) because they have not ended,
or ended less than the margin ago, would need MongoDB on every query. Instead every push, once
MongoDB acknowledged its insert and before it answers, adds the reading to its member's log (a
sorted set by time, ``query:{member}:log``), and a query reads those buckets from the log in the
same round trip as its chunks.

**Complete from ``from``**: the log's hash (``query:{member}:logmeta``: ``g``, ``from``, ``done``,
``filler``, ``at``) says which generation (``cache.py``) it belongs to and from which instant on it
holds *every* reading. The first query that finds no log for the member's current generation
creates it empty (``done`` 0) and then fills it from MongoDB (``from`` on); a push appends only to
an existing log of the current generation. A push whose append came before the log existed had
its insert acknowledged before that, so the fill's read, which starts after, sees it; a push
whose append came after finds the log. Either way the reading is in (a push and the fill may both
add it: members are unique by ``_id``, and a reader drops repeats). Only the filler named in the
hash may mark it done; one that stalls for ``FILL_TIMEOUT_MS`` is replaced.

**Durable**: an append counts once every replica connected to the primary has acknowledged it
(``WAIT``, ``app/cache/replicas.py``), so the replica a failover promotes has it; a primary first
seen alone counts (a replica just promoted), one that just lost its replicas does not (it may be the
losing side of a failover). On Sentinel and Cluster a failed append is tried once more after asking
where the primary is now.

**Kept answers**: the append also deletes the member's memo key; if it existed (a process may keep
a dashboard's answer over the member, ``memo.py``), the push answers only after the near caches'
fence, so no answer without its reading is served once it has answered.

**A push that cannot append** (Redis unreachable, the breaker open, no durable append) drops its
member's generation through the outbox, as a key change does (``drop_members``):
the log and the chunks go, everywhere, before the push answers. While its replica cannot reach
Redis a push therefore answers after ``CACHE_LEASE`` (1 s by default), as a change does. A
process killed between its insert and its append gave no answer; its reading is missing from the
log until the log's bucket has ended past the margin (from then on queries read it from chunks,
computed by MongoDB): the log serves only buckets that have not.

**Evicted**: the log holds a marker (member ``''``, score -1) from its creation on, and a query
uses it only while the marker is there: a cache Redis evicting keys (``allkeys-lru``) may drop the
sorted set and keep its hash, and a log without the marker is made anew, not read as empty.

**Bounded**: a push trims the log to ``WINDOW_MS`` before its own stamp (the longest bucket the log
serves is a few hours) and to ``MAX_ENTRIES`` readings; a reading over ``MAX_ENTRY_BYTES`` is not
added. Each raises ``from`` past what it left out, so the log stays complete from ``from`` on.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import current_app
from pymongo.errors import PyMongoError

from app.cache.keys import query_gen_key, query_log_keys, query_memo_key
from app.db import READINGS
from app.extensions import mongo
from app.readings.partials import to_ms
from app.readings.stretches import index_filter
from app.redis_topology import REDIS_ERRORS

log = logging.getLogger("app.readings")

WINDOW_MS = 6 * 3_600_000  # what a push keeps behind its own stamp
MAX_ENTRIES = 4096  # readings per member (a reading every 5 s fills six hours)
MAX_ENTRY_BYTES = 2048
FILL_TIMEOUT_MS = 10_000

Member = tuple[str, str, str]  # owner_id, device_id, device_name
Entry = tuple[int, str, dict[str, Any]]  # ms, _id hex, the stored measurements

# Both scripts end the same way: the log trimmed to MAX_ENTRIES readings (the marker kept) and to
# ``from`` (raised past what was dropped), then the hash's ``from`` and both TTLs set; they return
# ``result``. KEYS: generation, log hash, log. ARGV: the TTL, MAX_ENTRIES, then each script's own.
KEEP = """
local extra = redis.call('ZCARD', KEYS[3]) - 1 - tonumber(ARGV[2])
if extra > 0 then
  local gone = redis.call('ZRANGE', KEYS[3], 1, extra, 'WITHSCORES')
  redis.call('ZREMRANGEBYRANK', KEYS[3], 1, extra)
  from = math.max(from, tonumber(gone[#gone]) + 1)
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], 0, '(' .. from)
redis.call('HSET', KEYS[2], 'from', from)
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return result
"""

# KEYS[4]: the member's memo key. ARGV 3..5: the entry (or '' when too large), its ms, WINDOW_MS.
# Deletes the memo key (a process may keep answers over the member: 2 if it existed, ``memo.py``),
# then appends when a log of the current generation exists (1 if so).
APPEND = (
    """
local result = 2 * redis.call('DEL', KEYS[4])
local g = redis.call('GET', KEYS[1])
if not g then return result end
local meta = redis.call('HMGET', KEYS[2], 'g', 'from')
if meta[1] ~= g then return result end
local from = tonumber(meta[2])
local at = tonumber(ARGV[4])
if ARGV[3] == '' then
  from = math.max(from, at + 1)
else
  redis.call('ZADD', KEYS[3], at, ARGV[3])
end
from = math.max(from, at - tonumber(ARGV[5]))
result = result + 1
"""
    + KEEP
)

# ARGV 3..: the generation, the filler's token, the from its entries are complete from, then the
# entries' (ms, entry) pairs. 1 if the log is now done.
FILL = (
    """
local meta = redis.call('HMGET', KEYS[2], 'g', 'filler', 'from')
if meta[1] ~= ARGV[3] or meta[2] ~= ARGV[4] then return 0 end
local from = math.max(tonumber(meta[3]), tonumber(ARGV[5]))
for i = 6, #ARGV, 2 do
  if tonumber(ARGV[i]) >= from then redis.call('ZADD', KEYS[3], ARGV[i], ARGV[i + 1]) end
end
redis.call('HSET', KEYS[2], 'done', '1')
local result = 1
"""
    + KEEP
)


def encode(at_ms: int, oid: str, values: dict[str, Any]) -> str:
    """A log member: the same reading always encodes the same way (sorted keys)."""
    return json.dumps([oid, at_ms, values], sort_keys=True, separators=(",", ":"))


def values_of(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored reading's measurements (what a push sent), without its id, time and meta."""
    return {k: v for k, v in doc.items() if k not in ("_id", "timestamp", "meta")}


def decode(raw: bytes) -> Entry:
    oid, at_ms, values = json.loads(raw)
    return at_ms, oid, values


def append(member: Member, doc: dict[str, Any]) -> None:
    """After a push's insert: its reading into the member's log, durably, or the member's cached
    readings dropped everywhere (``drop_members``) before the push answers. If a process may keep
    an answer over the member (its memo key existed, ``memo.py``), the push answers only once
    every near cache has applied the key's deletion (its fence, ``fence.py``)."""
    from app.readings.cache import QueryStore, drop_members

    config = current_app.config
    if not config["QUERY_CACHE_ENABLED"]:
        return
    at_ms = to_ms(doc["timestamp"])
    entry = encode(at_ms, str(doc["_id"]), values_of(doc))
    shared = QueryStore.current()
    keys = [shared.key(query_gen_key(*member)), *(shared.key(k) for k in query_log_keys(*member))]
    keys.append(shared.key(query_memo_key(*member)))
    args = (config["QUERY_CACHE_TTL"], MAX_ENTRIES, "" if len(entry) > MAX_ENTRY_BYTES else entry, at_ms, WINDOW_MS)
    if shared.cache.breaker.allow():
        topology = shared.cache.topology
        watched = False
        # Once more after asking where the primary is now, on Sentinel and Cluster (a failover).
        for attempt in range(2 if topology.may_move else 1):
            if attempt:
                topology.refresh(shared.client)
            durable, seen = _append(shared, keys, args)
            watched = watched or seen
            if durable:
                if watched:
                    shared.cache.fence()
                return
    drop_members({member})  # a change: its fence too


def _append(shared: Any, keys: list[str], args: tuple) -> tuple[bool, bool]:
    """The append script on the member's primary: whether every replica connected to it has it,
    and whether the member's memo key existed (a failed call may have deleted it: it did).

    A primary first seen without replicas counts (a replica just promoted); one that has just
    lost its replicas does not (it may be the losing side of a failover: ``replicas.py``)."""
    try:
        [(name, (node, _))] = shared.cache.topology.by_slot(shared.client, keys).items()
        add = lambda pipe: pipe.eval(APPEND, 4, *keys, *args)  # noqa: E731
        replies, durable = shared.cache.replicas.write(name, node, add, first_alone_ok=True)
    except REDIS_ERRORS as exc:
        shared.failed(exc)
        return False, True
    shared.succeeded()
    return durable, bool(int(replies[0]) & 2)


def fill(shared: Any, member: Member, generation: bytes, filler: str, ttl: int) -> None:
    """Fill a log this query created (``cache.py``'s read named it the filler): every reading of
    the member from the log's ``from`` on, newest first, up to the bounds."""
    owner_id, device_id, device_name = member
    keys = [shared.key(query_gen_key(*member)), *(shared.key(k) for k in query_log_keys(*member))]
    start_ms = time.time_ns() // 1_000_000 - WINDOW_MS - FILL_TIMEOUT_MS
    try:
        docs = list(
            mongo.db[READINGS].find(
                index_filter(device_id, device_name, start_ms),
                sort=[("timestamp", -1), ("_id", -1)],
                limit=MAX_ENTRIES + 1,
            )
        )
    except PyMongoError as exc:  # the query has its answer; the log stays unfilled (another reader takes over)
        log.warning("push log not filled: %s: %s", exc.__class__.__name__, exc)
        return
    complete_from = start_ms
    pairs: list[Any] = []
    for n, doc in enumerate(docs):
        at_ms = to_ms(doc["timestamp"])
        if doc["meta"].get("owner_id") != owner_id:
            continue
        try:
            entry = encode(at_ms, str(doc["_id"]), values_of(doc))
        except (TypeError, ValueError):  # a value JSON cannot hold (an imported oddity)
            entry = ""
        if n == MAX_ENTRIES or len(entry) > MAX_ENTRY_BYTES or not entry:
            complete_from = at_ms + 1
            break
        pairs += [at_ms, entry]
    try:
        shared.client.eval(FILL, 3, *keys, ttl, MAX_ENTRIES, generation, filler, complete_from, *pairs)
    except REDIS_ERRORS as exc:
        shared.failed(exc)
