"""Key create/delete invalidates the chain's lookups on every replica before responding,
and a fill that started before an invalidation never writes its stale result after it."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from app.devices.lookup import lookup_device
from tests.conftest import all_topologies, bearer, create_user, near_on_and_off, register

pytestmark = [all_topologies, near_on_and_off]

WAIT = 10  # seconds: generous bound on any single step, never a timing assertion


class SlowLoader:
    """Wraps a replica's loader: the first call reads MongoDB, then holds its result until released.

    That is a lookup whose MongoDB answer is already taken while the response is still on its way.
    """

    def __init__(self, app):
        self.dc = app.extensions["shared_cache"]
        self.real = self.dc.loader
        self.loaded = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()
        self.dc.loader = self

    def __call__(self, device_id: str, device_name: str) -> dict:
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        value = self.real(device_id, device_name)
        if first:
            self.loaded.set()
            assert self.release.wait(WAIT)
        return value


class Lookup(threading.Thread):
    """A lookup in its own thread (one request), keeping its result or its exception."""

    def __init__(self, app, device_id: str, device_name: str):
        super().__init__(daemon=True)
        self.app, self.pair = app, (device_id, device_name)
        self.result: dict | None = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            with self.app.app_context():
                self.result = lookup_device(*self.pair)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def value(self) -> dict:
        self.join(WAIT)
        assert not self.is_alive(), "lookup did not finish"
        assert self.error is None, self.error
        assert self.result is not None
        return self.result


def chain(app, device_id: str, device_name: str, headers: dict | None = None):
    response = app.test_client().get(f"/api/v1/devices/{device_id}/{device_name}", headers=headers or {})
    return response.get_json()["chain"] if response.status_code == 200 else response.status_code


def test_new_key_grows_the_chain_on_the_other_replica_at_once(replicas):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", "room")
    assert chain(b, "dev-1", "room") == ["dev-1"]
    assert chain(a, "dev-1", "room") == ["dev-1"]  # warm on both

    register(a.test_client(), owner, "dev-2", "room")
    assert chain(b, "dev-1", "room") == ["dev-1", "dev-2"]
    assert chain(b, "dev-2", "room") == ["dev-1", "dev-2"]


def test_deleted_key_is_unknown_on_the_other_replica_at_once(replicas):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", "room")
    second = register(a.test_client(), owner, "dev-2", "room")
    assert chain(b, "dev-1", "room") == ["dev-1", "dev-2"]
    assert chain(b, "dev-2", "room") == ["dev-1", "dev-2"]

    response = a.test_client().delete(f"/api/v1/api-keys/{second['key_id']}", headers=bearer(owner))
    assert response.status_code == 204
    assert chain(b, "dev-2", "room") == 404
    assert chain(b, "dev-1", "room") == ["dev-1"]


def test_deleting_the_last_key_of_a_private_pair_drops_it_everywhere(replicas):
    a, b = replicas
    owner = create_user(a, "owner")
    key = register(a.test_client(), owner, "dev-1", "room", private=True)
    assert chain(b, "dev-1", "room", bearer(owner)) == ["dev-1"]
    a.test_client().delete(f"/api/v1/api-keys/{key['key_id']}", headers=bearer(owner))
    assert chain(b, "dev-1", "room", bearer(owner)) == 404
    assert chain(a, "dev-1", "room") == 404


def test_fill_started_before_an_invalidation_does_not_write_its_stale_result(replicas, raw, settings):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", "room")
    slow = SlowLoader(a)
    early = Lookup(a, "dev-1", "room")
    assert slow.loaded.wait(WAIT)  # its MongoDB answer says chain [dev-1]

    register(b.test_client(), owner, "dev-2", "room")  # invalidates on the other replica
    slow.release.set()
    assert early.value()["chain"] == ["dev-1"]  # it started before: its answer may be old
    assert raw.get(settings["CACHE_KEY_PREFIX"] + "device:dev-1|room") is None  # but it was not stored

    assert chain(a, "dev-1", "room") == ["dev-1", "dev-2"]
    assert chain(b, "dev-1", "room") == ["dev-1", "dev-2"]


@pytest.mark.parametrize("where", ["same replica", "other replica"])
def test_lookup_after_an_invalidation_never_gets_a_fill_that_started_before_it(replicas, where):
    """A request arriving after the invalidation must not join the stale in-process fill."""
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", "room")
    slow = SlowLoader(a)
    early = Lookup(a, "dev-1", "room")
    assert slow.loaded.wait(WAIT)

    register((a if where == "same replica" else b).test_client(), owner, "dev-2", "room")
    late = Lookup(a, "dev-1", "room")  # misses Redis, finds the early fill in flight
    late.join(0.3)  # let it join the flight if it is going to
    slow.release.set()
    assert early.value()["chain"] == ["dev-1"]
    assert late.value()["chain"] == ["dev-1", "dev-2"]
    assert chain(b, "dev-1", "room") == ["dev-1", "dev-2"]


def test_admin_invalidate_during_a_fill_leaves_no_stale_entry(app, client, raw, settings):
    owner, admin = create_user(app, "owner"), create_user(app, "root", admin=True)
    register(client, owner, "dev-1", "room")
    slow = SlowLoader(app)
    early = Lookup(app, "dev-1", "room")
    assert slow.loaded.wait(WAIT)

    response = client.post("/cache/invalidate", json={"pattern": "device:dev-1|*"}, headers=bearer(admin))
    assert response.status_code == 200
    slow.release.set()
    early.value()
    assert raw.get(settings["CACHE_KEY_PREFIX"] + "device:dev-1|room") is None
    assert slow.calls == 1
    assert chain(app, "dev-1", "room") == ["dev-1"]
    assert slow.calls == 2  # the next lookup went back to MongoDB


def test_fill_finishing_midway_through_an_admin_invalidate_leaves_no_stale_entry(
    app, client, raw, settings, monkeypatch, redis_alive
):
    """The fill completes between the invalidation's SCAN passes: whatever their order, nothing stale stays."""
    owner, admin = create_user(app, "owner"), create_user(app, "root", admin=True)
    register(client, owner, "dev-1", "room")
    slow = SlowLoader(app)
    early = Lookup(app, "dev-1", "room")
    assert slow.loaded.wait(WAIT)

    from app.cache import admin as cache_service

    real_unlink = cache_service._unlink_matching
    passes = []

    def unlink_then_let_the_fill_finish(*args, **kwargs):
        deleted = real_unlink(*args, **kwargs)
        passes.append(args[-1])
        if len(passes) == 1:
            slow.release.set()
            early.value()  # the fill has tried to store its value
        return deleted

    monkeypatch.setattr(cache_service, "_unlink_matching", unlink_then_let_the_fill_finish)
    response = client.post("/cache/invalidate", json={"pattern": "device:*"}, headers=bearer(admin))
    assert response.status_code == 200
    assert len(passes) == 2 * len(redis_alive.primaries())  # locks, then values, on every primary
    assert raw.get(settings["CACHE_KEY_PREFIX"] + "device:dev-1|room") is None


