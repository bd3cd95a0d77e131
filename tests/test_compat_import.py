"""flask import-opensensor: an opensensor database (built as opensensor writes it) becomes ours.

Checked from outside: after the import every device answers through the HTTP API (v1 and the
legacy reads) with the source's data, and an old device key pushes through ``/environment/``.
Also: the source is only read, a second run adds nothing, a stopped run resumes without
duplicates, ``--dry-run`` writes nothing, and cached lookups of imported pairs are dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from bson import Binary, ObjectId
from pymongo import MongoClient

from app.compat.importer.readings import ReadingsImport
from devstack.opensensor_source import (
    add_readings,
    add_user,
    api_keys_of,
    create_collections,
    snapshot,
    stored_document,
)
from tests.conftest import bearer
from tests.helpers import assert_error, read, stored_readings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = (datetime.now(UTC) - timedelta(hours=6)).replace(second=0, microsecond=0, tzinfo=None)


def at(minutes: int) -> datetime:
    """A naive UTC time (as opensensor's ``datetime.utcnow()``), whole minutes apart so each reading has its bucket."""
    return BASE + timedelta(minutes=minutes)


def iso(minutes: int) -> str:
    return at(minutes).replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def source(mongo_uri, settings):
    """An empty opensensor database beside the test's own, dropped afterwards."""
    name = "src_" + settings["MONGO_URI"].rsplit("/", 1)[1]
    client = MongoClient(mongo_uri, tz_aware=False)
    db = client[name]
    create_collections(db)
    db.uri = f"{mongo_uri}/{name}"  # type: ignore[attr-defined]
    yield db
    with contextlib.suppress(Exception):
        client.drop_database(name)
    client.close()


class World:
    """The awkward cases, and what each device must answer afterwards."""

    def __init__(self, db):
        self.alice = add_user(
            db,
            [
                {"device_id": "dev-1", "device_name": "greenhouse", "description": "first board"},
                {"device_id": "dev-2", "device_name": "greenhouse", "description": "its replacement"},  # a chain
                {"device_id": "lab-1", "device_name": "lab", "private_data": True},
            ],
        )
        self.bob = add_user(
            db,
            [
                {"device_id": "porch-1", "device_name": "porch"},
                {"device_id": "porch-1", "device_name": "porch"},  # a second key of the pair: the newest wins
                {"device_id": "dup-1", "device_name": "shared"},
                {"device_id": "bad id!", "device_name": "nope"},
            ],
        )
        self.carol = add_user(db, [{"device_id": "dup-1", "device_name": "shared"}])  # the pair of two users
        self.dave = add_user(db, [])  # no device at all
        self.keys = {k["device_id"]: k["key"] for k in api_keys_of(db, self.alice)}
        porch = api_keys_of(db, self.bob)
        self.porch_old, self.porch_new = porch[0]["key"], porch[1]["key"]
        docs = [
            # string numbers, °F, moisture as Python's repr of Decimals, liquid as "True", relays/pumps as JSON text
            stored_document(
                "dev-1",
                "greenhouse",
                self.alice,
                at(0),
                {
                    "temp": {"temp": "70.7", "unit": "F"},
                    "rh": {"rh": "55"},
                    "pressure": {"pressure": "1013.2", "unit": "hPa"},
                    "lux": {"lux": "1200"},
                    "co2": {"ppm": "612"},
                    "moisture": {"readings": "[Decimal('0.41'), 0.39]"},
                    "pH": {"pH": "6.1"},
                    "liquid": {"liquid": True},
                    "relays": {"relays": [{"position": 1, "enabled": True, "seconds": 30}]},
                    "pumps": {"pumps": [{"position": 0, "enabled": False, "speed": 0.5, "timestamp": 1.7e9}]},
                },
            ),
            stored_document(
                "dev-1", "greenhouse", self.alice, at(1), {"temp": {"temp": "21"}, "liquid": {"liquid": False}}
            ),
            # the replacement board of the chain; an old document without metadata.user_id
            stored_document(
                "dev-2", "greenhouse", None, at(2), {"temp": {"temp": "22.5", "unit": "C"}, "rh": {"rh": 60}}
            ),
            # unparsable and out-of-range values are dropped, the rest of the document kept
            stored_document("dev-2", "greenhouse", self.alice, at(3), {"temp": {"temp": "23"}, "rh": {"rh": "n/a"}}),
            stored_document("dev-2", "greenhouse", self.alice, at(4), {"temp": {"temp": "24"}, "rh": {"rh": "150"}}),
            stored_document(
                "dev-2", "greenhouse", self.alice, at(5), {"moisture": {"readings": "[oops"}}
            ),  # nothing left
            stored_document("lab-1", "lab", self.alice, at(6), {"pH": {"pH": "5.5"}}),
            stored_document("porch-1", "porch", self.bob, at(7), {"lux": {"lux": "30"}}),
            stored_document("dup-1", "shared", self.bob, at(8), {"temp": {"temp": "10"}}),  # pair of two users
            stored_document("ghost", "nowhere", self.bob, at(9), {"temp": {"temp": "10"}}),  # no key for the pair
        ]
        add_readings(db, docs)
        self.source_readings = len(docs)


@pytest.fixture
def world(source) -> World:
    return World(source)


def run_import(app, source, *args: str):
    result = app.test_cli_runner().invoke(args=["import-opensensor", "--source-uri", source.uri, *args])
    assert result.exit_code == 0, (result.output, result.exception)
    lines = result.stdout.strip().splitlines()
    users = [json.loads(line) for line in lines if line.startswith('{"opensensor_id"')]
    return users, json.loads(lines[-1])


def token_of(users: list[dict], opensensor_id: uuid.UUID) -> dict:
    [user] = [u for u in users if u["opensensor_id"] == str(opensensor_id)]
    return user


def values(client, device_id, name, measurement, headers=None, **params):
    params = {"start": iso(-1), "end": iso(60), "resolution": 1, **params}
    response = read(client, device_id, name, measurement, headers, **params)
    assert response.status_code == 200, response.get_json()
    return [(item["timestamp"], item["value"]) for item in response.get_json()["items"]]


def test_every_imported_device_answers_with_the_source_data(app, client, source, world):
    before = snapshot(source)
    users, report = run_import(app, source)
    assert snapshot(source) == before, "the source is only read"
    assert report["users"] == {"imported": 4}
    assert report["keys"] == {"imported": 4}  # dev-1, dev-2, lab-1, porch-1 (newest key)
    assert report["readings"] == {"imported": 7}
    alice = token_of(users, world.alice)
    assert alice["token"].startswith(f"ost_{alice['user_id']}_") and alice["name"] == f"opensensor-{world.alice}"

    # the chain: both ids, read through either pair
    assert values(client, "dev-1", "greenhouse", "temp") == values(client, "dev-2", "greenhouse", "temp")
    temps = values(client, "dev-2", "greenhouse", "temp")
    assert [t for _, t in temps] == pytest.approx([21.5, 21, 22.5, 23, 24])
    assert [t for t, _ in temps] == [iso(0), iso(1), iso(2), iso(3), iso(4)]
    assert values(client, "dev-1", "greenhouse", "rh") == [(iso(0), 55), (iso(2), 60)]  # "n/a" and 150 dropped
    assert values(client, "dev-1", "greenhouse", "pressure") == [(iso(0), 1013.2)]
    assert values(client, "dev-1", "greenhouse", "lux") == [(iso(0), 1200)]
    assert values(client, "dev-1", "greenhouse", "co2") == [(iso(0), 612)]
    assert values(client, "dev-1", "greenhouse", "ph") == [(iso(0), 6.1)]
    assert values(client, "dev-1", "greenhouse", "moisture") == [(iso(0), [0.41, 0.39])]
    assert values(client, "dev-1", "greenhouse", "liquid") == [(iso(0), True), (iso(1), False)]
    assert values(client, "dev-1", "greenhouse", "relays") == [
        (iso(0), [{"position": 1, "enabled": True, "seconds": 30}])
    ]
    assert values(client, "dev-1", "greenhouse", "pumps") == [
        (iso(0), [{"position": 0, "enabled": False, "speed": 0.5}])
    ]
    # the legacy reads of the same device give the same numbers under opensensor's names
    legacy = client.get(f"/CO2/dev-1%7Cgreenhouse?start_date={iso(-1)}&end_date={iso(60)}&resolution=1").get_json()
    assert legacy == {"items": [{"timestamp": iso(0), "ppm": 612}], "total": 1, "page": 1, "size": 50, "pages": 1}
    # private stays private: anonymous 401, the owner's new token reads it
    assert_error(read(client, "lab-1", "lab", "ph"), 401, "auth_required")
    assert values(client, "lab-1", "lab", "ph", headers=bearer(alice)) == [(iso(6), 5.5)]
    assert values(client, "porch-1", "porch", "lux") == [(iso(7), 30)]
    # what could not be imported
    assert_error(read(client, "dup-1", "shared", "temp"), 404, "not_found")
    assert report["skipped"]["keys: dup-1|shared is owned by 2 opensensor users"] == 2
    assert report["skipped"]["readings: pair owned by 2 opensensor users"] == 1
    assert report["skipped"]["readings: no opensensor key for the pair"] == 1
    assert report["skipped"]["readings: no usable measurement"] == 1
    assert report["skipped"]["keys: an older key of a pair (the newest is kept)"] == 1
    assert any(reason.startswith("keys: bad id!|nope") for reason in report["skipped"])
    assert report["dropped_values"] == {
        "rh: must be a number": 1,
        "rh: must be between 0 and 100": 1,
        "unparsable moisture_readings: not a list of numbers": 1,
    }


def test_imported_keys_are_hashed_keep_their_flags_and_push_through_environment(app, client, source, world):
    run_import(app, source)
    with app.app_context():
        keys = {k["device_id"]: k for k in app.extensions["mongo"].db["api_keys"].find({}, {"_id": 0})}
    assert world.keys["dev-1"] not in repr(keys)
    assert keys["lab-1"]["private"] is True and keys["dev-1"]["private"] is False
    assert keys["dev-1"]["description"] == "first board"
    body = {
        "device_metadata": {"device_id": "dev-1", "name": "greenhouse", "api_key": world.keys["dev-1"]},
        "rh": {"rh": 44},
    }
    response = client.post("/environment/", json=body)
    assert response.status_code == 201 and response.data == b""
    assert values(client, "dev-1", "greenhouse", "rh", start=iso(0), end=iso(24 * 60))[-1][1] == 44
    # the same key reads its device with X-API-Key, as opensensor allowed
    assert client.get("/api/v1/devices/lab-1/lab", headers={"X-API-Key": world.keys["lab-1"]}).status_code == 200
    # of the pair's two keys, the newest works and the older one no longer does
    porch = {"device_id": "porch-1", "name": "porch"}
    assert (
        client.post("/environment", json={"device_metadata": {**porch, "api_key": world.porch_new}}).status_code == 201
    )
    old = client.post("/environment", json={"device_metadata": {**porch, "api_key": world.porch_old}})
    assert_error(old, 403, "forbidden")


def test_a_device_is_private_when_any_key_of_its_chain_is(app, client, source):
    """opensensor's read check (users.py ``device_id_is_allowed_for_user``) refused everyone but the
    owner as soon as one of the owner's keys under the device's name was ``private_data``."""
    add_user(
        source,
        [
            {"device_id": "a-1", "device_name": "mixed"},
            {"device_id": "a-2", "device_name": "mixed", "private_data": True},  # the chain has a private key
            {"device_id": "b-1", "device_name": "renewed", "private_data": True},
            {"device_id": "b-1", "device_name": "renewed"},  # the newest key of the pair is public
            {"device_id": "c-1", "device_name": "open"},
            {"device_id": "c-2", "device_name": "open"},
        ],
    )
    add_user(source, [{"device_id": "y-1", "device_name": "mixed"}])  # another owner's chain of that name
    run_import(app, source)
    for device_id, name in (("a-1", "mixed"), ("a-2", "mixed"), ("b-1", "renewed")):
        assert_error(read(client, device_id, name, "rh"), 401, "auth_required")
    for device_id, name in (("c-1", "open"), ("c-2", "open"), ("y-1", "mixed")):
        assert read(client, device_id, name, "rh").status_code == 200
    listed = {(d["device_id"], d["public"]) for d in client.get("/api/v1/devices").get_json()["devices"]}
    assert listed == {("c-1", True), ("c-2", True), ("y-1", True)}


def test_a_second_run_adds_nothing(app, source, world):
    run_import(app, source)
    before = stored_readings(app)
    users, report = run_import(app, source)
    assert users == []
    assert report["users"] == {"existing": 4} and report["keys"] == {"existing": 4}
    assert report["readings"] == {"imported": 0}
    assert len(stored_readings(app)) == len(before) == 7


def test_readings_stored_in_opensensor_after_a_run_come_with_the_next_one(app, client, source, world):
    run_import(app, source)
    add_readings(source, [stored_document("dev-1", "greenhouse", world.alice, at(30), {"temp": {"temp": "19"}})])
    _, report = run_import(app, source)
    assert report["readings"] == {"imported": 1}
    assert values(client, "dev-1", "greenhouse", "temp")[-1] == (iso(30), 19)


def test_dry_run_writes_nothing_and_reports_what_a_run_would_do(app, source, world):
    _, dry = run_import(app, source, "--dry-run")
    with app.app_context():
        db = app.extensions["mongo"].db
        assert [db[name].count_documents({}) for name in ("users", "api_keys", "readings", "imports")] == [0, 0, 0, 0]
    _, real = run_import(app, source)
    assert dry["dry_run"] is True and real["dry_run"] is False
    same = {"users", "keys", "readings", "skipped", "dropped_values"}
    assert {k: v for k, v in dry.items() if k in same} == {k: v for k, v in real.items() if k in same}


def test_a_run_stopped_between_a_write_and_its_checkpoint_resumes_without_duplicates(app, source, world, monkeypatch):
    real_mark_done = ReadingsImport._mark_done
    calls = []

    def die_before_the_third_checkpoint(self, checkpoint_id, last, imported):
        calls.append(imported)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the batch reached MongoDB, its checkpoint did not
        return real_mark_done(self, checkpoint_id, last, imported)

    monkeypatch.setattr(ReadingsImport, "_mark_done", die_before_the_third_checkpoint)
    result = app.test_cli_runner().invoke(args=["import-opensensor", "--source-uri", source.uri, "--batch-size", "2"])
    assert result.exit_code != 0
    monkeypatch.setattr(ReadingsImport, "_mark_done", real_mark_done)
    partial = len(stored_readings(app))
    assert 0 < partial < 7
    _, report = run_import(app, source, "--batch-size", "2")
    stored = stored_readings(app)
    assert len(stored) == 7, "nothing lost, nothing twice"
    assert len({doc["opensensor_id"] for doc in stored}) == 7
    assert report["readings"] == {"imported": 7 - partial}


def test_a_killed_import_process_resumes_where_it_stopped(app, settings, source):
    """SIGKILL at some point of a real run (wherever it lands, the second run completes it exactly)."""
    owner = add_user(source, [{"device_id": "k-1", "device_name": "kill"}])
    docs = [
        stored_document("k-1", "kill", owner, at(i % 300) + timedelta(seconds=i // 300), {"rh": {"rh": i % 100}})
        for i in range(6000)
    ]
    add_readings(source, docs)
    env = {**os.environ, **{k: str(v) for k, v in settings.items() if k != "TESTING"}}
    args = [
        sys.executable,
        "-m",
        "flask",
        "--app",
        "wsgi",
        "import-opensensor",
        "--source-uri",
        source.uri,
        "--batch-size",
        "200",
    ]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with app.app_context():
        checkpoints = app.extensions["mongo"].db["imports"]
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if checkpoints.find_one({"done_through": {"$exists": True}}):
                break
            time.sleep(0.02)
    proc.kill()
    proc.wait(10)
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    stored = stored_readings(app)
    assert len(stored) == 6000
    assert len({doc["opensensor_id"] for doc in stored}) == 6000


def test_a_key_renewed_in_opensensor_after_an_import_replaces_the_imported_one(app, client, source, world):
    run_import(app, source)
    renewed = "R" * 43 + "="
    keys = api_keys_of(source, world.alice)
    keys[0]["key"] = renewed  # dev-1|greenhouse: its owner made a new key in opensensor
    source["Users"].update_one({"_id": Binary.from_uuid(world.alice)}, {"$set": {"api_keys": keys}})
    _, report = run_import(app, source)
    assert report["keys"] == {"existing": 3, "replaced": 1}
    body = {"device_metadata": {"device_id": "dev-1", "name": "greenhouse", "api_key": renewed}, "rh": {"rh": 1}}
    assert client.post("/environment/", json=body).status_code == 201
    old = {**body, "device_metadata": {**body["device_metadata"], "api_key": world.keys["dev-1"]}}
    assert_error(client.post("/environment/", json=old), 403, "forbidden")


def test_rescan_imports_old_readings_of_a_pair_resolved_since_and_nothing_twice(app, client, source):
    mine = add_user(source, [{"device_id": "a-1", "device_name": "room"}, {"device_id": "d-1", "device_name": "both"}])
    theirs = add_user(source, [{"device_id": "d-1", "device_name": "both"}])
    hour_ago = int(time.time()) - 3600
    docs = [
        stored_document("a-1", "room", mine, at(0), {"rh": {"rh": 1}}),
        stored_document("d-1", "both", mine, at(1), {"rh": {"rh": 2}}),
    ]
    for i, doc in enumerate(docs):  # stored an hour ago: far behind any checkpoint's margin
        doc["_id"] = ObjectId(struct.pack(">I", hour_ago) + bytes(7) + bytes([i]))
    add_readings(source, docs)
    add_readings(source, [stored_document("a-1", "room", mine, at(2), {"rh": {"rh": 3}})])
    _, first = run_import(app, source)
    assert first["readings"] == {"imported": 2}
    source["Users"].update_one({"_id": Binary.from_uuid(theirs)}, {"$set": {"api_keys": []}})  # the operator decides
    _, again = run_import(app, source)
    assert again["readings"] == {"imported": 0}  # the old reading is behind the checkpoint
    _, rescan = run_import(app, source, "--rescan")
    assert rescan["readings"] == {"imported": 1}
    assert values(client, "d-1", "both", "rh") == [(iso(1), 2)]
    assert len(stored_readings(app)) == 3


def test_import_drops_cached_lookups_of_the_pairs_it_imports(app, client, source, world):
    assert_error(client.get("/api/v1/devices/dev-1/greenhouse"), 404, "not_found")  # now cached as unknown
    run_import(app, source)
    assert client.get("/api/v1/devices/dev-1/greenhouse").get_json()["chain"] == ["dev-1", "dev-2"]


def test_a_pair_registered_here_already_is_left_to_its_owner(app, client, source, world, owner):
    client.post("/api/v1/api-keys", json={"device_id": "porch-1", "device_name": "porch"}, headers=bearer(owner))
    _, report = run_import(app, source)
    assert report["skipped"]["keys: porch-1|porch is registered here already"] == 1
    assert report["skipped"]["readings: pair registered here already"] == 1
    assert client.get("/api/v1/devices/porch-1/porch").get_json()["chain"] == ["porch-1"]
    assert values(client, "porch-1", "porch", "lux") == []


def test_a_second_import_of_the_same_source_waits_for_the_first(app, source, world):
    with app.app_context():
        app.extensions["mongo"].db["imports"].insert_one(
            {"_id": f"lease:opensensor:{source.uri.split('//')[1].split('/')[0]}/{source.name}",
             "owner": "elsewhere:1:x", "until": datetime.now(UTC) + timedelta(minutes=1)}
        )  # fmt: skip
    result = app.test_cli_runner().invoke(args=["import-opensensor", "--source-uri", source.uri])
    assert result.exit_code == 1
    assert "another import of this source is running (elsewhere:1:x)" in result.output
    assert stored_readings(app) == []


def test_a_bad_source_uri_is_a_usage_error(app):
    result = app.test_cli_runner().invoke(args=["import-opensensor", "--source-uri", "http://x/db"])
    assert result.exit_code == 2 and "not a valid MongoDB URI" in result.output


@pytest.mark.parametrize("path", ["", "/"])
def test_a_source_uri_without_a_database_reads_opensensors_default(app, client, own_mongo, path):
    """opensensor ignores its URI's path and keeps everything in ``default`` (opensensor/db.py)."""
    server = MongoClient(own_mongo.uri, tz_aware=False)
    default = server["default"]
    create_collections(default)
    owner = add_user(default, [{"device_id": "d-1", "device_name": "room"}])
    add_readings(default, [stored_document("d-1", "room", owner, at(0), {"rh": {"rh": "41"}})])
    server["opensensor"]["Users"].insert_one({"_id": "someone else's", "api_keys": []})  # not read
    server.close()
    _, report = run_import(app, default_source(own_mongo.uri + path))
    assert report["users"] == {"imported": 1} and report["readings"] == {"imported": 1}
    assert values(client, "d-1", "room", "rh") == [(iso(0), 41)]
    with app.app_context():
        checkpoint = app.extensions["mongo"].db["imports"].find_one({"_id": {"$regex": "/FreeTier$"}})
    assert checkpoint["_id"] == f"opensensor:127.0.0.1:{own_mongo.port}/default/FreeTier"


def default_source(uri: str) -> SimpleNamespace:
    """What ``run_import`` needs of a source: its URI."""
    return SimpleNamespace(uri=uri)


@pytest.mark.parametrize("collection", [None, "FreeTier"])
def test_a_source_without_opensensor_documents_is_a_one_line_error_naming_the_database(app, source, collection):
    if collection is None:  # a database that does not exist at all
        source = default_source(source.uri + "_missing")
    result = app.test_cli_runner().invoke(args=["import-opensensor", "--source-uri", source.uri, "--dry-run"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    [line] = result.output.strip().splitlines()
    name = source.uri.rsplit("/", 1)[1]
    assert line.startswith(f"Error: the database '{name}' (127.0.0.1:") and "holds no opensensor data" in line
    assert "no Users or FreeTier documents" in line and "Traceback" not in result.output
    with app.app_context():
        db = app.extensions["mongo"].db
        assert [db[name].count_documents({}) for name in ("users", "api_keys", "readings", "imports")] == [0, 0, 0, 0]
