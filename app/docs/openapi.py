"""The OpenAPI 3.1 description of every route: each feature describes its own, this puts them together.

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

Where each part is: the words it is written in (operations, parameters, the shared error
answers) are ``app/openapi.py``; a feature's paths and schemas are its ``openapi.py`` (health,
keys, readings, devices, monitoring); the /cache admin routes' are ``cache_paths.py`` and
opensensor's ``compat_paths.py`` here; this module holds what every part shares (the error
shape, the device pair, the security schemes), the docs page's own paths and the assembly.
Adding a route is one entry in its feature's ``paths()`` (and a schema in its ``schemas()``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.devices import openapi as devices
from app.docs import cache_paths, compat_paths
from app.health import openapi as health
from app.keys import openapi as keys
from app.monitoring import openapi as monitoring
from app.openapi import (
    ERRORS,
    JSON,
    TIMESTAMP,
    Schema,
    files_in,
    json_body,
    obj,
    operation,
    page_operation,
    ref,
    static_operation,
)
from app.readings import openapi as readings
from app.validation import DEVICE_ID_RE, DEVICE_NAME_RE

STATIC_DIR = Path(__file__).parent / "static"  # the docs page's (its blueprint's static folder)

TAGS = (
    ("health", "Probes."),
    ("keys", "Device registration (user bearer)."),
    ("readings", "Pushes (device key) and queries."),
    ("devices", "The device lookup and list."),
    ("cache", "Cache administration (admin bearer)."),
    ("opensensor", "opensensor-api's device protocol and legacy reads."),
    ("monitoring", "Prometheus metrics and the cache's dashboard page."),
    ("docs", "This description."),
)
SECURITY_SCHEMES = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "A user token from `flask --app wsgi users create NAME` (`ost_…`); /cache needs an admin's.",
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
}


def static_files(folder: Path = STATIC_DIR) -> list[str]:
    """The files a page's static route serves (this page's, unless another folder is given)."""
    return files_in(folder)


def shared_schemas() -> dict[str, Schema]:
    """The error body of every route, and the device pair's parts."""
    error = obj(
        {
            "code": {"type": "string", "pattern": "^[a-z_]+$"},
            "message": {"type": "string", "minLength": 1},
            "details": {"type": "object"},
        },
        ["code", "message"],
    )
    return {
        "Error": obj({"error": error}, ["error"]),
        "DeviceId": {"type": "string", "pattern": DEVICE_ID_RE.pattern, "examples": ["pi-01"]},
        "DeviceName": {"type": "string", "pattern": DEVICE_NAME_RE.pattern, "examples": ["greenhouse"]},
        "Timestamp": TIMESTAMP,
    }


def error_responses() -> dict[str, Any]:
    """One shared answer per error status, its codes narrowed from the Error schema."""
    out = {}
    for name, codes, description in ERRORS.values():
        schema = {"allOf": [ref("Error"), {"properties": {"error": {"properties": {"code": {"enum": codes}}}}}]}
        example = {"error": {"code": codes[0], "message": description}}
        out[name] = {"description": description, "content": json_body(schema, example)}
    return out


def docs_paths() -> dict[str, dict[str, Any]]:
    openapi_json = {200: {"description": "OpenAPI 3.1.", "content": {JSON: {"schema": {"type": "object"}}}}}
    return {
        "/openapi.json": {"get": operation("openapi", "This description", "docs", openapi_json)},
        "/docs": {
            "get": page_operation("docs_page", "This description as a page (Swagger UI, served from here)", "docs")
        },
        "/docs/static/{filename}": {"get": static_operation("docs_static", "docs", STATIC_DIR)},
    }


def paths(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        **health.paths(),
        **keys.paths(),
        **readings.paths(),
        **devices.paths(),
        **cache_paths.paths(config),
        **compat_paths.push_paths(),
        **docs_paths(),
        **monitoring.paths(config),
        **compat_paths.legacy_paths(),
    }


def schemas(config: Mapping[str, Any]) -> dict[str, Schema]:
    return {
        **shared_schemas(),
        **health.schemas(),
        **keys.schemas(),
        **readings.schemas(),
        **devices.schemas(),
        **cache_paths.schemas(config),
        **compat_paths.schemas(),
    }


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
        "tags": [{"name": name, "description": description} for name, description in TAGS],
        "paths": paths(config),
        "components": {
            "schemas": schemas(config),
            "responses": error_responses(),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }
