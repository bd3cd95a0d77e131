"""The cache fails open: a stopped, killed or hung Redis never turns into an error response,
the per-process breaker stops requests from waiting on it, and caching resumes by itself."""

from __future__ import annotations

import json
import logging
import time

import pytest
import redis

from app.devices.lookup import SCHEMA_VERSION, lookup_device
from devstack.ports import free_port
from tests.conftest import all_topologies, bearer, build_app, create_user, register, stop_app
from tests.helpers import push, read, wait_until, without_l1

pytestmark = all_topologies

URL = "/api/v1/devices/dev-1/room"
SLOW = 1.0  # seconds: a generous sanity bound on one request, never a benchmark


def timed_get(client, url: str = URL, **kwargs):
    started = time.monotonic()
    response = client.get(url, **kwargs)
    return response, time.monotonic() - started


def breaker_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "app.cache" and r.levelno >= logging.WARNING]


def assert_logged_once_per_state_change(caplog) -> None:
    messages = breaker_messages(caplog)
    assert sum(m.startswith("cache disabled") for m in messages) == 1, messages
    assert sum(m.startswith("cache enabled") for m in messages) == 1, messages


def count_rounds(dc, monkeypatch) -> None:
    """Count the background thread's completed rounds in ``dc.rounds_done``."""
    tick = dc.background.tick
    dc.rounds_done = 0

    def counted() -> None:
        try:
            tick()
        finally:
            dc.rounds_done += 1

    monkeypatch.setattr(dc.background, "tick", counted)


@pytest.mark.parametrize("outage", ["stop", "kill", "pause"])
def test_requests_succeed_through_a_redis_outage_and_caching_resumes_after_it(
    app, client, raw, redis_alive, caplog, settings, outage, monkeypatch
):
    caplog.set_level(logging.WARNING, logger="app.cache")
    owner = create_user(app, "owner")
    key = register(client, owner, "dev-1", "room")
    assert client.get(URL).status_code == 200  # warm
    dc = app.extensions["shared_cache"]
    count_rounds(dc, monkeypatch)

    getattr(redis_alive, outage)()
    try:
        for _ in range(5):  # the first ones may each pay one short Redis timeout, then the breaker opens
            response, took = timed_get(client)
            assert response.status_code == 200 and response.get_json()["chain"] == ["dev-1"]
            assert took < SLOW
        assert dc.breaker.is_open
        # A background flush that began before the breaker opened may still be waiting on Redis
        # (and will count its error): let the background round in progress end first.
        rounds = dc.rounds_done
        assert wait_until(lambda: dc.rounds_done >= rounds + 2)

        errors = dc.pending_counts()["errors"]
        started = time.monotonic()
        for _ in range(10):
            assert client.get(URL).status_code == 200
            assert client.get("/api/v1/devices/nobody/room").status_code == 404
        # With the breaker open no request tries Redis at all: no error, no 100 ms timeout each.
        assert dc.pending_counts()["errors"] == errors
        assert time.monotonic() - started < 20 * 0.1

        # Every route that looks a device up, or invalidates one, still answers as usual.
        assert push(client, key, "dev-1", "room", {"temp": 21.5}).status_code == 201
        assert read(client, "dev-1", "room", "temp").status_code == 200
        assert register(client, owner, "dev-2", "room")["device_id"] == "dev-2"
        assert client.get(URL).get_json()["chain"] == ["dev-1", "dev-2"]
        health = client.get("/health")
        assert health.status_code == 200 and health.get_json()["checks"]["redis"] == "unavailable"
    finally:
        redis_alive.ensure_running()  # restarts a stopped or killed server, resumes a hung one

    assert wait_until(lambda: not dc.breaker.is_open), "the breaker did not close after Redis came back"
    # It reads Redis again once the invalidations left by the outage are applied (app/cache/outbox.py).
    with app.app_context():
        assert wait_until(dc.readable, 5.0)
    assert client.get(URL).get_json()["chain"] == ["dev-1", "dev-2"]
    # Caching resumes: a lookup stores its entry again (within a few background rounds: the first
    # fill after the outage once lost its lock to the outage's last invalidation, in the full suite).
    entry = settings["CACHE_KEY_PREFIX"] + "device:dev-1|room"
    assert wait_until(lambda: client.get(URL).status_code == 200 and raw.exists(entry), 5.0)
    dc.loader = fail_if_called
    assert client.get(URL).get_json()["chain"] == ["dev-1", "dev-2"]  # answered by the cache
    assert_logged_once_per_state_change(caplog)


def fail_if_called(device_id: str, device_name: str) -> dict:
    raise AssertionError(f"MongoDB was queried for {device_id}|{device_name}")


