"""The OpenAPI description of the readings routes (``app/readings/views.py``), from the parser's own
measurements, units, bounds and field sets (``app/readings/schema.py``)."""

from __future__ import annotations

from typing import Any

from app.devices.openapi import DEVICE_FIELDS, DEVICE_PARAMS
from app.openapi import (
    DEVICE_KEY,
    OPTIONAL_READER,
    PAIR_FROM_RESPONSE,
    TIMESTAMP,
    Schema,
    json_body,
    obj,
    ok,
    operation,
    path_param,
    query_param,
    ref,
)
from app.readings.schema import (
    AGGS,
    MAX_LIST,
    MAX_PAGE_SIZE,
    MAX_RESOLUTION,
    MAX_SPAN,
    MEASUREMENTS,
    NUMERIC,
    PUMP_FIELDS,
    PUSH_FIELDS,
    QUERYABLE,
    RELAY_FIELDS,
    TEMP_UNITS,
)
from app.validation import MAX_MAGNITUDE

INT64_MAX = 2**63 - 1
# The query's bounds, as the legacy (opensensor) reads take them too.
RESOLUTION: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_RESOLUTION}
PAGE_SIZE: Schema = {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}
SPAN = f"span ≤ {MAX_SPAN.days} days"
RESOLUTION_PARAM = query_param("resolution", RESOLUTION, "Bucket minutes; default 30.")
PAGE_PARAMS = [
    query_param("page", {"type": "integer", "minimum": 1}, "Default 1."),
    query_param("size", PAGE_SIZE, "Default 50."),
]


def number(low: float | None = None, high: float | None = None) -> Schema:
    return {
        "type": "number",
        "minimum": -MAX_MAGNITUDE if low is None else low,
        "maximum": MAX_MAGNITUDE if high is None else high,
    }


def _fields(spec: dict[str, str]) -> dict[str, Schema]:
    kinds = {
        "int": {"type": "integer", "minimum": 0, "maximum": INT64_MAX},
        "bool": {"type": "boolean"},
        "number": number(0),
        "str": {"type": "string", "maxLength": 256},
    }
    return {name: kinds[kind] for name, kind in spec.items()}


def readings_schema() -> Schema:
    """The ``readings`` object of a push."""
    measurement_values: dict[str, Schema] = {name: number(low, high) for name, (low, high) in NUMERIC.items()} | {
        "moisture": {"type": "array", "minItems": 1, "maxItems": MAX_LIST, "items": number()},
        "liquid": {"type": "boolean"},
        "relays": {"type": "array", "maxItems": MAX_LIST, "items": ref("Relay")},
        "pumps": {"type": "array", "maxItems": MAX_LIST, "items": ref("Pump")},
    }
    readings = obj(
        {
            **measurement_values,
            "temp_unit": {"enum": list(TEMP_UNITS), "description": "Unit of temp (stored in °C); default C."},
            "pressure_unit": {"type": "string", "minLength": 1, "maxLength": 16},
        }
    )
    readings["description"] = "At least one measurement; temp must not be below absolute zero."
    readings["anyOf"] = [{"required": [name]} for name in MEASUREMENTS]
    readings["dependentRequired"] = {"temp_unit": ["temp"], "pressure_unit": ["pressure"]}
    return readings


def page_schema() -> Schema:
    """One page of a query's buckets."""
    value: Schema = {
        "anyOf": [
            {"type": "number"},
            {"type": "boolean"},
            {"type": "array", "items": {"type": "number"}},
            {"type": "array", "items": {"type": "object"}},
        ],
        "description": "A number (numeric measurements and vpd), a list of numbers "
        "(moisture), a boolean (liquid), the objects as pushed (relays, pumps).",
    }
    item = obj(
        {"timestamp": TIMESTAMP, "value": value, "count": {"type": "integer", "minimum": 1}},
        ["timestamp", "value", "count"],
    )
    return obj(
        {
            "device": obj(DEVICE_FIELDS, list(DEVICE_FIELDS)),
            "measurement": {"enum": list(QUERYABLE)},
            "unit": {"enum": [*TEMP_UNITS, "kPa"]},
            "agg": {"enum": list(AGGS)},
            "resolution": RESOLUTION,
            "start": TIMESTAMP,
            "end": TIMESTAMP,
            "items": {"type": "array", "items": item},
            "page": {"type": "integer", "minimum": 1},
            "size": PAGE_SIZE,
            "total": {"type": "integer", "minimum": 0},
            "pages": {"type": "integer", "minimum": 0},
        },
        ["device", "measurement", "agg", "resolution", "start", "end", "items", "page", "size", "total", "pages"],
    )


