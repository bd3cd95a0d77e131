"""Request ids on every response, and LOG_FORMAT=json: one JSON object per line from web, worker and beat."""

from __future__ import annotations

import json
import logging
import os
import re
import runpy
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis

from app.logging import JsonFormatter
from app.metrics import ENVIRON_KEY, REQUEST_ID_HEADER
from devstack.celery import start_celery
from devstack.processes import ROOT, service_env, stop_process
from tests.conftest import create_user, register
from tests.helpers import meta_key, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")

ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.mark.parametrize(
    ("sent", "echoed"),
    [("abc-123", True), ("A.b_c:d-9", True), ("x" * 128, True), ("x" * 129, False), ("", False),
     ("has space", False), ("new\nline", False), ("é", False), ("a/b", False)],
)  # fmt: skip
def test_a_sane_request_id_is_echoed_and_any_other_replaced(client, sent, echoed):
    response = client.get("/health/live", headers={REQUEST_ID_HEADER: sent} if "\n" not in sent else {})
    given = response.headers[REQUEST_ID_HEADER]
    if echoed:
        assert given == sent
    else:
        assert given != sent and re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", given)


def test_a_forked_worker_makes_request_ids_of_its_own_prefix():
    """The prefix is renewed at fork (no os.getpid() per request): two workers never share ids."""
    from app.metrics import request_id_from

    parent = request_id_from(None).split("-")[0]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its first two ids and leave without running the parent's atexit
        os.write(write, f"{request_id_from(None)} {request_id_from(None)}".encode())
        os._exit(0)
    os.close(write)
    first, second = os.read(read, 200).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    assert first.split("-")[0] == second.split("-")[0] != parent
    assert first.endswith("-1") and second.endswith("-2")  # a fresh count too
    assert request_id_from(None).split("-")[0] == parent  # the parent keeps its own


def test_json_bodies_are_byte_for_byte_flasks_own(app):
    """The kept encoders (app.JSONProvider) write what Flask's DefaultJSONProvider writes."""
    from datetime import UTC, datetime

    from flask.json.provider import DefaultJSONProvider

    flask_own = DefaultJSONProvider(app)
    flask_own.sort_keys = False
    body = {"z": 1, "a": [1.5, None, True], "é": "\u00e9 ü", "t": datetime(2026, 1, 2, tzinfo=UTC), "n": {"b": 2}}
    with app.app_context():
        for debug in (False, True):
            app.debug = debug
            assert app.json.response(body).get_data() == flask_own.response(body).get_data()
            assert app.json.response(body).mimetype == "application/json"
        app.debug = False


def test_every_response_carries_a_request_id_errors_included(app, client):
    @app.get("/boom")
    def boom():
        raise RuntimeError("a bug")

    responses = [
        client.get("/boom"),  # 500
        client.get("/cache/stats"),  # 401 from the blueprint's before_request
        client.get("/no/such/route"),  # 404
        client.delete("/health/live"),  # 405
    ]
    assert [r.status_code for r in responses] == [500, 401, 404, 405]
    ids = [r.headers[REQUEST_ID_HEADER] for r in responses]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", i) for i in ids)
    assert client.get("/no/such/route", headers={REQUEST_ID_HEADER: "mine"}).headers[REQUEST_ID_HEADER] == "mine"


def test_the_request_log_fields_carry_the_device_caches_answer(app, client):
    register(client, create_user(app, "owner"), "d1", "room")
    environs = []  # what the WSGI server (gunicorn's access log) sees after the app answered
    wsgi = app.wsgi_app
    app.wsgi_app = lambda environ, start_response: environs.append(environ) or wsgi(environ, start_response)

    def fields(response) -> dict:
        return environs[-1][ENVIRON_KEY]

    assert fields(client.get("/api/v1/devices/d1/room"))["cache"] == "miss"
    hit = client.get("/api/v1/devices/d1/room")
    assert fields(hit)["cache"] == "hit"
    assert fields(hit)["route"] == "/api/v1/devices/<device_id>/<device_name>"
    assert fields(hit)["request_id"] == hit.headers[REQUEST_ID_HEADER]
    app.extensions["shared_cache"].breaker.trip(redis.ConnectionError("test"))
    assert fields(client.get("/api/v1/devices/d1/room"))["cache"] == "bypass"
    assert fields(client.get("/health/live"))["cache"] is None  # no lookup in that request


