"""The readings query cache (issue 16 §1): the same answers as MongoDB alone, through two replicas.

Cached answers are compared with those of an app whose cache is off (``QUERY_CACHE_ENABLED=false``)
on the same database, for random ranges, resolutions, aggregations, units, pages and chains.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from redis.sentinel import Sentinel

from app.cache.shared import QUERY, shared_cache
from app.readings.partials import to_ms
from app.readings.schema import AGGS, NUMERIC, QUERYABLE
from app.timeutil import isoformat, parse_iso
from tests.conftest import all_topologies, bearer, create_user, register
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


def compare(rng, clients, uncached, headers, now, rounds: int, keys: dict | None = None) -> None:
    """Random queries, each through both replicas against the uncached app; with ``keys``
    (device id -> key), a push through either replica before most of them (the push log)."""
    for n in range(rounds):
        if keys and rng.random() < 0.7:
            device_id = rng.choice(sorted(keys))
            pushed = push(clients[rng.randrange(2)], keys[device_id], device_id, NAME, random_values(rng))
            assert pushed.status_code == 201, pushed.get_json()
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
    keys = {d: register(clients[0], owner, d, NAME, private=True) for d in ("m-1", "m-2", "m-3")}
    for i, device_id in enumerate(("m-1", "m-2", "m-3")):
        rows = rows_for(rng, BASE + timedelta(days=i), DAYS - 2 * i, 600)
        rows += rows_for(rng, now - timedelta(hours=8), 8.5 / 24, 300)  # up to the open bucket and past now
        insert_readings(replicas[0], device_id, NAME, owner["user_id"], rows)
    compare(rng, clients, uncached, headers, now, 30, keys)
    assert any(raw.scan_iter(match="*query:*", count=1000)), "nothing was cached"
    assert any(raw.zcard(k) > 1 for k in raw.scan_iter(match="*query:*:log", count=1000)), "no push log was kept"

    # The chain grows: a new member's readings fill buckets that other members' chunks already hold.
    keys["m-4"] = register(clients[1], owner, "m-4", NAME, private=True)
    insert_readings(replicas[0], "m-4", NAME, owner["user_id"], rows_for(rng, BASE, DAYS, 900))
    compare(rng, clients, uncached, headers, now, 18, keys)

    # ... and shrinks.
    listed = clients[0].get("/api/v1/api-keys", headers=headers).get_json()["keys"]
    gone = next(k for k in listed if k["device_id"] == "m-2")
    assert clients[0].delete(f"/api/v1/api-keys/{gone['key_id']}", headers=headers).status_code == 204
    del keys["m-2"]
    compare(rng, clients, uncached, headers, now, 18, keys)
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


# -- the edges: ended edge buckets and the push log (no MongoDB once warm) -------------------------


def dashboard(client, device_id: str = "dev-1", **params) -> dict:
    """The dashboard's default query: the last 24 hours in 30-minute buckets."""
    response = read(client, device_id, NAME, "temp", resolution=30, **params)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


@pytest.fixture
def mongo_reads(monkeypatch) -> list[str]:
    """Every MongoDB read a readings query makes, by name (the cache's three and the uncached one)."""
    import app.readings.cache as cache
    import app.readings.plan as plan
    import app.readings.service as service

    calls: list[str] = []

    def counted(name, real):
        def call(*args, **kwargs):
            calls.append(name)
            return real(*args, **kwargs)

        return call

    for module, name in ((plan, "aggregate"), (plan, "bucket_readings"), (cache, "fill"), (service, "aggregate_rows")):
        monkeypatch.setattr(module, name, counted(name, getattr(module, name)))
    return calls


@all_topologies
def test_a_warm_dashboard_query_reads_no_mongodb_and_sees_every_push_on_either_replica(replicas, mongo_reads, raw):
    clients = [app.test_client() for app in replicas]
    owner = create_user(replicas[0], "owner")
    key = register(clients[0], owner, "dev-1", NAME)
    now = datetime.now(UTC)
    rows = [(now - timedelta(minutes=m, seconds=7), {"temp": 20.0 + m % 13}) for m in range(1, 26 * 60)]
    insert_readings(replicas[0], "dev-1", NAME, owner["user_id"], rows)
    stored = [(to_ms(at), values["temp"]) for at, values in rows]  # what the answers must hold
    dashboard(clients[0])  # creates and fills the log, writes the chunks (the first bucket with them)
    dashboard(clients[1])  # writes the first bucket's readings
    assert {"aggregate", "bucket_readings", "fill"} <= set(mongo_reads)
    mongo_reads.clear()
    for n in range(6):
        pushed = push(clients[n % 2], key, "dev-1", NAME, {"temp": 100.0 + n})
        assert pushed.status_code == 201
        stored.append((to_ms(parse_iso(pushed.get_json()["timestamp"])), 100.0 + n))
        got = dashboard(clients[(n + 1) % 2])
        assert mongo_reads == [], mongo_reads  # the chunks, the first bucket's readings and the log
        assert_buckets(got, stored, 30 * 60_000)
    prefix = replicas[0].config["CACHE_KEY_PREFIX"]
    assert raw.zcard(f"{prefix}query:{{{owner['user_id']}|dev-1|{NAME}}}:log") >= 6 * 60


