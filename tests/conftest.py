from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import random
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import kombu
import pytest
import redis
from flask import Flask
from pymongo import MongoClient

from app import create_app
from app.cache import shared
from devstack.cluster import ClusterSet
from devstack.mongo import MongoServer, mongo_base_uri, start_secantusd
from devstack.processes import Group, stop_processes
from devstack.redis_server import RedisServer
from devstack.sentinel import SentinelSet
from devstack.web import LiveReplica
from tests.helpers import wait_until

TOPOLOGIES = ("standalone", "sentinel", "cluster")
# Runs a test module's tests once per Redis topology: ``pytestmark = all_topologies``.
all_topologies = pytest.mark.parametrize("topology", TOPOLOGIES, indirect=True)
# Runs tests with the near cache (L1) on (the default) and off: ``pytestmark = near_on_and_off``.
near_on_and_off = pytest.mark.parametrize("near", ("on", "off"), indirect=True)
# Runs Celery tests once per broker: the cache's Redis (database 1) and RabbitMQ.
all_brokers = pytest.mark.parametrize("celery_broker", ("redis", "rabbitmq"), indirect=True)
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")

Deployment = RedisServer | SentinelSet | ClusterSet


# Libraries whose threads draw random numbers (redis-py's backoff jitter and node shuffles,
# pymongo's server selection and request ids, kombu's and Celery's) get a generator of their own.
# Hypothesis fails a test when the global ``random`` moves while it draws an example (it takes
# that for the strategy's own randomness), and threads of the apps a test runs in this process
# (reconnecting, probing) move it at any moment: a flaky schemathesis run otherwise.
_OWN_RANDOM = ("redis.backoff", "redis.cluster", "redis.sentinel", "pymongo.message", "pymongo.helpers_shared",
               "pymongo.synchronous.topology", "pymongo.synchronous.client_session", "kombu.utils.functional",
               "celery.utils.time")  # fmt: skip
for _name in _OWN_RANDOM:
    _module = importlib.import_module(_name)
    if getattr(_module, "random", None) is random:
        _module.random = random.Random()
importlib.import_module("pymongo.topology_description").sample = random.Random().sample  # from random import sample


@pytest.fixture(autouse=True)
def _caches_end_with_their_test() -> Iterator[None]:
    """The background threads of every app a test built stop when the test ends, stopped by it or
    not. A thread left running keeps probing servers long gone for the rest of the session: CPU
    taken from every later test, and draws from the global ``random`` (redis-py shuffles a
    Cluster's startup nodes) that Hypothesis, in a later test, takes for its strategy's own."""
    before = set(shared._instances)
    yield
    for cache in set(shared._instances) - before:
        cache.background.stop()
        cache.near.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def sentinel_set() -> Iterator[SentinelSet]:
    """A primary, a replica and three sentinels, started by the first test that needs them."""
    deployment = SentinelSet()
    deployment.start()
    yield deployment
    deployment.cleanup()


@pytest.fixture(scope="session")
def cluster_set() -> Iterator[ClusterSet]:
    """Three primaries and three replicas, started by the first test that needs them."""
    deployment = ClusterSet()
    deployment.start()
    yield deployment
    deployment.cleanup()


@pytest.fixture
def topology(request) -> str:
    """The Redis topology of the test: standalone unless the test is parametrized."""
    return getattr(request, "param", "standalone")


@pytest.fixture
def near(request) -> str:
    """Whether the test's apps run the near cache: on (the default) unless parametrized."""
    return getattr(request, "param", "on")


def near_ready(app: Flask, seconds: float = 10.0) -> None:
    """Start the app's near cache now and wait until its listeners are subscribed (if it is on)."""
    near = app.extensions["shared_cache"].near
    if not near.enabled:
        return
    near.get("")  # the first use starts the listener thread
    assert wait_until(lambda: near.serving, seconds), "the near cache did not get subscribed"


@pytest.fixture
def celery_broker(request) -> str:
    """The Celery broker of the test: the cache's Redis unless the test is parametrized."""
    return getattr(request, "param", "redis")


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """The session's MongoDB: a ``secantusd-py`` process, as production runs its database apart.
    In this process it stalled with every pause of the tests' own (a full garbage collection
    took up to 3 s), and the apps' 1 s timeouts then failed requests that a separate server
    answers at once (a flaky ``ServerSelectionTimeoutError``)."""
    base = mongo_base_uri()
    if base:
        yield base
        return
    with tempfile.TemporaryDirectory(prefix="secantus-session-") as workdir:
        group = Group()
        try:
            storage, log = Path(workdir) / "data", Path(workdir) / "secantusd.log"
            _, port = start_secantusd(group, storage, log, extra=("--enable-test-commands",))  # fail points
            yield f"mongodb://127.0.0.1:{port}"
        finally:
            group.stop_all()


@pytest.fixture
def own_mongo() -> Iterator[MongoServer]:
    """A SecantusDB of the test's own, which it may stop (the session's is shared)."""
    server = MongoServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_alive(request, topology: str, redis_server: RedisServer) -> Deployment:
    """The session's Redis of the test's topology, restarted if an earlier test stopped it.

    Every deployment has ``stop``, ``kill``, ``pause``, ``resume`` and ``ensure_running`` (an
    outage of all its data nodes), ``raw()`` and ``primaries()``.
    """
    redis_server.ensure_running()  # also the Celery broker of the Cluster topology
    deployment = redis_server if topology == "standalone" else request.getfixturevalue(f"{topology}_set")
    deployment.ensure_running()
    return deployment


