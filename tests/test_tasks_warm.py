"""The warm-up task on a real Celery worker: hot set, refresh-ahead, run lock, decay, /cache/warm."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.result import AsyncResult
from flask import Flask

from app.cache.warming import decay_hotness
from app.devices.lookup import lookup_device
from tests.conftest import all_brokers, bearer, create_user, register
from tests.helpers import meta_key

# Celery's Redis result backend still calls redis-py's deprecated ``setex`` (celery 5.7, redis 8).
pytestmark = [pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"), all_brokers]

WARM = "tasks.warm.warm_hot_devices"
STATS = "tasks.stats.collect_cache_stats"
TASK_TIMEOUT = 15


@contextmanager
def running_worker(app: Flask) -> Iterator[Celery]:
    """A real worker (threads pool) on the test's broker, consuming the app's own tasks."""
    celery: Celery = app.extensions["celery"]
    celery.loader.import_default_modules()
    celery.control.purge()  # ticks an earlier test left in the broker belong to another app
    if celery.conf.broker_url.startswith("amqp"):
        # The worker's event loop on RabbitMQ sleeps until its next timer (minutes without heartbeats)
        # before it sees the test asking it to stop: a heartbeat every second wakes it.
        celery.conf.broker_heartbeat = 2
    try:
        with start_worker(celery, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=15):
            yield celery
    finally:
        consumer = getattr(celery.backend, "result_consumer", None)  # rpc:// (RabbitMQ) holds a connection
        if getattr(consumer, "_connection", None) is not None:
            consumer.stop()
        celery.close()


def run_task(celery: Celery, name: str, *args: object) -> dict:
    return celery.tasks[name].apply_async(args=args).get(timeout=TASK_TIMEOUT)


def entry_key(app: Flask, device_id: str, device_name: str = "room") -> str:
    return f"{app.config['CACHE_KEY_PREFIX']}device:{device_id}|{device_name}"


def seen(app: Flask, *keys: str) -> None:
    """Mark device keys as looked up just now (what the counters' flush records of a lookup)."""
    client = redis.Redis.from_url(app.config["REDIS_URL"])
    client.zadd(meta_key(app.config["CACHE_KEY_PREFIX"], "seen:device"), dict.fromkeys(keys, time.time()))
    client.close()


def hot_key(app: Flask) -> str:
    return meta_key(app.config["CACHE_KEY_PREFIX"], "hot:device")


def make_hot(app: Flask, lookups: dict[str, int]) -> None:
    """Register each device and look it up the given number of times, then flush the counters."""
    client = app.test_client()
    owner = create_user(app, "owner")
    for device_id in lookups:
        register(client, owner, device_id, "room")
    for device_id, times in lookups.items():
        for _ in range(times):
            assert client.get(f"/api/v1/devices/{device_id}/room").status_code == 200
    app.extensions["shared_cache"].flush()


def loads(app: Flask, client: redis.Redis) -> int:
    return int(client.hget(meta_key(app.config["CACHE_KEY_PREFIX"], "stats:device"), "loads") or 0)


def test_every_lookup_adds_to_the_devices_hotness(make_app, raw):
    app = make_app()
    make_hot(app, {"d1": 3, "d2": 1})
    scores = dict(raw.zrange(hot_key(app), 0, -1, withscores=True))
    assert scores == {b"device:d1|room": 3.0, b"device:d2|room": 1.0}


def test_warm_task_fills_exactly_the_hottest_devices(make_app, raw):
    app = make_app(WARM_TOP_N=3)
    make_hot(app, {"d1": 5, "d2": 4, "d3": 3, "d4": 2, "d5": 1})
    raw.delete(*(entry_key(app, f"d{i}") for i in range(1, 6)))
    with running_worker(app) as celery:
        result = run_task(celery, WARM)
    assert result == {"warmed": 3, "skipped": 0, "errors": 0}
    assert [bool(raw.exists(entry_key(app, f"d{i}"))) for i in range(1, 6)] == [True] * 3 + [False] * 2
    assert raw.ttl(entry_key(app, "d1")) > app.config["DEVICE_CACHE_TTL"] - 5


def test_warm_task_loads_reach_the_shared_counters_without_a_lookup_in_the_worker(make_app, raw):
    """A worker process serves no lookups, so nothing but the task itself flushes its loads."""
    app = make_app()
    raw.zadd(hot_key(app), {"device:ghost-1|room": 2, "device:ghost-2|room": 1})
    seen(app, "device:ghost-1|room", "device:ghost-2|room")
    with running_worker(app) as celery:
        assert run_task(celery, WARM)["warmed"] == 2
    deadline = time.monotonic() + 2.5  # the spec lets counters lag by at most 2 seconds
    while not loads(app, raw) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loads(app, raw) >= 1  # MongoDB queries (a batch may share one)


def test_refresh_ahead_skips_fresh_entries_and_refreshes_ones_near_expiry(make_app, raw):
    app = make_app(WARM_TOP_N=3, DEVICE_CACHE_TTL=300, WARM_INTERVAL=60)
    make_hot(app, {"d1": 3, "d2": 2, "d3": 1})
    raw.pexpire(entry_key(app, "d1"), 1500)  # in the last part of its TTL
    raw.delete(entry_key(app, "d2"))  # missing
    fresh_ttl = raw.pttl(entry_key(app, "d3"))
    loads_before = loads(app, raw)
    with running_worker(app) as celery:
        result = run_task(celery, WARM)
    assert result == {"warmed": 2, "skipped": 1, "errors": 0}
    assert raw.pttl(entry_key(app, "d1")) > 290_000
    assert raw.pttl(entry_key(app, "d2")) > 290_000
    assert raw.pttl(entry_key(app, "d3")) <= fresh_ttl  # not rewritten
    assert loads(app, raw) > loads_before


def test_overlapping_warm_run_is_a_no_op_while_another_holds_the_lock(make_app, raw):
    app = make_app()
    make_hot(app, {"d1": 2, "d2": 1})
    raw.delete(entry_key(app, "d1"), entry_key(app, "d2"))
    lock = meta_key(app.config["CACHE_KEY_PREFIX"], "lock:warm")
    raw.set(lock, "another-run", px=30_000)
    with running_worker(app) as celery:
        assert run_task(celery, WARM) == {"warmed": 0, "skipped": 0, "errors": 0, "overlap": True}
        assert raw.get(lock) == b"another-run"  # somebody else's lock is never released
        assert not raw.exists(entry_key(app, "d1"))
        raw.delete(lock)
        assert run_task(celery, WARM) == {"warmed": 2, "skipped": 0, "errors": 0}
    assert not raw.exists(lock)  # our own lock is released at the end of the run


def test_hotness_halves_per_half_life_and_forgets_cold_devices(make_app, raw):
    app = make_app(HOT_HALF_LIFE=10)
    dc = app.extensions["shared_cache"]
    raw.zadd(hot_key(app), {"device:a|x": 8, "device:b|x": 4, "device:c|x": 0.015})
    with app.app_context():
        assert decay_hotness(dc, now=1_000.0) == 3  # the first call only starts the clock
        assert decay_hotness(dc, now=1_010.0) == 2  # one half-life: c falls below the floor
        scores = dict(raw.zrange(hot_key(app), 0, -1, withscores=True))
        assert scores == {b"device:a|x": pytest.approx(4.0), b"device:b|x": pytest.approx(2.0)}
        decay_hotness(dc, now=1_030.0)  # two more
        scores = dict(raw.zrange(hot_key(app), 0, -1, withscores=True))
        assert scores == {b"device:a|x": pytest.approx(1.0), b"device:b|x": pytest.approx(0.5)}
        decay_hotness(dc, now=1_030.0)  # no time passed: unchanged
        assert raw.zscore(hot_key(app), "device:a|x") == pytest.approx(1.0)


def test_hot_set_is_trimmed_to_the_hottest_max_devices(make_app, raw):
    app = make_app(HOT_MAX_DEVICES=3, WARM_TOP_N=10)
    raw.zadd(hot_key(app), {f"device:g{i}|room": i for i in range(1, 7)})
    seen(app, *(f"device:g{i}|room" for i in range(1, 7)))
    with running_worker(app) as celery:
        assert run_task(celery, WARM)["warmed"] == 3
    assert raw.zrange(hot_key(app), 0, -1) == [b"device:g4|room", b"device:g5|room", b"device:g6|room"]


def test_post_cache_warm_enqueues_a_run_of_the_worker(make_app, raw):
    app = make_app(WARM_TOP_N=3)
    make_hot(app, {"d1": 3, "d2": 2, "d3": 1})
    raw.delete(*(entry_key(app, f"d{i}") for i in range(1, 4)))
    client = app.test_client()
    admin = bearer(create_user(app, "admin", admin=True))
    with running_worker(app) as celery:
        response = client.post("/cache/warm", json={"limit": 2}, headers=admin)
        assert response.status_code == 202, response.get_json()
        assert set(response.get_json()) == {"task_id"}
        result = AsyncResult(response.get_json()["task_id"], app=celery).get(timeout=TASK_TIMEOUT)
        assert result == {"warmed": 2, "skipped": 0, "errors": 0}
        response = client.post("/cache/warm", headers=admin)  # no body: WARM_TOP_N
        assert response.status_code == 202
        result = AsyncResult(response.get_json()["task_id"], app=celery).get(timeout=TASK_TIMEOUT)
        assert result == {"warmed": 1, "skipped": 2, "errors": 0}
    assert all(raw.exists(entry_key(app, f"d{i}")) for i in range(1, 4))


def test_post_cache_warm_is_admin_only_and_validates_limit(make_app):
    app = make_app()
    client = app.test_client()
    assert client.post("/cache/warm").status_code == 401
    assert client.post("/cache/warm", headers=bearer(create_user(app, "user"))).status_code == 403
    admin = bearer(create_user(app, "admin", admin=True))
    for body in ({"limit": 0}, {"limit": "3"}, {"limit": 1.5}, {"limit": True}, {"other": 1}, [1]):
        response = client.post("/cache/warm", json=body, headers=admin)
        assert response.status_code == 400, (body, response.get_json())


def test_by_default_a_warm_up_refreshes_every_device_looked_up_within_the_window(make_app, raw):
    """No WARM_TOP_N: not a top 100, every pair seen within WARM_WINDOW (at most HOT_MAX_DEVICES)."""
    app = make_app(DEVICE_CACHE_TTL=60)
    assert app.config["WARM_TOP_N"] is None
    assert app.config["WARM_WINDOW"] == 180  # 3 x DEVICE_CACHE_TTL
    with app.app_context():
        for i in range(150):  # unknown pairs: their (negative) entries are lookups like any other
            lookup_device(f"ghost-{i}", "room")
    app.extensions["shared_cache"].flush()
    for i in range(150):
        raw.delete(entry_key(app, f"ghost-{i}"))
    raw.zadd(meta_key(app.config["CACHE_KEY_PREFIX"], "seen:device"), {"device:old|room": time.time() - 181})
    with running_worker(app) as celery:
        assert run_task(celery, WARM) == {"warmed": 150, "skipped": 0, "errors": 0}
    assert all(raw.exists(entry_key(app, f"ghost-{i}")) for i in range(150))
    assert not raw.exists(entry_key(app, "old"))  # last looked up before the window: left to expire


def test_default_window_warms_a_device_looked_up_two_ttls_ago_but_not_one_older_than_the_window(make_app, raw):
    """The default WARM_WINDOW (3 x DEVICE_CACHE_TTL) reaches past the TTL that used to bound the warm-up."""
    app = make_app(DEVICE_CACHE_TTL=60)
    make_hot(app, {"recent": 2, "two-ttls": 1, "older": 1})
    raw.delete(*(entry_key(app, device_id) for device_id in ("recent", "two-ttls", "older")))
    seen_key = meta_key(app.config["CACHE_KEY_PREFIX"], "seen:device")
    now = time.time()
    raw.zadd(seen_key, {"device:two-ttls|room": now - 2 * 60, "device:older|room": now - 3 * 60 - 5})
    with running_worker(app) as celery:
        assert run_task(celery, WARM) == {"warmed": 2, "skipped": 0, "errors": 0}
    assert raw.exists(entry_key(app, "recent")) and raw.exists(entry_key(app, "two-ttls"))
    assert not raw.exists(entry_key(app, "older"))
    assert raw.zscore(seen_key, "device:older|room") is None  # forgotten: outside the window


def test_warm_window_is_a_setting_and_warm_top_n_still_caps_it(make_app, raw):
    app = make_app(DEVICE_CACHE_TTL=60, WARM_INTERVAL=30, WARM_WINDOW=90, WARM_TOP_N=1)
    make_hot(app, {"hot": 3, "warm": 2, "gone": 1})
    raw.delete(*(entry_key(app, device_id) for device_id in ("hot", "warm", "gone")))
    raw.zadd(meta_key(app.config["CACHE_KEY_PREFIX"], "seen:device"), {"device:gone|room": time.time() - 100})
    with running_worker(app) as celery:
        assert run_task(celery, WARM) == {"warmed": 1, "skipped": 0, "errors": 0}  # WARM_TOP_N caps
        assert raw.exists(entry_key(app, "hot")) and not raw.exists(entry_key(app, "warm"))
        assert run_task(celery, WARM, 5) == {"warmed": 1, "skipped": 1, "errors": 0}
    assert raw.exists(entry_key(app, "warm"))
    assert not raw.exists(entry_key(app, "gone"))  # 100 s ago: outside a 90 s window
