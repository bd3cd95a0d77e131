"""Celery's wiring and the beat schedule: config as data, real beats ticking a real worker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from celery import Celery
from celery.beat import Service

from app.timeutil import parse_iso
from devstack.celery import start_celery
from devstack.processes import service_env, stop_process
from tests.conftest import all_brokers, bearer, build_app, create_user, register, stop_app
from tests.helpers import meta_key, wait_until
from tests.test_tasks_warm import STATS, WARM, entry_key, running_worker

pytestmark = [pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"), all_brokers]


@contextmanager
def running_beat(celery: Celery, schedule: Path) -> Iterator[Service]:
    """celery beat in a thread of this process, with its own schedule file."""
    service = Service(celery, max_interval=0.2, schedule_filename=str(schedule), remote_control=False)
    thread = threading.Thread(target=service.start, name=f"beat-{schedule.name}", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.stop(wait=True)
        thread.join(10)


def history(app, client) -> list[dict]:
    raw = client.lrange(meta_key(app.config["CACHE_KEY_PREFIX"], "stats:history"), 0, -1)
    return [json.loads(item) for item in raw]


def test_beat_schedule_takes_its_cadence_from_config(settings):
    app = build_app(settings, WARM_INTERVAL=7, STATS_INTERVAL=3)
    try:
        schedule = app.extensions["celery"].conf.beat_schedule
        assert schedule["warm-hot-devices"]["task"] == WARM
        assert schedule["warm-hot-devices"]["schedule"] == 7
        assert schedule["collect-cache-stats"]["task"] == STATS
        assert schedule["collect-cache-stats"]["schedule"] == 3
        # a tick nobody ran in time is dropped, not piled up behind a dead worker
        assert schedule["collect-cache-stats"]["options"]["expires"] == 3
    finally:
        stop_app(app)


def test_beat_schedule_follows_the_environment(settings, monkeypatch):
    monkeypatch.setenv("WARM_INTERVAL", "11")
    monkeypatch.setenv("STATS_INTERVAL", "5")
    app = build_app(settings)
    try:
        schedule = app.extensions["celery"].conf.beat_schedule
        assert schedule["warm-hot-devices"]["schedule"] == 11
        assert schedule["collect-cache-stats"]["schedule"] == 5
    finally:
        stop_app(app)


def test_celery_is_json_only_with_time_limits_on_the_broker_database(settings):
    overrides = {k: v for k, v in settings.items() if k not in ("CELERY_BROKER_URL", "CELERY_QUEUE")}
    app = build_app(overrides, TASK_TIME_LIMIT=30, WARM_INTERVAL=600)
    try:
        conf = app.extensions["celery"].conf
        assert conf.broker_url == settings["REDIS_URL"].rsplit("/", 1)[0] + "/1"  # REDIS_URL's server, db 1
        assert conf.task_serializer == conf.result_serializer == "json"
        assert list(conf.accept_content) == ["json"]
        assert conf.worker_hijack_root_logger is False
        assert conf.task_time_limit == 30 and 0 < conf.task_soft_time_limit < 30
        # no task is ever queued for longer than the longest interval: Redis never redelivers one in progress
        assert conf.broker_transport_options["visibility_timeout"] > 600
    finally:
        stop_app(app)


def test_scheduled_warm_up_and_stats_snapshot_happen_on_their_own(make_app, raw, settings, tmp_path):
    """``celery -A celery_worker beat`` as its own process, ticking the worker every second."""
    app = make_app(WARM_INTERVAL=1, STATS_INTERVAL=1)
    client = app.test_client()
    register(client, create_user(app, "owner"), "d1", "room")
    assert client.get("/api/v1/devices/d1/room").status_code == 200
    app.extensions["shared_cache"].flush()
    raw.delete(entry_key(app, "d1"))
    env = service_env(settings, WARM_INTERVAL=1, STATS_INTERVAL=1, LOG_LEVEL="INFO")
    options = ["--max-interval", "1", "-s", str(tmp_path / "schedule"), "-l", "info", "--pidfile", ""]
    with running_worker(app):
        beat = start_celery("beat", options, env, tmp_path / "beat.log")
        try:
            warmed = wait_until(lambda: bool(raw.exists(entry_key(app, "d1"))), 20, interval=0.1)
            snapshot = wait_until(lambda: bool(history(app, raw)), 5, interval=0.1)
        finally:
            stop_process(beat, 10)
    output = (tmp_path / "beat.log").read_text(errors="replace")
    assert warmed, output
    assert snapshot, output
    body = client.get("/cache/stats", headers=bearer(create_user(app, "admin", admin=True))).get_json()
    assert body["collector"]["last_run"] is not None and body["collector"]["stale"] is False
    assert body["collector"]["warmer_last_run"] is not None


def test_a_second_beat_makes_no_duplicate_stats_snapshots(make_app, raw, tmp_path):
    """Two beats half an interval out of phase: the task lock keeps one snapshot per interval."""
    app = make_app(STATS_INTERVAL=1, WARM_INTERVAL=3600)
    with running_worker(app) as celery, running_beat(celery, tmp_path / "first"):
        time.sleep(0.5)
        with running_beat(celery, tmp_path / "second"):
            started = time.monotonic()
            time.sleep(4.2)
            elapsed = time.monotonic() - started
    snapshots = history(app, raw)
    stamps = [parse_iso(s["at"]) for s in snapshots]
    gaps = [(b - a).total_seconds() for a, b in zip(stamps, stamps[1:], strict=False)]
    assert len(snapshots) >= 3, snapshots
    assert len(snapshots) <= elapsed + 1.5, gaps  # one beat's worth (plus the half second alone)
    assert min(gaps) >= 0.6, gaps  # no two snapshots inside one dedupe window


def test_a_dead_beat_shows_as_a_stale_collector(make_app):
    """No snapshot for three intervals: beat (or every worker) is gone, and /cache/stats says so."""
    app = make_app(STATS_INTERVAL=1)
    client = app.test_client()
    admin = bearer(create_user(app, "admin", admin=True))
    with running_worker(app) as celery:
        celery.tasks[STATS].apply_async().get(timeout=15)
    assert client.get("/cache/stats", headers=admin).get_json()["collector"]["stale"] is False

    def stale() -> bool:
        return client.get("/cache/stats", headers=admin).get_json()["collector"]["stale"]

    assert wait_until(stale, 6, interval=0.1)
