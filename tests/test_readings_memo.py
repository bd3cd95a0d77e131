"""A dashboard's answer kept whole and served before Flask (``app/readings/memo.py``): the view's
bytes and counts, the same answers as MongoDB alone as the clock moves and pushes arrive on
either replica, and nothing served once a change that could alter it has answered."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from flask import Flask
from prometheus_client import REGISTRY

import app.devices.hot
import app.readings.views
from app.cache.shared import QUERY, USER, SharedCache
from app.readings.partials import to_ms
from app.readings.schema import AGGS, NUMERIC, QUERYABLE
from app.timeutil import parse_iso
from devstack.proxy import TcpProxy
from tests.conftest import all_topologies, bearer, create_user, register, stop_app
from tests.helpers import insert_readings, push, readings_url
from tests.test_hot_read import Recorder, call
from tests.test_hot_read import make as lane_app
from tests.test_readings_cache import assert_same, random_values

NAME = "room"
ROUTE = "/api/v1/devices/<device_id>/<device_name>/readings/<measurement>"
DASH = readings_url("dev-1", NAME, "temp") + "?resolution=30"


class Clock:
    """The "now" of the readings view and of the lane (a query's end), set by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = datetime.now(UTC)
        clock = self

        class Frozen(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
                return clock.now

        for module in (app.readings.views, app.devices.hot):
            monkeypatch.setattr(module, "datetime", Frozen)

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def pair(settings: dict) -> Iterator[list[tuple[Flask, Recorder]]]:
    """Two replicas, each with its lane's pass-ons counted."""
    apps = [lane_app(settings), lane_app(settings)]
    yield apps
    for replica, _ in apps:
        stop_app(replica)


def get(app: Flask, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    (status, listed, body), _, _ = call(app.wsgi_app, path, headers or {})
    return int(status.split()[0]), dict(listed), body


def by_lane(app: Flask, recorder: Recorder, path: str, headers: dict | None = None) -> bool:
    """Read once; whether the lane answered (Flask never saw it)."""
    before = recorder.calls
    assert get(app, path, headers)[0] == 200
    return recorder.calls == before


def kept(app: Flask, recorder: Recorder, path: str, headers: dict | None = None) -> None:
    """Read until the lane answers: the first reads fill Redis, then one keeps the answer."""
    for _ in range(4):
        if by_lane(app, recorder, path, headers):
            return
    raise AssertionError(f"the lane never answered {path}")


def minutely(owner: dict, app: Flask, device_id: str = "dev-1", hours: int = 26, now: datetime | None = None) -> list:
    """A reading a minute (at :07 s) over the last ``hours``: their stamps (ms)."""
    now = now or datetime.now(UTC)
    rows = [(now - timedelta(minutes=m, seconds=7), {"temp": 20.0 + m % 13}) for m in range(1, hours * 60)]
    insert_readings(app, device_id, NAME, owner["user_id"], rows)
    return sorted(to_ms(at) for at, _ in rows)


def total_count(body: bytes) -> int:
    return sum(item["count"] for item in json.loads(body)["items"])


def counts(app: Flask) -> dict[str, float]:
    cache: SharedCache = app.extensions["shared_cache"]
    out = {f"device {k}": v for k, v in cache.pending_counts().items()}
    out.update({f"user {k}": v for k, v in cache.pending_counts(USER).items()})
    out.update({f"query {k}": v for k, v in cache.pending_counts(QUERY).items()})
    labels = {"method": "GET", "route": ROUTE, "status": "200"}
    out["requests"] = REGISTRY.get_sample_value("opensensor_http_requests_total", labels) or 0.0
    return out


def delta(before: dict, after: dict) -> dict:
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


@pytest.mark.parametrize(
    "private, cors", [(False, False), (True, False), (False, True)], ids=["anonymous", "owner's bearer", "CORS on"]
)
def test_a_kept_answer_is_the_views_bytes_and_counts(settings, clock, request, private, cors):
    a, recorder = lane_app(settings, CORS_ORIGINS="https://dash.example" if cors else "")
    request.addfinalizer(lambda: stop_app(a))
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", NAME, private=private)
    minutely(owner, a)
    headers = bearer(owner) if private else {}
    kept(a, recorder, DASH, headers)
    flask = a.extensions["hot_read"].wsgi_app
    clock.advance(seconds=2)
    before = counts(a)
    by_flask, _, flask_log = call(flask, DASH, headers)
    flask_counts = delta(before, counts(a))
    before, calls = counts(a), recorder.calls
    lane, _, lane_log = call(a.wsgi_app, DASH, headers)
    assert recorder.calls == calls  # the lane answered
    assert lane == by_flask and lane[0] == "200 OK"
    assert delta(before, counts(a)) == flask_counts
    assert flask_counts["query hits"] >= 2 and flask_counts["requests"] == 1, flask_counts
    assert {k: v for k, v in lane_log.items() if k != "request_id"} == {
        k: v for k, v in flask_log.items() if k != "request_id"
    }


def test_the_answer_follows_the_clock_until_a_reading_leaves_the_range(pair, clock):
    (a, recorder), _ = pair
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", NAME)
    stamps = minutely(owner, a, now=clock.now)
    kept(a, recorder, DASH)
    first = min(s for s in stamps if s >= to_ms(clock.now - timedelta(hours=24)))
    at_first = datetime.fromtimestamp(first / 1000, UTC) + timedelta(hours=24)
    clock.now = at_first  # start is the earliest reading's stamp: still in the range
    assert by_lane(a, recorder, DASH)
    status, _, body = get(a, DASH)
    assert status == 200 and f'"start":"{(at_first - timedelta(hours=24)).isoformat()[:23]}Z"'.encode() in body
    held = total_count(body)
    clock.advance(milliseconds=1)  # now it has left: Flask computes the new answer
    assert not by_lane(a, recorder, DASH)
    assert total_count(get(a, DASH)[2]) == held - 1


def test_a_reading_stamped_ahead_ends_the_answer_when_the_clock_reaches_it(pair, clock, monkeypatch):
    (a, ra), (b, rb) = pair
    owner = create_user(a, "owner")
    key = register(a.test_client(), owner, "dev-1", NAME)
    minutely(owner, a, now=clock.now)
    kept(b, rb, DASH)
    ahead = clock.now + timedelta(seconds=3)  # replica A's clock runs 3 s ahead
    ahead = ahead.replace(microsecond=ahead.microsecond // 1000 * 1000)
    monkeypatch.setattr("app.readings.service.utcnow_ms", lambda: ahead)
    assert push(a.test_client(), key, "dev-1", NAME, {"temp": 99.0}).status_code == 201
    kept(b, rb, DASH)  # computed again after the push, without the reading (its stamp is past the end)
    held = total_count(get(b, DASH)[2])
    clock.now = ahead
    assert by_lane(b, rb, DASH) and total_count(get(b, DASH)[2]) == held  # end == its stamp: not in yet
    clock.advance(milliseconds=1)
    assert not by_lane(b, rb, DASH)
    assert total_count(get(b, DASH)[2]) == held + 1


def test_a_push_through_one_replica_is_in_the_next_answer_of_the_other_over_a_slow_route(
    settings, redis_alive, clock, make_app
):
    """B's invalidations arrive 40 ms late: the push answers only once B has let its answer go."""
    if "REDIS_URL" not in settings:
        pytest.skip("one Redis server behind the proxy")
    proxy = TcpProxy(redis_alive.port)
    a, _ = lane_app(settings)
    b, rb = lane_app({**settings, "REDIS_URL": proxy.url(0)})
    uncached = make_app(QUERY_CACHE_ENABLED=False)
    try:
        owner = create_user(a, "owner")
        key = register(a.test_client(), owner, "dev-1", NAME)
        minutely(owner, a)
        proxy.delay = 0.04
        for n in range(3):
            clock.now = datetime.now(UTC)
            kept(b, rb, DASH)
            pushed = push(a.test_client(), key, "dev-1", NAME, {"temp": 50.0 + n})
            assert pushed.status_code == 201
            clock.now = max(clock.now, parse_iso(pushed.get_json()["timestamp"]) + timedelta(milliseconds=1))
            want = json.loads(get(uncached, DASH)[2])
            assert_same(json.loads(get(b, DASH)[2]), want, n)
            assert 50.0 + n in [i["value"] for i in want["items"]] or want["items"][-1]["count"] > 1
    finally:
        for replica in (a, b):
            stop_app(replica)
        proxy.close()


@pytest.fixture
def fences(monkeypatch) -> list[int]:
    """One entry per fence any replica waits for."""
    waited: list[int] = []
    real = SharedCache.fence
    monkeypatch.setattr(SharedCache, "fence", lambda self: waited.append(1) or real(self))
    return waited


@all_topologies  # the memo key shares its member's slot; a Cluster fences every primary
def test_only_a_push_to_a_member_whose_answer_is_kept_waits_for_a_fence(pair, clock, fences):
    (a, _), (b, rb) = pair
    owner = create_user(a, "owner")
    key = register(a.test_client(), owner, "dev-1", NAME)
    minutely(owner, a, hours=2, now=clock.now)
    fences.clear()
    assert push(a.test_client(), key, "dev-1", NAME, {"temp": 1.0}).status_code == 201
    assert fences == []  # nobody keeps an answer over dev-1
    kept(b, rb, DASH)
    assert push(a.test_client(), key, "dev-1", NAME, {"temp": 2.0}).status_code == 201
    assert fences == [1]
    assert push(a.test_client(), key, "dev-1", NAME, {"temp": 3.0}).status_code == 201
    assert fences == [1]  # the first push let every kept answer go; none was kept since


def test_changes_that_drop_a_member_void_the_answers_kept_over_it(pair, clock, admin):
    (a, ra), (b, rb) = pair
    owner = create_user(a, "owner")
    client = a.test_client()
    key = register(client, owner, "dev-1", NAME)
    minutely(owner, a, hours=2, now=clock.now)

    kept(b, rb, DASH)  # a writer into ended buckets (the importer, demo-data) drops the member
    held = total_count(get(b, DASH)[2])
    insert_readings(a, "dev-1", NAME, owner["user_id"], [(clock.now - timedelta(hours=1, seconds=1), {"temp": 5.0})])
    assert total_count(get(b, DASH)[2]) == held + 1

    kept(b, rb, DASH)  # /cache/invalidate query:*
    invalidated = client.post("/cache/invalidate", json={"pattern": "query:*"}, headers=bearer(admin))
    assert invalidated.status_code == 200, invalidated.get_json()
    assert not by_lane(b, rb, DASH)

    kept(b, rb, DASH)  # the chain grows: a new member's readings count at once
    register(client, owner, "dev-2", NAME)
    minutely(owner, a, device_id="dev-2", hours=2, now=clock.now)
    status, _, body = get(b, DASH)
    assert status == 200 and b'"chain":["dev-1","dev-2"]' in body

    # The pair's last key deleted: no answer of its owner's readings is served any more.
    kept(b, rb, readings_url("dev-2", NAME, "temp") + "?resolution=30")
    listed = client.get("/api/v1/api-keys", headers=bearer(owner)).get_json()["keys"]
    for gone in listed:
        assert client.delete(f"/api/v1/api-keys/{gone['key_id']}", headers=bearer(owner)).status_code == 204
    assert get(b, readings_url("dev-2", NAME, "temp") + "?resolution=30")[0] == 404
    assert key  # (registered above)


@pytest.mark.parametrize("blocked", ["breaker", "near cache off"])
def test_nothing_kept_is_served_while_the_cache_may_not_serve(pair, clock, blocked):
    (a, ra), _ = pair
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", NAME)
    minutely(owner, a, hours=2, now=clock.now)
    kept(a, ra, DASH)
    cache: SharedCache = a.extensions["shared_cache"]
    if blocked == "breaker":
        cache.breaker._opened_at = 1.0
    else:
        cache.near.suspend("the test")
    assert not by_lane(a, ra, DASH)


def random_dashboard(rng: random.Random, now: datetime) -> str:
    """A query that ends now: the default 24 h, or from a chosen start."""
    measurement = rng.choice(QUERYABLE)
    numeric = measurement in NUMERIC or measurement == "vpd"
    aggs = ("avg",) if measurement == "vpd" else AGGS if numeric else ("first", "last")
    params = [f"agg={rng.choice(aggs)}", f"resolution={rng.choice([1, 5, 15, 30, 60, 180, 1440])}"]
    if rng.random() < 0.3:
        start = now - timedelta(hours=rng.randint(1, 40), milliseconds=rng.randint(0, 999))
        params.append("start=" + start.isoformat(timespec="milliseconds").replace("+00:00", "Z"))
    if measurement == "temp" and rng.random() < 0.5:
        params.append(f"unit={rng.choice('CFK')}")
    if rng.random() < 0.3:
        params += [f"size={rng.randint(1, 40)}", f"page={rng.randint(1, 3)}"]
    return readings_url("m-1", NAME, measurement) + "?" + "&".join(params)


@pytest.mark.timeout(300)
def test_kept_answers_equal_uncached_ones_as_the_clock_moves_and_pushes_arrive(pair, make_app, clock):
    rng = random.Random(1604)
    (a, ra), (b, rb) = pair
    uncached = make_app(QUERY_CACHE_ENABLED=False)
    owner = create_user(a, "owner")
    headers = bearer(owner)
    keys = {d: register(a.test_client(), owner, d, NAME, private=True) for d in ("m-1", "m-2")}
    for device_id in keys:
        rows, at = [], clock.now - timedelta(hours=30)
        while at < clock.now:
            rows.append((at, random_values(rng)))
            at += timedelta(seconds=rng.randint(20, 240), milliseconds=rng.choice([0, 1, 999]))
        insert_readings(a, device_id, NAME, owner["user_id"], rows)
    queries = [random_dashboard(rng, clock.now) for _ in range(8)]
    served = 0
    for n in range(60):
        if rng.random() < 0.4:
            device_id = rng.choice(sorted(keys))
            pushed = push((a, b)[n % 2].test_client(), keys[device_id], device_id, NAME, random_values(rng))
            assert pushed.status_code == 201, pushed.get_json()
        clock.advance(seconds=rng.choice([0, 0.5, 7, 40, 95]))
        path = rng.choice(queries)
        status, _, want = get(uncached, path, headers)
        assert status == 200, want
        for replica, recorder in ((a, ra), (b, rb), (b, rb)):
            before = recorder.calls
            status, _, got = get(replica, path, headers)
            served += recorder.calls == before
            assert_same(json.loads(got), json.loads(want), path)
    assert served > 40, served  # most answers came from the lane


@pytest.mark.parametrize("topology", ["sentinel"], indirect=True)  # a failed append is tried once more there
def test_an_append_whose_reply_was_lost_still_waits_for_the_fence(pair, clock, fences, monkeypatch):
    """The first try ran (it deleted the memo key) but its reply was lost: the retry finds no key,
    and the push must still wait for the near caches, or B serves its answer without the reading."""
    (a, _), (b, rb) = pair
    owner = create_user(a, "owner")
    key = register(a.test_client(), owner, "dev-1", NAME)
    minutely(owner, a, hours=2, now=clock.now)
    kept(b, rb, DASH)
    replicas = a.extensions["shared_cache"].replicas
    real_write, calls = replicas.write, []

    def lost_reply(*args, **kwargs):
        result = real_write(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            raise redis.ConnectionError("the reply was lost")
        return result

    monkeypatch.setattr(replicas, "write", lost_reply)
    fences.clear()
    assert push(a.test_client(), key, "dev-1", NAME, {"temp": 2.0}).status_code == 201
    assert len(calls) == 2 and fences == [1]
