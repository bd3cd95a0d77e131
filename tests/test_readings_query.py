"""GET .../readings/{measurement}: epoch-aligned buckets, aggregations, units, VPD, pages.

Readings are inserted straight into MongoDB with chosen timestamps, and every expected
bucket is computed here from those rows, so alignment and aggregation are checked exactly.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from statistics import mean

import pytest

from tests.conftest import bearer, register
from tests.helpers import assert_error, insert_readings, push, read, utc

BASE = utc(2024, 3, 10, 12, 0)  # a Sunday
START, END = "2024-03-10T00:00:00Z", "2024-03-11T00:00:00Z"
RANGE = {"start": START, "end": END}
NUMERIC = ("temp", "rh", "pressure", "lux", "co2", "ph")
NON_NUMERIC = ("moisture", "liquid", "relays", "pumps")


@pytest.fixture
def device(client, owner) -> dict:
    return register(client, owner, "dev-1", "greenhouse")


def iso(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def bucket_start(at: datetime, minutes: int) -> datetime:
    seconds = int(at.timestamp())
    width = minutes * 60
    return datetime.fromtimestamp(seconds // width * width, UTC)


def expected(rows, field: str, minutes: int, agg: str, convert=lambda v: v) -> list[dict]:
    """The items the spec promises, computed in Python: epoch buckets, ascending, empty ones omitted."""
    buckets: dict[datetime, list] = {}
    for at, values in sorted(rows, key=lambda row: row[0]):
        if field in values:
            buckets.setdefault(bucket_start(at, minutes), []).append(values[field])
    pick = {"avg": mean, "min": min, "max": max, "first": lambda v: v[0], "last": lambda v: v[-1]}[agg]
    return [
        {"timestamp": iso(start), "value": convert(pick(values)), "count": len(values)}
        for start, values in sorted(buckets.items())
    ]


def assert_items(actual: list[dict], wanted: list[dict]) -> None:
    assert [(i["timestamp"], i["count"]) for i in actual] == [(i["timestamp"], i["count"]) for i in wanted]
    for got, want in zip(actual, wanted, strict=True):
        if isinstance(want["value"], float):
            assert got["value"] == pytest.approx(want["value"], rel=1e-9, abs=1e-9)
        else:
            assert got["value"] == want["value"]


# Minutes after BASE and a temperature; 7-minute buckets do not divide an hour, so a
# bucket aligned to the hour instead of the epoch would show up as a different start.
TEMP_ROWS = [
    (BASE + timedelta(minutes=m, seconds=s), {"temp": t, "rh": r})
    for m, s, t, r in [
        (-30, 0, 18.0, 70),
        (-29, 59, 18.5, 68),
        (-3, 0, 19.25, 66),
        (0, 0, 20.0, 60),
        (1, 30, 21.0, 58),
        (3, 0, 23.5, 55),
        (3, 59, 22.0, 50),
        (11, 0, 24.0, 45),
        (40, 0, 26.0, 40),
    ]
]


@pytest.mark.parametrize("agg", ["avg", "min", "max", "first", "last"])
@pytest.mark.parametrize("resolution", [1, 7, 30, 60])
def test_temp_buckets_are_epoch_aligned_for_every_aggregation(app, client, owner, device, agg, resolution):
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], TEMP_ROWS)
    response = read(client, "dev-1", "greenhouse", "temp", **RANGE, resolution=resolution, agg=agg, size=1000)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    want = expected(TEMP_ROWS, "temp", resolution, agg)
    assert_items(body["items"], want)
    assert body["total"] == len(want) and body["agg"] == agg and body["resolution"] == resolution


def test_seven_minute_buckets_start_at_multiples_of_seven_minutes_since_the_epoch(app, client, owner, device):
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], TEMP_ROWS)
    items = read(client, "dev-1", "greenhouse", "temp", **RANGE, resolution=7).get_json()["items"]
    for item in items:
        stamp = datetime.fromisoformat(item["timestamp"].replace("Z", "+00:00"))
        assert stamp.timestamp() % (7 * 60) == 0
    # 12:00 is 28_501_200 minutes after the epoch, a multiple of 7, so 11:57 falls in the bucket
    # of 11:53; buckets aligned to the hour (:00, :07, ... :56) would have put it at 11:56.
    stamps = [item["timestamp"] for item in items]
    assert "2024-03-10T11:53:00Z" in stamps and "2024-03-10T11:56:00Z" not in stamps


def test_week_buckets_start_on_the_epochs_thursday(app, client, owner, device):
    rows = [(utc(2024, 3, 10, 8), {"co2": 500}), (utc(2024, 3, 13, 8), {"co2": 700}), (utc(2024, 3, 14, 1), {"co2": 9})]
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], rows)
    body = read(
        client, "dev-1", "greenhouse", "co2", start="2024-03-01T00:00:00Z", end="2024-03-20T00:00:00Z", resolution=10080
    )
    assert [(i["timestamp"], i["value"], i["count"]) for i in body.get_json()["items"]] == [
        ("2024-03-07T00:00:00Z", 600, 2),
        ("2024-03-14T00:00:00Z", 9, 1),
    ]


@pytest.mark.parametrize("measurement", NUMERIC)
@pytest.mark.parametrize("agg", ["avg", "min", "max", "first", "last"])
def test_every_numeric_measurement_supports_every_aggregation(app, client, owner, device, measurement, agg):
    values = [3, 7.5, 4, 12, 0.5, 9]
    rows = [(BASE + timedelta(minutes=10 * i), {measurement: v}) for i, v in enumerate(values)]
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], rows)
    body = read(client, "dev-1", "greenhouse", measurement, **RANGE, resolution=30, agg=agg).get_json()
    assert_items(body["items"], expected(rows, measurement, 30, agg))


@pytest.mark.parametrize(("measurement", "agg"), [*((m, "avg") for m in NUMERIC), *((m, "last") for m in NON_NUMERIC)])
def test_default_aggregation_is_avg_for_numbers_and_last_for_the_others(client, device, measurement, agg):
    body = read(client, "dev-1", "greenhouse", measurement).get_json()
    assert body["agg"] == agg and body["resolution"] == 30 and body["page"] == 1 and body["size"] == 50


NON_NUMERIC_ROWS = [
    (BASE, {"moisture": [40, 41], "liquid": True, "relays": [{"position": 1, "enabled": True}], "pumps": []}),
    (
        BASE + timedelta(minutes=5),
        {"moisture": [39.5], "liquid": False, "relays": [], "pumps": [{"position": 0, "enabled": False}]},
    ),
    (BASE + timedelta(minutes=50), {"moisture": [30, 31, 32], "liquid": True}),
]


@pytest.mark.parametrize("measurement", NON_NUMERIC)
@pytest.mark.parametrize("agg", ["first", "last"])
def test_non_numeric_measurements_return_values_as_pushed(app, client, owner, device, measurement, agg):
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], NON_NUMERIC_ROWS)
    body = read(client, "dev-1", "greenhouse", measurement, **RANGE, agg=agg).get_json()
    assert body["items"] == expected(NON_NUMERIC_ROWS, measurement, 30, agg)
    assert "unit" not in body


@pytest.mark.parametrize("measurement", NON_NUMERIC)
@pytest.mark.parametrize("agg", ["avg", "min", "max"])
def test_numeric_aggregation_of_a_non_numeric_measurement_is_400(client, device, measurement, agg):
    assert_error(read(client, "dev-1", "greenhouse", measurement, agg=agg), 400, "validation_error")


@pytest.mark.parametrize(
    ("unit", "convert"),
    [("C", lambda c: c), ("F", lambda c: c * 9 / 5 + 32), ("K", lambda c: c + 273.15)],
)
@pytest.mark.parametrize("agg", ["avg", "max", "first"])
def test_temp_is_converted_to_the_requested_unit(app, client, owner, device, unit, convert, agg):
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], TEMP_ROWS)
    body = read(client, "dev-1", "greenhouse", "temp", **RANGE, unit=unit, agg=agg).get_json()
    assert body["unit"] == unit
    assert_items(body["items"], expected(TEMP_ROWS, "temp", 30, agg, convert))


def test_temp_defaults_to_celsius(client, device):
    assert read(client, "dev-1", "greenhouse", "temp").get_json()["unit"] == "C"


def test_temp_pushed_in_fahrenheit_reads_back_in_every_unit(client, device):
    assert push(client, device, "dev-1", "greenhouse", {"temp": 212, "temp_unit": "F"}).status_code == 201
    for unit, value in [("C", 100), ("F", 212), ("K", 373.15)]:
        [item] = read(client, "dev-1", "greenhouse", "temp", unit=unit).get_json()["items"]
        assert item["value"] == pytest.approx(value)


@pytest.mark.parametrize("measurement", ["rh", "co2", "moisture", "vpd"])
def test_unit_on_anything_but_temp_is_400(client, device, measurement):
    assert_error(read(client, "dev-1", "greenhouse", measurement, unit="C"), 400, "validation_error")


def tetens_vpd(temp_c: float, rh: float) -> float:
    saturation_kpa = 0.6108 * math.exp(17.27 * temp_c / (temp_c + 237.3))
    return saturation_kpa * (1 - rh / 100)


def test_vpd_is_derived_per_bucket_from_average_temp_and_rh(app, client, owner, device):
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], TEMP_ROWS)
    body = read(client, "dev-1", "greenhouse", "vpd", **RANGE, resolution=7).get_json()
    assert body["unit"] == "kPa" and body["agg"] == "avg"
    temps = expected(TEMP_ROWS, "temp", 7, "avg")
    rhs = expected(TEMP_ROWS, "rh", 7, "avg")
    want = [
        {"timestamp": t["timestamp"], "value": tetens_vpd(t["value"], r["value"]), "count": t["count"]}
        for t, r in zip(temps, rhs, strict=True)
    ]
    assert_items(body["items"], want)
    assert all(isinstance(item["value"], float) for item in body["items"])


def test_vpd_uses_temp_and_rh_pushed_separately_in_one_bucket(app, client, owner, device):
    rows = [
        (BASE, {"temp": 20.0}),
        (BASE + timedelta(minutes=1), {"rh": 50}),
        (BASE + timedelta(minutes=2), {"temp": 30.0, "rh": 70}),
        (BASE + timedelta(minutes=40), {"temp": 25.0}),  # no rh in that bucket: no vpd
    ]
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], rows)
    [item] = read(client, "dev-1", "greenhouse", "vpd", **RANGE).get_json()["items"]
    assert item["timestamp"] == iso(BASE) and item["count"] == 3
    assert item["value"] == pytest.approx(tetens_vpd(25.0, 60))


@pytest.mark.parametrize("agg", ["min", "max", "first", "last", "median"])
def test_vpd_supports_only_avg(client, device, agg):
    assert_error(read(client, "dev-1", "greenhouse", "vpd", agg=agg), 400, "validation_error")


def test_response_has_exactly_the_spec_fields(app, client, owner, device):
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], TEMP_ROWS)
    body = read(client, "dev-1", "greenhouse", "rh", **RANGE).get_json()
    assert list(body) == [
        "device",
        "measurement",
        "agg",
        "resolution",
        "start",
        "end",
        "items",
        "page",
        "size",
        "total",
        "pages",
    ]
    assert body["device"] == {"device_id": "dev-1", "device_name": "greenhouse", "chain": ["dev-1"], "public": True}
    assert (body["measurement"], body["start"], body["end"]) == ("rh", START, END)
    assert all(set(item) == {"timestamp", "value", "count"} for item in body["items"])


def test_start_is_inclusive_and_end_exclusive(app, client, owner, device):
    rows = [(BASE - timedelta(seconds=1), {"co2": 1}), (BASE, {"co2": 2}), (BASE + timedelta(hours=1), {"co2": 3})]
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], rows)
    body = read(client, "dev-1", "greenhouse", "co2", start=iso(BASE), end=iso(BASE + timedelta(hours=1))).get_json()
    assert [(i["value"], i["count"]) for i in body["items"]] == [(2, 1)]


def test_default_range_is_the_last_24_hours(app, client, owner, device):
    now = datetime.now(UTC)
    rows = [(now - timedelta(hours=25), {"lux": 1}), (now - timedelta(hours=1), {"lux": 2})]
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], rows)
    body = read(client, "dev-1", "greenhouse", "lux").get_json()
    assert [i["value"] for i in body["items"]] == [2]
    start = datetime.fromisoformat(body["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(body["end"].replace("Z", "+00:00"))
    assert body["start"].endswith("Z") and body["end"].endswith("Z")
    assert end - start == timedelta(hours=24)
    assert abs(end - now) < timedelta(seconds=30)


def test_start_alone_reads_until_now(app, client, owner, device):
    now = datetime.now(UTC)
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], [(now - timedelta(days=3), {"ph": 6})])
    body = read(client, "dev-1", "greenhouse", "ph", start=iso(now - timedelta(days=4))).get_json()
    assert body["total"] == 1
    assert abs(datetime.fromisoformat(body["end"].replace("Z", "+00:00")) - now) < timedelta(seconds=30)


def test_end_alone_reads_the_24_hours_before_it(client, device):
    body = read(client, "dev-1", "greenhouse", "ph", end=END).get_json()
    assert (body["start"], body["end"]) == (START, END)


def test_offset_timestamps_are_read_as_utc(client, device):
    body = read(client, "dev-1", "greenhouse", "ph", start="2024-03-10T02:00:00+02:00", end="2024-03-10T12:00:00+00:00")
    assert (body.get_json()["start"], body.get_json()["end"]) == (START, "2024-03-10T12:00:00Z")


def test_a_span_of_exactly_366_days_is_allowed(client, device):
    response = read(client, "dev-1", "greenhouse", "ph", start="2023-01-01T00:00:00Z", end="2024-01-02T00:00:00Z")
    assert response.status_code == 200


def test_pagination_counts_every_bucket_and_pages(app, client, owner, device):
    rows = [(BASE + timedelta(minutes=30 * i, seconds=5), {"co2": 400 + i}) for i in range(7)]
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], rows)
    seen = []
    for page in (1, 2, 3):
        body = read(client, "dev-1", "greenhouse", "co2", **RANGE, size=3, page=page).get_json()
        assert (body["total"], body["pages"], body["page"], body["size"]) == (7, 3, page, 3)
        seen += [item["value"] for item in body["items"]]
    assert seen == [400 + i for i in range(7)]
    past = read(client, "dev-1", "greenhouse", "co2", **RANGE, size=3, page=4)
    assert past.status_code == 200
    assert past.get_json()["items"] == [] and past.get_json()["total"] == 7 and past.get_json()["pages"] == 3


def test_nothing_in_range_is_zero_total_and_zero_pages(client, device):
    body = read(client, "dev-1", "greenhouse", "temp", **RANGE).get_json()
    assert (body["items"], body["total"], body["pages"]) == ([], 0, 0)
    body = read(client, "dev-1", "greenhouse", "temp", **RANGE, page=5).get_json()
    assert (body["items"], body["total"], body["pages"], body["page"]) == ([], 0, 0, 5)


def test_readings_of_another_pair_are_not_mixed_in(app, client, owner, other, device):
    register(client, owner, "dev-2", "shed")
    register(client, other, "dev-3", "greenhouse")
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], [(BASE, {"rh": 10})])
    insert_readings(app, "dev-2", "shed", owner["user_id"], [(BASE, {"rh": 90})])
    insert_readings(app, "dev-1", "shed", owner["user_id"], [(BASE, {"rh": 80})])
    insert_readings(app, "dev-3", "greenhouse", other["user_id"], [(BASE, {"rh": 70})])
    insert_readings(app, "dev-1", "greenhouse", other["user_id"], [(BASE, {"rh": 60})])  # not the current owner
    [item] = read(client, "dev-1", "greenhouse", "rh", **RANGE).get_json()["items"]
    assert (item["value"], item["count"]) == (10, 1)


@pytest.mark.parametrize("measurement", ["humidity", "TEMP", "readings", "temp_unit"])
def test_unknown_measurement_is_404(client, device, measurement):
    assert_error(read(client, "dev-1", "greenhouse", measurement), 404, "not_found")


def test_unknown_pair_is_404(client, device):
    assert_error(read(client, "dev-2", "greenhouse", "temp"), 404, "not_found")
    assert_error(read(client, "dev-1", "shed", "temp"), 404, "not_found")


@pytest.mark.parametrize(
    ("device_id", "device_name"),
    [("has space", "greenhouse"), ("x" * 65, "greenhouse"), ("dev-1", "n" * 65), ("dé", "g")],
)
def test_invalid_pair_in_the_path_is_404(client, device, device_id, device_name):
    assert_error(read(client, device_id, device_name, "temp"), 404, "not_found")


BAD_QUERIES = [
    ({"start": "yesterday"}, "start not a date"),
    ({"end": "2024-13-01T00:00:00Z"}, "end impossible month"),
    ({"start": ""}, "empty start"),
    ({"start": END, "end": START}, "start after end"),
    ({"start": START, "end": START}, "start equals end"),
    ({"start": "2023-01-01T00:00:00Z", "end": "2024-01-02T00:00:01Z"}, "span over 366 days"),
    ({"start": "9999-12-31T23:00:00Z"}, "start near the end of time"),
    ({"end": "0001-01-01T01:00:00Z"}, "end near the start of time"),
    ({"start": "0001-01-01T00:00:00+05:00"}, "start before year 1 in UTC"),
    ({"resolution": "0"}, "resolution 0"),
    ({"resolution": "10081"}, "resolution over a week"),
    ({"resolution": "1.5"}, "resolution fraction"),
    ({"resolution": "abc"}, "resolution text"),
    ({"resolution": ""}, "resolution empty"),
    ({"agg": "sum"}, "agg sum"),
    ({"agg": "AVG"}, "agg uppercase"),
    ({"unit": "R"}, "unit R"),
    ({"unit": "f"}, "unit lowercase"),
    ({"page": "0"}, "page 0"),
    ({"page": "-1"}, "page negative"),
    ({"page": "x"}, "page text"),
    ({"size": "0"}, "size 0"),
    ({"size": "1001"}, "size over 1000"),
    ({"size": "ten"}, "size text"),
]


@pytest.mark.parametrize("params", [case[0] for case in BAD_QUERIES], ids=[case[1] for case in BAD_QUERIES])
def test_bad_query_parameters_are_validation_errors(client, device, params):
    assert_error(read(client, "dev-1", "greenhouse", "temp", **params), 400, "validation_error")


@pytest.mark.parametrize("params", [{"resolution": 1}, {"resolution": 10080}, {"size": 1}, {"size": 1000}])
def test_boundary_query_values_are_accepted(client, device, params):
    assert read(client, "dev-1", "greenhouse", "temp", **params).status_code == 200


def test_owner_reads_private_readings_with_a_bearer(app, client, owner):
    register(client, owner, "dev-1", "greenhouse", private=True)
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], [(BASE, {"rh": 33})])
    response = read(client, "dev-1", "greenhouse", "rh", headers=bearer(owner), **RANGE)
    assert response.status_code == 200 and response.get_json()["device"]["public"] is False
    assert response.get_json()["items"][0]["value"] == 33


def test_a_page_far_past_the_end_is_empty_not_an_error(app, client, owner, device):
    insert_readings(app, "dev-1", "greenhouse", owner["user_id"], [(BASE, {"co2": 1})])
    for page in (10**6, 10**17, 10**30):
        response = read(client, "dev-1", "greenhouse", "co2", **RANGE, size=1000, page=page)
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        assert (body["items"], body["total"], body["pages"], body["page"]) == ([], 1, 1, page)


def test_largest_accepted_values_read_back_as_finite_json_numbers(client, device):
    for _ in range(2):
        assert push(client, device, "dev-1", "greenhouse", {"temp": 1e15, "co2": 10**15}).status_code == 201
    response = read(client, "dev-1", "greenhouse", "temp", unit="F")
    assert "Infinity" not in response.get_data(as_text=True)
    assert response.get_json()["items"][0]["value"] == pytest.approx(1e15 * 9 / 5 + 32)
    assert read(client, "dev-1", "greenhouse", "co2").get_json()["items"][0]["value"] == pytest.approx(1e15)


@pytest.mark.parametrize("kelvin", [0, 20, 35.85, 35.86, 40])
def test_vpd_of_cryogenic_temperatures_is_a_number_not_an_error(client, device, kelvin):
    assert push(client, device, "dev-1", "greenhouse", {"temp": kelvin, "temp_unit": "K", "rh": 50}).status_code == 201
    response = read(client, "dev-1", "greenhouse", "vpd")
    assert response.status_code == 200, response.get_json()
    [item] = response.get_json()["items"]
    assert 0 <= item["value"] < 1e-6
