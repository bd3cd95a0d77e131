"""An acknowledged change is never undone (issue 14): the outbox, retries, coalescing.

Written from outside the way the failures were found: two replicas sharing Redis and MongoDB,
SecantusDB fail points for MongoDB errors mid-change, ``CLIENT PAUSE … WRITE`` and signals.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import redis
import requests

from app.cache.shared import shared_cache
from app.cache.tracking import PONG_DEADLINE
from app.db import OUTBOX
from devstack.mongo import fail_command
from devstack.proxy import TcpProxy
from devstack.wait import wait_until
from tests.conftest import all_topologies, bearer, build_app, create_user, near_ready, register, stop_app
from tests.helpers import READINGS_URL, key_header, push

DEVICE = "/api/v1/devices/{}/{}"


def outbox(app) -> list[dict]:
    with app.app_context():
        return list(app.extensions["mongo"].db[OUTBOX].find())


def fail_next(mongo_uri: str, command: str, times: int = 1) -> None:
    """The next ``times`` runs of ``command`` fail on the server (a SecantusDB fail point)."""
    fail_command(mongo_uri, {"times": times}, failCommands=[command], errorCode=1)


def accepted(client, key: dict, pair: tuple[str, str]) -> bool:
    return push(client, key, *pair, {"temp": 20.0}).status_code == 201


# -- MongoDB failing mid-change ----------------------------------------------------------------


@pytest.mark.parametrize("command", ["distinct", "findAndModify", "delete"])
def test_a_database_error_during_a_delete_never_leaves_the_key_working(replicas, mongo_uri, command):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-0", "room")
    key = register(a.test_client(), owner, "dev-1", "room")
    for app in (a, b, a, b):  # cached in Redis and in both near caches
        assert accepted(app.test_client(), key, ("dev-1", "room"))
    fail_next(mongo_uri, command)
    first = a.test_client().delete(f"/api/v1/api-keys/{key['key_id']}", headers=bearer(owner))
    assert first.status_code in (204, 503), first.get_json()
    retry = a.test_client().delete(f"/api/v1/api-keys/{key['key_id']}", headers=bearer(owner))
    assert retry.status_code in (204, 404)
    assert 204 in (first.status_code, retry.status_code)
    for app in (a, b, a, b):
        assert not accepted(app.test_client(), key, ("dev-1", "room"))
        chain = app.test_client().get(DEVICE.format("dev-0", "room")).get_json()["chain"]
        assert chain == ["dev-0"]


def test_a_database_error_after_a_key_is_created_never_leaves_the_old_chain(replicas, mongo_uri):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-0", "room")
    for app in (a, b):
        assert app.test_client().get(DEVICE.format("dev-0", "room")).get_json()["chain"] == ["dev-0"]
    fail_next(mongo_uri, "distinct")  # resolving the chain, after the key is stored
    created = a.test_client().post(
        "/api/v1/api-keys", json={"device_id": "dev-1", "device_name": "room"}, headers=bearer(owner)
    )
    assert created.status_code == 201
    for app in (a, b, a, b):
        assert app.test_client().get(DEVICE.format("dev-0", "room")).get_json()["chain"] == ["dev-0", "dev-1"]
    assert wait_until(lambda: outbox(a) == [], 5.0)


def test_a_rerun_of_users_delete_settles_what_the_first_run_left(replicas, mongo_uri):
    a, b = replicas
    owner = create_user(a, "owner")
    key = register(a.test_client(), owner, "dev-1", "room")
    for app in (a, b):
        assert accepted(app.test_client(), key, ("dev-1", "room"))
        assert app.test_client().get("/api/v1/api-keys", headers=bearer(owner)).status_code == 200
    fail_next(mongo_uri, "delete")  # the user's document stays: the command fails after its keys went
    first = a.test_cli_runner().invoke(args=["users", "delete", "owner", "--delete-keys"])
    rerun = a.test_cli_runner().invoke(args=["users", "delete", "owner", "--delete-keys"])
    assert 0 in (first.exit_code, rerun.exit_code), (first.output, rerun.output)
    for app in (a, b):
        assert not accepted(app.test_client(), key, ("dev-1", "room"))
        assert app.test_client().get("/api/v1/api-keys", headers=bearer(owner)).status_code == 401
    assert wait_until(lambda: outbox(a) == [], 5.0)


def test_a_change_mongodb_refuses_to_record_changes_nothing(app, client, owner, mongo_uri):
    fail_next(mongo_uri, "insert")  # the outbox record, written before the key
    response = client.post("/api/v1/api-keys", json={"device_id": "d", "device_name": "n"}, headers=bearer(owner))
    assert response.status_code == 503
    assert client.get("/api/v1/api-keys", headers=bearer(owner)).get_json()["keys"] == []


# -- Redis refusing writes; the process that made the change killed ----------------------------------


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its children (a gunicorn master and its workers: an OOM kill)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in [pid, *map(int, children)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


@pytest.mark.parametrize("ending", ["SIGKILL", "SIGTERM"])
def test_a_key_deleted_while_redis_refuses_writes_stays_deleted_after_its_replica_ends(
    app, owner, live_replica, redis_alive, ending
):
    a, b = live_replica(workers=1, threads=4), live_replica(workers=1, threads=4)
    key = register(app.test_client(), owner, "dev-1", "room")
    body = {"device_id": "dev-1", "device_name": "room", "readings": {"temp": 20.0}}
    for replica in (a, b, a, b):
        assert (
            requests.post(replica.url + READINGS_URL, json=body, headers=key_header(key), timeout=5).status_code == 201
        )
    admin = redis_alive.raw()
    try:
        admin.execute_command("CLIENT", "PAUSE", 3000, "WRITE")
        started = time.monotonic()
        deleted = requests.delete(f"{a.url}/api/v1/api-keys/{key['key_id']}", headers=bearer(owner), timeout=10)
        assert deleted.status_code == 204
        if ending == "SIGKILL":
            kill_tree(a.proc.pid)
        else:
            a.proc.send_signal(signal.SIGTERM)
        statuses = []
        while time.monotonic() < started + 5.5:  # through the pause and 2.5 s after it
            statuses.append(
                requests.post(b.url + READINGS_URL, json=body, headers=key_header(key), timeout=5).status_code
            )
            time.sleep(0.02)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
        admin.close()
    assert statuses and 201 not in statuses, statuses


# -- coalescing -----------------------------------------------------------------------------------


def test_a_lookup_that_starts_after_a_change_never_joins_a_load_that_began_before_it(app, client, owner, monkeypatch):
    register(client, owner, "dev-0", "room")
    cache = app.extensions["shared_cache"]
    monkeypatch.setattr(cache.background, "probe", lambda: False)  # the breaker stays open
    cache.breaker.trip(redis.ConnectionError("a moment ago"))
    real, release, loading = cache.loader, threading.Event(), threading.Event()
    calls = []

    def slow_first(device_id, device_name):
        value = real(device_id, device_name)  # read before the change
        calls.append(value["chain"])
        if len(calls) == 1:
            loading.set()
            release.wait(5)
        return value

    monkeypatch.setattr(cache, "loader", slow_first)
    results = {}

    def look(name: str) -> None:
        with app.test_client() as c:
            results[name] = c.get(DEVICE.format("dev-0", "room")).get_json()["chain"]

    early = threading.Thread(target=look, args=("early",))
    early.start()
    assert loading.wait(5)
    register(client, owner, "dev-1", "room")  # 201 while the early load is in flight
    late = threading.Thread(target=look, args=("late",))
    late.start()
    time.sleep(0.2)
    release.set()
    early.join(5)
    late.join(5)
    assert results["late"] == ["dev-0", "dev-1"], (results, calls)


def test_an_unknown_users_token_leaves_nothing_in_redis(app, client, raw, settings):
    before = set(raw.scan_iter(match=settings["CACHE_KEY_PREFIX"] + "*"))
    for n in range(5):
        token = f"ost_{n + 1:016x}_{'a' * 43}"
        response = client.get("/api/v1/api-keys", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401
    assert set(raw.scan_iter(match=settings["CACHE_KEY_PREFIX"] + "*")) == before


def test_the_outbox_is_empty_once_changes_are_applied(app, client, owner):
    for n in range(5):
        register(client, owner, f"dev-{n}", "room")
    assert wait_until(lambda: outbox(app) == [], 5.0)
    with app.app_context():
        assert shared_cache().readable()


# -- the near cache: an invalidation that arrives late ---------------------------------------------


def test_a_change_answers_only_once_a_slow_replicas_near_cache_has_let_go(settings, redis_alive):
    """Replica B reaches Redis over a slow route (its invalidations arrive 40 ms late): a key
    deleted through A is refused by B's very next request, never served from B's near cache."""
    if "REDIS_URL" not in settings:
        pytest.skip("one Redis server behind the proxy")
    proxy = TcpProxy(redis_alive.port)
    a = build_app(settings)
    b = build_app({**settings, "REDIS_URL": proxy.url(0)})
    try:
        for app in (a, b):
            near_ready(app)
        owner = create_user(a, "owner")
        key = register(a.test_client(), owner, "dev-1", "room")

        def held_by_b() -> bool:  # a lookup keeps it in B's near cache (a stalled heartbeat empties it: again)
            assert b.test_client().get(DEVICE.format("dev-1", "room")).status_code == 200
            return any("dev-1" in name for name in b.extensions["shared_cache"].near._entries)

        assert wait_until(held_by_b, 10)
        proxy.delay = 0.04
        time.sleep(0.3)  # B's heartbeat answers come late too, within their 0.25 s
        assert a.test_client().delete(f"/api/v1/api-keys/{key['key_id']}", headers=bearer(owner)).status_code == 204
        assert b.test_client().get(DEVICE.format("dev-1", "room")).status_code == 404
    finally:
        for app in (a, b):
            stop_app(app)
        proxy.close()


@all_topologies  # Cluster: a fence per primary, and PUBLISH reaches every node
def test_a_change_waits_for_the_near_caches_acknowledgements_or_their_deadline(settings, redis_alive, monkeypatch):
    """The wait above ends as soon as every near cache of the prefix (this process's too) has
    acknowledged the change's fence, and leaves nothing under the prefix; one that never answers
    (subscribed, but silent: a stalled process) costs the heartbeat's bound, PONG_DEADLINE."""
    from app.cache.shared import SharedCache

    outcomes: list[str] = []
    real_fence = SharedCache.fence
    monkeypatch.setattr(SharedCache, "fence", lambda self: outcomes.append(real_fence(self)) or outcomes[-1])
    a = build_app(settings)
    elsewhere = build_app({**settings, "CACHE_KEY_PREFIX": settings["CACHE_KEY_PREFIX"] + "other:"})
    owner = create_user(a, "owner")
    names = itertools.count()

    def fenced() -> str:
        """A key created through A; how its fence ended. A drop no replica acknowledged in time
        (Sentinel, Cluster) is held instead, and fences nothing: then another key."""
        for _ in range(5):
            outcomes.clear()
            register(a.test_client(), owner, f"dev-{next(names)}", "room")
            if outcomes:
                return outcomes[0]
        raise AssertionError("five drops in a row held")

    try:
        near_ready(a)
        near_ready(elsewhere)  # another service on the same Redis: its near cache holds none of ours
        assert fenced() == "acknowledged"  # by A's own near cache
        b = build_app(settings)
        try:
            near_ready(b)
            # b applies and answers within a round trip or two (a stall of b beyond 0.25 s would
            # make one "deadline": still correct, not what a healthy b does three times in a row)
            seen = [fenced() for _ in range(3)]
            assert "acknowledged" in seen and set(seen) <= {"acknowledged", "deadline"}, seen
            if set(seen) == {"acknowledged"}:  # (a late acknowledgement lives its 5 s)
                fences = a.extensions["shared_cache"].keys.fence("*")
                assert not any(primary.keys(fences) for primary in redis_alive.primaries())
        finally:
            stop_app(b)
        silent = [primary.pubsub() for primary in redis_alive.primaries()]
        for subscriber in silent:  # counted by the PUBLISH on its primary; never acknowledges
            subscriber.subscribe(a.extensions["shared_cache"].keys.near_presence)
        try:
            started = time.monotonic()
            assert fenced() == "deadline"
            assert time.monotonic() - started >= PONG_DEADLINE
        finally:
            for subscriber in silent:
                subscriber.close()
    finally:
        stop_app(a)
        stop_app(elsewhere)


def test_an_acknowledgement_whose_client_is_closed_under_it_ends_quietly(redis_server, monkeypatch):
    """Stopping an app closes its Redis client while its near cache's thread may be acknowledging
    a fence. redis-py's connection, disconnected while the pipeline waits for its answer, then
    fails with an AttributeError (seen in a full run: the listener thread died of it). A lost
    acknowledgement only makes a change wait PONG_DEADLINE; it must not end the thread."""
    from redis.connection import Connection

    from app.cache.fence import acknowledge
    from app.cache.keys import KeySpace

    client = redis.Redis(port=redis_server.port)
    read = Connection.read_response

    def closed_meanwhile(self, *args, **kwargs):
        client.connection_pool.disconnect()  # SharedCache.stop, from the thread stopping the app
        return read(self, *args, **kwargs)

    monkeypatch.setattr(Connection, "read_response", closed_meanwhile)
    acknowledge(client, KeySpace("t-ack:"), ["token"])
    monkeypatch.undo()
    client.close()


def test_a_fence_vouches_only_for_the_connection_to_the_node_that_published_it():
    """Cluster forwards a PUBLISH to every node: a near cache gets each fence on each of its
    connections, and only the copy from the publishing node's connection may be acknowledged
    (the forwarded copy can overtake that node's invalidations)."""
    from app.cache.fence import fence_of

    assert fence_of(b"t1 10.0.0.1:7000", "10.0.0.1:7000", 3) == "t1"
    assert fence_of(b"t1 10.0.0.1:7000", "10.0.0.2:7001", 3) is None
    assert fence_of(b"t1 127.0.0.1:6379", "127.0.0.1:16379", 1) == "t1"  # one primary: any route to it


def test_a_primary_first_seen_alone_on_a_topology_that_fails_over_is_not_trusted(redis_server):
    """A fresh process (``users rotate-token``) asked a sentinel that still named the old master
    mid-failover, found it without replicas (the promoted one had left), and called its drop
    done: the demotion lost it, and the old token worked again (the sentinel chaos run). On
    Sentinel and Cluster a primary first seen alone is not trusted until it stays so."""
    from app.cache.replicas import Replicas

    node = redis_server.probe
    for may_move, durable in ((False, True), (True, False)):
        replies, done = Replicas(100, may_move=may_move).write("p", node, lambda pipe: pipe.unlink("none"))
        assert (replies, done) == ([0], durable)


def test_the_readings_caches_writes_trust_a_primary_first_seen_alone_not_one_that_lost_its_replicas(redis_server):
    """The push log's appends and the drops of readings chunks (``first_alone_ok``) count on a
    replica just promoted, so a failover does not stop the cache for ``LOST_GRACE``; a primary
    that has just lost its replicas (the losing side of a failover) is still not trusted."""
    from app.cache.replicas import Replicas, _Primary

    node = redis_server.probe
    replicas = Replicas(100, may_move=True)
    assert replicas.write("p", node, lambda pipe: pipe.unlink("none"), first_alone_ok=True)[1] is True
    assert replicas.write("p", node, lambda pipe: pipe.unlink("none"))[1] is False  # the lookups' drops
    replicas._known["p"] = _Primary(1, 0.0, None)  # seen with a replica; now it has none
    assert replicas.write("p", node, lambda pipe: pipe.unlink("none"), first_alone_ok=True)[1] is False


def test_an_outbox_record_whose_retried_insert_finds_it_there_is_recorded_once(app):
    """pymongo retries an insert once after a network error; when the first attempt had landed,
    SecantusDB refuses the retry as a duplicate id (MongoDB answers it as done). The change goes
    on: its record is there (a push under a loaded run answered 503 instead)."""
    from app.cache.outbox import Record

    with app.app_context():
        outbox = app.extensions["shared_cache"].outbox
        record = Record(keys=["device:d|n"])
        outbox.open(record)
        assert outbox.open(record) is record
        assert outbox.collection().count_documents({"_id": record.id}) == 1


def test_a_poll_that_missed_a_hold_being_marked_ends_its_lease_before_the_change_answers(replicas):
    """A maker that could not apply its record marks it held, then waits a lease: every other
    process has polled since (and applied it) or stopped reading the cache. Marking is a MongoDB
    write that takes time, and a poll that starts while it is in flight reads the outbox without
    the mark: the wait must count from the write's end, not its start (a poll renewed meanwhile
    could read the replaced state after the answer, Redis still holding it)."""
    from app.cache.outbox import Record

    a, b = replicas
    maker, other = (app.extensions["shared_cache"] for app in (a, b))
    other.background.stop()  # its lease moves only with the poll below
    real = maker.outbox.collection

    class SlowMark:
        """The outbox collection, whose ``replace_one`` (the mark) is in flight while ``other`` polls."""

        def __getattr__(self, name):
            return getattr(real(), name)

        def replace_one(self, *args, **kwargs):
            time.sleep(0.3)  # a slow write: MongoDB busy, or a retry after a network error
            with b.app_context():
                assert other.outbox.poll()  # reads the outbox before the mark lands: renews its lease
            return real().replace_one(*args, **kwargs)

    with a.app_context():
        record = maker.outbox.open(Record(keys=["device:dev-1|room"]))
        maker.outbox.collection = SlowMark
        maker.outbox.hold(record)
        answered = time.monotonic()
    assert other.outbox.lease_until <= answered, "the other process could read past the change after its answer"


def test_a_poll_ends_at_the_first_drop_redis_refuses(app, redis_alive, monkeypatch):
    """A poll applies, one after another, the records other processes left. While Redis refuses
    writes each drop costs a timeout, and a poll may run in a request (the first after the lease
    lapsed): 30 held records kept one request 3 s, and in a Sentinel chaos run a bearer read got
    no answer in 10 s. The first refused drop ends the poll without renewing the lease; a poll
    once Redis is back applies them all."""
    from app.cache.outbox import Record

    cache = app.extensions["shared_cache"]
    with app.app_context():
        assert cache.readable()
        cache.background.stop()  # the polls below are the only ones
        for n in range(30):
            cache.outbox.collection().insert_one({**Record(keys=[f"device:d{n}|room"]).document(), "held": True})
        tried: list[set[str]] = []
        real = cache.invalidator._apply
        monkeypatch.setattr(cache.invalidator, "_apply", lambda keys: tried.append(keys) or real(keys))
        (primary,) = redis_alive.primaries()
        primary.execute_command("CLIENT", "PAUSE", "5000", "WRITE")
        try:
            assert not cache.outbox.poll()
        finally:
            primary.execute_command("CLIENT", "UNPAUSE")
        assert len(tried) == 1, f"{len(tried)} drops tried against a Redis refusing writes"
        assert cache.background.probe()  # the refused drop lands
        assert cache.outbox.poll() and cache.readable()  # the other 29 with the next poll
        assert len(tried) == 1 + 1 + 30
