"""The verified token's user, cached like a device lookup: a shared entry plus the near cache.

A bearer token is ``ost_<user id>_<secret>``. The entry is keyed by the user id, never by
the token, and holds the user with the SHA-256 of its token; every request compares that, in
constant time, with the token it was sent. So a warm authenticated request costs no MongoDB
query, and (from L1) no Redis round trip either. Rotating or deleting a user drops the entry
in Redis, and with it every replica's L1 copy, before the command returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.cache.device_cache import USER, DeviceCache
from app.cache.keys import user_key

UserLoader = Callable[[str], dict[str, Any]]


def cached_user(dc: DeviceCache, user_id: str, load: UserLoader) -> dict[str, Any]:
    """``{"v", "found", "user_id"?, "name"?, "admin"?, "token_hash"?}`` of this user id."""
    return dc.lookup(USER, user_key(user_id), lambda: load(user_id))


def forget_user(dc: DeviceCache, user_id: str, timeout: float = 10.0) -> bool:
    """Drop the user's entry everywhere; whether that landed in Redis within ``timeout`` seconds
    (a command that returns before it has may leave the old token accepted)."""
    key = user_key(user_id)
    dc.invalidate_keys({dc.keys.value(key), dc.keys.lock(key)}, 1, USER)
    return dc.wait_invalidated(timeout)