def test_counters_kept_while_redis_is_down_are_sent_when_it_is_back(app, client, redis_alive):
    owner = create_user(app, "owner")
    register(client, owner, "dev-1", "room")
    dc = app.extensions["shared_cache"]
    redis_alive.stop()
    try:
        for _ in range(6):
            assert client.get(URL).status_code == 200
    finally:
        redis_alive.ensure_running()  # a fresh server: whatever was flushed before is gone
    assert wait_until(lambda: not dc.breaker.is_open)
    assert wait_until(lambda: dc.counters()["misses"] == 6)
    counters = dc.counters()
    assert counters["hits"] == 0 and counters["loads"] == 6 and counters["errors"] >= 1


def test_app_started_with_redis_down_serves_then_caches_once_redis_is_up(settings, redis_alive, raw, caplog):
    caplog.set_level(logging.WARNING, logger="app.cache")
    redis_alive.stop()
    app = build_app(settings)
    try:
        client = app.test_client()
        owner, admin = create_user(app, "owner"), create_user(app, "root", admin=True)
        register(client, owner, "dev-1", "room")
        for _ in range(5):
            response, took = timed_get(client)
            assert response.status_code == 200 and took < SLOW
        assert client.get("/health").get_json() == {
            "status": "degraded",
            "checks": {"mongo": "ok", "redis": "unavailable"},
        }
        stats = client.get("/cache/stats", headers=bearer(admin))
        assert stats.status_code == 200 and stats.get_json()["redis"]["reachable"] is False

        redis_alive.start()  # no rebuild of the app
        dc = app.extensions["shared_cache"]
        assert wait_until(lambda: not dc.breaker.is_open)
        with app.app_context():  # and the outage's invalidations are applied (app/cache/outbox.py)
            assert wait_until(dc.readable, 5.0)
        assert client.get(URL).status_code == 200
        assert json.loads(raw.get(settings["CACHE_KEY_PREFIX"] + "device:dev-1|room"))["chain"] == ["dev-1"]
        assert client.get("/health").get_json()["status"] == "ok"
    finally:
        redis_alive.ensure_running()
        stop_app(app)
    assert_logged_once_per_state_change(caplog)


def nowhere(topology: str) -> dict:
    """Settings of a Redis of this topology where nothing listens."""
    ports = [free_port() for _ in range(3)]
    nodes = ",".join(f"127.0.0.1:{port}" for port in ports)
    broker = f"redis://127.0.0.1:{ports[0]}/1"
    if topology == "sentinel":
        return {
            "REDIS_URL": None,
            "REDIS_SENTINELS": nodes,
            "REDIS_SENTINEL_MASTER": "gone",
            "CELERY_BROKER_URL": broker,
        }
    if topology == "cluster":
        return {"REDIS_CLUSTER_NODES": nodes, "CELERY_BROKER_URL": broker}
    return {"REDIS_URL": f"redis://127.0.0.1:{ports[0]}/0", "CELERY_BROKER_URL": broker}


def test_app_whose_redis_never_answers_serves_every_route(settings, caplog, topology):
    caplog.set_level(logging.WARNING, logger="app.cache")
    app = build_app(settings, **nowhere(topology))
    try:
        client = app.test_client()
        owner, admin = create_user(app, "owner"), create_user(app, "root", admin=True)
        key = register(client, owner, "dev-1", "room", private=True)
        for _ in range(10):
            response, took = timed_get(client, headers=bearer(owner))
            assert response.status_code == 200 and took < SLOW
        assert client.get(URL).status_code == 401  # private, anonymous: access rules unchanged
        assert push(client, key, "dev-1", "room", {"rh": 40}).status_code == 201
        assert client.get("/api/v1/devices/dev-2/room").status_code == 404
        with app.app_context():
            assert lookup_device("dev-1", "room")["found"] is True
        body = client.get("/cache/stats", headers=bearer(admin)).get_json()
        assert body["redis"] == {"reachable": False} and body["keys"]["count"] is None
        assert client.post("/cache/clear", headers=bearer(admin)).status_code == 503
    finally:
        stop_app(app)
    messages = breaker_messages(caplog)
    assert sum(m.startswith("cache disabled") for m in messages) == 1, messages
    assert not any(m.startswith("cache enabled") for m in messages)


def test_redis_refusing_writes_never_becomes_an_error_response(app, client, redis_alive):
    """A real server out of memory (noeviction) rejects the fill's script; lookups still answer."""
    owner = create_user(app, "owner")
    register(client, owner, "dev-1", "room")
    register(client, owner, "dev-2", "room")
    assert client.get(URL).status_code == 200  # warm before the server fills up
    primaries = redis_alive.primaries()
    saved = [node.config_get("maxmemory*") for node in primaries]
    for node in primaries:
        node.config_set("maxmemory-policy", "noeviction")
        node.config_set("maxmemory", 1)
    try:
        for _ in range(5):
            assert client.get(URL).get_json()["chain"] == ["dev-1", "dev-2"]
            assert client.get("/api/v1/devices/dev-2/room").status_code == 200  # cold: its fill fails
            assert client.get("/api/v1/devices/dev-3/room").status_code == 404
    finally:
        for node, config in zip(primaries, saved, strict=True):
            node.config_set("maxmemory", config["maxmemory"])
            node.config_set("maxmemory-policy", config["maxmemory-policy"])
    dc = app.extensions["shared_cache"]
    assert dc.pending_counts()["errors"] + dc.counters()["errors"] >= 1


