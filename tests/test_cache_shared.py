"""The device lookup cache is one shared Redis for every replica: entries, counters, JSON, TTLs.

Two apps built on the same settings are two replicas: same MongoDB, same Redis, same prefix.
"""

from __future__ import annotations

import json
import time
from urllib.parse import quote

import redis

from app.devices.lookup import SCHEMA_VERSION, lookup_device
from tests.conftest import all_topologies, bearer, build_app, create_user, register, stop_app
from tests.helpers import meta_key, without_l1

pytestmark = all_topologies


def device_url(device_id: str, device_name: str) -> str:
    return f"/api/v1/devices/{quote(device_id)}/{quote(device_name)}"


def flushed_counters(*apps) -> dict:
    """The counters in Redis once every replica has sent its buffer."""
    for app in apps:
        app.extensions["shared_cache"].flush()
    return apps[0].extensions["shared_cache"].counters()


def cmdstats(nodes: list[redis.Redis]) -> dict[str, int]:
    """Commands run so far, summed over these nodes (clients kept open: a new connection adds HELLO)."""
    calls: dict[str, int] = {}
    for node in nodes:
        for name, stat in node.info("commandstats").items():
            calls[name] = calls.get(name, 0) + stat["calls"]
    return calls


def test_second_replica_hits_cache_filled_by_first(replicas, raw, settings):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", "green house")

    first = a.test_client().get(device_url("dev-1", "green house"))
    assert first.status_code == 200
    assert raw.exists(settings["CACHE_KEY_PREFIX"] + "device:dev-1|green house")
    b.extensions["shared_cache"].loader = fail_if_called
    second = b.test_client().get(device_url("dev-1", "green house"))
    assert second.status_code == 200
    assert (
        second.get_json()
        == first.get_json()
        == {
            "device_id": "dev-1",
            "device_name": "green house",
            "chain": ["dev-1"],
            "public": True,
        }
    )
    counters = flushed_counters(a, b)
    assert without_l1(counters) == {"hits": 1, "misses": 1, "loads": 1, "errors": 0, "hit_ratio": 0.5}


def fail_if_called(device_id: str, device_name: str) -> dict:
    raise AssertionError(f"MongoDB was queried for {device_id}|{device_name}")


def test_counters_are_summed_over_replicas_and_visible_within_two_seconds(replicas, settings):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", "room")
    for app, times in ((a, 3), (b, 4)):
        client = app.test_client()
        for _ in range(times):
            assert client.get(device_url("dev-1", "room")).status_code == 200
        assert client.get(device_url("nope", "room")).status_code == 404

    # No explicit flush: the background flushers (every 0.2 s here) must get them there.
    deadline = time.monotonic() + 2
    while True:
        counters = a.extensions["shared_cache"].counters()
        if counters["hits"] + counters["misses"] == 9 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    # Each pair is loaded once over both replicas; everything else is a hit.
    assert without_l1(counters) == {"hits": 7, "misses": 2, "loads": 2, "errors": 0, "hit_ratio": 7 / 9}

    admin = create_user(b, "root", admin=True)
    stats = b.test_client().get("/cache/stats", headers=bearer(admin)).get_json()
    assert {k: stats["lookups"]["device"][k] for k in counters} == counters


def test_cached_value_is_json_under_the_prefixed_key_with_the_configured_ttl(settings, raw):
    app = build_app(settings, DEVICE_CACHE_TTL=120)
    try:
        owner = create_user(app, "owner")
        register(app.test_client(), owner, "dev-1", "green house", private=True)
        assert app.test_client().get(device_url("dev-1", "green house"), headers=bearer(owner)).status_code == 200
    finally:
        stop_app(app)
    key = settings["CACHE_KEY_PREFIX"] + "device:dev-1|green house"
    stored = raw.get(key)
    assert not stored.startswith((b"\x80", b"!"))  # neither pickle nor cachelib's pickle marker
    value = json.loads(stored)
    assert value["v"] == SCHEMA_VERSION
    assert value["found"] is True and value["public"] is False
    assert value["chain"] == ["dev-1"] and value["owner_id"] == owner["user_id"]
    assert 110_000 < raw.pttl(key) <= 120_000


def test_warm_hit_costs_exactly_one_get(settings, redis_alive):
    # A long flush interval keeps the background flusher's pipeline out of the count.
    app = build_app(settings, CACHE_FLUSH_INTERVAL=60)
    try:
        owner = create_user(app, "owner")
        register(app.test_client(), owner, "dev-1", "room")
        with app.app_context():
            cold = lookup_device("dev-1", "room")  # fills, and opens the pooled connection
            nodes = redis_alive.primaries()
            before = cmdstats(nodes)
            warm = lookup_device("dev-1", "room")
            after = cmdstats(nodes)
    finally:
        stop_app(app)
    assert warm == cold and warm["found"] is True
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    delta = {
        name: calls for name, calls in delta.items() if calls and name not in ("cmdstat_info", "cmdstat_cluster|info")
    }
    assert delta == {"cmdstat_get": 1}


