"""Small request helpers shared by the service's tests (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from flask import Flask
from pymongo import MongoClient

from devstack.wait import wait_until as wait_until  # devstack's one wait_until, for the tests

READINGS_URL = "/api/v1/readings"


def key_header(key: dict | str) -> dict[str, str]:
    return {"X-API-Key": key if isinstance(key, str) else key["api_key"]}


def push(client, key: dict | str | None, device_id: str, device_name: str, readings: dict[str, Any], **extra):
    """POST one reading with a device key (``None``: no X-API-Key header)."""
    headers = key_header(key) if key is not None else {}
    body = {"device_id": device_id, "device_name": device_name, "readings": readings, **extra}
    return client.post(READINGS_URL, json=body, headers=headers)


def readings_url(device_id: str, device_name: str, measurement: str) -> str:
    return f"/api/v1/devices/{device_id}/{device_name}/readings/{measurement}"


def read(client, device_id: str, device_name: str, measurement: str, headers: dict | None = None, **params):
    return client.get(readings_url(device_id, device_name, measurement), query_string=params, headers=headers or {})


def assert_error(response, status: int, code: str) -> dict[str, Any]:
    """The spec's error shape exactly: ``{"error": {"code", "message", "details"?}}``."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) <= {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    if "details" in error:
        assert isinstance(error["details"], dict)
    assert "Traceback" not in response.get_data(as_text=True)
    return error


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def insert_readings(
    app: Flask, device_id: str, device_name: str, owner_id: str, rows: Iterable[tuple[datetime, dict[str, Any]]]
) -> None:
    """Store readings with chosen timestamps straight into MongoDB, in the shape a push stores,
    and drop the pair's cached readings chunks (as every writer into ended buckets must)."""
    from app.readings.cache import drop_members

    meta = {"device_id": device_id, "device_name": device_name, "owner_id": owner_id}
    docs = [{"timestamp": at, "meta": meta, **values} for at, values in rows]
    # A client of its own: the app's times a bulk insert out after 2 s on a loaded machine, and
    # pymongo's retry then stores again what the first attempt stored (SecantusDB does not make a
    # retried write exactly-once; readings, a time series, have no unique _id to refuse it).
    with MongoClient(app.config["MONGO_URI"], retryWrites=False, socketTimeoutMS=120_000) as client:
        client.get_default_database()["readings"].insert_many(docs)
    with app.app_context():
        drop_members({(owner_id, device_id, device_name)})


def stored_readings(app: Flask) -> list[dict[str, Any]]:
    with app.app_context():
        return list(app.extensions["mongo"].db["readings"].find({}, {"_id": 0}))


def meta_key(prefix: str, name: str) -> str:
    """A bookkeeping key of the cache (``app/cache/keys.py``): beside the prefix, one hash tag."""
    return f"meta:{{{prefix}}}{name}"


def lock_key(prefix: str, key: str) -> str:
    """The fill lock of a lookup key (relative to the prefix), in the value key's slot."""
    return f"{prefix}lock:{{{prefix}{key}}}"


def without_l1(counters: dict) -> dict:
    """The counters but ``l1_hits`` (how many of the hits the near cache answered depends on when
    its listener got subscribed), checked to be a part of the hits."""
    counters = dict(counters)
    l1_hits = counters.pop("l1_hits")
    assert 0 <= l1_hits <= counters["hits"], (l1_hits, counters)
    return counters
