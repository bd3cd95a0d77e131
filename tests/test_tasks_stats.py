"""The stats collector on a real worker: capped history, collector state, /cache/stats/history, task logs."""

from __future__ import annotations

import io
import logging
from datetime import timedelta

import pytest

from app.logging import TaskContextFilter
from app.timeutil import isoformat, utcnow_ms
from tests.conftest import all_brokers, bearer, create_user, register
from tests.helpers import assert_error, meta_key
from tests.test_tasks_warm import STATS, WARM, run_task, running_worker

pytestmark = [pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"), all_brokers]

SNAPSHOT_FIELDS = {"at", "hits", "misses", "loads", "hit_ratio", "keys"}


def meta(app, name: str) -> str:
    return meta_key(app.config["CACHE_KEY_PREFIX"], name)


def test_stats_task_appends_capped_history_and_sets_last_run(make_app, raw):
    app = make_app(STATS_HISTORY_SIZE=3)
    client = app.test_client()
    admin = bearer(create_user(app, "admin", admin=True))
    register(client, create_user(app, "owner"), "d1", "room")
    for _ in range(3):
        assert client.get("/api/v1/devices/d1/room").status_code == 200  # one miss, two hits
    results = []
    with running_worker(app) as celery:
        for _ in range(4):
            results.append(run_task(celery, STATS))
            assert run_task(celery, STATS) == {"overlap": True}  # a duplicate tick inside the window
            raw.delete(meta(app, "lock:stats"))  # the window is over: the next tick
    assert [r["at"] for r in results] == sorted(r["at"] for r in results)
    assert results[-1]["hits"] == 2 and results[-1]["misses"] == 1 and results[-1]["loads"] >= 1
    assert results[-1]["hit_ratio"] == pytest.approx(2 / 3)
    assert results[-1]["keys"] == 2  # the lookup of d1, and the owner's verified token

    body = client.get("/cache/stats", headers=admin).get_json()
    assert body["collector"]["last_run"] == results[-1]["at"]
    assert body["collector"]["stale"] is False

    response = client.get("/cache/stats/history", headers=admin)
    assert response.status_code == 200
    snapshots = response.get_json()["snapshots"]
    assert len(snapshots) == 3  # STATS_HISTORY_SIZE: the oldest was dropped
    assert all(set(s) >= SNAPSHOT_FIELDS for s in snapshots)
    assert [s["at"] for s in snapshots] == [r["at"] for r in results[1:]]  # newest last
    limited = client.get("/cache/stats/history?limit=2", headers=admin).get_json()["snapshots"]
    assert [s["at"] for s in limited] == [r["at"] for r in results[2:]]


@pytest.mark.parametrize("limit", ["0", "-1", "4", "abc", "1.5", "", " 2", "²", "١"])
def test_stats_history_rejects_a_bad_limit(make_app, limit):
    app = make_app(STATS_HISTORY_SIZE=3)
    response = app.test_client().get(
        "/cache/stats/history", query_string={"limit": limit}, headers=bearer(create_user(app, "a", admin=True))
    )
    assert_error(response, 400, "validation_error")


def test_stats_history_is_admin_only_and_defaults_within_the_cap(make_app):
    app = make_app(STATS_HISTORY_SIZE=3)
    client = app.test_client()
    assert_error(client.get("/cache/stats/history"), 401, "auth_required")
    assert_error(client.get("/cache/stats/history", headers=bearer(create_user(app, "user"))), 403, "forbidden")
    response = client.get("/cache/stats/history", headers=bearer(create_user(app, "admin", admin=True)))
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"snapshots": []}


def test_collector_is_stale_without_a_recent_run(make_app, raw):
    app = make_app(STATS_INTERVAL=10)
    client = app.test_client()
    admin = bearer(create_user(app, "admin", admin=True))
    collector = client.get("/cache/stats", headers=admin).get_json()["collector"]
    assert collector["last_run"] is None and collector["stale"] is True  # beat never ran

    long_ago = isoformat(utcnow_ms() - timedelta(seconds=31))  # three intervals and a bit
    raw.set(meta(app, "collector:last_run"), long_ago)
    collector = client.get("/cache/stats", headers=admin).get_json()["collector"]
    assert collector["last_run"] == long_ago and collector["stale"] is True  # beat died

    with running_worker(app) as celery:
        run_task(celery, STATS)
    collector = client.get("/cache/stats", headers=admin).get_json()["collector"]
    assert collector["last_run"] != long_ago and collector["stale"] is False


def test_worker_log_lines_carry_task_name_and_id(make_app):
    app = make_app(LOG_LEVEL="INFO")
    handler = next(h for h in logging.getLogger().handlers if getattr(h, "_opensensor", False))
    assert any(isinstance(f, TaskContextFilter) for f in handler.filters)
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        logging.getLogger("app.tests").warning("outside any task")
        with running_worker(app) as celery:
            result = celery.tasks[WARM].apply_async()
            result.get(timeout=15)
    finally:
        handler.setStream(previous)
    lines = stream.getvalue().splitlines()
    outside = next(line for line in lines if "outside any task" in line)
    assert "tasks.warm" not in outside and "None" not in outside
    inside = [line for line in lines if "app.tasks" in line and "warm-up" in line]
    assert inside and f"{WARM}[{result.id}]" in inside[0], lines
