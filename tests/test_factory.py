"""The application factory and its configuration: defaults, environment, overrides, bad values."""

from __future__ import annotations

import socket
import time

import pytest
from flask import Flask

from app import create_app
from app.config import SETTINGS, ConfigError
from devstack.ports import free_port
from tests.conftest import stop_app

CONTRACT_DEFAULTS = {
    "MONGO_URI": "mongodb://127.0.0.1:27017/opensensor",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/1",
    "CACHE_KEY_PREFIX": "opensensor:",
    "DEVICE_CACHE_TTL": 300,
    "WARM_INTERVAL": 240,
    "WARM_TOP_N": None,
    "STATS_INTERVAL": 60,
}


@pytest.fixture
def clean_env(monkeypatch) -> pytest.MonkeyPatch:
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def without(settings: dict, *names: str) -> dict:
    return {k: v for k, v in settings.items() if k not in names}


def test_create_app_builds_the_service_without_touching_any_server(clean_env, monkeypatch):
    closed = free_port()
    attempts: list[object] = []  # every connection tried while the app is built (not a timing bound)
    real_connect = socket.socket.connect
    monkeypatch.setattr(
        socket.socket, "connect", lambda sock, address: attempts.append(address) or real_connect(sock, address)
    )
    app = create_app({"MONGO_URI": f"mongodb://127.0.0.1:{closed}/db", "REDIS_URL": f"redis://127.0.0.1:{closed}/0"})
    monkeypatch.undo()
    try:
        assert attempts == []
        assert isinstance(app, Flask)
        assert {"health", "keys", "readings", "devices"} <= set(app.blueprints)
        assert {"users", "init-db", "demo-data"} <= set(app.cli.commands)
        assert app.config["MAX_CONTENT_LENGTH"] == 64 * 1024
    finally:
        stop_app(app)


def test_defaults_are_the_contracts(clean_env):
    app = create_app()
    try:
        assert {name: app.config[name] for name in CONTRACT_DEFAULTS} == CONTRACT_DEFAULTS
    finally:
        stop_app(app)


def test_environment_is_read_when_create_app_runs(clean_env, settings):
    clean_env.setenv("DEVICE_CACHE_TTL", " 42 ")
    clean_env.setenv("WARM_TOP_N", "7")
    app = create_app(without(settings))
    try:
        assert app.config["DEVICE_CACHE_TTL"] == 42 and app.config["WARM_TOP_N"] == 7
    finally:
        stop_app(app)


def test_overrides_beat_the_environment(clean_env, settings):
    clean_env.setenv("DEVICE_CACHE_TTL", "42")
    app = create_app({**settings, "DEVICE_CACHE_TTL": "9"})
    try:
        assert app.config["DEVICE_CACHE_TTL"] == 9
    finally:
        stop_app(app)


@pytest.mark.parametrize(
    ("redis_url", "broker"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/1"),
        ("redis://cache.internal:6380/5", "redis://cache.internal:6380/1"),
        ("redis://:s3cret@cache.internal:6380", "redis://:s3cret@cache.internal:6380/1"),
        (
            "rediss://user:pw@cache.internal:6390/0?ssl_cert_reqs=none",
            "rediss://user:pw@cache.internal:6390/1?ssl_cert_reqs=none",
        ),
        ("unix:///run/redis.sock?db=0", "unix:///run/redis.sock?db=1"),
    ],
)
def test_celery_broker_defaults_to_the_redis_url_server_database_1(clean_env, settings, redis_url, broker):
    clean_env.setenv("REDIS_URL", redis_url)
    app = create_app(without(settings, "REDIS_URL", "CELERY_BROKER_URL"))
    try:
        assert app.config["CELERY_BROKER_URL"] == broker
    finally:
        stop_app(app)


def test_an_explicit_celery_broker_is_kept(clean_env, settings):
    clean_env.setenv("CELERY_BROKER_URL", "redis://broker.internal:6379/3")
    app = create_app(without(settings, "CELERY_BROKER_URL"))
    try:
        assert app.config["CELERY_BROKER_URL"] == "redis://broker.internal:6379/3"
    finally:
        stop_app(app)


MALFORMED = [
    ("DEVICE_CACHE_TTL", "abc"),
    ("DEVICE_CACHE_TTL", "0"),
    ("DEVICE_CACHE_TTL", "-5"),
    ("DEVICE_CACHE_TTL", ""),
    ("WARM_INTERVAL", "1.5"),
    ("WARM_TOP_N", "many"),
    ("STATS_INTERVAL", "60s"),
    ("MONGO_URI", "mongodb://127.0.0.1:27017"),
    ("MONGO_URI", "mongodb://127.0.0.1:27017/"),
    ("MONGO_URI", "http://127.0.0.1/opensensor"),
    ("MONGO_URI", ""),
    ("REDIS_URL", "http://127.0.0.1:6379/0"),
    ("REDIS_URL", "redis://127.0.0.1:6379/zero"),
    ("REDIS_URL", "redis://127.0.0.1:port/0"),
    ("REDIS_URL", "unix:///run/redis.sock?db=x"),
    ("CELERY_BROKER_URL", "amqp-ish"),
    ("CACHE_KEY_PREFIX", "open*"),
    ("CACHE_KEY_PREFIX", "has space:"),
    ("CACHE_KEY_PREFIX", "{tag}:"),
    ("LOG_LEVEL", "LOUD"),
    ("REDIS_SENTINELS", "host-without-port"),
    ("REDIS_SENTINELS", "h1:26379,h2:port"),
    ("REDIS_CLUSTER_NODES", "h1:70000"),
    ("REDIS_CLUSTER_NODES", ""),
    ("CELERY_BROKER_URL", "sentinel://"),
    ("CELERY_BROKER_URL", "amqp://"),
    ("CACHE_PROBE_INTERVAL", "0"),
    ("CACHE_REPLICA_WAIT_MS", "fast"),
]