def assert_buckets(got: dict, stored: list[tuple[int, float]], width: int) -> None:
    """An avg answer against the readings the test stored (ms, value), bucket by bucket."""
    start, end = to_ms(parse_iso(got["start"])), to_ms(parse_iso(got["end"]))
    buckets: dict[int, list[float]] = {}
    for at_ms, value in stored:
        if start <= at_ms < end:
            buckets.setdefault(at_ms - at_ms % width, []).append(value)
    want = [
        (isoformat(datetime.fromtimestamp(b / 1000, UTC)), len(v), sum(v) / len(v)) for b, v in sorted(buckets.items())
    ]
    assert [(i["timestamp"], i["count"]) for i in got["items"]] == [(t, c) for t, c, _ in want]
    assert [i["value"] for i in got["items"]] == pytest.approx([v for _, _, v in want], rel=1e-9)


def test_a_push_that_cannot_reach_redis_drops_the_log_before_it_answers(replicas, make_app):
    clients = [app.test_client() for app in replicas]
    owner = create_user(replicas[0], "owner")
    key = register(clients[0], owner, "dev-1", NAME)
    assert push(clients[0], key, "dev-1", NAME, {"temp": 1.0}).status_code == 201
    before = dashboard(clients[1])
    assert dashboard(clients[1])["items"] == before["items"]  # served from the log now
    cut_off = make_app(REDIS_URL="redis://127.0.0.1:9/0")  # the same prefix and database, no Redis
    assert push(cut_off.test_client(), key, "dev-1", NAME, {"temp": 2.0}).status_code == 201
    after = dashboard(clients[1])
    assert sum(i["count"] for i in after["items"]) == sum(i["count"] for i in before["items"]) + 1


@pytest.mark.parametrize("outgrown", ["entries", "bytes"])
def test_the_log_is_bounded_and_stays_complete_from_what_it_keeps(app, client, owner, monkeypatch, raw, outgrown):
    import app.readings.log as push_log

    monkeypatch.setattr(push_log, "MAX_ENTRIES", 5)
    key = register(client, owner, "dev-1", NAME)
    dashboard(client)  # the log exists from now on
    big = [{"position": i, "enabled": True, "description": "x" * 200} for i in range(20)]
    for n in range(8):
        # Over MAX_ENTRIES from the sixth reading on; or the second over MAX_ENTRY_BYTES.
        readings = {"temp": float(n), "relays": big} if outgrown == "bytes" and n == 1 else {"temp": float(n)}
        assert push(client, key, "dev-1", NAME, readings).status_code == 201
        assert sum(i["count"] for i in dashboard(client)["items"]) == n + 1
    log_key = f"{app.config['CACHE_KEY_PREFIX']}query:{{{owner['user_id']}|dev-1|{NAME}}}:log"
    temps = sorted(json.loads(m)[2]["temp"] for m in raw.zrange(log_key, 0, -1) if m)  # not the marker
    assert temps == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_a_log_evicted_apart_from_its_hash_is_made_anew_not_read_as_empty(app, client, owner, raw):
    # allkeys-lru evicts keys one by one: the sorted set may go while its hash stays.
    key = register(client, owner, "dev-1", NAME)
    dashboard(client)
    for n in range(3):
        assert push(client, key, "dev-1", NAME, {"temp": float(n)}).status_code == 201
    assert sum(i["count"] for i in dashboard(client)["items"]) == 3
    raw.delete(f"{app.config['CACHE_KEY_PREFIX']}query:{{{owner['user_id']}|dev-1|{NAME}}}:log")
    assert sum(i["count"] for i in dashboard(client)["items"]) == 3
    assert push(client, key, "dev-1", NAME, {"temp": 3.0}).status_code == 201
    assert sum(i["count"] for i in dashboard(client)["items"]) == 4


@pytest.mark.parametrize("topology", ["sentinel"], indirect=True)
def test_pushes_on_sentinel_ask_no_sentinel_where_the_master_is(app, client, owner, monkeypatch):
    """Every push appends to the log; where the master is, the process already follows."""
    key = register(client, owner, "dev-1", NAME)
    dashboard(client)  # the log exists: every push from now on appends to it
    asked: list[str] = []
    discover = Sentinel.discover_master

    def counted(self, service_name):
        asked.append(service_name)
        return discover(self, service_name)

    monkeypatch.setattr(Sentinel, "discover_master", counted)  # what every question to the sentinels goes through
    for n in range(20):
        assert push(client, key, "dev-1", NAME, {"temp": float(n)}).status_code == 201
    assert len(asked) < 5, len(asked)  # was one per push
