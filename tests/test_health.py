"""Liveness and readiness probes: MongoDB is required, Redis is optional."""

from __future__ import annotations

import time

import pytest

from devstack.ports import free_port
from tests.conftest import build_app, create_user, register, stop_app
from tests.helpers import push, read


def test_liveness_checks_nothing(client):
    response = client.get("/health/live")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readiness_is_ok_with_both_dependencies(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "checks": {"mongo": "ok", "redis": "ok"}}


@pytest.fixture
def app_without_redis(settings):
    app = build_app(settings, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    yield app
    stop_app(app)


def test_readiness_is_down_503_while_draining_and_everything_else_still_serves(app, client):
    app.extensions["shutdown"].watch(lambda: True)  # what gunicorn.conf.py does on SIGTERM

    response = client.get("/health")

    assert response.status_code == 503
    assert response.get_json() == {"status": "down", "checks": {"mongo": "ok", "redis": "ok"}}
    assert client.get("/health/live").status_code == 200


def test_readiness_is_degraded_without_redis(app_without_redis):
    started = time.monotonic()
    response = app_without_redis.test_client().get("/health")
    assert time.monotonic() - started < 1.0
    assert response.status_code == 200
    assert response.get_json() == {"status": "degraded", "checks": {"mongo": "ok", "redis": "unavailable"}}


def test_service_serves_from_mongodb_without_redis(app_without_redis):
    client = app_without_redis.test_client()
    owner = create_user(app_without_redis, "owner")
    key = register(client, owner, "a", "tent")
    assert push(client, key, "a", "tent", {"temp": 20}).status_code == 201
    assert client.get("/api/v1/devices/a/tent").get_json()["chain"] == ["a"]
    assert read(client, "a", "tent", "temp").get_json()["items"][0]["value"] == 20


@pytest.fixture
def app_without_mongo(settings):
    app = build_app(settings, MONGO_URI=f"mongodb://127.0.0.1:{free_port()}/nothing")
    yield app
    stop_app(app)


def test_readiness_is_down_503_without_mongodb_in_the_health_shape(app_without_mongo):
    client = app_without_mongo.test_client()
    started = time.monotonic()
    response = client.get("/health")
    assert time.monotonic() - started < 1.0  # each probe is bounded to about 250 ms
    assert response.status_code == 503
    assert response.get_json() == {"status": "down", "checks": {"mongo": "unavailable", "redis": "ok"}}
    assert client.get("/health/live").status_code == 200