@pytest.fixture
def settings(
    redis_alive: Deployment, redis_server: RedisServer, mongo_uri: str, celery_broker: str, near: str
) -> Iterator[dict]:
    """Settings of one test: its own database, key prefix (and RabbitMQ queue) on the shared servers."""
    tag = uuid.uuid4().hex[:10]
    db = f"test_{tag}"
    values = {
        "TESTING": True,
        "MONGO_URI": f"{mongo_uri}/{db}",
        **redis_alive.settings(broker=redis_server.url(1)),
        "CACHE_KEY_PREFIX": f"t{tag}:",
        "LOG_LEVEL": "WARNING",
        "CACHE_FLUSH_INTERVAL": 0.2,
    }
    if near == "off":
        values["L1_CACHE_SIZE"] = 0
    if celery_broker == "rabbitmq":  # a queue of its own: RabbitMQ is shared by everything on the machine
        values.update(CELERY_BROKER_URL=RABBITMQ_URL, CELERY_QUEUE=f"opensensor-test-{tag}")
    yield values
    if celery_broker == "rabbitmq":
        with kombu.Connection(RABBITMQ_URL, connect_timeout=2) as connection:
            connection.default_channel.queue_delete(values["CELERY_QUEUE"])
    client = MongoClient(mongo_uri, serverSelectionTimeoutMS=2000)
    with contextlib.suppress(Exception):  # a test may have stopped the server
        client.drop_database(db)
    client.close()


def build_app(settings: dict, **extra) -> Flask:
    return create_app({**settings, **extra})


@pytest.fixture
def app(settings: dict) -> Iterator[Flask]:
    app = build_app(settings)
    yield app
    stop_app(app)


def stop_app(app: Flask) -> None:
    app.extensions["shared_cache"].stop()
    app.extensions["mongo"].close()


@pytest.fixture
def raw(redis_alive: Deployment) -> Iterator[redis.Redis]:
    """A plain client on the cache's database (of any topology), to look behind the service."""
    client = redis_alive.raw()
    yield client
    client.close()


@pytest.fixture
def replicas(settings: dict) -> Iterator[list[Flask]]:
    """Two apps on the same settings: two replicas sharing MongoDB, Redis and the prefix
    (near caches subscribed, so a test sees them serve from the first lookup)."""
    apps = [build_app(settings), build_app(settings)]
    for app in apps:
        near_ready(app)
    yield apps
    for app in apps:
        stop_app(app)


@pytest.fixture
def make_app(settings: dict) -> Iterator[Callable[..., Flask]]:
    """``build_app`` with overrides; every app built is stopped at the end of the test."""
    built: list[Flask] = []

    def make(**overrides: object) -> Flask:
        built.append(build_app(settings, **overrides))
        return built[-1]

    yield make
    for app in built:
        stop_app(app)


@pytest.fixture
def client(app: Flask):
    return app.test_client()


@pytest.fixture
def runner(app: Flask):
    return app.test_cli_runner()


def create_user(app: Flask, name: str, admin: bool = False) -> dict:
    args = ["users", "create", name] + (["--admin"] if admin else [])
    result = app.test_cli_runner().invoke(args=args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def bearer(user: dict) -> dict:
    return {"Authorization": f"Bearer {user['token']}"}


@pytest.fixture
def owner(app: Flask) -> dict:
    return create_user(app, "owner")


@pytest.fixture
def other(app: Flask) -> dict:
    return create_user(app, "other")


@pytest.fixture
def admin(app: Flask) -> dict:
    return create_user(app, "admin", admin=True)


def register(client, user: dict, device_id: str, device_name: str, private: bool = False, **extra):
    response = client.post(
        "/api/v1/api-keys",
        json={"device_id": device_id, "device_name": device_name, "private": private, **extra},
        headers=bearer(user),
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


@pytest.fixture
def live_replica(settings: dict, tmp_path) -> Iterator[Callable[..., LiveReplica]]:
    """Start ``gunicorn wsgi:app`` replicas on the test's settings; all are stopped at the end.

    ``live_replica(workers=2, worker_class="gthread", threads=4, **env_overrides)``.
    """
    started: list[LiveReplica] = []

    def start(**kwargs: object) -> LiveReplica:
        replica = LiveReplica(settings, tmp_path / f"replica-{len(started)}.log", **kwargs)
        started.append(replica)
        return replica.start()

    yield start
    stop_processes([replica.proc for replica in started if replica.proc is not None])  # side by side
    for replica in started:
        replica.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Schemathesis's items (one per operation) all get their function's node id on pytest 9
    (which builds it from ``originalname``), their operation only in their name. pytest-xdist runs
    and reports items by node id: it ran one operation of 33, and passed with another failing.
    Each gets its operation in its id, as a parametrized test's parameter."""
    for item in items:
        label = getattr(item, "operation_label", None)
        if label is not None and not item.nodeid.endswith(f"[{label}]"):
            item._id = item.parent.id.child(item.originalname).with_params(label)
    seen: set[str] = set()
    twice = sorted({item.nodeid for item in items if item.nodeid in seen or seen.add(item.nodeid)})
    if twice:
        raise pytest.UsageError(f"items share a node id (pytest-xdist would run one of each): {twice[:5]}")


def pytest_collection_finish(session) -> None:
    """The modules, classes and functions every test shares stay out of the garbage collector's
    full passes: with them, a full pass took 0.1-3 s and ran twice a second in the Redis
    outage tests (a fifth of their time, and a stall every replica in this process felt)."""
    gc.collect()
    gc.freeze()
