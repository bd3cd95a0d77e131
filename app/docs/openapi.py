"""The OpenAPI 3.1 description of every route: written here, in one place, and kept true by tests.

Why written by hand: the routes validate with this service's own parsers (``app/validation.py``,
``app/readings/schema.py``, ``app/keys/service.py``), whose messages and error shape are part
of the contract. apispec, flask-smorest, spectree and flask-openapi3 describe what *their*
schemas (marshmallow or pydantic) validate, so adopting one means moving all validation onto it:
a large rewrite of working, tested code for a document. Instead the document is built from the
constants the parsers use (measurement names, units, bounds, patterns, field sets, config), and
``tests/test_openapi.py`` fails when it drifts: a route of ``app.url_map`` missing here or a
path here the app does not serve, a request field the parser allows that is not described (or
the reverse), an example that its schema rejects; Schemathesis checks every answer of a live
replica against it (statuses, content types, bodies).

Adding a route is one entry in ``paths()`` (and a schema in ``schemas()`` if it answers JSON).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.cache.admin_schema import INVALIDATE_FIELDS, MAX_PATTERN, MAX_WARM_LIMIT
from app.compat.protocol import BLOCKS, LEGACY_TYPES
from app.keys.service import MAX_DESCRIPTION, PUBLIC_FIELDS
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
from app.validation import DEVICE_ID_RE, DEVICE_NAME_RE, MAX_MAGNITUDE

Schema = dict[str, Any]
INT64_MAX = 2**63 - 1
JSON = "application/json"

ERRORS: dict[int, tuple[str, list[str], str]] = {
    400: ("BadRequest", ["validation_error"], "Malformed input (any route: also text that is not valid UTF-8)."),
    401: ("Unauthorized", ["auth_required", "invalid_credentials"], "No credentials, or a header that is wrong."),
    403: ("Forbidden", ["forbidden", "device_mismatch"], "Credentials that may not do this."),
    404: ("NotFound", ["not_found"], "Unknown resource."),
    409: ("Conflict", ["conflict"], "The pair is registered already."),
    413: ("PayloadTooLarge", ["payload_too_large"], "The body is over 64 KiB."),
    415: ("UnsupportedMediaType", ["unsupported_media_type"], "The body is not application/json."),
    422: ("Unprocessable", ["validation_error"], "opensensor's status for a body or query that does not fit."),
    503: ("Unavailable", ["db_unavailable", "cache_unavailable"], "MongoDB (or, for /cache, Redis) is unreachable."),
}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(properties: Mapping[str, Schema], required: list[str] | tuple[str, ...] = (), closed: bool = True) -> Schema:
    schema: Schema = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    return schema


def json_body(schema: Schema, example: Any | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["examples"] = {"example": {"value": example}}
    return {JSON: media}


def ok(description: str, schema: Schema, example: Any, links: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": json_body(schema, example)}
    if links:
        response["links"] = links
    return response


def operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict[int, dict[str, Any]],
    *,
    errors: tuple[int, ...] = (),
    security: list[dict[str, list[str]]] | None = None,
    parameters: list[Schema] | None = None,
    body: dict[str, Any] | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    """An operation; 400 is on every one (the input guard answers it on any route)."""
    op: dict[str, Any] = {"operationId": operation_id, "summary": summary, "tags": [tag]}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = body
    op["security"] = security if security is not None else []
    codes = {str(status): response for status, response in responses.items()}
    for status in sorted({400, *errors}):
        codes.setdefault(str(status), {"$ref": f"#/components/responses/{ERRORS[status][0]}"})
    op["responses"] = dict(sorted(codes.items()))
    return op


def path_param(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "path", "required": True, "schema": schema, "description": description}


def query_param(name: str, schema: Schema, description: str) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


# opensensor's keys are urlsafe base64 of 32 random bytes; this one is only an example.
EXAMPLE_OPENSENSOR_KEY = "q3Jx0bW2mVt9sQ1LrZ8cYk4NfA6uHdE7gPiTo5RwKnU="

BEARER = [{"bearerAuth": []}]
DEVICE_KEY = [{"apiKeyAuth": []}]
OPTIONAL_READER = [{}, {"bearerAuth": []}, {"apiKeyAuth": []}]


# -- schemas -----------------------------------------------------------------------------------


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


def schemas(config: Mapping[str, Any]) -> dict[str, Schema]:
    timestamp: Schema = {"type": "string", "format": "date-time", "pattern": "Z$"}
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
    key_fields = {
        "key_id": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "masked": {"type": "string"},
        "device_id": ref("DeviceId"),
        "device_name": ref("DeviceName"),
        "description": {"type": "string", "maxLength": MAX_DESCRIPTION},
        "private": {"type": "boolean"},
        "created_at": timestamp,
    }
    device = {
        "device_id": ref("DeviceId"),
        "device_name": ref("DeviceName"),
        "chain": {"type": "array", "items": ref("DeviceId"), "minItems": 1},
        "public": {"type": "boolean"},
    }
    counter = {"type": "integer", "minimum": 0}
    ratio = {"type": ["number", "null"], "minimum": 0, "maximum": 1}
    history_max = config["STATS_HISTORY_SIZE"]
    out: dict[str, Schema] = {
        "Error": obj(
            {
                "error": obj(
                    {
                        "code": {"type": "string", "pattern": "^[a-z_]+$"},
                        "message": {"type": "string", "minLength": 1},
                        "details": {"type": "object"},
                    },
                    ["code", "message"],
                )
            },
            ["error"],
        ),
        "DeviceId": {"type": "string", "pattern": DEVICE_ID_RE.pattern, "examples": ["pi-01"]},
        "DeviceName": {"type": "string", "pattern": DEVICE_NAME_RE.pattern, "examples": ["greenhouse"]},
        "Timestamp": timestamp,
        "Liveness": obj({"status": {"const": "ok"}}, ["status"]),
        "Health": obj(
            {
                "status": {"enum": ["ok", "degraded", "down"]},
                "checks": obj(
                    {"mongo": {"enum": ["ok", "unavailable"]}, "redis": {"enum": ["ok", "unavailable"]}},
                    ["mongo", "redis"],
                ),
            },
            ["status", "checks"],
        ),
        "NewKey": obj(
            {
                "device_id": ref("DeviceId"),
                "device_name": ref("DeviceName"),
                "description": {"type": ["string", "null"], "maxLength": MAX_DESCRIPTION, "default": ""},
                "private": {"type": "boolean", "default": False},
            },
            ["device_id", "device_name"],
        ),
        "Key": obj(key_fields, list(PUBLIC_FIELDS)),
        "KeyCreated": obj(
            {**key_fields, "api_key": {"type": "string", "description": "The secret, shown only now."}},
            [*PUBLIC_FIELDS, "api_key"],
        ),
        "KeyList": obj({"keys": {"type": "array", "items": ref("Key")}}, ["keys"]),
        "Relay": obj(_fields(RELAY_FIELDS), ["position", "enabled"]),
        "Pump": obj(_fields(PUMP_FIELDS), ["position", "enabled"]),
        "Readings": readings,
        "Push": obj(
            {"device_id": ref("DeviceId"), "device_name": ref("DeviceName"), "readings": ref("Readings")},
            sorted(PUSH_FIELDS),
        ),
        "Pushed": obj(
            {
                "device_id": ref("DeviceId"),
                "device_name": ref("DeviceName"),
                "timestamp": timestamp,
                "stored": {"type": "array", "items": {"enum": list(MEASUREMENTS)}, "uniqueItems": True},
            },
            ["device_id", "device_name", "timestamp", "stored"],
        ),
        "ReadingsPage": obj(
            {
                "device": obj(device, list(device)),
                "measurement": {"enum": list(QUERYABLE)},
                "unit": {"enum": [*TEMP_UNITS, "kPa"]},
                "agg": {"enum": list(AGGS)},
                "resolution": {"type": "integer", "minimum": 1, "maximum": MAX_RESOLUTION},
                "start": timestamp,
                "end": timestamp,
                "items": {
                    "type": "array",
                    "items": obj(
                        {
                            "timestamp": timestamp,
                            "value": {
                                "anyOf": [
                                    {"type": "number"},
                                    {"type": "boolean"},
                                    {"type": "array", "items": {"type": "number"}},
                                    {"type": "array", "items": {"type": "object"}},
                                ],
                                "description": "A number (numeric measurements and vpd), a list of numbers "
                                "(moisture), a boolean (liquid), the objects as pushed (relays, pumps).",
                            },
                            "count": {"type": "integer", "minimum": 1},
                        },
                        ["timestamp", "value", "count"],
                    ),
                },
                "page": {"type": "integer", "minimum": 1},
                "size": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
                "total": {"type": "integer", "minimum": 0},
                "pages": {"type": "integer", "minimum": 0},
            },
            ["device", "measurement", "agg", "resolution", "start", "end", "items", "page", "size", "total", "pages"],
        ),
        "Device": obj({**device, "owner_id": {"type": "string", "description": "Only for the owner."}}, list(device)),
        "DeviceList": obj(
            {
                "devices": {
                    "type": "array",
                    "items": obj(
                        {
                            "device_id": ref("DeviceId"),
                            "device_name": ref("DeviceName"),
                            "public": {"type": "boolean"},
                            "owned": {"type": "boolean"},
                        },
                        ["device_id", "device_name", "public", "owned"],
                    ),
                }
            },
            ["devices"],
        ),
        # /cache/stats: the spec allows extra fields at every level (l1_hits, per-node figures...).
        "CacheStats": obj(
            {
                "redis": obj({"reachable": {"type": "boolean"}}, ["reachable"], closed=False),
                "keys": obj(
                    {"prefix": {"type": "string"}, "count": {"type": ["integer", "null"], "minimum": 0}},
                    ["prefix", "count"],
                    closed=False,
                ),
                "lookups": obj(
                    {
                        "device": obj(
                            {
                                "hits": counter,
                                "misses": counter,
                                "loads": counter,
                                "errors": counter,
                                "hit_ratio": ratio,
                            },
                            ["hits", "misses", "loads", "errors", "hit_ratio"],
                            closed=False,
                        )
                    },
                    ["device"],
                    closed=False,
                ),
                "collector": obj(
                    {"last_run": {"type": ["string", "null"], "format": "date-time"}}, ["last_run"], closed=False
                ),
            },
            ["redis", "keys", "lookups", "collector"],
            closed=False,
        ),
        "CacheHistory": obj(
            {
                "snapshots": {
                    "type": "array",
                    "maxItems": history_max,
                    "items": obj(
                        {
                            "at": {"type": "string", "format": "date-time"},
                            "hits": counter,
                            "misses": counter,
                            "loads": counter,
                            "hit_ratio": ratio,
                            "keys": {"type": ["integer", "null"], "minimum": 0},
                        },
                        ["at", "hits", "misses", "loads", "hit_ratio", "keys"],
                        closed=False,
                    ),
                }
            },
            ["snapshots"],
        ),
        "WarmRequest": obj(
            {
                "limit": {
                    "type": ["integer", "null"],
                    "minimum": 1,
                    "maximum": MAX_WARM_LIMIT,
                    "description": "null: the default.",
                }
            }
        ),
        "WarmAccepted": obj({"task_id": {"type": "string"}}, ["task_id"]),
        "ClearRequest": {"type": "object", "description": "Any JSON object (ignored), or no body."},
        "Cleared": obj({"deleted": counter}, ["deleted"]),
        "InvalidateRequest": obj(
            {
                "pattern": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_PATTERN,
                    "description": "A glob relative to CACHE_KEY_PREFIX: `device:*`, `device:<device_id>|*`, `*`.",
                }
            },
            sorted(INVALIDATE_FIELDS),
        ),
        "Invalidated": obj({"deleted": counter, "pattern": {"type": "string"}}, ["deleted", "pattern"]),
        "Environment": environment_schema(),
    }
    for kind in LEGACY_TYPES:
        out[f"Legacy_{kind}"] = legacy_page_schema(kind, timestamp)
    return out


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


def legacy_page_schema(kind: str, timestamp: Schema) -> Schema:
    measurement, field = LEGACY_TYPES[kind]
    value: Schema = {
        "moisture": {"type": "array", "items": {"type": "number"}},
        "liquid": {"type": "boolean"},
        "relays": {"type": "array", "items": {"type": "object"}},
        "pumps": {"type": "array", "items": {"type": "object"}},
    }.get(measurement, {"type": "number"})
    item = {"timestamp": timestamp, field: value}
    if kind == "temp":
        item["unit"] = {"enum": list(TEMP_UNITS)}
    return obj(
        {
            "items": {"type": "array", "items": obj(item, list(item))},
            "total": {"type": "integer", "minimum": 0},
            "page": {"type": "integer", "minimum": 1},
            "size": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
            "pages": {"type": "integer", "minimum": 0},
        },
        ["items", "total", "page", "size", "pages"],
    )


# -- paths -------------------------------------------------------------------------------------


def paths(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    device_params = [
        path_param("device_id", ref("DeviceId"), "The device's id."),
        path_param("device_name", ref("DeviceName"), "The device's name (URL-encoded: spaces as %20)."),
    ]
    key_example = {
        "key_id": "6eb31c6399ef243d",
        "masked": "osk_6eb31c6399ef243d_…6pwc",
        "device_id": "pi-01",
        "device_name": "greenhouse",
        "description": "",
        "private": False,
        "created_at": "2026-11-25T19:13:27.251Z",
    }
    created_links = {
        "DeleteThisKey": {"operationId": "delete_api_key", "parameters": {"key_id": "$response.body#/key_id"}},
        "ShowTheDevice": {
            "operationId": "show_device",
            "parameters": {"device_id": "$response.body#/device_id", "device_name": "$response.body#/device_name"},
        },
        "ReadTheDevice": {
            "operationId": "query_readings",
            "parameters": {"device_id": "$response.body#/device_id", "device_name": "$response.body#/device_name"},
        },
        "PushWithTheKey": {
            "operationId": "push_readings",
            "parameters": {"header.X-API-Key": "$response.body#/api_key"},
            "requestBody": {
                "device_id": "$response.body#/device_id",
                "device_name": "$response.body#/device_name",
                "readings": {"temp": 21.5, "rh": 55},
            },
        },
        "PushAsOpensensor": {
            "operationId": "push_environment",
            "requestBody": {
                "device_metadata": {
                    "device_id": "$response.body#/device_id",
                    "name": "$response.body#/device_name",
                    "api_key": "$response.body#/api_key",
                },
                "temp": {"temp": "21.5", "unit": "C"},
            },
        },
        "ReadAsOpensensor": {
            "operationId": "legacy_temp",
            "parameters": {"device": "{$response.body#/device_id}|{$response.body#/device_name}"},
        },
    }
    pushed_links = {
        "ReadWhatWasPushed": {
            "operationId": "query_readings",
            "parameters": {"device_id": "$response.body#/device_id", "device_name": "$response.body#/device_name"},
        }
    }
    readings_params = [
        *device_params,
        path_param("measurement", {"enum": list(QUERYABLE)}, "What to read (another: 404)."),
        query_param("start", {"type": "string", "format": "date-time"}, "ISO-8601; default end minus 24 h."),
        query_param(
            "end", {"type": "string", "format": "date-time"}, f"ISO-8601; default now; span ≤ {MAX_SPAN.days} days."
        ),
        query_param(
            "resolution", {"type": "integer", "minimum": 1, "maximum": MAX_RESOLUTION}, "Bucket minutes; default 30."
        ),
        query_param("agg", {"enum": list(AGGS)}, "Default avg for numbers, last for the others."),
        query_param("unit", {"enum": list(TEMP_UNITS)}, "temp only."),
        query_param("page", {"type": "integer", "minimum": 1}, "Default 1."),
        query_param("size", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}, "Default 50."),
    ]
    stats_example = {
        "redis": {"reachable": True, "version": "7.0.15", "used_memory_human": "2.15M"},
        "keys": {"prefix": config["CACHE_KEY_PREFIX"], "count": 3},
        "lookups": {"device": {"hits": 4, "misses": 3, "loads": 4, "errors": 0, "hit_ratio": 0.571}},
        "collector": {"last_run": "2026-11-25T19:13:54.773Z"},
    }
    environment_example = {
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
        body={"required": True, "content": json_body(ref("Environment"), environment_example)},
        description="Also without the trailing slash (no redirect). A missing `device_metadata.api_key` is 400; an "
        "unknown key or another pair's key 403; a body that does not fit 422. Stores exactly what "
        "`POST /api/v1/readings` stores. A body without Content-Type is read as JSON.",
    )
    out: dict[str, dict[str, Any]] = {
        "/health/live": {
            "get": operation(
                "health_live",
                "Liveness: checks nothing",
                "health",
                {200: ok("Alive.", ref("Liveness"), {"status": "ok"})},
            )
        },
        "/health": {
            "get": operation(
                "health_ready",
                "Readiness: MongoDB required, Redis optional",
                "health",
                {
                    200: ok(
                        "Ready (degraded without Redis).",
                        ref("Health"),
                        {"status": "ok", "checks": {"mongo": "ok", "redis": "ok"}},
                    ),
                    503: ok(
                        "MongoDB is down (health keeps its own shape).",
                        ref("Health"),
                        {"status": "down", "checks": {"mongo": "unavailable", "redis": "ok"}},
                    ),
                },
            )
        },
        "/api/v1/api-keys": {
            "post": operation(
                "create_api_key",
                "Register a device pair; its key is shown only now",
                "keys",
                {
                    201: ok(
                        "Created.",
                        ref("KeyCreated"),
                        {**key_example, "api_key": "osk_6eb31c6399ef243d_sDVv…"},
                        created_links,
                    )
                },
                errors=(401, 409, 413, 415, 503),
                security=BEARER,
                body={
                    "required": True,
                    "content": json_body(ref("NewKey"), {"device_id": "pi-01", "device_name": "greenhouse"}),
                },
            ),
            "get": operation(
                "list_api_keys",
                "The caller's keys (never a secret)",
                "keys",
                {200: ok("The keys.", ref("KeyList"), {"keys": [key_example]})},
                errors=(401, 503),
                security=BEARER,
            ),
        },
        "/api/v1/api-keys/{key_id}": {
            "delete": operation(
                "delete_api_key",
                "Delete one of the caller's keys",
                "keys",
                {204: {"description": "Deleted."}},
                errors=(401, 404, 503),
                security=BEARER,
                parameters=[path_param("key_id", {"type": "string"}, "The key's id.")],
            )
        },
        "/api/v1/readings": {
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
                body={
                    "required": True,
                    "content": json_body(
                        ref("Push"),
                        {"device_id": "pi-01", "device_name": "greenhouse", "readings": {"temp": 21.5, "rh": 55}},
                    ),
                },
            )
        },
        "/api/v1/devices/{device_id}/{device_name}/readings/{measurement}": {
            "get": operation(
                "query_readings",
                "A measurement as a bucketed time series",
                "readings",
                {
                    200: ok(
                        "One page of buckets.",
                        ref("ReadingsPage"),
                        {
                            "device": {
                                "device_id": "pi-01",
                                "device_name": "greenhouse",
                                "chain": ["pi-01"],
                                "public": True,
                            },
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
                        },
                    )
                },
                errors=(401, 403, 404, 503),
                security=OPTIONAL_READER,
                parameters=readings_params,
            )
        },
        "/api/v1/devices": {
            "get": operation(
                "list_devices",
                "Public devices, and the caller's private ones",
                "devices",
                {
                    200: ok(
                        "The devices.",
                        ref("DeviceList"),
                        {
                            "devices": [
                                {"device_id": "pi-01", "device_name": "greenhouse", "public": True, "owned": False}
                            ]
                        },
                    )
                },
                errors=(401, 503),
                security=OPTIONAL_READER,
            )
        },
        "/api/v1/devices/{device_id}/{device_name}": {
            "get": operation(
                "show_device",
                "The device lookup (answered from the shared cache when warm)",
                "devices",
                {
                    200: ok(
                        "The device.",
                        ref("Device"),
                        {"device_id": "pi-01", "device_name": "greenhouse", "chain": ["pi-01"], "public": True},
                    )
                },
                errors=(401, 403, 404, 503),
                security=OPTIONAL_READER,
                parameters=device_params,
            )
        },
        "/cache/stats": {
            "get": operation(
                "cache_stats",
                "Cache statistics (whatever the state of Redis)",
                "cache",
                {200: ok("Statistics; more fields may come.", ref("CacheStats"), stats_example)},
                errors=(401, 403, 503),
                security=BEARER,
            )
        },
        "/cache/stats/history": {
            "get": operation(
                "cache_history",
                "Snapshots of the statistics, newest last",
                "cache",
                {
                    200: ok(
                        "Snapshots.",
                        ref("CacheHistory"),
                        {
                            "snapshots": [
                                {
                                    "at": "2026-11-25T19:13:54.773Z",
                                    "hits": 4,
                                    "misses": 3,
                                    "loads": 4,
                                    "hit_ratio": 0.571,
                                    "keys": 3,
                                }
                            ]
                        },
                    )
                },
                errors=(401, 403, 503),
                security=BEARER,
                parameters=[
                    query_param(
                        "limit",
                        {"type": "integer", "minimum": 1, "maximum": config["STATS_HISTORY_SIZE"]},
                        "How many snapshots; default 60.",
                    )
                ],
            )
        },
        "/cache/warm": {
            "post": operation(
                "cache_warm",
                "Enqueue a warm-up of the hottest devices",
                "cache",
                {202: ok("Enqueued (or a run is already in progress).", ref("WarmAccepted"), {"task_id": "3f2c…"})},
                errors=(401, 403, 413, 415, 503),
                security=BEARER,
                body={"required": False, "content": json_body(ref("WarmRequest"), {"limit": 100})},
            )
        },
        "/cache/clear": {
            "post": operation(
                "cache_clear",
                "Remove every key under CACHE_KEY_PREFIX",
                "cache",
                {200: ok("Removed.", ref("Cleared"), {"deleted": 3})},
                errors=(401, 403, 413, 415, 503),
                security=BEARER,
                body={"required": False, "content": json_body(ref("ClearRequest"), {})},
            )
        },
        "/cache/invalidate": {
            "post": operation(
                "cache_invalidate",
                "Remove the keys matching a glob under the prefix",
                "cache",
                {200: ok("Removed.", ref("Invalidated"), {"deleted": 1, "pattern": "device:pi-01|*"})},
                errors=(401, 403, 413, 415, 503),
                security=BEARER,
                body={"required": True, "content": json_body(ref("InvalidateRequest"), {"pattern": "device:*"})},
            )
        },
        "/environment/": {"post": environment},
        "/environment": {"post": {**environment, "operationId": "push_environment_no_slash"}},
        "/openapi.json": {
            "get": operation(
                "openapi",
                "This description",
                "docs",
                {200: {"description": "OpenAPI 3.1.", "content": {JSON: {"schema": {"type": "object"}}}}},
            )
        },
        "/docs": {
            "get": operation(
                "docs_page",
                "This description as a page (Swagger UI, served from here)",
                "docs",
                {200: {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}},
            )
        },
        "/docs/static/{filename}": {"get": static_operation("docs_static", "docs", STATIC_DIR)},
        "/metrics": {
            "get": operation(
                "metrics",
                "This replica's Prometheus metrics (every gunicorn worker of it)",
                "monitoring",
                {
                    200: {
                        "description": "Prometheus text format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                errors=(401, 404),
                security=[{"metricsToken": []}] if config.get("METRICS_TOKEN") else [],
                description="Open unless METRICS_TOKEN is set; 404 when METRICS_ENABLED=false.",
            )
        },
        "/cache/dashboard": {
            "get": operation(
                "cache_dashboard",
                "A live page of the cache (it asks for an admin token and calls the admin routes)",
                "monitoring",
                {200: {"description": "HTML.", "content": {"text/html": {"schema": {"type": "string"}}}}},
            )
        },
        "/cache/dashboard/static/{filename}": {
            "get": static_operation("cache_dashboard_static", "monitoring", DASHBOARD_STATIC_DIR)
        },
    }
    for kind, (measurement, field) in LEGACY_TYPES.items():
        out[f"/{kind}/{{device}}"] = {"get": legacy_operation(kind, measurement, field)}
    return out


def legacy_operation(kind: str, measurement: str, field: str) -> dict[str, Any]:
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
        query_param(
            "end_date", {"type": "string"}, f"ISO-8601 or a Unix time; default now; span ≤ {MAX_SPAN.days} days."
        ),
        query_param(
            "resolution", {"type": "integer", "minimum": 1, "maximum": MAX_RESOLUTION}, "Bucket minutes; default 30."
        ),
        query_param("page", {"type": "integer", "minimum": 1}, "Default 1."),
        query_param("size", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}, "Default 50."),
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
        {
            200: ok(
                "One page.",
                ref(f"Legacy_{kind}"),
                {"items": [item], "total": 1, "page": 1, "size": 50, "pages": 1},
            )
        },
        errors=(401, 403, 404, 422, 503),
        security=OPTIONAL_READER,
        parameters=parameters,
        description="Access as in /api/v1: public to anyone; private to its owner's bearer or the pair's X-API-Key "
        "(anonymous 401, another user 403). Parameters that do not fit: 422.",
    )


# The pages' own folders (their blueprints' static folders), and the types Flask serves files as.
STATIC_DIR = Path(__file__).parent / "static"
DASHBOARD_STATIC_DIR = Path(__file__).parents[1] / "monitoring" / "static"
STATIC_TYPES = (
    "text/javascript",
    "text/css",
    "text/plain",
    "text/markdown",
    "image/png",
    "image/svg+xml",
    "application/octet-stream",
)


def static_files(folder: Path = STATIC_DIR) -> list[str]:
    """Every file of a page's static folder, by its path in the folder."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def static_operation(operation_id: str, tag: str, folder: Path) -> dict[str, Any]:
    return operation(
        operation_id,
        "The page's assets",
        tag,
        {
            200: {
                "description": "The file.",
                "content": {media: {"schema": {"type": "string"}} for media in STATIC_TYPES},
            }
        },
        errors=(404,),
        parameters=[path_param("filename", {"enum": static_files(folder)}, "A file of the page.")],
    )


