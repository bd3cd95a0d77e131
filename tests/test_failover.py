"""Failover is a non-event: on Sentinel and on Cluster (topologies with replicas).

An invalidation waits for a replica's acknowledgement (WAIT on its own connection), so a
failover right after its response cannot bring the old entry back; under load, a failover
costs no 5xx and no wrong answer, hits resume within seconds and the counters stay exact.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest
import redis

from tests.conftest import create_user, register
from tests.helpers import meta_key, push, wait_until

pytestmark = pytest.mark.parametrize("topology", ["sentinel", "cluster"], indirect=True)

WAIT = 20


def chain(app, device_id: str, device_name: str = "room"):
    response = app.test_client().get(f"/api/v1/devices/{device_id}/{device_name}")
    return response.get_json()["chain"] if response.status_code == 200 else response.status_code


class Monitor(threading.Thread):
    """MONITOR on one Redis node: every command it runs, with the connection that sent it.

    `stop` sends a marker through the node and reads up to it, so every command the node ran
    before `stop` was called is in the list (MONITOR's stream lags the commands it reports).
    """

    def __init__(self, node: redis.Redis):
        super().__init__(daemon=True)
        self.node = node
        self.marker = f"monitor-end-{uuid.uuid4().hex}"
        self.commands: list[tuple[str, str]] = []
        self.ready = threading.Event()
        self.start()
        assert self.ready.wait(WAIT)

    def run(self) -> None:
        with self.node.monitor() as monitor:
            self.ready.set()
            while True:
                command = monitor.next_command()
                if self.marker in command["command"]:
                    return
                self.commands.append((f"{command['client_address']}:{command['client_port']}", command["command"]))

    def stop(self) -> list[tuple[str, str]]:
        self.node.echo(self.marker)
        self.join(WAIT)
        assert not self.is_alive(), "the monitor never saw its end marker"
        return self.commands


def test_invalidation_waits_for_a_replica_on_the_connection_that_dropped_the_keys(app, client, redis_alive, settings):
    entry = settings["CACHE_KEY_PREFIX"] + "device:dev-1|room"
    primary = redis_alive.primary_of(entry).probe
    # (the precondition: a replica is attached; right after a restart it may still be syncing)
    assert wait_until(lambda: primary.info("replication").get("slave0", {}).get("state") == "online", WAIT)
    owner = create_user(app, "owner")
    register(client, owner, "dev-1", "room")
    assert chain(app, "dev-1") == ["dev-1"]
    monitor = Monitor(primary)
    try:
        register(client, owner, "dev-2", "room")
    finally:
        commands = monitor.stop()
    unlinks = [(conn, cmd) for conn, cmd in commands if cmd.startswith("UNLINK") and entry in cmd]
    assert unlinks, commands
    conn = unlinks[0][0]
    after = [cmd for c, cmd in commands[commands.index(unlinks[0]) + 1 :] if c == conn]
    while after and after[0].startswith("UNLINK"):  # the keys of other slots on the same primary
        after.pop(0)
    replicas = int(primary.info("replication")["connected_slaves"])  # every one of them, not one
    assert replicas and after and after[0].startswith(f"WAIT {replicas} "), commands


def test_a_drop_no_replica_acknowledges_stays_pending_and_redis_unread_until_one_does(
    app, client, redis_alive, settings, raw
):
    owner = create_user(app, "owner")
    register(client, owner, "dev-1", "room")
    assert chain(app, "dev-1") == ["dev-1"]
    entry = settings["CACHE_KEY_PREFIX"] + "device:dev-1|room"
    dc = app.extensions["shared_cache"]
    replica = redis_alive.replica_of(entry)
    replica.pause()
    try:
        register(client, owner, "dev-2", "room")  # the primary drops it; the replica cannot say so
        assert not raw.exists(entry)
        assert dc.invalidator.pending
        assert chain(app, "dev-1") == ["dev-1", "dev-2"]  # from MongoDB: this process waits for the ack
    finally:
        replica.resume()
    assert wait_until(lambda: not dc.invalidator.pending, WAIT)
    assert chain(app, "dev-1") == ["dev-1", "dev-2"]


def test_invalidation_survives_a_failover_right_after_its_response(replicas, redis_alive, settings):
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", "room")
    assert chain(a, "dev-1") == chain(b, "dev-1") == ["dev-1"]  # cached, on the primary and its replica
    register(a.test_client(), owner, "dev-2", "room")
    try:
        redis_alive.fail_primary(settings["CACHE_KEY_PREFIX"] + "device:dev-1|room")
        for _ in range(20):
            assert chain(b, "dev-1") == ["dev-1", "dev-2"]  # never the old value
            time.sleep(0.05)
    finally:
        redis_alive.settle()
    assert chain(b, "dev-1") == chain(a, "dev-1") == ["dev-1", "dev-2"]


class Load(threading.Thread):
    """Lookups and pushes through one replica until stopped: statuses, wrong answers, loads."""

    def __init__(self, app, devices: dict[str, dict], expected: dict[str, list[str]]):
        super().__init__(daemon=True)
        self.app, self.devices, self.expected = app, devices, expected
        self.statuses: Counter[int] = Counter()
        self.wrong: list[tuple[str, object]] = []
        self.requests = 0
        self.halt = threading.Event()
        self.start()

    def run(self) -> None:
        client, names = self.app.test_client(), sorted(self.devices)
        while not self.halt.is_set():
            device_id = names[self.requests % len(names)]
            device_name = self.devices[device_id]["device_name"]
            if self.requests % 5 == 4:
                response = push(client, self.devices[device_id], device_id, device_name, {"temp": 20})
            else:
                response = client.get(f"/api/v1/devices/{device_id}/{device_name}")
                if response.status_code == 200 and response.get_json()["chain"] != self.expected[device_id]:
                    self.wrong.append((device_id, response.get_json()))
            self.statuses[response.status_code] += 1
            self.requests += 1  # each request is one cached lookup

    def stop(self) -> None:
        self.halt.set()
        self.join(WAIT)


def test_failover_under_load_costs_no_error_and_hits_resume_within_seconds(replicas, redis_alive, settings):
    a, b = replicas
    owner = create_user(a, "owner")
    devices = {f"d{i}": register(a.test_client(), owner, f"d{i}", f"room {i}") for i in range(8)}
    expected = {device_id: [device_id] for device_id in devices}
    caches = [app.extensions["shared_cache"] for app in replicas]
    for dc in caches:
        dc.flush()
    before = caches[0].counters()
    loads: list[float] = []
    for dc in caches:
        real = dc.loader
        dc.loader = lambda device_id, device_name, real=real: (
            loads.append(time.monotonic()) or real(device_id, device_name)
        )

    loads_before = len(loads)
    workers = [Load(app, devices, expected) for app in (a, b, a, b)]
    try:
        time.sleep(1)
        promoted = redis_alive.fail_primary(settings["CACHE_KEY_PREFIX"] + "device:d0|room 0")
        time.sleep(6)
    finally:
        for worker in workers:
            worker.stop()
        redis_alive.settle()

    statuses = sum((w.statuses for w in workers), Counter())
    assert set(statuses) <= {200, 201}, statuses  # not one 5xx, nor anything else
    assert [w.wrong for w in workers] == [[], [], [], []]
    late_loads = [t for t in loads[loads_before:] if t > promoted + 4]  # bench.failover measures 0.2 s
    assert late_loads == [], f"{len(late_loads)} MongoDB loads more than 4 s after the promotion"
    assert wait_until(lambda: all(dc.pending_counts()["hits"] + dc.pending_counts()["misses"] == 0 for dc in caches
                                  if not dc.flush()), WAIT)  # fmt: skip
    after = caches[0].counters()
    looked_up = (after["hits"] - before["hits"]) + (after["misses"] - before["misses"])
    assert looked_up == sum(w.requests for w in workers)  # every lookup counted once, none lost


def test_admin_routes_follow_a_failover(app, client, redis_alive, settings):
    """The admin client is used rarely: after a failover it must not keep walking a dead node."""
    admin = {"Authorization": f"Bearer {create_user(app, 'root', admin=True)['token']}"}

    def stats() -> dict:
        return client.get("/cache/stats", headers=admin).get_json()

    assert stats()["lookups"]["device"]["scope"] == "all replicas"  # the admin client knows the primaries
    try:
        redis_alive.fail_primary(meta_key(settings["CACHE_KEY_PREFIX"], "stats:device"))
        # Until the promoted replica has taken the slots over, an answer may still say unreachable.
        assert wait_until(lambda: stats()["lookups"]["device"]["scope"] == "all replicas", 10), stats()
        assert client.post("/cache/clear", headers=admin).status_code == 200
    finally:
        redis_alive.settle()


def test_the_near_cache_follows_a_failover_and_stays_coherent(replicas, redis_alive, settings):
    """A tracking connection per primary: re-established on the promoted one, L1 rebuilt from empty."""
    a, b = replicas
    owner = create_user(a, "owner")
    register(a.test_client(), owner, "dev-1", "room")
    entry = settings["CACHE_KEY_PREFIX"] + "device:dev-1|room"
    near = b.extensions["shared_cache"].near
    assert chain(b, "dev-1") == chain(b, "dev-1") == ["dev-1"] and entry in near._entries
    try:
        redis_alive.fail_primary(entry)
        # Once the failover is over (every sentinel names the new master; the killed node is back as
        # a replica): while sentinels still disagree, a process may send its invalidations to the
        # old master, which keeps them pending until they reach the new one (docs/DEPLOY.md).
        redis_alive.settle()

        def subscribed_to_the_new_primaries() -> bool:
            dc = b.extensions["shared_cache"]
            chain(b, "dev-1")  # traffic: the data path learns the new topology too
            names = dc.topology.primary_names(dc.client)
            return near.serving and sorted(listener.name for listener in near._listeners) == sorted(names)

        assert wait_until(subscribed_to_the_new_primaries, WAIT)
        expected = ["dev-1"]
        for n in range(2, 5):
            assert chain(b, "dev-1") == expected
            register(a.test_client(), owner, f"dev-{n}", "room")
            expected.append(f"dev-{n}")
            assert chain(b, "dev-1") == expected  # the promoted primary's invalidations reach b's L1
    finally:
        redis_alive.settle()