def schemas() -> dict[str, Schema]:
    return {
        "Relay": obj(_fields(RELAY_FIELDS), ["position", "enabled"]),
        "Pump": obj(_fields(PUMP_FIELDS), ["position", "enabled"]),
        "Readings": readings_schema(),
        "Push": obj(
            {"device_id": ref("DeviceId"), "device_name": ref("DeviceName"), "readings": ref("Readings")},
            sorted(PUSH_FIELDS),
        ),
        "Pushed": obj(
            {
                "device_id": ref("DeviceId"),
                "device_name": ref("DeviceName"),
                "timestamp": TIMESTAMP,
                "stored": {"type": "array", "items": {"enum": list(MEASUREMENTS)}, "uniqueItems": True},
            },
            ["device_id", "device_name", "timestamp", "stored"],
        ),
        "ReadingsPage": page_schema(),
    }


def push_path() -> dict[str, Any]:
    pushed_links = {"ReadWhatWasPushed": {"operationId": "query_readings", "parameters": PAIR_FROM_RESPONSE}}
    example = {"device_id": "pi-01", "device_name": "greenhouse", "readings": {"temp": 21.5, "rh": 55}}
    return {
        "post": operation(
            "push_readings",
            "Push readings as a device",
            "readings",
            {
                201: ok(
                    "Stored.",
                    ref("Pushed"),
                    {
                        "device_id": "pi-01",
                        "device_name": "greenhouse",
                        "timestamp": "2026-11-25T19:13:30.009Z",
                        "stored": ["temp", "rh"],
                    },
                    pushed_links,
                )
            },
            errors=(401, 403, 413, 415, 503),
            security=DEVICE_KEY,
            body={"required": True, "content": json_body(ref("Push"), example)},
        )
    }


def query_path() -> dict[str, Any]:
    parameters = [
        *DEVICE_PARAMS,
        path_param("measurement", {"enum": list(QUERYABLE)}, "What to read (another: 404)."),
        query_param("start", {"type": "string", "format": "date-time"}, "ISO-8601; default end minus 24 h."),
        query_param("end", {"type": "string", "format": "date-time"}, f"ISO-8601; default now; {SPAN}."),
        RESOLUTION_PARAM,
        query_param("agg", {"enum": list(AGGS)}, "Default avg for numbers, last for the others."),
        query_param("unit", {"enum": list(TEMP_UNITS)}, "temp only."),
        *PAGE_PARAMS,
    ]
    example = {
        "device": {"device_id": "pi-01", "device_name": "greenhouse", "chain": ["pi-01"], "public": True},
        "measurement": "temp",
        "unit": "C",
        "agg": "avg",
        "resolution": 30,
        "start": "2026-11-24T19:13:30.039Z",
        "end": "2026-11-25T19:13:30.039Z",
        "items": [{"timestamp": "2026-11-25T19:00:00Z", "value": 21.5, "count": 1}],
        "page": 1,
        "size": 50,
        "total": 1,
        "pages": 1,
    }
    return {
        "get": operation(
            "query_readings",
            "A measurement as a bucketed time series",
            "readings",
            {200: ok("One page of buckets.", ref("ReadingsPage"), example)},
            errors=(401, 403, 404, 503),
            security=OPTIONAL_READER,
            parameters=parameters,
        )
    }


def paths() -> dict[str, dict[str, Any]]:
    return {
        "/api/v1/readings": push_path(),
        "/api/v1/devices/{device_id}/{device_name}/readings/{measurement}": query_path(),
    }
