"""The live-replica fixture: the real WSGI entry point under gunicorn, shared cache included."""

from __future__ import annotations

import json
import urllib.request

from tests.conftest import create_user, register


def get_json(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, json.loads(response.read())


def test_live_replica_serves_a_device_registered_in_process(app, client, live_replica):
    register(client, create_user(app, "owner"), "dev-1", "room")
    replica = live_replica(workers=1, threads=2)
    status, body = get_json(f"{replica.url}/api/v1/devices/dev-1/room")
    assert status == 200 and body["chain"] == ["dev-1"]
    status, health = get_json(f"{replica.url}/health")
    assert status == 200 and health["checks"] == {"mongo": "ok", "redis": "ok"}