def test_gunicorn_and_the_app_format_json_lines_alike(app, monkeypatch, tmp_path):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))  # so loading the file makes no directory
    gunicorn_formatter = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["_Json"]()
    record = logging.LogRecord("app.cache", logging.WARNING, __file__, 1, "cache %s", ("disabled",), None)
    record.route = "/x"
    with app.test_request_context(headers={REQUEST_ID_HEADER: "req-1"}):
        app.preprocess_request()
        (ours,) = [h for h in logging.getLogger().handlers if getattr(h, "_opensensor", False)]
        ours.filter(record)  # the app handler's filters: request and task context
    line = JsonFormatter().format(record)
    parsed = json.loads(line)
    assert list(parsed)[:4] == ["time", "level", "logger", "message"]
    assert ISO_Z.fullmatch(parsed["time"])
    assert parsed | {"time": "t"} == {
        "time": "t", "level": "WARNING", "logger": "app.cache", "message": "cache disabled",
        "route": "/x", "request_id": "req-1",
    }  # fmt: skip
    del record.task
    assert json.loads(gunicorn_formatter.format(record)) == parsed


def test_a_live_replica_with_json_logs_writes_nothing_but_json_lines(app, client, live_replica):
    register(client, create_user(app, "owner"), "d1", "room")
    replica = live_replica(workers=2, extra_args=["--access-logfile", "-"], LOG_FORMAT="json", LOG_LEVEL="INFO")
    for rid in ("lookup-1", "lookup-2"):
        request = urllib.request.Request(f"{replica.url}/api/v1/devices/d1/room", headers={REQUEST_ID_HEADER: rid})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.headers[REQUEST_ID_HEADER] == rid
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{replica.url}/api/v1/devices/unknown/x%20y", timeout=10)
    missing.value.close()
    replica.stop()
    lines = [line for line in replica.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, gunicorn's included
    assert all(ISO_Z.fullmatch(r["time"]) and {"level", "logger", "message"} <= set(r) for r in records)
    access = {r.get("request_id"): r for r in records if r["logger"] == "gunicorn.access"}
    assert access["lookup-1"] | {"duration_ms": 0, "bytes": 0, "remote_addr": ""} == {
        "time": access["lookup-1"]["time"], "level": "INFO", "logger": "gunicorn.access",
        "message": "GET /api/v1/devices/d1/room 200", "method": "GET", "path": "/api/v1/devices/d1/room",
        "route": "/api/v1/devices/<device_id>/<device_name>", "status": 200, "request_id": "lookup-1",
        "cache": "miss", "duration_ms": 0, "bytes": 0, "remote_addr": "",
    }  # fmt: skip
    assert access["lookup-1"]["duration_ms"] > 0
    assert access["lookup-2"]["cache"] == "hit"
    generated = access[missing.value.headers[REQUEST_ID_HEADER]]
    assert generated["status"] == 404 and generated["path"] == "/api/v1/devices/unknown/x y"
    assert any(r["logger"] == "gunicorn.error" and "Booting worker" in r["message"] for r in records)


def test_worker_and_beat_with_json_logs_write_nothing_but_json_lines(settings, raw, tmp_path):
    env = service_env(settings, LOG_FORMAT="json", LOG_LEVEL="INFO", STATS_INTERVAL=1, WARM_INTERVAL=3600)
    options = {  # --quiet as docker/entrypoint.sh
        "worker": ["-l", "INFO", "--pool", "solo", "--without-gossip", "--without-mingle"],
        "beat": ["-l", "INFO", "--max-interval", "1", "-s", str(tmp_path / "beat"), "--pidfile", ""],
    }
    logs = {name: tmp_path / f"{name}.log" for name in options}
    procs = {}
    history = meta_key(settings["CACHE_KEY_PREFIX"], "stats:history")
    try:
        for name, args in options.items():
            procs[name] = start_celery(name, args, env, logs[name], quiet=True)
        wait_until(lambda: raw.llen(history), 30, interval=0.2)
    finally:
        for proc in procs.values():
            stop_process(proc)

    assert raw.llen(history), {name: path.read_text() for name, path in logs.items()}
    for name, path in logs.items():
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records), name
    worker = [json.loads(line) for line in logs["worker"].read_text().splitlines() if line.strip()]
    assert any(r.get("task_name") == "tasks.stats.collect_cache_stats" and r.get("task_id") for r in worker)
    assert any(r["message"] == "worker: Warm shutdown on SIGTERM" for r in worker)
    assert os.path.getsize(logs["beat"]) > 0
    assert Path(logs["beat"]).read_text().count("Scheduler: Sending due task") >= 1
