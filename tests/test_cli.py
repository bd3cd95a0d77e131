"""Flask CLI: ``users create``, ``init-db`` and ``demo-data``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devstack.ports import free_port
from tests.conftest import bearer, build_app, stop_app
from tests.helpers import push, read

ROOT = Path(__file__).resolve().parent.parent


def last_json_line(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def test_users_create_prints_the_user_as_the_last_json_line(app, runner):
    result = runner.invoke(args=["users", "create", "alice"])
    assert result.exit_code == 0, result.output
    user = last_json_line(result.output)
    assert list(user) == ["user_id", "name", "admin", "token"]
    assert user["name"] == "alice" and user["admin"] is False
    assert user["token"].startswith(f"ost_{user['user_id']}_")


def test_users_create_admin_flag(runner):
    result = runner.invoke(args=["users", "create", "root", "--admin"])
    assert result.exit_code == 0, result.output
    assert last_json_line(result.output)["admin"] is True


def test_created_token_works_as_a_bearer(app, runner, client):
    user = last_json_line(runner.invoke(args=["users", "create", "bob"]).output)
    response = client.get("/api/v1/devices", headers=bearer(user))
    assert response.status_code == 200
    assert client.get("/api/v1/api-keys", headers=bearer(user)).get_json() == {"keys": []}


def test_only_a_hash_of_the_token_is_stored(app, runner):
    user = last_json_line(runner.invoke(args=["users", "create", "carol"]).output)
    secret = user["token"].split("_", 2)[2]  # <prefix>_<user id>_<secret>: the secret may hold "_" itself
    with app.app_context():
        docs = list(app.extensions["mongo"].db["users"].find({}, {"_id": 0}))
    assert len(docs) == 1
    stored = repr(docs)
    assert user["token"] not in stored and secret not in stored
    assert docs[0]["user_id"] == user["user_id"] and docs[0]["name"] == "carol"


def test_duplicate_user_name_fails_with_a_clear_message(runner):
    assert runner.invoke(args=["users", "create", "dave"]).exit_code == 0
    result = runner.invoke(args=["users", "create", "dave"])
    assert result.exit_code != 0
    assert "already exists" in result.output and "Traceback" not in result.output


def test_user_name_must_be_1_to_64_printable_characters(runner):
    for name in ("", "x" * 65, "tab\there"):
        result = runner.invoke(args=["users", "create", name])
        assert result.exit_code != 0 and "NAME" in result.output


def test_init_db_is_idempotent_and_creates_the_schema(app, runner):
    for _ in range(2):
        result = runner.invoke(args=["init-db"])
        assert result.exit_code == 0, result.output
        assert result.output.strip().splitlines()[-1] == "database ready"
    with app.app_context():
        db = app.extensions["mongo"].db
        [readings] = db.list_collections(filter={"name": "readings"})
        key_indexes = {ix["name"]: ix for ix in db["api_keys"].list_indexes()}
        user_indexes = {ix["name"]: ix for ix in db["users"].list_indexes()}
        reading_indexes = {ix["name"]: ix for ix in db["readings"].list_indexes()}
    assert readings["options"]["timeseries"]["timeField"] == "timestamp"
    assert readings["options"]["timeseries"]["metaField"] == "meta"
    pair = next(ix for ix in key_indexes.values() if list(ix["key"]) == ["device_id", "device_name"])
    assert pair["unique"] is True
    assert any(list(ix["key"]) == ["key_id"] and ix.get("unique") for ix in key_indexes.values())
    assert any(list(ix["key"]) == ["name"] and ix.get("unique") for ix in user_indexes.values())
    assert any(list(ix["key"])[:2] == ["meta.device_id", "meta.device_name"] for ix in reading_indexes.values())


def test_init_db_without_mongodb_fails_with_a_clear_message(settings):
    app = build_app(settings, MONGO_URI=f"mongodb://127.0.0.1:{free_port()}/nothing", MONGO_TIMEOUT_MS=200)
    try:
        result = app.test_cli_runner().invoke(args=["init-db"])
        assert result.exit_code != 0
        assert "MongoDB is unavailable" in result.output and "Traceback" not in result.output
    finally:
        stop_app(app)


def test_demo_data_registers_devices_and_pushes_readings(app, runner, client):
    result = runner.invoke(args=["demo-data", "--devices", "4", "--days", "1"])
    assert result.exit_code == 0, result.output
    summary = last_json_line(result.output)
    assert summary["devices"] == 4 and summary["owner"] == "demo"
    assert summary["token"].startswith("ost_") and summary["api_key"].startswith("osk_")
    with app.app_context():
        db = app.extensions["mongo"].db
        assert db["api_keys"].count_documents({"owner_id": summary["user_id"]}) == 4
        assert db["readings"].count_documents({}) == summary["readings"] > 0
    owner = {"token": summary["token"]}
    devices = client.get("/api/v1/devices", headers=bearer(owner)).get_json()["devices"]
    assert len(devices) == 4 and all(d["owned"] for d in devices)
    device = summary["device"]
    chain = client.get(f"/api/v1/devices/{device['device_id']}/{device['device_name']}").get_json()["chain"]
    assert len(chain) == 2  # two ids per name: one history across a hardware swap
    body = read(client, device["device_id"], device["device_name"], "temp", resolution=60).get_json()
    assert body["total"] >= 20 and sum(item["count"] for item in body["items"]) >= 100
    assert push(client, summary["api_key"], device["device_id"], device["device_name"], {"rh": 50}).status_code == 201


def test_demo_data_runs_again_for_an_existing_owner(runner):
    assert runner.invoke(args=["demo-data", "--devices", "2", "--days", "0"]).exit_code == 0
    result = runner.invoke(args=["demo-data", "--devices", "2", "--days", "0"])
    assert result.exit_code == 0, result.output
    summary = last_json_line(result.output)
    assert summary["token"] is None and summary["devices"] == 0


def test_flask_cli_entry_point_creates_a_user(settings):
    """``flask --app wsgi users create`` as an operator runs it, configured by the environment only."""
    env = {**os.environ}
    for name in ("MONGO_URI", "REDIS_URL", "CELERY_BROKER_URL", "CACHE_KEY_PREFIX", "LOG_LEVEL"):
        env[name] = str(settings[name])
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "users", "create", "operator", "--admin"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    user = last_json_line(result.stdout)
    assert user["name"] == "operator" and user["admin"] is True and user["token"].startswith("ost_")


def test_a_flask_commands_stdout_holds_only_its_result_and_its_logs_go_to_stderr(settings):
    """An operator's script parses the JSON line: a log line after it (the cache warning at exit
    that Redis was unreachable) broke the chaos run's ``users rotate-token``."""
    env = {**os.environ}
    for name in ("MONGO_URI", "REDIS_URL", "CELERY_BROKER_URL", "CACHE_KEY_PREFIX"):
        env[name] = str(settings[name])
    env["LOG_LEVEL"] = "DEBUG"  # pymongo logs every command at this level

    def flask(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", *args],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)  # fmt: skip

    assert flask("users", "create", "operator").returncode == 0
    result = flask("users", "rotate-token", "operator")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert json.loads(line)["token"].startswith("ost_")
    assert "DEBUG" in result.stderr
