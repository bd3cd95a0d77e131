"""POST /api/v1/readings: device-key auth, validation, server timestamps, what is stored."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import register
from tests.helpers import READINGS_URL, assert_error, key_header, push, read, stored_readings

ALL_READINGS = {
    "temp": 21.5,
    "rh": 55,
    "pressure": 1013.2,
    "pressure_unit": "hPa",
    "lux": 1200,
    "co2": 640,
    "ph": 6.5,
    "moisture": [41.5, 38],
    "liquid": True,
    "relays": [
        {"position": 1, "enabled": True, "seconds": 30, "description": "fan"},
        {"position": 2, "enabled": False},
    ],
    "pumps": [{"position": 0, "enabled": True, "speed": 0.5, "duration": 12.5, "description": "drip"}],
}


@pytest.fixture
def key(client, owner) -> dict:
    return register(client, owner, "dev-1", "greenhouse")


def test_push_stamps_server_time_and_lists_what_was_stored(app, client, key):
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    response = push(client, key, "dev-1", "greenhouse", {"temp": 21.5, "rh": 55})
    after = datetime.now(UTC) + timedelta(milliseconds=1)
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"device_id", "device_name", "timestamp", "stored"}
    assert (body["device_id"], body["device_name"]) == ("dev-1", "greenhouse")
    assert body["stored"] == ["temp", "rh"]
    assert body["timestamp"].endswith("Z")
    stamp = datetime.fromisoformat(body["timestamp"].replace("Z", "+00:00"))
    assert before <= stamp <= after
    [doc] = stored_readings(app)
    assert doc["timestamp"] == stamp
    assert doc["meta"] == {"device_id": "dev-1", "device_name": "greenhouse", "owner_id": key_owner(app, key)}


def key_owner(app, key: dict) -> str:
    with app.app_context():
        return app.extensions["mongo"].db["api_keys"].find_one({"key_id": key["key_id"]})["owner_id"]


def test_push_of_every_measurement_stores_all_of_them_but_lists_no_units(app, client, key):
    response = push(client, key, "dev-1", "greenhouse", ALL_READINGS)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["stored"] == [
        "temp",
        "rh",
        "pressure",
        "lux",
        "co2",
        "ph",
        "moisture",
        "liquid",
        "relays",
        "pumps",
    ]
    [doc] = stored_readings(app)
    for name, value in ALL_READINGS.items():
        assert doc[name] == value


def test_client_supplied_timestamp_is_rejected_as_unknown_field(client, key):
    response = push(client, key, "dev-1", "greenhouse", {"temp": 1}, timestamp="2020-01-01T00:00:00Z")
    assert_error(response, 400, "validation_error")


@pytest.mark.parametrize(
    ("unit", "value", "celsius"),
    [("C", 20.0, 20.0), ("F", 68.0, 20.0), ("K", 293.15, 20.0), ("F", -40, -40.0), ("K", 0, -273.15)],
)
def test_temp_is_stored_in_celsius(app, client, key, unit, value, celsius):
    response = push(client, key, "dev-1", "greenhouse", {"temp": value, "temp_unit": unit})
    assert response.status_code == 201 and response.get_json()["stored"] == ["temp"]
    [doc] = stored_readings(app)
    assert doc["temp"] == pytest.approx(celsius)
    assert "temp_unit" not in doc


def test_push_without_header_is_auth_required(app, client, key):
    assert_error(push(client, None, "dev-1", "greenhouse", {"temp": 1}), 401, "auth_required")
    assert stored_readings(app) == []


@pytest.mark.parametrize(
    "api_key",
    ["osk_0123456789abcdef_" + "a" * 43, "not-a-key", "", "ost_0123456789abcdef_" + "a" * 43],
    ids=["unknown", "malformed", "empty", "bearer-shaped"],
)
def test_push_with_unknown_key_is_invalid_credentials(app, client, key, api_key):
    assert_error(push(client, api_key, "dev-1", "greenhouse", {"temp": 1}), 401, "invalid_credentials")
    assert stored_readings(app) == []


def test_forged_key_with_a_real_key_id_is_invalid_credentials(client, key):
    forged = key["api_key"][:-4] + ("AAAA" if not key["api_key"].endswith("AAAA") else "BBBB")
    assert_error(push(client, forged, "dev-1", "greenhouse", {"temp": 1}), 401, "invalid_credentials")


def test_key_of_another_pair_gets_device_mismatch(app, client, owner, other, key):
    register(client, owner, "dev-2", "greenhouse")
    register(client, other, "dev-9", "shed")
    for device_id, device_name in [("dev-2", "greenhouse"), ("dev-9", "shed"), ("dev-1", "shed"), ("nope", "x")]:
        response = push(client, key, device_id, device_name, {"temp": 1})
        assert_error(response, 403, "device_mismatch")
    assert stored_readings(app) == []


def test_push_accepts_a_key_with_surrounding_whitespace(client, key):
    response = push(client, f"  {key['api_key']} ", "dev-1", "greenhouse", {"rh": 1})
    assert response.status_code == 201


REL = [{"position": 1, "enabled": True}]
BAD_READINGS = [
    ({}, "no measurement"),
    ({"temp_unit": "C"}, "unit only"),
    ({"temp": "21"}, "temp string"),
    ({"temp": True}, "temp bool"),
    ({"temp": None}, "temp null"),
    ({"temp": 20, "temp_unit": "R"}, "bad temp unit"),
    ({"temp": 20, "temp_unit": "c"}, "lowercase temp unit"),
    ({"rh": 10, "temp_unit": "C"}, "temp unit without temp"),
    ({"temp": -300}, "below absolute zero C"),
    ({"temp": -1, "temp_unit": "K"}, "below absolute zero K"),
    ({"rh": -0.1}, "rh negative"),
    ({"rh": 100.1}, "rh over 100"),
    ({"pressure": -1}, "pressure negative"),
    ({"pressure": 1000, "pressure_unit": ""}, "empty pressure unit"),
    ({"pressure": 1000, "pressure_unit": 5}, "numeric pressure unit"),
    ({"rh": 10, "pressure_unit": "hPa"}, "pressure unit without pressure"),
    ({"lux": -5}, "lux negative"),
    ({"co2": -5}, "co2 negative"),
    ({"co2": 10**20}, "co2 beyond int64"),
    ({"temp": 1e16}, "temp beyond 1e15"),
    ({"lux": 10**16}, "lux beyond 1e15"),
    ({"moisture": [1e300]}, "moisture beyond 1e15"),
    ({"pumps": [{"position": 1, "enabled": True, "speed": 1e300}]}, "pump speed beyond 1e15"),
    ({"ph": 14.5}, "ph over 14"),
    ({"ph": -1}, "ph negative"),
    ({"moisture": 40}, "moisture scalar"),
    ({"moisture": []}, "moisture empty"),
    ({"moisture": [40, "x"]}, "moisture string item"),
    ({"moisture": [True]}, "moisture bool item"),
    ({"moisture": [1] * 65}, "moisture too long"),
    ({"liquid": 1}, "liquid int"),
    ({"liquid": "true"}, "liquid string"),
    ({"relays": {"position": 1, "enabled": True}}, "relays object"),
    ({"relays": [1]}, "relay not object"),
    ({"relays": [{"enabled": True}]}, "relay without position"),
    ({"relays": [{"position": 1}]}, "relay without enabled"),
    ({"relays": [{"position": -1, "enabled": True}]}, "relay negative position"),
    ({"relays": [{"position": 1.5, "enabled": True}]}, "relay float position"),
    ({"relays": [{"position": 2**70, "enabled": True}]}, "relay huge position"),
    ({"relays": [{"position": 1, "enabled": "on"}]}, "relay enabled string"),
    ({"relays": [{"position": 1, "enabled": True, "seconds": -3}]}, "relay negative seconds"),
    ({"relays": [{"position": 1, "enabled": True, "description": 3}]}, "relay description number"),
    ({"relays": [{"position": 1, "enabled": True, "speed": 1}]}, "relay unknown field"),
    ({"relays": REL * 65}, "too many relays"),
    ({"pumps": [{"position": 1, "enabled": True, "speed": -1}]}, "pump negative speed"),
    ({"pumps": [{"position": 1, "enabled": True, "duration": "5"}]}, "pump duration string"),
    ({"pumps": [{"position": 1, "enabled": True, "seconds": 5}]}, "pump unknown field"),
    ({"pumps": [{"position": 1}]}, "pump without enabled"),
    ({"temp": 20, "humidity": 5}, "unknown measurement"),
    ([{"temp": 20}], "readings list"),
    ("temp=20", "readings string"),
]


@pytest.mark.parametrize("readings", [case[0] for case in BAD_READINGS], ids=[case[1] for case in BAD_READINGS])
def test_bad_readings_are_validation_errors_and_store_nothing(app, client, key, readings):
    assert_error(push(client, key, "dev-1", "greenhouse", readings), 400, "validation_error")
    assert stored_readings(app) == []


def test_non_finite_numbers_are_validation_errors(app, client, key):
    for literal in ("NaN", "Infinity", "-Infinity"):
        data = '{"device_id": "dev-1", "device_name": "greenhouse", "readings": {"temp": LITERAL}}'
        data = data.replace("LITERAL", literal)
        response = client.post(READINGS_URL, data=data, content_type="application/json", headers=key_header(key))
        assert_error(response, 400, "validation_error")
    assert stored_readings(app) == []


@pytest.mark.parametrize(
    "body",
    [
        {"device_id": "dev-1", "device_name": "greenhouse"},
        {"device_id": "dev-1", "device_name": "greenhouse", "readings": {"temp": 1}, "extra": 1},
        {"device_id": "dev-1", "device_name": "greenhouse", "readings": None},
    ],
    ids=["no readings", "unknown top-level field", "null readings"],
)
def test_bad_push_bodies_are_validation_errors(client, key, body):
    assert_error(client.post(READINGS_URL, json=body, headers=key_header(key)), 400, "validation_error")


@pytest.mark.parametrize(
    "body",
    [{"device_name": "greenhouse", "readings": {"temp": 1}}, {"device_id": 5, "device_name": "g", "readings": {}}],
    ids=["no device_id", "numeric device_id"],
)
def test_genuine_key_with_a_malformed_pair_is_a_validation_error(client, key, body):
    assert_error(client.post(READINGS_URL, json=body, headers=key_header(key)), 400, "validation_error")


def test_push_body_over_64_kib_is_413_and_stores_nothing(app, client, key):
    body = {"device_id": "dev-1", "device_name": "greenhouse", "readings": {"temp": 1}, "pad": "x" * 70_000}
    response = client.post(
        READINGS_URL, data=json.dumps(body), content_type="application/json", headers=key_header(key)
    )
    assert_error(response, 413, "payload_too_large")
    assert stored_readings(app) == []


def test_push_body_just_under_64_kib_is_read(client, key):
    body = {"device_id": "dev-1", "device_name": "greenhouse", "readings": {"temp": 1}}
    data = json.dumps(body)
    data = data[:-1] + " " * (64 * 1024 - len(data)) + "}"
    assert len(data) == 64 * 1024
    response = client.post(READINGS_URL, data=data, content_type="application/json", headers=key_header(key))
    assert response.status_code == 201


def test_push_with_a_non_json_content_type_is_415(app, client, key):
    body = json.dumps({"device_id": "dev-1", "device_name": "greenhouse", "readings": {"temp": 1}})
    response = client.post(READINGS_URL, data=body, content_type="text/plain", headers=key_header(key))
    assert_error(response, 415, "unsupported_media_type")
    assert stored_readings(app) == []


def test_push_with_malformed_json_is_400(client, key):
    response = client.post(
        READINGS_URL, data='{"device_id": ', content_type="application/json", headers=key_header(key)
    )
    assert_error(response, 400, "validation_error")


def test_pushed_readings_come_back_on_read(client, key):
    assert push(client, key, "dev-1", "greenhouse", ALL_READINGS).status_code == 201
    measurements = [name for name in ALL_READINGS if not name.endswith("_unit")]
    values = {m: read(client, "dev-1", "greenhouse", m).get_json()["items"][0]["value"] for m in measurements}
    assert values["temp"] == 21.5 and values["rh"] == 55 and values["co2"] == 640
    assert values["moisture"] == [41.5, 38] and values["liquid"] is True
    assert values["relays"] == ALL_READINGS["relays"] and values["pumps"] == ALL_READINGS["pumps"]
