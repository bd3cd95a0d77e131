"""opensensor's device protocol and legacy reads, served by the v1 lookup, rules and storage."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import bearer, create_user, register
from tests.helpers import assert_error, insert_readings, push, read, stored_readings

ALL_BLOCKS = {
    "temp": {"temp": "70.7", "unit": "F", "timestamp": "2001-01-01T00:00:00"},
    "rh": {"rh": 55},
    "pressure": {"pressure": 1013.2, "unit": "hPa"},
    "lux": {"lux": "1200"},
    "co2": {"ppm": 612},
    "moisture": {"readings": "[Decimal('0.41'), 0.39]"},
    "pH": {"pH": 6.5},
    "liquid": {"liquid": "true"},
    "relays": {"relays": [{"position": 1, "enabled": True, "seconds": None, "description": "fan", "extra": 1}]},
    "pumps": {"pumps": [{"position": 0, "enabled": False, "speed": 0.5, "duration": None, "timestamp": 1.7e9}]},
}
# What POST /api/v1/readings is sent for the same measurements.
SAME_IN_V1 = {
    "temp": 70.7,
    "temp_unit": "F",
    "rh": 55,
    "pressure": 1013.2,
    "pressure_unit": "hPa",
    "lux": 1200,
    "co2": 612,
    "moisture": [0.41, 0.39],
    "ph": 6.5,
    "liquid": True,
    "relays": [{"position": 1, "enabled": True, "description": "fan"}],
    "pumps": [{"position": 0, "enabled": False, "speed": 0.5}],
}


@pytest.fixture
def key(client, owner) -> dict:
    return register(client, owner, "dev-1", "green house")


def environment(key: dict | str | None, device_id="dev-1", name="green house", **blocks) -> dict:
    metadata = {"device_id": device_id, "name": name}
    if key is not None:
        metadata["api_key"] = key if isinstance(key, str) else key["api_key"]
    return {"device_metadata": metadata, **blocks}


@pytest.mark.parametrize("path", ["/environment/", "/environment"])
def test_environment_push_is_201_with_an_empty_body_on_both_paths(client, key, path):
    response = client.post(path, json=environment(key, rh={"rh": 40}))
    assert response.status_code == 201
    assert response.data == b"" and "Content-Type" not in response.headers and "Location" not in response.headers


def test_environment_push_stores_exactly_what_a_v1_push_stores(app, client, owner, key):
    other = register(client, owner, "dev-2", "green house")
    assert client.post("/environment/", json=environment(key, **ALL_BLOCKS)).status_code == 201
    assert push(client, other, "dev-2", "green house", SAME_IN_V1).status_code == 201
    compat, v1 = sorted(stored_readings(app), key=lambda doc: doc["meta"]["device_id"])
    assert compat["meta"] == {**v1["meta"], "device_id": "dev-1"}
    drop = {"_id", "timestamp", "meta"}
    assert {k: v for k, v in compat.items() if k not in drop} == {k: v for k, v in v1.items() if k not in drop}
    assert compat["temp"] == pytest.approx(21.5)  # °F converted, as v1 does


def test_environment_push_shows_up_in_v1_reads_at_once(client, key):
    client.post("/environment/", json=environment(key, co2={"ppm": "640"}))
    items = read(client, "dev-1", "green house", "co2").get_json()["items"]
    assert [item["value"] for item in items] == [640]


def test_environment_push_goes_through_the_cached_device_lookup(app, client, key, raw):
    client.post("/environment/", json=environment(key, rh={"rh": 40}))
    assert raw.exists(app.config["CACHE_KEY_PREFIX"] + "device:dev-1|green house")


def test_environment_push_without_content_type_is_read_as_json(client, key):
    response = client.post("/environment/", data=json.dumps(environment(key, rh={"rh": 40})))
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("api_key", "status", "code"),
    [
        (None, 400, "validation_error"),
        ("", 400, "validation_error"),
        ("A" * 44, 403, "forbidden"),  # unknown key
        ("not a key at all", 403, "forbidden"),
    ],
    ids=["missing", "empty", "unknown", "malformed"],
)
def test_environment_push_key_errors_store_nothing(app, client, key, api_key, status, code):
    body = environment(None, rh={"rh": 40})
    if api_key is not None:
        body["device_metadata"]["api_key"] = api_key
    assert_error(client.post("/environment/", json=body), status, code)
    assert stored_readings(app) == []


def test_environment_push_with_another_pairs_key_is_403(app, client, owner, key):
    register(client, owner, "dev-9", "attic")
    response = client.post("/environment/", json=environment(key, device_id="dev-9", name="attic", rh={"rh": 1}))
    assert_error(response, 403, "device_mismatch")
    response = client.post("/environment/", json=environment(key, name=None, rh={"rh": 1}))
    assert_error(response, 403, "device_mismatch")
    assert stored_readings(app) == []


@pytest.mark.parametrize(
    ("blocks", "field"),
    [
        ({"rh": {"rh": 150}}, "rh.rh"),
        ({"temp": {"temp": "warm"}}, "temp.temp"),
        ({"temp": {"temp": 20, "unit": "R"}}, "temp.unit"),
        ({"co2": {"unit": "ppm"}}, "co2.ppm"),
        ({"pH": 7}, "pH"),
        ({"moisture": {"readings": "[0.4, eval('1')]"}}, "moisture.readings"),
        ({"liquid": {"liquid": "maybe"}}, "liquid.liquid"),
        ({"relays": {"relays": [{"enabled": True}]}}, "relays.relays[0].position"),
        ({"pumps": {"pumps": [{"position": 1, "enabled": True, "speed": -1}]}}, "pumps.pumps[0].speed"),
        ({"rh": {"rh": 40}, "lux": {"lux": -1}}, "lux.lux"),
    ],
)
def test_environment_schema_errors_are_422_naming_opensensors_field_and_store_nothing(app, client, key, blocks, field):
    error = assert_error(client.post("/environment/", json=environment(key, **blocks)), 422, "validation_error")
    assert error["details"]["field"] == field
    assert stored_readings(app) == []


@pytest.mark.parametrize(
    "body",
    [{"rh": {"rh": 1}}, {"device_metadata": "dev-1"}, {"device_metadata": {"name": "x", "api_key": "k"}}, [1]],
    ids=["no metadata", "metadata not an object", "no device_id", "not an object"],
)
def test_environment_body_without_usable_metadata_is_422(client, key, body):
    assert_error(client.post("/environment/", json=body), 422, "validation_error")


def test_environment_body_that_is_not_json_is_422_and_another_media_type_415(client, key):
    response = client.post("/environment/", data="{", content_type="application/json")
    assert_error(response, 422, "validation_error")
    response = client.post("/environment/", data="a=b", content_type="application/x-www-form-urlencoded")
    assert_error(response, 415, "unsupported_media_type")


def test_environment_push_without_measurements_stores_nothing_and_succeeds(app, client, key):
    assert client.post("/environment/", json=environment(key)).status_code == 201
    assert client.post("/environment/", json=environment(key, temp=None, voltage={"v": 3})).status_code == 201
    assert client.post("/environment/", json=environment(key, moisture={"readings": []})).status_code == 201
    assert stored_readings(app) == []


def test_environment_push_with_a_numeric_device_id_is_read_as_text(client, owner):
    key = register(client, owner, "1234", "shed")
    assert (
        client.post("/environment/", json=environment(key, device_id=1234, name="shed", rh={"rh": 1})).status_code
        == 201
    )


# -- legacy reads -------------------------------------------------------------------------

NOW = datetime.now(UTC).replace(second=0, microsecond=0)
LEGACY = {
    # type: (what is stored, what the item carries)
    "temp": ({"temp": 20.0}, {"temp": 68.0, "unit": "F"}),
    "humidity": ({"rh": 50}, {"rh": 50}),
    "CO2": ({"co2": 600}, {"ppm": 600}),
    "moisture": ({"moisture": [0.4, 0.3]}, {"readings": [0.4, 0.3]}),
    "pH": ({"ph": 6.5}, {"pH": 6.5}),
    "pressure": ({"pressure": 1000}, {"pressure": 1000}),
    "lux": ({"lux": 300}, {"lux": 300}),
    "liquid": ({"liquid": True}, {"liquid": True}),
    "relays": ({"relays": [{"position": 1, "enabled": True}]}, {"relays": [{"position": 1, "enabled": True}]}),
    "pumps": ({"pumps": [{"position": 2, "enabled": False}]}, {"pumps": [{"position": 2, "enabled": False}]}),
}


@pytest.fixture
def stored(app, client, owner):
    key = register(client, owner, "dev-1", "green house")
    owner_id = owner["user_id"]
    rows = [(NOW - timedelta(minutes=10), values) for values, _ in LEGACY.values()]
    insert_readings(app, "dev-1", "green house", owner_id, rows)
    return key


def legacy(client, kind: str, pair: str = "dev-1%7Cgreen%20house", headers=None, **params):
    return client.get(f"/{kind}/{pair}", query_string=params, headers=headers or {})


@pytest.mark.parametrize("kind", sorted(LEGACY))
def test_legacy_read_answers_items_with_opensensors_field_names(client, stored, kind):
    response = legacy(client, kind, unit="F", resolution=60)
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["items", "total", "page", "size", "pages"]
    [item] = body["items"]
    assert set(item) == {"timestamp", *LEGACY[kind][1]}
    assert {k: v for k, v in item.items() if k != "timestamp"} == LEGACY[kind][1]
    assert (body["total"], body["page"], body["size"], body["pages"]) == (1, 1, 50, 1)


def test_legacy_vpd_is_derived_from_temp_and_humidity(client, stored):
    [item] = legacy(client, "VPD").get_json()["items"]
    assert set(item) == {"timestamp", "vpd"} and item["vpd"] == pytest.approx(1.1693, abs=1e-3)


def test_legacy_read_pages_carry_the_real_total_and_page_count(app, client, owner):
    register(client, owner, "dev-1", "room")
    owner_id = owner["user_id"]
    insert_readings(app, "dev-1", "room", owner_id, [(NOW - timedelta(minutes=i), {"rh": i}) for i in range(1, 8)])
    body = legacy(client, "humidity", "dev-1|room", resolution=1, size=3, page=3).get_json()
    assert (body["total"], body["pages"], len(body["items"])) == (7, 3, 1)
    assert type(body["items"][0]["rh"]) in (int, float)  # a JSON number, never text


def test_legacy_read_window_defaults_to_the_last_100_days(app, client, owner):
    register(client, owner, "dev-1", "room")
    owner_id = owner["user_id"]
    rows = [(NOW - timedelta(days=99), {"rh": 1}), (NOW - timedelta(days=101), {"rh": 2})]
    insert_readings(app, "dev-1", "room", owner_id, rows)
    assert [item["rh"] for item in legacy(client, "humidity", "dev-1|room").get_json()["items"]] == [1]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"resolution": 0}, "resolution"),
        ({"resolution": 10081}, "resolution"),
        ({"resolution": "x"}, "resolution"),
        ({"page": 0}, "page"),
        ({"size": 1001}, "size"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"start_date": "2024-02-01", "end_date": "2024-01-01"}, "start_date"),
        ({"start_date": "2020-01-01", "end_date": "2024-01-01"}, "end_date"),
        ({"unit": "R"}, "unit"),
    ],
)
def test_legacy_read_parameter_errors_are_422(client, stored, params, field):
    error = assert_error(legacy(client, "temp", **params), 422, "validation_error")
    assert error["details"]["field"] == field


def test_legacy_read_dates_may_be_unix_times(client, stored):
    start = int((NOW - timedelta(hours=1)).timestamp())
    assert len(legacy(client, "humidity", start_date=start, end_date=(start + 7200) * 1000).get_json()["items"]) == 1


def test_legacy_read_ignores_unit_except_on_temp(client, stored):
    assert legacy(client, "humidity", unit="whatever").status_code == 200


def test_legacy_read_access_follows_the_v1_rules(app, client, owner, other):
    key = register(client, owner, "p-1", "vault", private=True)
    assert_error(legacy(client, "temp", "p-1|vault"), 401, "auth_required")
    assert_error(legacy(client, "temp", "p-1|vault", headers=bearer(other)), 403, "forbidden")
    assert legacy(client, "temp", "p-1|vault", headers=bearer(owner)).status_code == 200
    assert legacy(client, "temp", "p-1|vault", headers={"X-API-Key": key["api_key"]}).status_code == 200
    assert_error(legacy(client, "temp", "p-1|vault", headers={"X-API-Key": "osk_x"}), 401, "invalid_credentials")
    assert_error(legacy(client, "temp", "nobody|home"), 404, "not_found")
    assert_error(legacy(client, "temp", "p-1"), 404, "not_found")  # no name at all
    # parameters of a private device are checked only after access, as in /api/v1
    assert_error(legacy(client, "temp", "p-1|vault", resolution=0), 401, "auth_required")


def test_legacy_read_of_a_chain_returns_every_id(app, client, owner):
    register(client, owner, "a-1", "room")
    register(client, owner, "a-2", "room")
    owner_id = owner["user_id"]
    insert_readings(app, "a-1", "room", owner_id, [(NOW - timedelta(minutes=5), {"lux": 1})])
    insert_readings(app, "a-2", "room", owner_id, [(NOW - timedelta(minutes=2), {"lux": 2})])
    items = legacy(client, "lux", "a-2|room", resolution=1).get_json()["items"]
    assert [item["lux"] for item in items] == [1, 2]


@pytest.mark.parametrize(
    "path",
    ["/health", "/health/live", "/api/v1/devices", "/cache/stats", "/temp", "/humidity/", "/foo/a|b", "/Temp/a|b"],
)
def test_legacy_routes_shadow_no_other_route(app, client, path):
    admin = create_user(app, "root", admin=True)
    response = client.get(path, headers=bearer(admin))
    if path.startswith(("/health", "/api", "/cache")):
        assert response.status_code == 200
    else:
        assert_error(response, 404, "not_found")


# -- docs/OPENSENSOR.md section 9, checked against opensensor-api's source ----------------------

# What an opensensor (Fief) login token looks like: a signed JWT this service never issued.
FIEF_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIwMDAwIn0.c2lnbmF0dXJl"


def test_an_opensensor_login_token_is_401_even_on_a_public_device(client, stored):
    """opensensor went on anonymously past a login token it could not verify; a wrong header is 401 here."""
    assert legacy(client, "temp").status_code == 200  # public: no header needed
    for header in (f"Bearer {FIEF_TOKEN}", "Bearer ost_0000000000000000_" + "x" * 40, FIEF_TOKEN):
        response = legacy(client, "temp", headers={"Authorization": header})
        assert_error(response, 401, "invalid_credentials")


def test_an_x_api_key_that_is_no_key_is_401_and_another_devices_key_follows_the_devices_rules(
    client, owner, other, stored
):
    """opensensor: 403 'Invalid API key' for either; here 401 for a key that is none."""
    for key in ("A" * 44, "osk_0000000000000000_" + "x" * 40):
        assert_error(legacy(client, "temp", headers={"X-API-Key": key}), 401, "invalid_credentials")
    theirs = register(client, other, "o-1", "attic")["api_key"]
    assert legacy(client, "temp", headers={"X-API-Key": theirs}).status_code == 200  # a public device
    register(client, owner, "p-1", "vault", private=True)
    assert_error(legacy(client, "temp", "p-1|vault", headers={"X-API-Key": theirs}), 403, "forbidden")


def test_an_unknown_pair_is_404_with_or_without_credentials(client, owner, stored):
    for headers in ({}, bearer(owner), {"X-API-Key": stored["api_key"]}):
        assert_error(legacy(client, "temp", "nobody|home", headers=headers), 404, "not_found")


def test_legacy_timestamps_end_in_z_at_the_start_of_their_bucket(client, stored):
    """As opensensor's under pydantic 2 (``Z``); ours are bucket starts, whole minutes."""
    for kind in ("temp", "humidity", "VPD", "relays"):
        [item] = legacy(client, kind, resolution=15).get_json()["items"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:(00|15|30|45):00Z", item["timestamp"]), item


def test_temperatures_without_unit_are_in_celsius_whatever_the_device_sent(app, client, key):
    """opensensor answered each reading in its stored unit; here they are stored, and answered, in °C."""
    assert client.post("/environment/", json=environment(key, temp={"temp": 212, "unit": "F"})).status_code == 201
    [item] = legacy(client, "temp").get_json()["items"]
    assert (item["temp"], item["unit"]) == (pytest.approx(100), "C")
    [item] = legacy(client, "temp", unit="F").get_json()["items"]
    assert (item["temp"], item["unit"]) == (pytest.approx(212), "F")


def test_an_environment_body_over_64_kib_is_413(app, client, key):
    body = json.dumps(environment(key, rh={"rh": 40}, padding="x" * (64 * 1024)))
    assert_error(client.post("/environment/", data=body, content_type="application/json"), 413, "payload_too_large")
    assert stored_readings(app) == []