@pytest.mark.parametrize(
    "stored",
    [b"\x80\x04\x95junk-that-looks-like-pickle", b'{"v": 0, "found": true}', b"not json"],
    ids=["pickle", "old-schema", "garbage"],
)
def test_unusable_entry_counts_as_a_miss_and_is_replaced_at_once(settings, raw, stored):
    # A long lock timeout: waiting for a lock nobody takes would show as a multi-second lookup.
    app = build_app(settings, CACHE_LOCK_TIMEOUT=5)
    try:
        owner = create_user(app, "owner")
        register(app.test_client(), owner, "dev-1", "room")
        key = settings["CACHE_KEY_PREFIX"] + "device:dev-1|room"
        raw.set(key, stored, ex=300)
        for _ in range(2):
            response, took = timed_get(app.test_client())
            assert response.status_code == 200 and response.get_json()["chain"] == ["dev-1"]
            assert took < 2 * SLOW
        value = json.loads(raw.get(key))
        assert value["v"] == SCHEMA_VERSION and value["chain"] == ["dev-1"]
        counters = app.extensions["shared_cache"]
        counters.flush()
        assert without_l1(counters.counters()) | {"hit_ratio": None} == {
            "hits": 1,
            "misses": 1,
            "loads": 1,
            "errors": 0,
            "hit_ratio": None,
        }
    finally:
        stop_app(app)


def test_counters_sent_while_redis_hangs_are_counted_once(settings, redis_alive):
    """A hung Redis applies the flush it was sent when it wakes up, after the client gave up on
    the reply: the resent batch must not be added a second time."""
    app = build_app(settings, CACHE_FLUSH_INTERVAL=60)  # flushes only when this test asks
    try:
        client = app.test_client()
        for _ in range(5):
            assert client.get("/api/v1/devices/ghost/room").status_code == 404
        dc = app.extensions["shared_cache"]
        redis_alive.pause()
        try:
            dc.flush()  # times out; Redis has the batch in its socket buffer
            # the flush that timed out is a failed cache operation: counted with the batch after
            assert without_l1(dc.pending_counts()) == {"hits": 4, "misses": 1, "loads": 1, "errors": 1}
        finally:
            redis_alive.resume()
        assert client.get("/api/v1/devices/ghost/room").status_code == 404
        assert wait_until(lambda: not dc.breaker.is_open)
        dc.flush()
        assert without_l1(dc.counters()) == {"hits": 5, "misses": 1, "loads": 1, "errors": 1, "hit_ratio": 5 / 6}
    finally:
        stop_app(app)


def test_cache_client_fails_fast_without_retries(app, topology):
    dc = app.extensions["shared_cache"]
    with app.app_context():
        lookup_device("dev-1", "room")  # a Cluster's client is built on first use
    [(_, node)] = dc.topology.primaries(dc.client)[:1]
    kwargs = node.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.1 and kwargs["socket_connect_timeout"] == 0.1
    assert kwargs["retry"].get_retries() == 0
    assert not kwargs.get("retry_on_timeout")
    if topology == "cluster":  # and the cluster client itself does not retry either
        assert dc.client.cluster.retry.get_retries() == 0


def test_breaker_is_per_process(settings, raw, caplog):
    caplog.set_level(logging.WARNING, logger="app.cache")
    a, b = build_app(settings), build_app(settings)
    try:
        owner = create_user(a, "owner")
        register(a.test_client(), owner, "dev-1", "room")
        a.extensions["shared_cache"].background.probe = lambda: False  # only this process cannot reach Redis
        a.extensions["shared_cache"].breaker.trip(redis.ConnectionError("only this process lost Redis"))
        for _ in range(3):
            assert a.test_client().get(URL).status_code == 200  # from MongoDB, Redis untouched
        assert not raw.exists(settings["CACHE_KEY_PREFIX"] + "device:dev-1|room")
        assert b.test_client().get(URL).status_code == 200
        b.extensions["shared_cache"].loader = fail_if_called
        assert b.test_client().get(URL).status_code == 200  # the other replica caches on
        assert not b.extensions["shared_cache"].breaker.is_open
        del a.extensions["shared_cache"].background.probe  # it reaches Redis again
        assert wait_until(lambda: not a.extensions["shared_cache"].breaker.is_open)  # its probe succeeds
    finally:
        stop_app(a)
        stop_app(b)
    assert_logged_once_per_state_change(caplog)
