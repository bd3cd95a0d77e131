"""Single flight: one MongoDB load per cold key in a process, and across replicas."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from app.devices.lookup import lookup_device
from tests.conftest import all_topologies, build_app, create_user, register, stop_app
from tests.helpers import lock_key

pytestmark = all_topologies

URL = "/api/v1/devices/dev-1/room"


class CountingLoader:
    """Counts real MongoDB loads; a short pause widens the window the stampede would need."""

    def __init__(self, app, pause: float = 0.05):
        self.real = app.extensions["shared_cache"].loader
        self.pause = pause
        self.calls = 0
        self._lock = threading.Lock()
        app.extensions["shared_cache"].loader = self

    def __call__(self, device_id: str, device_name: str) -> dict:
        with self._lock:
            self.calls += 1
        time.sleep(self.pause)
        return self.real(device_id, device_name)


def concurrent_gets(apps: list, total: int, url: str = URL) -> list:
    barrier = threading.Barrier(total)

    def one(i: int):
        client = apps[i % len(apps)].test_client()
        barrier.wait()
        response = client.get(url)
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(max_workers=total) as pool:
        return list(pool.map(one, range(total)))


def test_hundred_concurrent_cold_lookups_over_two_replicas_load_at_most_twice(replicas):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", "room")
    loaders = [CountingLoader(a), CountingLoader(b)]

    results = concurrent_gets(replicas, 100)

    assert all(status == 200 for status, _ in results), results
    assert all(body["chain"] == ["dev-1"] for _, body in results)
    assert sum(loader.calls for loader in loaders) <= 2
    for app in replicas:
        app.extensions["shared_cache"].flush()
    counters = a.extensions["shared_cache"].counters()
    assert counters["hits"] + counters["misses"] == 100
    assert 1 <= counters["loads"] <= 2 and counters["errors"] == 0


def test_concurrent_cold_lookups_in_one_process_share_one_load(app, client):
    owner = create_user(app, "owner")
    register(client, owner, "dev-1", "room")
    loader = CountingLoader(app)
    results = concurrent_gets([app], 40)
    assert {status for status, _ in results} == {200}
    assert loader.calls == 1


def test_concurrent_lookups_of_an_unknown_pair_share_one_load(replicas):
    loaders = [CountingLoader(app) for app in replicas]
    results = concurrent_gets(replicas, 40, "/api/v1/devices/ghost/room")
    assert {status for status, _ in results} == {404}
    assert sum(loader.calls for loader in loaders) <= 2


def test_lock_left_by_a_dead_replica_delays_lookups_by_at_most_the_lock_timeout(settings, redis_alive):
    """A replica died holding the fill lock: the others wait out the lock, then load themselves."""
    app = build_app(settings, CACHE_LOCK_TIMEOUT=0.3)
    raw = redis_alive.raw()
    try:
        owner = create_user(app, "owner")
        register(app.test_client(), owner, "dev-1", "room")
        lock = lock_key(settings["CACHE_KEY_PREFIX"], "device:dev-1|room")
        raw.set(lock, "token-of-a-dead-replica", px=60_000)  # outlives the waiters' deadline
        started = time.monotonic()
        with app.app_context():
            assert lookup_device("dev-1", "room")["chain"] == ["dev-1"]
        assert time.monotonic() - started < 2  # sanity: bounded by the 0.3 s lock timeout, not stuck
        assert raw.get(lock) == b"token-of-a-dead-replica"  # not ours: neither stolen nor released
        assert raw.get(settings["CACHE_KEY_PREFIX"] + "device:dev-1|room") is None  # no write without the lock
    finally:
        raw.close()
        stop_app(app)