@pytest.mark.parametrize(("name", "value"), MALFORMED, ids=[f"{n}={v!r}" for n, v in MALFORMED])
def test_malformed_variable_stops_start_up_with_one_clear_line(clean_env, settings, name, value):
    clean_env.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        create_app(without(settings, name))
    message = str(caught.value)
    assert name in message
    assert "\n" not in message and len(message) < 300


def test_broker_on_the_caches_own_database_is_refused(clean_env, settings):
    with pytest.raises(ConfigError, match="CELERY_BROKER_URL"):
        create_app({**settings, "CELERY_BROKER_URL": settings["REDIS_URL"]})


SENTINELS = {"REDIS_SENTINELS": "10.0.0.1:26379,10.0.0.2:26380", "REDIS_SENTINEL_MASTER": "cache"}
CLUSTER = {"REDIS_CLUSTER_NODES": "10.0.1.1:7000,10.0.1.2:7000", "CELERY_BROKER_URL": "amqp://guest:guest@mq:5672//"}


@pytest.mark.parametrize(
    "env",
    [
        {"REDIS_URL": "redis://cache:6379/0", **SENTINELS},
        {"REDIS_URL": "redis://cache:6379/0", **CLUSTER},
        {**SENTINELS, **CLUSTER},
    ],
    ids=["url+sentinel", "url+cluster", "sentinel+cluster"],
)
def test_more_than_one_redis_topology_stops_start_up_with_one_line(clean_env, env):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match="only one Redis topology") as caught:
        create_app()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("env", "needs"),
    [
        ({"REDIS_SENTINELS": "10.0.0.1:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINEL_MASTER": "cache"}, "REDIS_SENTINELS"),
        ({"REDIS_CLUSTER_NODES": "10.0.1.1:7000"}, "CELERY_BROKER_URL"),
        (
            {"REDIS_CLUSTER_NODES": "10.0.1.1:7000", "CELERY_BROKER_URL": "sentinel://10.0.0.1:26379/1"},
            "CELERY_BROKER_SENTINEL_MASTER",
        ),
    ],
    ids=["sentinels without master", "master without sentinels", "cluster without broker", "sentinel broker"],
)
def test_an_incomplete_topology_says_what_is_missing(clean_env, env, needs):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=needs) as caught:
        create_app()
    assert "\n" not in str(caught.value)


def test_sentinel_topology_caches_on_the_master_and_brokers_on_its_database_1(clean_env):
    clean_env.setenv("REDIS_PASSWORD", "s3cr/t")
    clean_env.setenv("REDIS_SENTINEL_PASSWORD", "guard")
    app = create_app(SENTINELS)
    try:
        dc = app.extensions["shared_cache"]
        assert dc.topology.name == "sentinel" and dc.backend._read_client is dc.backend._write_client
        assert app.config["CELERY_BROKER_URL"] == (
            "sentinel://:s3cr%2Ft@10.0.0.1:26379/1;sentinel://:s3cr%2Ft@10.0.0.2:26380/1"
        )
        conf = app.extensions["celery"].conf
        for options in (conf.broker_transport_options, conf.result_backend_transport_options):
            assert options["master_name"] == "cache" and options["sentinel_kwargs"] == {"password": "guard"}
        assert conf.result_backend == app.config["CELERY_BROKER_URL"]
    finally:
        stop_app(app)


def test_cluster_topology_needs_no_server_to_start_and_takes_the_given_broker(clean_env):
    started = time.monotonic()
    app = create_app(CLUSTER)
    try:
        assert time.monotonic() - started < 1.0  # the cluster client is built on first use
        assert app.extensions["shared_cache"].topology.name == "cluster"
        conf = app.extensions["celery"].conf
        assert conf.broker_url == CLUSTER["CELERY_BROKER_URL"] and conf.result_backend == "rpc://"
    finally:
        stop_app(app)


def test_replica_wait_must_be_shorter_than_the_socket_timeout(clean_env, settings):
    with pytest.raises(ConfigError, match="CACHE_REPLICA_WAIT_MS"):
        create_app({**settings, "CACHE_REPLICA_WAIT_MS": 100, "CACHE_SOCKET_TIMEOUT": 0.1})