def openapi_document(config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "OpenSensor",
            "version": "1.0.0",
            "description": "IoT device-data service: devices push readings with an API key; users and the public "
            "read them back aggregated. Every error has the body "
            '`{"error": {"code", "message", "details"?}}`. Also serves opensensor-api\'s device '
            "protocol and reads (tag `opensensor`).",
        },
        "servers": [{"url": "/"}],
        "tags": [
            {"name": name, "description": description}
            for name, description in (
                ("health", "Probes."),
                ("keys", "Device registration (user bearer)."),
                ("readings", "Pushes (device key) and queries."),
                ("devices", "The device lookup and list."),
                ("cache", "Cache administration (admin bearer)."),
                ("opensensor", "opensensor-api's device protocol and legacy reads."),
                ("monitoring", "Prometheus metrics and the cache's dashboard page."),
                ("docs", "This description."),
            )
        ],
        "paths": paths(config),
        "components": {
            "schemas": schemas(config),
            "responses": {
                name: {
                    "description": description,
                    "content": json_body(
                        {
                            "allOf": [
                                ref("Error"),
                                {"properties": {"error": {"properties": {"code": {"enum": codes}}}}},
                            ]
                        },
                        {"error": {"code": codes[0], "message": description}},
                    ),
                }
                for name, codes, description in ERRORS.values()
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A user token from `flask --app wsgi users create NAME` (`ost_…`); "
                    "/cache needs an admin's.",
                },
                "metricsToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "METRICS_TOKEN, when set: the only credential /metrics takes.",
                },
                "apiKeyAuth": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-API-Key",
                    "description": "A device key from POST /api/v1/api-keys (`osk_…`), or an imported opensensor key.",
                },
            },
        },
    }
