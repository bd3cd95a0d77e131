"""MongoDB stopped mid-test: quick 503 db_unavailable, never a hang or a 500; recovery on restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from flask import Flask

from devstack.mongo import MongoServer
from tests.conftest import bearer, build_app, create_user, register, stop_app
from tests.helpers import assert_error, push, read, wait_until

BOUND = 2.5  # seconds; the client gives up on server selection after MONGO_TIMEOUT_MS


@pytest.fixture
def outage_app(settings: dict, own_mongo: MongoServer) -> Iterator[Flask]:
    app = build_app(settings, MONGO_URI=f"{own_mongo.uri}/outage")
    yield app
    stop_app(app)


def requests_of(client, owner: dict, key: dict):
    """One request per kind of MongoDB use: auth, key CRUD, lookups, list, push, query."""
    return {
        "list keys": lambda: client.get("/api/v1/api-keys", headers=bearer(owner)),
        "create key": lambda: client.post(
            "/api/v1/api-keys", json={"device_id": "b", "device_name": "tent"}, headers=bearer(owner)
        ),
        "delete key": lambda: client.delete("/api/v1/api-keys/0123456789abcdef", headers=bearer(owner)),
        "device list": lambda: client.get("/api/v1/devices"),
        "uncached device": lambda: client.get("/api/v1/devices/never-seen/tent"),
        "push": lambda: push(client, key, "a", "tent", {"temp": 21}),
        "query": lambda: read(client, "a", "tent", "temp"),
    }


def timed(request):
    started = time.monotonic()
    response = request()
    return response, time.monotonic() - started


def test_requests_get_503_quickly_while_mongodb_is_down_and_recover_after_restart(outage_app, own_mongo):
    client = outage_app.test_client()
    owner = create_user(outage_app, "owner")
    key = register(client, owner, "a", "tent")
    assert push(client, key, "a", "tent", {"temp": 20}).status_code == 201
    assert read(client, "a", "tent", "temp").get_json()["total"] == 1

    own_mongo.stop()
    # All at once, as concurrent requests would come: each must answer within the bound.
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = {name: pool.submit(timed, request) for name, request in requests_of(client, owner, key).items()}
    for name, future in futures.items():
        response, elapsed = future.result()
        assert elapsed < BOUND, f"{name} took {elapsed:.2f}s"
        assert_error(response, 503, "db_unavailable")
    health = client.get("/health")
    assert health.status_code == 503 and health.get_json()["status"] == "down"
    assert client.get("/health/live").status_code == 200

    own_mongo.start()  # same port, same data directory; the app is not restarted
    recovered = wait_until(lambda: client.get("/health").status_code == 200, 15, interval=0.1)
    assert recovered, "no recovery after MongoDB came back"
    assert client.get("/api/v1/api-keys", headers=bearer(owner)).status_code == 200
    assert push(client, key, "a", "tent", {"temp": 22}).status_code == 201
    [item] = read(client, "a", "tent", "temp").get_json()["items"]
    assert item["count"] == 2 and item["value"] == 21


def test_app_started_while_mongodb_is_down_serves_once_it_is_up(settings, own_mongo):
    own_mongo.stop()
    app = build_app(settings, MONGO_URI=f"{own_mongo.uri}/late")
    try:
        client = app.test_client()
        started = time.monotonic()
        assert_error(client.get("/api/v1/devices"), 503, "db_unavailable")
        assert time.monotonic() - started < BOUND
        own_mongo.start()
        recovered = wait_until(lambda: client.get("/api/v1/devices").status_code == 200, 15, interval=0.1)
        assert recovered, "no recovery after MongoDB came up"
        owner = create_user(app, "owner")
        register(client, owner, "a", "tent")  # the schema was ensured after all
        with app.app_context():
            [info] = app.extensions["mongo"].db.list_collections(filter={"name": "readings"})
        assert info["options"]["timeseries"]["timeField"] == "timestamp"
    finally:
        stop_app(app)
