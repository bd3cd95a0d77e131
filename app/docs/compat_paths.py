"""The OpenAPI description of opensensor's routes (``app/compat/views.py``): its device push and
its legacy reads, from the protocol's own blocks and types (``app/compat/protocol.py``).

Here rather than in ``app/compat/`` while that package is being reworked; it can move there as is.
"""

from __future__ import annotations

from typing import Any

from app.compat.protocol import BLOCKS, LEGACY_TYPES
from app.openapi import OPTIONAL_READER, TIMESTAMP, Schema, json_body, obj, ok, operation, path_param, query_param, ref
from app.readings.openapi import PAGE_PARAMS, PAGE_SIZE, RESOLUTION_PARAM, SPAN
from app.readings.schema import TEMP_UNITS

# opensensor's keys are urlsafe base64 of 32 random bytes; this one is only an example.
EXAMPLE_OPENSENSOR_KEY = "q3Jx0bW2mVt9sQ1LrZ8cYk4NfA6uHdE7gPiTo5RwKnU="


def environment_schema() -> Schema:
    """opensensor's push body: every block optional; unknown blocks and fields are ignored (as pydantic did)."""
    text_or_number: Schema = {"type": ["number", "string"], "description": "A number, or a decimal string."}
    value_of = {
        "temp": text_or_number,
        "rh": text_or_number,
        "pressure": text_or_number,
        "lux": text_or_number,
        "co2": text_or_number,
        "pH": text_or_number,
        "moisture": {
            "type": ["array", "string"],
            "items": text_or_number,
            "description": "Numbers, or their text as Python prints a list: \"[Decimal('0.41'), 0.39]\".",
        },
        "liquid": {"type": ["boolean", "string", "integer"], "description": "true/false, or their text (pydantic's)."},
        "relays": {"type": "array", "items": {"type": "object"}},
        "pumps": {"type": "array", "items": {"type": "object"}},
    }
    blocks: dict[str, Schema] = {}
    for block, (field, _, unit_field) in BLOCKS.items():
        properties: dict[str, Schema] = {field: value_of[block], "timestamp": {"description": "Ignored."}}
        if unit_field:
            properties["unit"] = {"type": ["string", "null"]}
        blocks[block] = {"type": ["object", "null"], "properties": properties, "required": [field]}
    metadata = obj(
        {
            "device_id": {"type": ["string", "integer"]},
            "name": {"type": ["string", "null"]},
            "api_key": {"type": ["string", "null"], "description": "The device's key (missing: 400)."},
        },
        ["device_id"],
        closed=False,
    )
    return obj({"device_metadata": metadata, **blocks}, ["device_metadata"], closed=False)


def legacy_page_schema(kind: str) -> Schema:
    measurement, field = LEGACY_TYPES[kind]
    value: Schema = {
        "moisture": {"type": "array", "items": {"type": "number"}},
        "liquid": {"type": "boolean"},
        "relays": {"type": "array", "items": {"type": "object"}},
        "pumps": {"type": "array", "items": {"type": "object"}},
    }.get(measurement, {"type": "number"})
    item = {"timestamp": TIMESTAMP, field: value}
    if kind == "temp":
        item["unit"] = {"enum": list(TEMP_UNITS)}
    return obj(
        {
            "items": {"type": "array", "items": obj(item, list(item))},
            "total": {"type": "integer", "minimum": 0},
            "page": {"type": "integer", "minimum": 1},
            "size": PAGE_SIZE,
            "pages": {"type": "integer", "minimum": 0},
        },
        ["items", "total", "page", "size", "pages"],
    )


def schemas() -> dict[str, Schema]:
    return {
        "Environment": environment_schema(),
        **{f"Legacy_{kind}": legacy_page_schema(kind) for kind in LEGACY_TYPES},
    }


def push_paths() -> dict[str, dict[str, Any]]:
    """``/environment/``, and the same without the slash (no redirect)."""
    example = {
        "device_metadata": {"device_id": "pi-07", "name": "greenhouse", "api_key": EXAMPLE_OPENSENSOR_KEY},
        "temp": {"temp": "21.5", "unit": "C"},
        "rh": {"rh": 55},
        "co2": {"ppm": 612},
        "moisture": {"readings": [0.41, 0.39]},
    }
    environment = operation(
        "push_environment",
        "Push readings as an opensensor device (key in the body)",
        "opensensor",
        {201: {"description": "Stored (or nothing to store); the body is empty."}},
        errors=(403, 413, 415, 422, 503),
        body={"required": True, "content": json_body(ref("Environment"), example)},
        description="Also without the trailing slash (no redirect). A missing `device_metadata.api_key` is 400; an "
        "unknown key or another pair's key 403; a body that does not fit 422. Stores exactly what "
        "`POST /api/v1/readings` stores. A body without Content-Type is read as JSON.",
    )
    return {
        "/environment/": {"post": environment},
        "/environment": {"post": {**environment, "operationId": "push_environment_no_slash"}},
    }


def legacy_paths() -> dict[str, dict[str, Any]]:
    return {f"/{kind}/{{device}}": {"get": legacy_operation(kind)} for kind in LEGACY_TYPES}


def legacy_operation(kind: str) -> dict[str, Any]:
    measurement, field = LEGACY_TYPES[kind]
    example_value: Any = {"moisture": [0.41, 0.39], "liquid": True, "relays": [{"position": 1, "enabled": True}]}.get(
        measurement, [{"position": 0, "enabled": False}] if measurement == "pumps" else 21.5
    )
    item = {"timestamp": "2026-11-25T19:00:00Z", field: example_value, **({"unit": "C"} if kind == "temp" else {})}
    parameters = [
        {
            **path_param(
                "device",
                {"type": "string"},
                "`<device_id>|<device_name>`, URL-encoded (`|` as %7C). An unknown pair is 404.",
            ),
            "examples": {"pair": {"value": "pi-01|greenhouse"}},
        },
        query_param("start_date", {"type": "string"}, "ISO-8601 or a Unix time; default end_date minus 100 days."),
        query_param("end_date", {"type": "string"}, f"ISO-8601 or a Unix time; default now; {SPAN}."),
        RESOLUTION_PARAM,
        *PAGE_PARAMS,
        query_param(
            "unit",
            {"enum": list(TEMP_UNITS)} if kind == "temp" else {"type": "string"},
            "temp: C, F or K. Ignored by the other types, as in opensensor.",
        ),
    ]
    return operation(
        f"legacy_{kind}",
        f"opensensor's read of {measurement} (items carry `{field}`)",
        "opensensor",
        {200: ok("One page.", ref(f"Legacy_{kind}"), {"items": [item], "total": 1, "page": 1, "size": 50, "pages": 1})},
        errors=(401, 403, 404, 422, 503),
        security=OPTIONAL_READER,
        parameters=parameters,
        description="Access as in /api/v1: public to anyone; private to its owner's bearer or the pair's X-API-Key "
        "(anonymous 401, another user 403). Parameters that do not fit: 422.",
    )
