"""Names of the device cache's keys in Redis.

Under ``CACHE_KEY_PREFIX`` (what ``/cache/clear`` and ``/cache/invalidate`` walk):
  ``device:<device_id>|<device_name>``               a lookup (the spec's patterns match it)
  ``lock:{<prefix>device:<device_id>|<device_name>}`` its fill lock
  ``user:<user_id>``                                  a verified token's user (and its fill lock)
  ``query:{<owner>|<device_id>|<device_name>}:gen``   a chain member's generation of cached readings chunks
  ``query:{<owner>|<device_id>|<device_name>}:<measurement>:<family>:<resolution>:<chunk>``
                                                      one chunk of bucket partials (``app/readings/cache.py``)
  ``query:{<owner>|<device_id>|<device_name>}:raw:<measurement>:<family>:<resolution>:<bucket>``
                                                      one ended bucket's readings, as partials (a range's edge)
  ``query:{<owner>|<device_id>|<device_name>}:log``, ``…:logmeta``
                                                      its recent readings, kept by the pushes (``app/readings/log.py``)
  ``query:memo:{<owner>|<device_id>|<device_name>}``  set while a process may hold whole answers over it
                                                      (``app/readings/memo.py``): tracked by the near caches
Bookkeeping, beside the prefix so ``/cache/clear`` keeps it (``meta:{<prefix>}…``):
  ``stats:device``, ``hot:device``, ``hot:decayed_at``, ``stats:history``, ``flushed:<token>``,
  ``collector:last_run``, ``warmer:last_run``, ``lock:warm``, ``lock:stats``; and the
  breaker's probe ``meta:<prefix>probe{<n>}`` (one per primary, one second each).

On a Redis Cluster a script or transaction must touch one slot. A lock's hash tag is its value
key (which has no braces, so its slot is that of the whole key): lock and value share a slot
without renaming the value keys. The bookkeeping keys share the tag ``{<prefix>}``.
"""

from __future__ import annotations

Pair = tuple[str, str]


QUERY_KEYS = "query:"  # the readings query cache's keys: no fill lock
MEMO_KEYS = QUERY_KEYS + "memo:"  # a member's memo key: its change drops whole answers held in processes
NEAR_KINDS = ("device:", "user:", MEMO_KEYS)  # what near caches hold or depend on: Redis tracks it for them


def device_key(device_id: str, device_name: str) -> str:
    return f"device:{device_id}|{device_name}"


def user_key(user_id: str) -> str:
    """A verified token's user (never the token: its id part, which is not a secret)."""
    return f"user:{user_id}"


def query_member(owner_id: str, device_id: str, device_name: str) -> str:
    """A chain member's readings-cache keys share one hash tag (one Cluster slot: one script)."""
    return f"{QUERY_KEYS}{{{owner_id}|{device_id}|{device_name}}}"


def query_gen_key(owner_id: str, device_id: str, device_name: str) -> str:
    return query_member(owner_id, device_id, device_name) + ":gen"


def query_chunk_key(
    owner_id: str, device_id: str, device_name: str, measurement: str, family: str, resolution: int, chunk: int
) -> str:
    return f"{query_member(owner_id, device_id, device_name)}:{measurement}:{family}:{resolution}:{chunk}"


def query_raw_key(
    owner_id: str, device_id: str, device_name: str, measurement: str, family: str, resolution: int, bucket: int
) -> str:
    return f"{query_member(owner_id, device_id, device_name)}:raw:{measurement}:{family}:{resolution}:{bucket}"


def query_memo_key(owner_id: str, device_id: str, device_name: str) -> str:
    """Its own prefix (the near caches track it, not the rest of ``query:``), the member's hash tag."""
    return f"{MEMO_KEYS}{{{owner_id}|{device_id}|{device_name}}}"


def query_log_keys(owner_id: str, device_id: str, device_name: str) -> tuple[str, str]:
    """A member's push log: its hash (generation, complete from, filler) and its sorted set."""
    member = query_member(owner_id, device_id, device_name)
    return member + ":logmeta", member + ":log"


def pair_of(key: str) -> Pair:
    device_id, _, device_name = key.removeprefix("device:").partition("|")
    return device_id, device_name


class KeySpace:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.meta = f"meta:{{{prefix}}}"

    @property
    def probe(self) -> str:
        """The key the circuit breaker's probe writes (1 s TTL), without braces: the topology
        adds a hash tag per primary."""
        return f"meta:{self.prefix}probe"

    # Bookkeeping: beside the prefix (``/cache/clear`` keeps it), one hash tag (one Cluster slot).
    @property
    def stats(self) -> str:
        return self.meta + "stats:device"

    @property
    def hot(self) -> str:
        return self.meta + "hot:device"

    @property
    def seen(self) -> str:
        return self.meta + "seen:device"

    @property
    def hot_decayed_at(self) -> str:
        return self.meta + "hot:decayed_at"

    @property
    def history(self) -> str:
        return self.meta + "stats:history"

    @property
    def collector_last_run(self) -> str:
        return self.meta + "collector:last_run"

    @property
    def warmer_last_run(self) -> str:
        return self.meta + "warmer:last_run"

    @property
    def warm_lock(self) -> str:
        return self.meta + "lock:warm"

    @property
    def stats_lock(self) -> str:
        return self.meta + "lock:stats"

    def flushed(self, token: str) -> str:
        """The last counter batch a process sent (its token: one per process)."""
        return f"{self.meta}flushed:{token}"

    @property
    def near_prefixes(self) -> list[str]:
        """What Redis tracks for the near cache: device lookups, users and memo keys."""
        return [self.value(kind) for kind in NEAR_KINDS]

    @property
    def near_presence(self) -> str:
        """The channel every near cache of this prefix subscribes to on its tracking connection to
        each primary: a change publishes its fence there (``SharedCache.fence``)."""
        return self.value("near-caches")

    def fence(self, token: str) -> str:
        """The list a change's fence collects the near caches' acknowledgements in."""
        return self.value(f"fence:{token}")

    def value(self, key: str) -> str:
        return self.prefix + key

    def lock(self, key: str) -> str:
        return f"{self.prefix}lock:{{{self.prefix}{key}}}"

    def lock_glob(self, pattern: str) -> str:
        """The fill locks of the values a glob (relative to the prefix) matches."""
        return self.lock(pattern)
