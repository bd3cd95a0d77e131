"""The near cache (L1): hits without Redis, kept coherent by Redis's tracking messages.

Every device-cache test runs with it on (the default); these are about L1 itself: what a hit
costs, invalidations from another replica, the placeholder race, FLUSHDB, outages, fork, the
gunicorn worker classes, bearer tokens (rotation and deletion seen everywhere), its bounds (bytes,
negatives), a silent tracking connection and a half-received message.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid

import pytest
import redis

from app.cache import near as near_module
from app.devices.lookup import lookup_device
from tests.conftest import all_topologies, bearer, build_app, create_user, near_ready, register, stop_app
from tests.helpers import wait_until
from tests.split_proxy import SplitProxy

WAIT = 10


def chain(app, device_id: str = "dev-1", device_name: str = "room", headers: dict | None = None):
    response = app.test_client().get(f"/api/v1/devices/{device_id}/{device_name}", headers=headers or {})
    return response.get_json()["chain"] if response.status_code == 200 else response.status_code


def entry(app, device_id: str = "dev-1", device_name: str = "room") -> str:
    return f"{app.config['CACHE_KEY_PREFIX']}device:{device_id}|{device_name}"


def in_l1(app, key: str) -> bool:
    near = app.extensions["shared_cache"].near
    near.get(key)  # applies what has arrived
    return key in near._entries


def calls(nodes: list[redis.Redis]) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in nodes:
        for name, stat in node.info("commandstats").items():
            out[name] = out.get(name, 0) + stat["calls"]
    return out


@all_topologies
def test_an_l1_hit_sends_no_command_to_redis(settings, redis_alive):
    app = build_app(settings, CACHE_FLUSH_INTERVAL=60)  # no counter flush during the count
    try:
        near_ready(app)
        register(app.test_client(), create_user(app, "owner"), "dev-1", "room")
        with app.app_context():
            lookup_device("dev-1", "room")  # fills Redis (its own write's tracking message drops the placeholder)
            lookup_device("dev-1", "room")  # a Redis hit, kept in L1
            assert in_l1(app, entry(app))
            nodes = redis_alive.primaries()
            before = calls(nodes)
            for _ in range(5):
                assert lookup_device("dev-1", "room")["chain"] == ["dev-1"]
            after = calls(nodes)
        delta = {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}
        # Only the heartbeat's PINGs (and this count's own INFO) reach Redis.
        assert set(delta) <= {"cmdstat_ping", "cmdstat_info", "cmdstat_cluster|info"}, delta
        assert app.extensions["shared_cache"].pending_counts()["l1_hits"] == 5
    finally:
        stop_app(app)


@all_topologies
def test_an_invalidation_on_one_replica_is_seen_by_the_other_from_its_next_request(replicas):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-0", "room")
    expected = ["dev-0"]
    for n in range(1, 6):
        assert chain(b, "dev-0") == chain(b, "dev-0") == expected
        assert in_l1(b, entry(b, "dev-0"))  # b answers from its L1 now
        register(a.test_client(), owner, f"dev-{n}", "room")
        expected = sorted([*expected, f"dev-{n}"])
        assert chain(b, "dev-0") == expected  # at once, not after L1's TTL


def test_a_fill_racing_an_invalidation_keeps_nothing_in_l1(replicas, monkeypatch):
    """The lookup's Redis read returns the old value while another replica invalidates it: the
    request may answer what it read, but L1 must not keep it (the placeholder is gone)."""
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", "room")
    assert chain(a, "dev-1") == ["dev-1"]  # in Redis
    dc = b.extensions["shared_cache"]
    real_read = dc.lookups._read

    def read_then_invalidated_elsewhere(key):
        raw = real_read(key)  # the old value, read before the invalidation
        register(a.test_client(), owner, "dev-2", "room")
        time.sleep(0.05)  # its tracking message has reached b by now
        return raw

    monkeypatch.setattr(dc.lookups, "_read", read_then_invalidated_elsewhere)
    assert chain(b, "dev-1") == ["dev-1"]  # what it read, before the invalidation it raced
    monkeypatch.undo()
    assert not in_l1(b, entry(b))
    assert chain(b, "dev-1") == ["dev-1", "dev-2"]


def test_flushdb_empties_every_processes_l1(replicas, raw):
    a, b = replicas
    register(a.test_client(), create_user(a, "owner"), "dev-1", "room")
    for app in replicas:
        assert chain(app) == chain(app) == ["dev-1"]
        assert in_l1(app, entry(app))
    raw.flushdb()  # the tests' own redis-server
    for app in replicas:
        assert wait_until(lambda app=app: not in_l1(app, entry(app)), 2)
        assert len(app.extensions["shared_cache"].near) == 0


@pytest.mark.parametrize("outage", ["pause", "kill"])
def test_l1_is_emptied_and_bypassed_while_redis_is_down_and_serves_again_once_subscribed(
    app, client, redis_alive, outage
):
    near_ready(app)
    register(client, create_user(app, "owner"), "dev-1", "room")
    assert chain(app) == chain(app) == ["dev-1"]
    near = app.extensions["shared_cache"].near
    assert in_l1(app, entry(app))
    getattr(redis_alive, outage)()
    try:
        # A heartbeat unanswered for 0.25 s (or a closed connection) turns L1 off and empties it.
        assert wait_until(lambda: not near.serving, 2)
        assert len(near) == 0
        for _ in range(5):
            assert chain(app) == ["dev-1"]  # from MongoDB
        assert len(near) == 0
    finally:
        redis_alive.ensure_running()
    assert wait_until(lambda: near.serving)
    assert wait_until(lambda: chain(app) == ["dev-1"] and in_l1(app, entry(app)))


def test_a_forked_process_opens_its_own_tracking_connection(app, client):
    near_ready(app)
    register(client, create_user(app, "owner"), "dev-1", "room")
    assert chain(app) == chain(app) == ["dev-1"]
    near = app.extensions["shared_cache"].near
    pid = os.fork()
    if pid == 0:  # the child: its exit status says what it saw
        code = 1
        try:
            inherited = not near.serving and len(near) == 0  # nothing of the parent's
            with app.app_context():
                lookup_device("dev-1", "room")
                deadline = time.monotonic() + WAIT
                while not near.serving and time.monotonic() < deadline:
                    time.sleep(0.01)
                lookup_device("dev-1", "room")  # fills the child's own L1
                hit = lookup_device("dev-1", "room")["chain"] == ["dev-1"]
            own = near.serving and app.extensions["shared_cache"].pending_counts()["l1_hits"] >= 1
            code = 0 if inherited and hit and own else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert near.serving and in_l1(app, entry(app))  # the parent's listener is untouched


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.parametrize(
    ("worker_class", "preload"),
    [("gthread", False), ("gevent", False), ("sync", True)],
    ids=["gthread", "gevent", "sync-preload"],
)
def test_l1_serves_and_stays_coherent_under_every_worker_class(app, client, live_replica, worker_class, preload):
    owner = create_user(app, "owner")
    register(client, owner, "dev-0", "room")
    replica = live_replica(workers=2, worker_class=worker_class, threads=2, extra_args=["--preload"] if preload else [])
    l1_hits = 'opensensor_cache_l1_hits_total{cache="device"}'
    url = f"{replica.url}/api/v1/devices/dev-0/room"
    expected = ["dev-0"]
    for n in range(1, 4):
        for _ in range(20):  # new connections: both workers answer some
            with urllib.request.urlopen(url, timeout=5) as response:
                assert json.loads(response.read())["chain"] == expected
        register(client, owner, f"dev-{n}", "room")  # another process invalidates
        expected = sorted([*expected, f"dev-{n}"])
        for _ in range(10):
            with urllib.request.urlopen(url, timeout=5) as response:
                assert json.loads(response.read())["chain"] == expected
    assert metric(replica.url, l1_hits) > 0  # L1 did answer, in this worker class


def test_a_warm_bearer_costs_no_mongodb_query(replicas, monkeypatch):
    import app.auth as auth

    a, b = replicas
    user = create_user(a, "someone")
    loads = []
    real = auth.load_user
    monkeypatch.setattr(auth, "load_user", lambda user_id: loads.append(user_id) or real(user_id))
    for app in (a, a, b, b, a, b):
        assert app.test_client().get("/api/v1/api-keys", headers=bearer(user)).status_code == 200
    assert loads == [user["user_id"]]  # the first request only; then Redis (b) and L1 (both)
    key = f"{a.config['CACHE_KEY_PREFIX']}user:{user['user_id']}"
    stored = json.loads(redis.Redis.from_url(a.config["REDIS_URL"]).get(key)) if "REDIS_URL" in a.config else None
    if stored is not None:  # never the token, only its hash
        assert user["token"] not in json.dumps(stored) and stored["user_id"] == user["user_id"]


@all_topologies
def test_a_rotated_or_deleted_token_is_refused_on_every_replica_once_the_command_returns(replicas):
    a, b = replicas
    user = create_user(a, "alice")
    for app in (a, b, a, b):  # cached in Redis and in both L1s
        assert app.test_client().get("/api/v1/api-keys", headers=bearer(user)).status_code == 200

    result = a.test_cli_runner().invoke(args=["users", "rotate-token", "alice"])
    assert result.exit_code == 0, result.output
    rotated = json.loads(result.output.strip().splitlines()[-1])
    assert set(rotated) == {"user_id", "name", "admin", "token"} and rotated["user_id"] == user["user_id"]
    assert rotated["token"] != user["token"]
    for app in (b, a):
        assert app.test_client().get("/api/v1/api-keys", headers=bearer(user)).status_code == 401
        assert app.test_client().get("/api/v1/api-keys", headers=bearer(rotated)).status_code == 200

    result = b.test_cli_runner().invoke(args=["users", "delete", "alice"])
    assert result.exit_code == 0, result.output
    for app in (a, b):
        assert app.test_client().get("/api/v1/api-keys", headers=bearer(rotated)).status_code == 401


def test_deleting_a_user_who_owns_devices_needs_delete_keys_and_drops_them_everywhere(replicas):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", "room")
    assert chain(b) == chain(b) == ["dev-1"]
    result = a.test_cli_runner().invoke(args=["users", "delete", "owner"])
    assert result.exit_code == 1 and "--delete-keys" in result.output
    assert chain(b) == ["dev-1"]  # nothing changed
    result = a.test_cli_runner().invoke(args=["users", "delete", "owner", "--delete-keys"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["keys_deleted"] == 1
    assert chain(b) == 404
    assert b.test_client().get("/api/v1/api-keys", headers=bearer(owner)).status_code == 401


def test_a_token_rotated_while_redis_is_down_is_refused_everywhere_once_it_returns(replicas, redis_alive):
    """The invalidation could not reach Redis: its outbox record did, so the command succeeds
    and no replica accepts the old token, during the outage or after it."""
    a, b = replicas
    user = create_user(a, "alice")
    for app in (a, b):  # cached in Redis and both near caches
        assert app.test_client().get("/api/v1/api-keys", headers=bearer(user)).status_code == 200
    redis_alive.stop()
    try:
        result = a.test_cli_runner().invoke(args=["users", "rotate-token", "alice", "--wait", "1"])
        assert result.exit_code == 0, result.output
        for app in (a, b):
            assert app.test_client().get("/api/v1/api-keys", headers=bearer(user)).status_code == 401
    finally:
        redis_alive.ensure_running()
    new = {**user, "token": json.loads(result.output.strip().splitlines()[-1])["token"]}
    for app in (a, b, a, b):
        assert app.test_client().get("/api/v1/api-keys", headers=bearer(user)).status_code == 401
        assert app.test_client().get("/api/v1/api-keys", headers=bearer(new)).status_code == 200


def store_chains(app, raw, names: list[str], length: int) -> None:
    """Device lookups written straight into Redis: ``name|room`` with a chain of ``length`` ids."""
    register(app.test_client(), create_user(app, "owner"), "dev-1", "room")
    with app.app_context():
        template = lookup_device("dev-1", "room")
    pipe = raw.pipeline(transaction=False)
    for name in names:
        value = {**template, "device_id": name, "chain": [f"{name}-{i:05d}" for i in range(length)]}
        pipe.set(entry(app, name), json.dumps(value, separators=(",", ":")), ex=300)
    pipe.execute()


def held_bytes(near) -> int:
    """What L1 holds: its raw values and keys, real and negative entries."""
    held = {**near._entries, **getattr(getattr(near, "_negatives", None), "entries", {})}
    return sum(len(key) + len(raw) for key, (raw, *_) in held.items())


def test_l1_holds_no_more_bytes_than_l1_cache_max_bytes(settings, raw):
    app = build_app(settings, L1_CACHE_MAX_BYTES=256 * 1024)
    try:
        near = app.extensions["shared_cache"].near
        near_ready(app)
        names = [f"big-{n:03d}" for n in range(100)]
        store_chains(app, raw, names, 512)  # about 7.7 KB each: 770 KB in all
        with app.app_context():
            for name in names:
                for _ in range(2):  # the second lookup finds it in Redis, under its placeholder
                    assert len(lookup_device(name, "room")["chain"]) == 512
                assert held_bytes(near) <= 256 * 1024
        assert in_l1(app, entry(app, names[-1]))  # the most recent are kept
        assert 20 <= len(near) < 40 and held_bytes(near) == near.nbytes
    finally:
        stop_app(app)


def test_an_entry_over_a_sixteenth_of_the_byte_bound_is_served_but_not_kept(settings, raw):
    app = build_app(settings, L1_CACHE_MAX_BYTES=256 * 1024)
    try:
        near_ready(app)
        store_chains(app, raw, ["huge"], 2000)  # about 30 KB, over 16 KiB
        with app.app_context():
            for _ in range(3):
                assert len(lookup_device("huge", "room")["chain"]) == 2000
            assert not in_l1(app, entry(app, "huge"))
            assert lookup_device("dev-1", "room") and in_l1(app, entry(app))  # a small one is kept
    finally:
        stop_app(app)


def test_a_flood_of_unknown_devices_and_tokens_never_evicts_real_entries(settings, raw):
    app = build_app(settings, L1_CACHE_SIZE=32)  # negatives: 2 entries
    try:
        near = app.extensions["shared_cache"].near
        near_ready(app)
        real = [f"real-{n}" for n in range(8)]
        store_chains(app, raw, real, 1)
        user = create_user(app, "someone")
        _, user_id, secret = user["token"].split("_", 2)
        with app.app_context():
            for name in real:
                lookup_device(name, "room")
                lookup_device(name, "room")
                assert in_l1(app, entry(app, name))
            for n in range(100):
                for _ in range(2):  # the second lookup would keep the negative entry
                    assert lookup_device(f"nobody-{n}", "room")["found"] is False
        for _ in range(20):
            token = f"ost_{uuid.uuid4().hex[: len(user_id)]}_{secret}"
            for _ in range(2):
                response = app.test_client().get("/api/v1/api-keys", headers={"Authorization": f"Bearer {token}"})
                assert response.status_code == 401
        assert all(in_l1(app, entry(app, name)) for name in real)
        assert len(near._negatives.entries) == 2  # the latest unknowns, in their own small LRU
    finally:
        stop_app(app)


def test_a_silent_tracking_connection_stops_l1_hits_within_the_heartbeat_deadline(settings, redis_alive):
    app = build_app(settings, CACHE_FLUSH_INTERVAL=60)  # nothing else of the app talks to Redis
    try:
        near = app.extensions["shared_cache"].near
        near_ready(app)
        register(app.test_client(), create_user(app, "owner"), "dev-1", "room")
        for _ in range(3):  # the heartbeat's phase differs each time
            assert wait_until(lambda: chain(app) == ["dev-1"] and near.get(entry(app)) is not None)
            redis_alive.pause()
            paused = time.monotonic()
            try:
                time.sleep(max(0.0, 0.26 - (time.monotonic() - paused)))
                assert near.get(entry(app)) is None  # no answer from Redis for over 0.25 s: no hit
            finally:
                redis_alive.ensure_running()
    finally:
        stop_app(app)


def test_a_half_received_invalidation_never_blocks_a_get(settings, redis_server, raw, monkeypatch):
    # A heartbeat deadline (and so tracking socket timeout) of 2 s: a read that waits for the
    # rest of the message would time out and drop the connection, rather than the heartbeat.
    monkeypatch.setattr(near_module, "PONG_DEADLINE", 2.0)
    proxy = SplitProxy(int(redis_server.url(0).rsplit(":", 1)[1].split("/")[0]))
    app = build_app(settings, REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0", CACHE_FLUSH_INTERVAL=60)
    try:
        near = app.extensions["shared_cache"].near
        near_ready(app)
        register(app.test_client(), create_user(app, "owner"), "dev-1", "room")
        assert chain(app) == chain(app) == ["dev-1"] and in_l1(app, entry(app))
        listeners = list(near._listeners)
        proxy.arm()
        raw.delete(entry(app))  # its invalidation reaches the tracking connection in two halves
        assert proxy.split.wait(5)
        # Once the first half is in (loopback may deliver it a little later), L1 answers nothing.
        assert wait_until(lambda: near.get(entry(app)) is None, 2)
        assert near.serving and near._listeners == listeners  # nothing waited on the socket
        proxy.release()
        assert wait_until(lambda: not in_l1(app, entry(app)), 2)
        assert wait_until(lambda: chain(app) == ["dev-1"] and in_l1(app, entry(app)))
        assert near._listeners == listeners
    finally:
        stop_app(app)
        proxy.close()
