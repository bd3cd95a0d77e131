"""The device lookup: (device_id, device_name) -> owner, public flag and chain.

Every request that needs to know about a device calls ``lookup_device`` exactly once.
The result is a plain JSON-serialisable dict, so the shared cache stores it as is.
"""

from __future__ import annotations

from typing import Any

from app.cache.shared import shared_cache
from app.db import KEYS
from app.extensions import mongo

SCHEMA_VERSION = 1


def load_devices(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Resolve pairs from MongoDB in one query: every key registered under their names.

    One query serves a single lookup and a whole warm-up batch alike. ``key_hash`` lets a
    device key be checked against the cached lookup without another query; it is a SHA-256
    of a 256-bit secret and is never sent to clients.
    """
    names = sorted({name for _, name in pairs})
    by_name: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    query = {"device_name": names[0] if len(names) == 1 else {"$in": names}}
    for doc in mongo.db[KEYS].find(
        query, {"_id": 0, "device_id": 1, "device_name": 1, "owner_id": 1, "private": 1, "key_hash": 1}
    ):
        by_name[doc["device_name"]].append(doc)
    return [_resolve(device_id, device_name, by_name[device_name]) for device_id, device_name in pairs]


def _resolve(device_id: str, device_name: str, docs: list[dict[str, Any]]) -> dict[str, Any]:
    pair = next((d for d in docs if d["device_id"] == device_id), None)
    if pair is None:
        return {"v": SCHEMA_VERSION, "found": False, "device_id": device_id, "device_name": device_name}
    owner = pair["owner_id"]
    return {
        "v": SCHEMA_VERSION,
        "found": True,
        "device_id": device_id,
        "device_name": device_name,
        "owner_id": owner,
        "public": not pair.get("private", False),
        "chain": sorted(d["device_id"] for d in docs if d["owner_id"] == owner),
        "key_hash": pair["key_hash"],
    }


def chain_pairs(owner_id: str, device_name: str) -> list[tuple[str, str]]:
    """Every pair of an owner's chain (the ids registered under one name): what a change of the
    chain makes stale, resolved when the change's invalidation is applied."""
    ids = mongo.db[KEYS].distinct("device_id", {"owner_id": owner_id, "device_name": device_name})
    return [(device_id, device_name) for device_id in ids]


def load_device(device_id: str, device_name: str) -> dict[str, Any]:
    """The uncached lookup of one pair."""
    return load_devices([(device_id, device_name)])[0]


def lookup_device(device_id: str, device_name: str) -> dict[str, Any]:
    """The one device lookup of a request, answered from the shared Redis cache when warm
    (``app/cache/``: it wraps ``load_device`` above, given to it when the app is built)."""
    return shared_cache().get(device_id, device_name)
