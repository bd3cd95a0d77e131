"""The readings query cache (issue 16 §1): the same answers as MongoDB alone, through two replicas.

Cached answers are compared with those of an app whose cache is off (``QUERY_CACHE_ENABLED=false``)
on the same database, for random ranges, resolutions, aggregations, units, pages and chains.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from app.cache.shared import QUERY, shared_cache
from app.readings.schema import AGGS, NUMERIC, QUERYABLE
from tests.conftest import bearer, create_user, register
from tests.helpers import insert_readings, push, read, wait_until

NAME = "room"
BASE = datetime(2024, 3, 1, tzinfo=UTC)
DAYS = 12
RESOLUTIONS = (1, 2, 5, 7, 15, 30, 45, 60, 90, 120, 360, 1440, 10080)


def random_values(rng: random.Random) -> dict:
    values: dict = {}
    if rng.random() < 0.8:
        values["temp"] = rng.uniform(-10, 40)
    if rng.random() < 0.7:
        values["rh"] = rng.choice([rng.uniform(0, 100), 50, 0])
    for name in ("pressure", "lux", "co2", "ph"):
        if rng.random() < 0.4:
            values[name] = rng.choice([rng.uniform(0, 14), rng.randint(0, 14)])
    if rng.random() < 0.3:
        values["moisture"] = [rng.uniform(0, 1) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.3:
        values["liquid"] = rng.random() < 0.5
    if rng.random() < 0.2:
        values["relays"] = [{"position": rng.randint(0, 3), "enabled": rng.random() < 0.5}]
    if rng.random() < 0.2:
        values["pumps"] = [{"position": 1, "enabled": True, "speed": rng.uniform(0, 2)}]
    return values or {"temp": 20.0}


def rows_for(rng: random.Random, start: datetime, days: float, every_s: int) -> list:
    """Readings ``every_s`` seconds apart (jittered, some at the same millisecond), with gaps."""
    rows, at, end = [], start, start + timedelta(days=days)
    while at < end:
        if rng.random() < 0.02:
            at += timedelta(hours=rng.randint(1, 30))  # empty buckets
        rows.append((at, random_values(rng)))
        at += timedelta(seconds=rng.randint(1, every_s), milliseconds=rng.choice([0, 0, 1, 999]))
    return rows


def random_query(rng: random.Random, now: datetime) -> tuple[str, dict]:
    measurement = rng.choice(QUERYABLE)
    numeric = measurement in NUMERIC or measurement == "vpd"
    aggs = ("avg",) if measurement == "vpd" else AGGS if numeric else ("first", "last")
    params: dict = {"agg": rng.choice(aggs), "resolution": rng.choice([*RESOLUTIONS, rng.randint(1, 10080)])}
    if rng.random() < 0.25:
        end = now + timedelta(minutes=rng.randint(-200, 60))  # the live edge
    else:
        end = BASE + timedelta(seconds=rng.randint(0, (DAYS + 2) * 86400))
    start = end - timedelta(seconds=rng.randint(60, 9 * 86400), milliseconds=rng.randint(0, 999))
    params["start"] = start.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    params["end"] = end.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if measurement == "temp" and rng.random() < 0.5:
        params["unit"] = rng.choice(["C", "F", "K"])
    if rng.random() < 0.3:
        params["size"] = rng.randint(1, 40)
        params["page"] = rng.randint(1, 4)
    return measurement, params


def assert_same(got: dict, want: dict, context) -> None:
    assert {k: v for k, v in got.items() if k != "items"} == {k: v for k, v in want.items() if k != "items"}, context
    assert [(i["timestamp"], i["count"]) for i in got["items"]] == [
        (i["timestamp"], i["count"]) for i in want["items"]
    ], context
    for a, b in zip(got["items"], want["items"], strict=True):
        if isinstance(b["value"], float):
            assert a["value"] == pytest.approx(b["value"], rel=1e-9, abs=1e-12), context
        else:
            assert a["value"] == b["value"], context


def compare(rng, clients, uncached, headers, now, rounds: int) -> None:
    for n in range(rounds):
        measurement, params = random_query(rng, now)
        want = read(uncached, "m-1", NAME, measurement, headers=headers, **params)
        assert want.status_code == 200, want.get_json()
        for client in (clients[n % 2], clients[(n + 1) % 2]):  # the second often hits the first's chunks
            got = read(client, "m-1", NAME, measurement, headers=headers, **params)
            assert_same(got.get_json(), want.get_json(), (measurement, params))


@pytest.mark.timeout(400)
def test_cached_answers_equal_uncached_for_random_queries_through_two_replicas(replicas, make_app, raw):
    rng = random.Random(16)
    uncached_app = make_app(QUERY_CACHE_ENABLED=False)
    clients = [app.test_client() for app in replicas]
    uncached = uncached_app.test_client()
    owner = create_user(replicas[0], "owner")
    headers = bearer(owner)
    now = datetime.now(UTC)
    for device_id in ("m-1", "m-2", "m-3"):
        register(clients[0], owner, device_id, NAME, private=True)
    for i, device_id in enumerate(("m-1", "m-2", "m-3")):
        rows = rows_for(rng, BASE + timedelta(days=i), DAYS - 2 * i, 600)
        rows += rows_for(rng, now - timedelta(hours=8), 8.5 / 24, 300)  # up to the open bucket and past now
        insert_readings(replicas[0], device_id, NAME, owner["user_id"], rows)
    compare(rng, clients, uncached, headers, now, 30)
    assert any(raw.scan_iter(match="*query:*", count=1000)), "nothing was cached"

    # The chain grows: a new member's readings fill buckets that other members' chunks already hold.
    register(clients[1], owner, "m-4", NAME, private=True)
    insert_readings(replicas[0], "m-4", NAME, owner["user_id"], rows_for(rng, BASE, DAYS, 900))
    compare(rng, clients, uncached, headers, now, 18)

    # ... and shrinks.
    keys = clients[0].get("/api/v1/api-keys", headers=headers).get_json()["keys"]
    gone = next(k for k in keys if k["device_id"] == "m-2")
    assert clients[0].delete(f"/api/v1/api-keys/{gone['key_id']}", headers=headers).status_code == 204
    compare(rng, clients, uncached, headers, now, 18)
    for app in replicas:
        app.extensions["shared_cache"].flush()
    counts = replicas[0].extensions["shared_cache"].counters(QUERY)  # summed over both replicas
    assert counts["hits"] > 50 and counts["misses"] > 20, counts


@pytest.fixture
def device(client, owner) -> dict:
    return register(client, owner, "dev-1", NAME)


def test_second_replica_answers_from_chunks_filled_by_first_without_touching_ended_buckets(replicas, raw):
    clients = [app.test_client() for app in replicas]
    owner = create_user(replicas[0], "owner")
    register(clients[0], owner, "dev-1", NAME)
    insert_readings(
        replicas[0], "dev-1", NAME, owner["user_id"], [(BASE + timedelta(minutes=i), {"temp": i}) for i in range(600)]
    )
    params = {"start": "2024-03-01T00:00:00Z", "end": "2024-03-02T00:00:00Z", "resolution": 30}
    first = read(clients[0], "dev-1", NAME, "temp", **params).get_json()
    # Written behind the service's back (no drop): a cached answer does not see it.
    meta = {"device_id": "dev-1", "device_name": NAME, "owner_id": owner["user_id"]}
    with replicas[0].app_context():
        replicas[0].extensions["mongo"].db["readings"].insert_one({"timestamp": BASE, "meta": meta, "temp": 1000.0})
    second = read(clients[1], "dev-1", NAME, "temp", **params).get_json()
    assert second == first
    with replicas[1].app_context():
        replicas[1].extensions["shared_cache"].flush()
        counters = replicas[1].extensions["shared_cache"].counters(QUERY)
    assert counters["hits"] >= 1


def test_a_pushed_reading_is_in_the_next_query_on_the_other_replica(replicas):
    clients = [app.test_client() for app in replicas]
    owner = create_user(replicas[0], "owner")
    key = register(clients[0], owner, "dev-1", NAME)
    for n in range(3):
        before = read(clients[1], "dev-1", NAME, "temp", resolution=1).get_json()
        assert push(clients[0], key, "dev-1", NAME, {"temp": 10.0 + n}).status_code == 201
        after = read(clients[1], "dev-1", NAME, "temp", resolution=1).get_json()
        assert sum(i["count"] for i in after["items"]) == sum(i["count"] for i in before["items"]) + 1


def test_writers_into_ended_buckets_drop_the_chunks_before_returning(app, client, owner, device):
    params = {"start": "2024-03-01T00:00:00Z", "end": "2024-03-03T00:00:00Z", "resolution": 60}
    insert_readings(app, "dev-1", NAME, owner["user_id"], [(BASE + timedelta(hours=1), {"temp": 1.0})])
    assert read(client, "dev-1", NAME, "temp", **params).get_json()["items"][0]["count"] == 1
    insert_readings(app, "dev-1", NAME, owner["user_id"], [(BASE + timedelta(hours=1, minutes=5), {"temp": 3.0})])
    item = read(client, "dev-1", NAME, "temp", **params).get_json()["items"][0]
    assert (item["count"], item["value"]) == (2, 2.0)


def test_a_later_owner_of_a_pair_never_reads_the_earlier_owners_aggregates(app, client, owner, device, raw):
    params = {"start": "2024-03-01T00:00:00Z", "end": "2024-03-03T00:00:00Z"}
    insert_readings(app, "dev-1", NAME, owner["user_id"], [(BASE + timedelta(hours=1), {"temp": 1.0})])
    assert read(client, "dev-1", NAME, "temp", **params).get_json()["total"] == 1
    key_id = client.get("/api/v1/api-keys", headers=bearer(owner)).get_json()["keys"][0]["key_id"]
    assert client.delete(f"/api/v1/api-keys/{key_id}", headers=bearer(owner)).status_code == 204
    gens = [k for k in raw.scan_iter(match=f"*query:{{{owner['user_id']}|dev-1|{NAME}}}:gen")]
    assert gens == []
    later = create_user(app, "later")
    register(client, later, "dev-1", NAME)
    assert read(client, "dev-1", NAME, "temp", **params).get_json()["total"] == 0


def test_invalidate_query_glob_drops_every_chunk(app, client, owner, device, admin, raw):
    insert_readings(
        app, "dev-1", NAME, owner["user_id"], [(BASE + timedelta(hours=h), {"temp": 1.0}) for h in range(40)]
    )
    read(client, "dev-1", NAME, "temp", start="2024-03-01T00:00:00Z", end="2024-03-03T00:00:00Z")
    prefix = app.config["CACHE_KEY_PREFIX"]
    assert list(raw.scan_iter(match=f"{prefix}query:*"))
    response = client.post("/cache/invalidate", json={"pattern": "query:*"}, headers=bearer(admin))
    assert response.status_code == 200 and response.get_json()["deleted"] >= 2
    assert not list(raw.scan_iter(match=f"{prefix}query:*"))
    stats = client.get("/cache/stats", headers=bearer(admin)).get_json()["lookups"]["query"]
    assert set(stats) >= {"hits", "misses", "loads", "errors", "hit_ratio"}
    assert stats["misses"] >= 1 and stats["loads"] >= 1


def test_a_year_at_one_minute_buckets_is_not_cached(app, client, owner, device, raw):
    insert_readings(app, "dev-1", NAME, owner["user_id"], [(BASE, {"temp": 1.0})])
    read(client, "dev-1", NAME, "temp", start="2023-06-01T00:00:00Z", end="2024-05-31T00:00:00Z", resolution=1)
    prefix = app.config["CACHE_KEY_PREFIX"]
    assert not [k for k in raw.scan_iter(match=f"{prefix}query:*") if not k.endswith(b":gen")]


def test_redis_down_the_query_runs_on_mongodb(make_app):
    broken = make_app(REDIS_URL="redis://127.0.0.1:9/0")
    healthy = make_app(QUERY_CACHE_ENABLED=False)
    client = healthy.test_client()
    owner = create_user(healthy, "owner")
    register(client, owner, "dev-1", NAME)
    insert_readings(
        healthy, "dev-1", NAME, owner["user_id"], [(BASE + timedelta(minutes=7 * i), {"temp": i}) for i in range(300)]
    )
    params = {"start": "2024-03-01T00:00:00Z", "end": "2024-03-02T12:00:00Z", "resolution": 30}
    want = read(client, "dev-1", NAME, "temp", **params).get_json()
    got = read(broken.test_client(), "dev-1", NAME, "temp", **params)
    assert got.status_code == 200
    assert_same(got.get_json(), want, params)


def test_scattered_chunks_are_recomputed_whole_and_rewritten(app, client, owner, device, make_app, raw):
    # Ten days at 5-minute buckets: over 40 chunks. Every other one dropped leaves more stretches than a
    # member may query separately; the member is recomputed in one stretch and every chunk rewritten.
    insert_readings(
        app, "dev-1", NAME, owner["user_id"], [(BASE + timedelta(minutes=7 * i), {"temp": i % 31}) for i in range(2100)]
    )
    params = {"start": "2024-03-01T00:02:00Z", "end": "2024-03-11T00:00:00Z", "resolution": 5}
    want = read(make_app(QUERY_CACHE_ENABLED=False).test_client(), "dev-1", NAME, "temp", **params).get_json()
    with app.app_context():  # a process whose outbox poll lags (a loaded machine) reads uncached, rightly
        assert wait_until(lambda: shared_cache().readable(), 5)
    assert_same(read(client, "dev-1", NAME, "temp", **params).get_json(), want, params)
    prefix = app.config["CACHE_KEY_PREFIX"]
    chunks = sorted(
        (k for k in raw.scan_iter(match=f"{prefix}query:*:temp:n:5:*", count=1000)),
        key=lambda k: int(k.rsplit(b":", 1)[1]),
    )
    assert len(chunks) > 40
    raw.delete(*chunks[::2])
    raw.expire(chunks[1], 1000)  # kept, yet rewritten: its TTL starts again
    with app.app_context():
        assert wait_until(lambda: shared_cache().readable(), 5)
    assert_same(read(client, "dev-1", NAME, "temp", **params).get_json(), want, params)
    assert len(list(raw.scan_iter(match=f"{prefix}query:*:temp:n:5:*", count=1000))) == len(chunks)
    assert raw.ttl(chunks[1]) > 1000


def test_stretches_touching_or_overlapping_become_one():
    from app.readings.stretches import union

    assert union([(5, 9), (0, 5), (20, 30), (7, 12), (30, 30), (25, 26)]) == [(0, 12), (20, 30)]