def test_invalidation_that_fails_on_redis_is_applied_before_this_replica_reads_redis_again(
    app, client, raw, settings, monkeypatch
):
    """A transient failure (the keys stay in Redis, so a real outage can't show it) must not let
    this replica serve the entry it failed to drop."""
    owner = create_user(app, "owner")
    register(client, owner, "dev-1", "room")
    assert chain(app, "dev-1", "room") == ["dev-1"]
    dc = app.extensions["shared_cache"]

    def write_fails(*args, **kwargs):
        raise redis.ConnectionError("connection reset")

    monkeypatch.setattr(dc.replicas, "write", write_fails)
    monkeypatch.setattr(dc.invalidator, "retry", lambda: False)  # holds the background retry back
    register(client, owner, "dev-2", "room")  # 201 although its invalidation failed
    assert raw.exists(settings["CACHE_KEY_PREFIX"] + "device:dev-1|room")  # still there, stale
    assert chain(app, "dev-1", "room") == ["dev-1", "dev-2"]  # from MongoDB: Redis is bypassed
    monkeypatch.undo()

    # The background retry drops the pending keys (every CACHE_PROBE_INTERVAL) and reads resume.
    deadline = time.monotonic() + WAIT
    while dc.invalidator.pending and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not dc.invalidator.pending and not raw.exists(settings["CACHE_KEY_PREFIX"] + "device:dev-1|room")
    assert chain(app, "dev-1", "room") == ["dev-1", "dev-2"]
    assert chain(app, "dev-1", "room") == ["dev-1", "dev-2"]  # and now from the cache again
    assert dc.pending_counts()["errors"] + dc.counters()["errors"] >= 1
