"""An atomic run lock (``SET NX PX`` with a token) so a duplicate beat tick is harmless.

Considered: redis-py's ``Lock``; it does the same, but blocks by default and raises on a
lost lock at release, where a scheduled task only wants "skip if somebody else runs".
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@contextmanager
def run_lock(client: Redis, key: str, ttl_ms: int, release: bool = True) -> Iterator[bool]:
    """Yield whether this run holds the lock; release it only if it is still ours.

    With ``release=False`` the lock lives out its TTL: a window that swallows duplicate ticks.
    """
    token = secrets.token_hex(8)
    held = bool(client.set(key, token, nx=True, px=ttl_ms))
    try:
        yield held
    finally:
        if held and release:
            client.eval(RELEASE, 1, key, token)
