"""Redis restarts seen from outside: two gunicorn replicas, a Celery worker and a beat.

Regression tests of two defects found by a black-box run: after Redis had been paused and
killed several times, a warm device answered ``503 db_unavailable`` once MongoDB stopped
(every worker still bypassed the cache), and a key registered right after Redis came back
left the other replica serving the old chain.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from urllib.parse import quote

import pytest

from devstack.celery import start_celery
from devstack.processes import service_env, stop_processes
from devstack.redis_server import RedisServer
from devstack.web import LiveReplica
from tests.conftest import build_app, create_user, stop_app
from tests.helpers import wait_until

WAIT = 20  # seconds: a generous bound on one step, never a timing assertion


def call(method: str, url: str, body: dict | None = None, headers: dict | None = None) -> tuple[int, dict | None]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


def device_url(replica: LiveReplica, device_id: str, device_name: str) -> str:
    return f"{replica.url}/api/v1/devices/{quote(device_id)}/{quote(device_name)}"


class Traffic(threading.Thread):
    """Lookups through every replica, as fast as they answer, until stopped; statuses counted."""

    def __init__(self, replicas: list[LiveReplica], pairs: list[tuple[str, str]]):
        super().__init__(daemon=True)
        self.urls = [device_url(r, *pair) for r in replicas for pair in pairs]
        self.statuses: Counter[int | str] = Counter()
        self.halt = threading.Event()
        self.start()

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            try:
                status, _ = call("GET", self.urls[n % len(self.urls)])
            except OSError as exc:  # a replica too slow to answer within 5 s would show here
                status = exc.__class__.__name__
            self.statuses[status] += 1
            n += 1

    def stop(self) -> Counter[int | str]:
        self.halt.set()
        self.join(WAIT)
        return self.statuses


@pytest.fixture
def stack(settings, own_mongo, live_replica, tmp_path):
    """Two replicas (2 gthread workers x 4 threads each), one Celery worker and one beat."""
    settings = {**settings, "MONGO_URI": f"{own_mongo.uri}/restarts", "WARM_INTERVAL": 2, "STATS_INTERVAL": 2}
    app = build_app(settings)
    env = service_env(settings, LOG_LEVEL="INFO")
    procs = [
        start_celery("worker", ["--pool", "threads", "-c", "2", "--without-gossip", "--without-mingle"], env,
                     tmp_path / "worker.log"),
        start_celery("beat", ["-s", str(tmp_path / "schedule"), "--pidfile", ""], env, tmp_path / "beat.log"),
    ]  # fmt: skip
    replicas = [live_replica(workers=2, threads=4, **_env(settings)) for _ in range(2)]
    try:
        yield app, replicas
    finally:
        stop_processes([*procs, *(replica.proc for replica in replicas)], 15)
        stop_app(app)


def _env(settings: dict) -> dict:
    return {name: settings[name] for name in ("MONGO_URI", "WARM_INTERVAL", "STATS_INTERVAL")}


def outages(redis: RedisServer, rounds: int) -> None:
    """Pause (SIGSTOP/SIGCONT) and kill (SIGKILL, restarted empty on the same port), in turns."""
    for _ in range(rounds):
        redis.pause()
        time.sleep(1.5)
        redis.resume()
        time.sleep(0.3)
        redis.kill()
        time.sleep(1.0)
        redis.start()
        time.sleep(0.3)


def wait_healthy(replicas: list[LiveReplica]) -> None:
    pending = list(replicas)

    def all_healthy() -> bool:
        pending[:] = [r for r in pending if call("GET", r.url + "/health") != (200, HEALTHY)]
        return not pending

    assert wait_until(all_healthy, WAIT, interval=0.05), "replicas never reported Redis ok"


HEALTHY = {"status": "ok", "checks": {"mongo": "ok", "redis": "ok"}}


def test_warm_device_is_answered_from_the_cache_by_every_worker_after_redis_outages(stack, redis_alive, own_mongo):
    app, replicas = stack
    owner = create_user(app, "owner")
    auth = {"Authorization": f"Bearer {owner['token']}"}
    status, old = call("POST", replicas[0].url + "/api/v1/api-keys", {"device_id": "old", "device_name": "room"}, auth)
    assert status == 201

    traffic = Traffic(replicas, [("old", "room"), ("ghost", "room")])
    try:
        outages(redis_alive, rounds=2)
    finally:
        statuses = traffic.stop()
    assert set(statuses) <= {200, 404}, statuses  # the outages never reached a client

    wait_healthy(replicas)
    status, key = call("POST", replicas[0].url + "/api/v1/api-keys", {"device_id": "new", "device_name": "hall"}, auth)
    assert status == 201
    push = {"device_id": "new", "device_name": "hall", "readings": {"temp": 20.5}}
    assert call("POST", replicas[1].url + "/api/v1/readings", push, {"X-API-Key": key["api_key"]})[0] == 201
    for replica in replicas:
        for _ in range(2):
            assert call("GET", device_url(replica, "new", "hall"))[0] == 200

    own_mongo.stop()
    answers = Counter()
    for replica in replicas:
        for _ in range(16):  # new connections each time: every worker of both replicas answers some
            status, body = call("GET", device_url(replica, "new", "hall"))
            answers[status] += 1
            if status == 200:
                assert body["chain"] == ["new"]
    assert answers == {200: 32}, answers


def test_key_registered_as_redis_returns_is_seen_at_once_by_the_other_replica(stack, redis_alive):
    """Both replicas serve the device from MongoDB while Redis hangs; right after it returns,
    a new key in the chain registered on one replica must show on the other at once."""
    app, replicas = stack
    owner = create_user(app, "owner")
    auth = {"Authorization": f"Bearer {owner['token']}"}
    assert (
        call("POST", replicas[0].url + "/api/v1/api-keys", {"device_id": "a-0", "device_name": "hall"}, auth)[0] == 201
    )
    chain = ["a-0"]
    for run in range(1, 3):
        traffic = Traffic(replicas, [("a-0", "hall")])
        try:
            redis_alive.pause()
            time.sleep(3)
            redis_alive.resume()
        finally:
            statuses = traffic.stop()
        assert set(statuses) == {200}, statuses
        wait_healthy(replicas)
        body = {"device_id": f"a-{run}", "device_name": "hall"}
        assert call("POST", replicas[0].url + "/api/v1/api-keys", body, auth)[0] == 201
        chain.append(f"a-{run}")
        for _ in range(4):
            status, device = call("GET", device_url(replicas[1], "a-0", "hall"))
            assert status == 200 and device["chain"] == chain, (run, device)
