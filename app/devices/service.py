"""Who may read a device, and the device list."""

from __future__ import annotations

from typing import Any

from app.auth import User, auth_required, invalid, same_hash, stored_key
from app.db import KEYS
from app.devices.lookup import lookup_device
from app.errors import APIError, not_found
from app.extensions import mongo
from app.validation import valid_pair


def require_found(device: dict[str, Any], api_key: str | None = None) -> dict[str, Any]:
    """404 for an unknown pair, unless the API key sent is not genuine: a wrong header is always 401."""
    if not device["found"]:
        if api_key is not None and stored_key(api_key) is None:
            raise invalid("invalid API key")
        raise not_found("unknown device")
    return device


def readable_device(device_id: str, device_name: str, user: User | None, api_key: str | None) -> dict[str, Any]:
    """The pair's lookup, once the caller may read it (404 unknown, then 401/403).

    A malformed pair cannot have been registered, so it is unknown without a lookup.
    """
    device = lookup_device(device_id, device_name) if valid_pair(device_id, device_name) else {"found": False}
    require_found(device, api_key)
    check_read_access(device, user, api_key)
    return device


def check_read_access(device: dict[str, Any], user: User | None, api_key: str | None) -> None:
    """Public: anyone. Private: the owner's bearer or the pair's own API key.

    A key that is not the pair's is still checked for being genuine, so a wrong
    header is always 401 and never silently anonymous.
    """
    key_matches = api_key is not None and same_hash(device.get("key_hash"), api_key)
    if api_key is not None and not key_matches and stored_key(api_key) is None:
        raise invalid("invalid API key")
    if device["public"] or key_matches:
        return
    if user is not None and user.user_id == device["owner_id"]:
        return
    if user is None and api_key is None:
        raise auth_required("this device is private")
    raise APIError(403, "forbidden", "you may not read this device")


def public_view(device: dict[str, Any], user_id: str | None) -> dict[str, Any]:
    """The device as its reader (a user id, or None) sees it: the owner sees its id too."""
    body = {
        "device_id": device["device_id"],
        "device_name": device["device_name"],
        "chain": device["chain"],
        "public": device["public"],
    }
    if user_id is not None and user_id == device["owner_id"]:
        body["owner_id"] = device["owner_id"]
    return body


def list_devices(user: User | None) -> list[dict[str, Any]]:
    query: dict[str, Any] = {"private": False}
    if user is not None:
        query = {"$or": [query, {"owner_id": user.user_id}]}
    docs = mongo.db[KEYS].find(query, {"_id": 0, "device_id": 1, "device_name": 1, "private": 1, "owner_id": 1})
    devices = [
        {
            "device_id": d["device_id"],
            "device_name": d["device_name"],
            "public": not d.get("private", False),
            "owned": user is not None and d["owner_id"] == user.user_id,
        }
        for d in docs
    ]
    return sorted(devices, key=lambda d: (d["device_name"], d["device_id"]))
