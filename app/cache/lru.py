"""The near cache's LRU: bounded in entries and in bytes (what the raw values and keys take).

``functools.lru_cache`` and cachetools' ``LRUCache`` were considered: the first caches calls, not
entries set from outside; the second can bound by a size function but keeps no expiry per entry
and costs a Python-level call on every hit, where this one's hit is one ``OrderedDict`` lookup.
"""

from __future__ import annotations

from collections import OrderedDict


class Lru:
    """Entries by key, least recently used first, bounded in count and in bytes (value + key)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self.nbytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def add(self, key: str, raw: bytes, expires: float) -> None:
        self.pop(key)
        entries = self.entries
        entries[key] = (raw, expires)
        self.nbytes += len(key) + len(raw)
        while len(entries) > self.max_entries or self.nbytes > self.max_bytes:
            old, (value, _) = entries.popitem(last=False)
            self.nbytes -= len(old) + len(value)

    def pop(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.nbytes -= len(key) + len(entry[0])

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0
