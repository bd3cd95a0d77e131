"""Recovery from Redis outages, on every topology: the cache is used again as soon as Redis
answers, invalidations reach Redis whatever the breaker says, and drops no replica has
acknowledged are retried until one has.
"""

from __future__ import annotations

import random
import threading
import time

import redis

from app.devices.lookup import lookup_device
from tests.conftest import all_topologies, bearer, create_user, register
from tests.helpers import lock_key, wait_until

pytestmark = all_topologies

WAIT = 10  # seconds: a generous bound on one step


def fail_if_called(device_id: str, device_name: str) -> dict:
    raise AssertionError(f"MongoDB was queried for {device_id}|{device_name}")


class Lookups(threading.Thread):
    """Lookups on every replica, as fast as they answer, until stopped; errors kept."""

    def __init__(self, apps, pairs):
        super().__init__(daemon=True)
        self.apps, self.pairs = apps, pairs
        self.halt = threading.Event()
        self.errors: list[BaseException] = []
        self.count = 0
        self.start()

    def run(self) -> None:
        while not self.halt.is_set():
            app = self.apps[self.count % len(self.apps)]
            try:
                with app.app_context():
                    lookup_device(*self.pairs[self.count % len(self.pairs)])
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)
            self.count += 1

    def stop(self) -> None:
        self.halt.set()
        self.join(WAIT)


def test_after_any_sequence_of_outages_first_lookups_fill_and_later_ones_never_reach_mongodb(
    replicas, redis_alive, raw
):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "old", "room")
    rng = random.Random(8)
    for n, outage in enumerate(rng.sample(["pause", "stop", "kill"], 3)):  # each kind, in a random order
        lookups = Lookups(replicas, [("old", "room"), ("ghost", "room")])
        try:
            getattr(redis_alive, outage)()
            time.sleep(0.6)
            # An invalidation while Redis is down: pending, replayed once it is back.
            register(b.test_client(), owner, f"during-{n}", "room")
        finally:
            redis_alive.ensure_running()
            lookups.stop()
        assert lookups.errors == [] and lookups.count > 0

    # Within about a second of Redis's return every process uses it again (probed every 0.1 s).
    caches = [app.extensions["shared_cache"] for app in replicas]

    def readable(dc) -> bool:
        with dc.app.app_context():
            return dc.readable()

    assert wait_until(lambda: all(readable(dc) for dc in caches), 2.0), [
        (dc.breaker.is_open, dc.invalidator.pending) for dc in caches
    ]
    register(a.test_client(), owner, "new", "hall")
    for app in (a, b, a, b):  # the first lookup fills, every later one hits
        assert app.test_client().get("/api/v1/devices/new/hall").get_json()["chain"] == ["new"]
        for dc in caches:
            dc.loader = fail_if_called


def test_invalidation_reaches_redis_even_while_the_breaker_is_open(app, client, raw, settings):
    owner = create_user(app, "owner")
    register(client, owner, "dev-1", "room")
    assert client.get("/api/v1/devices/dev-1/room").status_code == 200
    entry = settings["CACHE_KEY_PREFIX"] + "device:dev-1|room"
    assert raw.exists(entry)
    dc = app.extensions["shared_cache"]
    dc.background.probe = lambda: False  # the breaker stays open: this process believes Redis is down
    dc.breaker.trip(redis.ConnectionError("a moment ago"))
    register(client, owner, "dev-2", "room")
    assert not raw.exists(entry)  # dropped before the response, breaker or not
    assert not dc.invalidator.pending


def test_failed_invalidation_is_retried_every_probe_interval_until_it_lands(app, client, raw, settings, monkeypatch):
    owner = create_user(app, "owner")
    register(client, owner, "dev-1", "room")
    assert client.get("/api/v1/devices/dev-1/room").status_code == 200
    dc = app.extensions["shared_cache"]
    real_write, failures = dc.replicas.write, []

    def fails_three_times(*args, **kwargs):
        if len(failures) < 3:
            failures.append(time.monotonic())
            raise redis.ConnectionError("reset by peer")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(dc.replicas, "write", fails_three_times)
    register(client, owner, "dev-2", "room")
    assert wait_until(lambda: not dc.invalidator.pending)
    assert len(failures) == 3
    assert (
        max(b - a for a, b in zip(failures, failures[1:], strict=False)) < 1.0
    )  # retried often, not once per cool-down
    assert not raw.exists(settings["CACHE_KEY_PREFIX"] + "device:dev-1|room")
    assert client.get("/api/v1/devices/dev-1/room").get_json()["chain"] == ["dev-1", "dev-2"]


def test_admin_invalidate_and_clear_work_while_the_breaker_is_closed_again(app, client, raw, settings):
    """The admin routes answer 503 only while this process knows Redis is down."""
    admin = create_user(app, "root", admin=True)
    dc = app.extensions["shared_cache"]
    dc.breaker.trip(redis.ConnectionError("a moment ago"))
    assert wait_until(lambda: dc.breaker.allow())  # Redis is fine: the probe closes it at once
    raw.set(lock_key(settings["CACHE_KEY_PREFIX"], "device:x|y"), "token")
    response = client.post("/cache/invalidate", json={"pattern": "device:x|*"}, headers=bearer(admin))
    assert response.status_code == 200 and response.get_json()["deleted"] == 1


def test_health_reports_the_cache_ok_whatever_the_topology(client):
    assert client.get("/health").get_json() == {"status": "ok", "checks": {"mongo": "ok", "redis": "ok"}}
