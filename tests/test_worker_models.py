"""The cache on every gunicorn worker model, with and without ``--preload`` (issue 14 item 5).

A lock made in a ``--preload`` master is an unpatched lock in a gevent worker: held across
Redis or MongoDB I/O by one greenlet, it blocks every other greenlet of the worker for good.
Each model serves concurrent lookups, a change and the lookups after it, within timeouts.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import bearer, register
from tests.helpers import READINGS_URL, key_header

MODELS = [(model, preload) for model in ("sync", "gthread", "gevent") for preload in (False, True)]


@pytest.mark.parametrize(("worker_class", "preload"), MODELS, ids=[f"{m}{'-preload' if p else ''}" for m, p in MODELS])
def test_every_worker_model_serves_changes_and_lookups_without_blocking(
    app, owner, live_replica, worker_class, preload
):
    key = register(app.test_client(), owner, "dev-1", "room")
    replica = live_replica(
        workers=1,
        worker_class=worker_class,
        threads=4 if worker_class == "gthread" else 1,
        extra_args=["--preload"] if preload else [],
        **({"GEVENT_WORKER_CONNECTIONS": "100"} if worker_class == "gevent" else {}),
    )
    body = {"device_id": "dev-1", "device_name": "room", "readings": {"temp": 20.0}}

    def lookup(_: int) -> int:
        return requests.get(f"{replica.url}/api/v1/devices/dev-1/room", timeout=5).status_code

    def pushed(_: int) -> int:
        return requests.post(replica.url + READINGS_URL, json=body, headers=key_header(key), timeout=5).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lookup, range(40))) == {200}
        assert set(pool.map(pushed, range(16))) == {201}
        deleted = requests.delete(f"{replica.url}/api/v1/api-keys/{key['key_id']}", headers=bearer(owner), timeout=10)
        assert deleted.status_code == 204
        assert 201 not in set(pool.map(pushed, range(16)))
        assert set(pool.map(lookup, range(16))) == {404}
