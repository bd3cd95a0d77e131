"""The /cache admin blueprint: who may use it, /stats's shape, and clear/invalidate staying
inside CACHE_KEY_PREFIX (SCAN + UNLINK), whatever the glob and whatever the state of Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from tests.conftest import all_topologies, bearer, create_user, register
from tests.helpers import assert_error, lock_key, meta_key

pytestmark = all_topologies
LOCK = "<the fill lock of device:d1|room>"

ADMIN_ROUTES = [
    ("get", "/cache/stats", None),
    ("post", "/cache/clear", None),
    ("post", "/cache/invalidate", {"pattern": "*"}),
]


@pytest.fixture
def broker(redis_alive, settings):
    """The Celery broker's database: on the cache's server, or (Cluster) another one."""
    url = settings.get("CELERY_BROKER_URL")  # unset on Sentinel: database 1 of the master
    client = redis.Redis.from_url(url) if url else redis.Redis(port=redis_alive.port, db=1)
    yield client
    client.close()


def call(client, method: str, url: str, body, headers: dict | None = None):
    return getattr(client, method)(url, json=body, headers=headers or {})


@pytest.mark.parametrize(("method", "url", "body"), ADMIN_ROUTES)
def test_admin_routes_need_an_admin_bearer(client, owner, admin, method, url, body):
    assert_error(call(client, method, url, body), 401, "auth_required")
    assert_error(call(client, method, url, body, bearer(owner)), 403, "forbidden")
    forged = {"Authorization": "Bearer ost_0123456789abcdef_" + "x" * 43}
    assert_error(call(client, method, url, body, forged), 401, "invalid_credentials")
    assert_error(call(client, method, url, body, {"Authorization": "Basic abc"}), 401, "invalid_credentials")
    assert call(client, method, url, body, bearer(admin)).status_code == 200


def test_stats_before_any_lookup(client, admin, settings):
    response = client.get("/cache/stats", headers=bearer(admin))
    assert response.status_code == 200
    body = response.get_json()
    redis_part = body["redis"]
    assert redis_part["reachable"] is True
    assert isinstance(redis_part["version"], str) and isinstance(redis_part["used_memory_human"], str)
    for name in ("keyspace_hits", "keyspace_misses", "evicted_keys"):
        assert isinstance(redis_part[name], int) and not isinstance(redis_part[name], bool)
    assert body["keys"] == {"prefix": settings["CACHE_KEY_PREFIX"], "count": 1}  # the admin's verified token
    device = body["lookups"]["device"]
    assert {k: device[k] for k in ("hits", "misses", "loads", "errors", "hit_ratio")} == {
        "hits": 0,
        "misses": 0,
        "loads": 0,
        "errors": 0,
        "hit_ratio": None,
    }
    assert body["collector"]["last_run"] is None


def test_stats_count_lookups_and_keys(client, owner, admin, settings, redis_alive):
    register(client, owner, "dev-1", "room")
    for url in ["/api/v1/devices/dev-1/room"] * 3 + ["/api/v1/devices/dev-2/room"]:
        client.get(url)
    before = sum(node.info("stats")["keyspace_hits"] for node in redis_alive.primaries())
    body = client.get("/cache/stats", headers=bearer(admin)).get_json()
    device = body["lookups"]["device"]
    assert {k: device[k] for k in ("hits", "misses", "loads", "errors")} == {
        "hits": 2,
        "misses": 2,
        "loads": 2,
        "errors": 0,
    }
    assert device["hit_ratio"] == 0.5
    assert 0 <= device["l1_hits"] <= device["hits"]  # the part of the hits answered in process
    assert body["keys"]["count"] == 4  # the entry, the negative entry, the owner's and the admin's users
    assert before - 2 <= body["redis"]["keyspace_hits"]  # Redis's own, server-wide, reported beside ours
    json.dumps(body)  # plain JSON numbers and strings only


def seed(raw, broker, prefix: str) -> dict[str, list[str]]:
    """Keys inside the prefix, and lookalikes outside it that must survive every operation."""
    inside = [
        f"{prefix}device:d1|room",
        f"{prefix}device:d1|hall",
        f"{prefix}device:d2|room",
        f"{prefix}device:d11|room",
        lock_key(prefix, "device:d1|room"),
        f"{prefix}warm:other",
    ]
    outside = [
        f"x{prefix}device:d1|room",  # the prefix, but not at the start
        f"{prefix[:-1]}device:d1|room",  # the prefix without its separator
        f"{prefix[:-1]}-other:device:d1|room",  # a neighbouring namespace
        "device:d1|room",  # another service with no prefix at all
        "opensensor:device:d1|room",
        meta_key(prefix, "stats:device"),  # our bookkeeping lives beside the prefix
        "_kombu.binding.celery",
        "celery-task-meta-1234",
    ]
    for key in inside + outside:
        raw.set(key, "1")
    broker_keys = [f"{prefix}device:d1|room", "_kombu.binding.celery", "unacked"]
    for key in broker_keys:
        broker.set(key, "1")
    return {"inside": inside, "outside": outside, "broker": broker_keys}


def existing(client: redis.Redis, keys: list[str]) -> list[str]:
    return [key for key in keys if client.exists(key)]


def test_clear_removes_every_key_under_the_prefix_and_nothing_else(client, admin, raw, broker, settings):
    keys = seed(raw, broker, settings["CACHE_KEY_PREFIX"])
    try:
        response = client.post("/cache/clear", headers=bearer(admin))
        assert response.status_code == 200
        # ... and the admin's user, cached by this very request's authentication
        assert response.get_json() == {"deleted": len(keys["inside"]) + 1}
        assert existing(raw, keys["inside"]) == []
        assert existing(raw, keys["outside"]) == keys["outside"]
        assert existing(broker, keys["broker"]) == keys["broker"]
        again = client.post("/cache/clear", json={}, headers=bearer(admin))
        assert again.status_code == 200 and again.get_json() == {"deleted": 1}  # the admin's user again
    finally:
        raw.delete(*keys["outside"])
        broker.delete(*keys["broker"])


def test_clear_then_lookups_refill(client, owner, admin, raw, settings):
    register(client, owner, "dev-1", "room")
    assert client.get("/api/v1/devices/dev-1/room").status_code == 200
    # the device's entry, and the owner's and the admin's users
    assert client.post("/cache/clear", headers=bearer(admin)).get_json() == {"deleted": 3}
    assert client.get("/api/v1/devices/dev-1/room").get_json()["chain"] == ["dev-1"]
    assert raw.exists(settings["CACHE_KEY_PREFIX"] + "device:dev-1|room")


@pytest.mark.parametrize(
    ("pattern", "gone"),
    [
        (
            "*",
            [
                "device:d1|room",
                "device:d1|hall",
                "device:d2|room",
                "device:d11|room",
                LOCK,
                "warm:other",
            ],
        ),
        ("device:*", ["device:d1|room", "device:d1|hall", "device:d2|room", "device:d11|room", LOCK]),
        ("device:d1|*", ["device:d1|room", "device:d1|hall", LOCK]),
        ("device:d1|room", ["device:d1|room", LOCK]),
        ("device:*|room", ["device:d1|room", "device:d2|room", "device:d11|room", LOCK]),
        ("device:d?|room", ["device:d1|room", "device:d2|room", LOCK]),
        ("nothing:*", []),
    ],
)
def test_invalidate_deletes_exactly_what_the_glob_names(client, admin, raw, broker, settings, pattern, gone):
    prefix = settings["CACHE_KEY_PREFIX"]
    keys = seed(raw, broker, prefix)
    gone = [lock_key(prefix, "device:d1|room").removeprefix(prefix) if name == LOCK else name for name in gone]
    try:
        response = client.post("/cache/invalidate", json={"pattern": pattern}, headers=bearer(admin))
        assert response.status_code == 200
        body = response.get_json()
        assert body["pattern"] == pattern
        # keys removed, an in-flight fill's lock included (and with "*" the admin's user, cached by this request)
        assert body["deleted"] == len(gone) + (pattern == "*")
        expected_left = [k for k in keys["inside"] if k.removeprefix(prefix) not in gone]
        assert existing(raw, keys["inside"]) == expected_left
        assert existing(raw, keys["outside"]) == keys["outside"]
        assert existing(broker, keys["broker"]) == keys["broker"]
    finally:
        raw.delete(*keys["inside"], *keys["outside"])
        broker.delete(*keys["broker"])


@pytest.mark.parametrize(
    "pattern",
    ["../*", "/../*", "*/../../*", "\\*", "[^t]*", "?*", "**", "*device:d1|room*", "*:*", " *", "*\n*"],
)
def test_no_glob_reaches_outside_the_prefix(client, admin, raw, broker, settings, pattern):
    keys = seed(raw, broker, settings["CACHE_KEY_PREFIX"])
    try:
        response = client.post("/cache/invalidate", json={"pattern": pattern}, headers=bearer(admin))
        assert response.status_code == 200 and response.get_json()["pattern"] == pattern
        assert existing(raw, keys["outside"]) == keys["outside"]
        assert existing(broker, keys["broker"]) == keys["broker"]
    finally:
        raw.delete(*keys["inside"], *keys["outside"])
        broker.delete(*keys["broker"])


BAD_BODIES = {
    "no body": ({}, 415, "unsupported_media_type"),
    "text body": ({"data": "pattern=*", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    "not json": ({"data": "{pattern: *", "content_type": "application/json"}, 400, "validation_error"),
    "json list": ({"json": ["*"]}, 400, "validation_error"),
    "json string": ({"json": "*"}, 400, "validation_error"),
    "json null": ({"data": "null", "content_type": "application/json"}, 400, "validation_error"),
    "empty object": ({"json": {}}, 400, "validation_error"),
    "empty pattern": ({"json": {"pattern": ""}}, 400, "validation_error"),
    "null pattern": ({"json": {"pattern": None}}, 400, "validation_error"),
    "number pattern": ({"json": {"pattern": 5}}, 400, "validation_error"),
    "bool pattern": ({"json": {"pattern": True}}, 400, "validation_error"),
    "list pattern": ({"json": {"pattern": ["*"]}}, 400, "validation_error"),
    "object pattern": ({"json": {"pattern": {"glob": "*"}}}, 400, "validation_error"),
    "unknown field": ({"json": {"pattern": "*", "prefix": ""}}, 400, "validation_error"),
    "too long": ({"json": {"pattern": "*" * 513}}, 400, "validation_error"),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
def test_bad_invalidate_body_is_rejected_and_deletes_nothing(client, admin, raw, settings, case):
    kwargs, status, code = BAD_BODIES[case]
    key = settings["CACHE_KEY_PREFIX"] + "device:d1|room"
    raw.set(key, "1")
    assert_error(client.post("/cache/invalidate", headers=bearer(admin), **kwargs), status, code)
    assert raw.exists(key)


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"json": ["*"]}, 400, "validation_error"),
        ({"data": "{", "content_type": "application/json"}, 400, "validation_error"),
        ({"data": "all", "content_type": "text/plain"}, 415, "unsupported_media_type"),
    ],
)
def test_bad_clear_body_is_rejected_and_deletes_nothing(client, admin, raw, settings, kwargs, status, code):
    key = settings["CACHE_KEY_PREFIX"] + "device:d1|room"
    raw.set(key, "1")
    assert_error(client.post("/cache/clear", headers=bearer(admin), **kwargs), status, code)
    assert raw.exists(key)


@pytest.mark.parametrize("outage", ["stop", "pause"])
def test_with_redis_down_clear_and_invalidate_are_503_and_stats_still_answers(
    client, owner, admin, redis_alive, outage
):
    register(client, owner, "dev-1", "room")
    assert client.get("/api/v1/devices/dev-1/room").status_code == 200
    getattr(redis_alive, outage)()
    try:
        started = time.monotonic()
        stats = client.get("/cache/stats", headers=bearer(admin))
        assert stats.status_code == 200
        body = stats.get_json()
        assert body["redis"]["reachable"] is False
        assert body["keys"] == {"prefix": body["keys"]["prefix"], "count": None}
        assert body["lookups"]["device"]["misses"] >= 0 and "hit_ratio" in body["lookups"]["device"]
        assert body["collector"]["last_run"] is None
        assert_error(client.post("/cache/clear", headers=bearer(admin)), 503, "cache_unavailable")
        if outage == "stop":  # a hung server costs the admin client's longer timeout per call
            assert_error(
                client.post("/cache/invalidate", json={"pattern": "*"}, headers=bearer(admin)), 503, "cache_unavailable"
            )
        assert time.monotonic() - started < 10  # sanity: bounded by timeouts, never hanging
        assert client.get("/api/v1/devices/dev-1/room").status_code == 200
    finally:
        redis_alive.ensure_running()


def test_admin_user_creation_prints_a_working_token(app, client):
    admin = create_user(app, "boss", admin=True)
    assert admin["admin"] is True
    assert client.get("/cache/stats", headers=bearer(admin)).status_code == 200
