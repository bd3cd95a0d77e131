"""The near cache's LRU: bounded in entries and in bytes (what the raw values and keys take).

``functools.lru_cache`` and cachetools' ``LRUCache`` were considered: the first caches calls, not
entries set from outside; the second can bound by a size function but keeps no expiry per entry
and costs a Python-level call on every hit, where this one's hit is one ``OrderedDict`` lookup.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


class Lru:
    """Entries by key, least recently used first, bounded in count and in bytes (value + key).

    An entry is (value, expiry, bytes): a value's bytes are ``len(value)`` unless given."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.entries: OrderedDict[str, tuple[Any, float, int]] = OrderedDict()
        self.nbytes = 0
        self.max_entries = max_entries
        self.max_bytes = max_bytes

    def add(self, key: str, value: Any, expires: float, nbytes: int | None = None) -> None:
        self.pop(key)
        entries = self.entries
        size = len(key) + (len(value) if nbytes is None else nbytes)
        entries[key] = (value, expires, size)
        self.nbytes += size
        while len(entries) > self.max_entries or self.nbytes > self.max_bytes:
            self.nbytes -= entries.popitem(last=False)[1][2]

    def pop(self, key: str) -> None:
        entry = self.entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry[2]

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0
