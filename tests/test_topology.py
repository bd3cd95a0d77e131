"""What a topology owes the cache beyond clients: a Sentinel failover is one event in every
process, and a Cluster primary that owns no slot is probed like any other."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from app.redis_topology import LazyCluster, topology_from_config
from devstack.ports import free_cluster_port
from devstack.redis_server import RedisServer, wait_redis
from tests.conftest import bearer, create_user, near_ready, register
from tests.helpers import wait_until

WAIT = 30


class Announcements(threading.Thread):
    """Subscribed to ``+switch-master`` on every sentinel: the first announcement, and when."""

    def __init__(self, ports: list[int]):
        super().__init__(daemon=True)
        self.clients = [redis.Redis(port=port, socket_timeout=WAIT) for port in ports]
        self.pubsubs = []
        for client in self.clients:
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe("+switch-master")
            pubsub.get_message(timeout=1)  # the subscription's confirmation
            self.pubsubs.append(pubsub)
        self.announced = threading.Event()
        self.at = 0.0
        self.new = ""
        self.start()

    def run(self) -> None:
        while not self.announced.is_set():
            for pubsub in self.pubsubs:
                message = pubsub.get_message(timeout=0.001)
                if message and message["type"] == "message":
                    self.at = time.monotonic()
                    fields = message["data"].decode().split()
                    self.new = f"{fields[3]}:{fields[4]}"
                    self.announced.set()
                    return

    def close(self) -> None:
        self.announced.set()
        self.join(WAIT)
        for pubsub, client in zip(self.pubsubs, self.clients, strict=True):
            pubsub.close()
            client.close()


class Learned(threading.Thread):
    """When each app's cache first names ``new`` as its primary (read without asking anyone)."""

    def __init__(self, apps):
        super().__init__(daemon=True)
        self.caches = [app.extensions["shared_cache"] for app in apps]
        self.new = ""
        self.at: dict[int, float] = {}
        self.halt = threading.Event()
        self.start()

    def run(self) -> None:
        while not self.halt.is_set():
            for i, dc in enumerate(self.caches):
                if self.new and i not in self.at and dc.topology.primary_names(dc.client) == [self.new]:
                    self.at[i] = time.monotonic()
            time.sleep(0.005)

    def stop(self) -> None:
        self.halt.set()
        self.join(WAIT)


def status(app, device_id: str) -> int:
    return app.test_client().get(f"/api/v1/devices/{device_id}/room").status_code


@pytest.mark.parametrize("topology", ["sentinel"], indirect=True)
def test_a_sentinel_failover_is_one_event_in_every_process(make_app, redis_alive):
    """Two replicas; as soon as a sentinel announces the switch, a key is deleted through one: the
    other never serves its lookup again, and both point at the new master within a second.

    Counters are flushed once a minute here: following the master must not wait for a write.
    """
    replicas = [make_app(CACHE_FLUSH_INTERVAL=60), make_app(CACHE_FLUSH_INTERVAL=60)]
    for app in replicas:
        near_ready(app)
    a, b = replicas
    owner = create_user(a, "owner")
    key = register(a.test_client(), owner, "dev-1", "room")
    assert status(b, "dev-1") == status(b, "dev-1") == 200  # cached in Redis and in b's L1
    announcements = Announcements(redis_alive.sentinel_ports)
    learned = Learned(replicas)
    try:
        with redis_alive.sentinel(redis_alive.sentinel_ports[0]) as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", redis_alive.MASTER)
        assert announcements.announced.wait(WAIT), "no sentinel announced the switch"
        learned.new = announcements.new
        response = a.test_client().delete(f"/api/v1/api-keys/{key['key_id']}", headers=bearer(owner))
        assert response.status_code == 204
        seen = []
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            seen.append(status(b, "dev-1"))
            time.sleep(0.01)
        assert set(seen) == {404}, f"b accepted the deleted key {seen.count(200)} times of {len(seen)}"
        assert wait_until(lambda: len(learned.at) == 2, 2)
        late = {i: round(at - announcements.at, 3) for i, at in learned.at.items() if at - announcements.at > 1.0}
        assert late == {}, f"apps that learned the new master more than 1 s after its announcement: {late}"
    finally:
        learned.stop()
        announcements.close()
        redis_alive.settle()


@pytest.fixture
def slotless_cluster():
    """A two-node Redis Cluster of the test's own: one primary owns every slot, and a fresh node
    that owned one slot for a moment owns none now (as after a resharding or a node added).

    Of its own: the session's cluster is shared, and its checks expect six nodes.
    """
    nodes = []
    for _ in range(2):
        extra = ["--cluster-enabled", "yes", "--cluster-node-timeout", "30000"]
        node = RedisServer(extra=extra, port=free_cluster_port())  # its bus port (+10000) must exist
        node.start()
        nodes.append(node)
    yield nodes
    for node in nodes:
        node.cleanup()


def node_id(node: RedisServer) -> str:
    found = node.probe.execute_command("CLUSTER", "MYID")
    return found.decode() if isinstance(found, bytes) else found


def set_slot_owner(nodes: list[RedisServer], slot: int, owner: RedisServer) -> None:
    for node in nodes:
        node.probe.execute_command("CLUSTER", "SETSLOT", slot, "NODE", node_id(owner))
    wait_redis(lambda: all(n.probe.cluster("info")["cluster_state"] == "ok" for n in nodes), WAIT, "the cluster")


def test_the_cluster_probe_returns_on_a_primary_that_owns_no_slot(slotless_cluster):
    first, fresh = slotless_cluster
    first.probe.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    first.probe.execute_command("CLUSTER", "MEET", "127.0.0.1", fresh.port)
    ids = [node_id(node) for node in slotless_cluster]

    def met() -> bool:
        for node in slotless_cluster:
            table = node.probe.execute_command("CLUSTER", "NODES")
            table = table.decode() if isinstance(table, bytes) else table
            if "handshake" in table or not all(i in table for i in ids):
                return False
        return True

    wait_redis(met, WAIT, "the meet")
    moving = 100
    set_slot_owner(slotless_cluster, moving, fresh)
    topology = topology_from_config({"REDIS_CLUSTER_NODES": ((("127.0.0.1", first.port)),)})
    client = topology.new_client({"socket_timeout": 2})
    assert isinstance(client, LazyCluster)
    try:
        assert sorted(topology.primary_names(client)) == sorted(f"127.0.0.1:{n.port}" for n in slotless_cluster)
        set_slot_owner(slotless_cluster, moving, first)  # the fresh node owns no slot now
        key = next(f"k{{{n}}}" for n in range(100000) if client.keyslot(f"k{{{n}}}") == moving)
        client.get(key)  # MOVED: the client learns the slot's new owner, and keeps the fresh node as a primary
        assert f"127.0.0.1:{fresh.port}" in topology.primary_names(client)
        done = threading.Event()
        failure: list[BaseException] = []

        def probe() -> None:
            try:
                topology.ping(client, "probe:")
            except Exception as exc:  # noqa: BLE001 (reported below)
                failure.append(exc)
            done.set()

        threading.Thread(target=probe, daemon=True).start()
        assert done.wait(WAIT), "the probe never returned"
        assert failure == []
    finally:
        topology.close(client)