def test_unknown_pair_gets_a_short_lived_negative_entry_replaced_by_a_registration(replicas, raw, settings):
    a, b = replicas
    owner = create_user(a, "owner")
    key = settings["CACHE_KEY_PREFIX"] + "device:dev-9|room"

    assert a.test_client().get(device_url("dev-9", "room")).status_code == 404
    assert json.loads(raw.get(key)) == {
        "v": SCHEMA_VERSION,
        "found": False,
        "device_id": "dev-9",
        "device_name": "room",
    }
    assert 0 < raw.pttl(key) <= 30_000
    b.extensions["shared_cache"].loader = fail_if_called
    assert b.test_client().get(device_url("dev-9", "room")).status_code == 404  # a hit on the negative entry

    register(b.test_client(), owner, "dev-9", "room")
    response = a.test_client().get(device_url("dev-9", "room"))
    assert response.status_code == 200 and response.get_json()["chain"] == ["dev-9"]
    assert raw.pttl(key) > 30_000  # now a positive entry with DEVICE_CACHE_TTL


def test_negative_ttl_follows_its_setting(settings, raw):
    app = build_app(settings, NEGATIVE_CACHE_TTL=5)
    try:
        assert app.test_client().get(device_url("ghost", "room")).status_code == 404
    finally:
        stop_app(app)
    assert 0 < raw.pttl(settings["CACHE_KEY_PREFIX"] + "device:ghost|room") <= 5_000


def test_cache_keeps_to_its_own_database_and_prefix(replicas, raw, settings, redis_alive):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", "room")
    for app in replicas:
        app.test_client().get(device_url("dev-1", "room"))
        app.test_client().get(device_url("dev-2", "room"))
    flushed_counters(a, b)

    prefix = settings["CACHE_KEY_PREFIX"]
    ours = [k.decode() for node in redis_alive.primaries() for k in node.scan_iter(match=f"*{prefix}*")]
    assert sorted(k for k in ours if k.startswith(prefix)) == [
        f"{prefix}device:dev-1|room",
        f"{prefix}device:dev-2|room",
        f"{prefix}user:{owner['user_id']}",  # the owner's verified token, by its user id
    ]
    # Bookkeeping (counters, hotness) lives beside the prefix, never inside another namespace.
    assert all(k.startswith((prefix, meta_key(prefix, ""))) for k in ours), ours
    url = settings.get("CELERY_BROKER_URL")  # unset on Sentinel: database 1 of the master
    broker = redis.Redis.from_url(url) if url else redis.Redis(port=redis_alive.port, db=1)
    try:
        assert list(broker.scan_iter(match=f"*{prefix}*")) == []
    finally:
        broker.close()


def test_hot_set_stays_bounded_between_warm_ups(settings, raw):
    app = build_app(settings, HOT_MAX_DEVICES=3)
    try:
        with app.app_context():
            for n in range(8):
                for _ in range(n + 1):  # pair n is looked up n + 1 times
                    lookup_device(f"dev-{n}", "cold")
            app.extensions["shared_cache"].flush()
        dc = app.extensions["shared_cache"]
        hot = raw.zrevrange(dc.keys.hot, 0, -1)
        assert hot == [b"device:dev-7|cold", b"device:dev-6|cold", b"device:dev-5|cold"]
    finally:
        stop_app(app)


def test_forked_worker_starts_with_empty_buffers_so_nothing_is_counted_twice(app):
    """gunicorn and Celery fork: a child must not resend the parent's unflushed counters."""
    import os

    dc = app.extensions["shared_cache"]
    with app.app_context():
        lookup_device("dev-x", "fork")  # parent: one miss and one load, still buffered
    pid = os.fork()
    if pid == 0:  # the child: exit status says what it saw
        code = 1
        try:
            fresh = dc.pending_counts() == {"hits": 0, "misses": 0, "loads": 0, "errors": 0, "l1_hits": 0}
            with app.app_context():
                lookup_device("dev-x", "fork")  # a hit on the parent's entry
            dc.flush()
            code = 0 if fresh else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    dc.flush()
    counters = dc.counters()
    assert (counters["hits"], counters["misses"], counters["loads"]) == (1, 1, 1)
