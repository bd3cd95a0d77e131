"""GET /openapi.json: a valid OpenAPI 3.1 document that cannot drift from the code.

The document is written by hand (app/docs/openapi.py says why); these tests are what keeps it
true: every route of ``app.url_map`` is in it and every path in it is served, request fields
equal the parsers' own field sets, the query parameters are exactly those the parsers read, and
every example validates against its schema. Responses are checked against it by Schemathesis
(tests/test_schemathesis.py).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from werkzeug.datastructures import MultiDict

from app.cache_admin.schema import INVALIDATE_FIELDS, WARM_FIELDS
from app.compat.protocol import BLOCKS, LEGACY_TYPES, METADATA_FIELDS
from app.compat.views import legacy_query
from app.docs.openapi import openapi_document, static_files
from app.keys.service import NEW_KEY_FIELDS, PUBLIC_FIELDS
from app.monitoring.openapi import DASHBOARD_STATIC_DIR
from app.readings.schema import (
    AGGS,
    PUMP_FIELDS,
    PUSH_FIELDS,
    QUERYABLE,
    READINGS_FIELDS,
    RELAY_FIELDS,
    TEMP_UNITS,
    parse_query,
)
from tests.conftest import bearer, create_user
from tests.helpers import assert_error

METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture
def document(client) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def described(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item if method in METHODS}


def served(app) -> set[tuple[str, str]]:
    """(method, path) of every rule, in OpenAPI's template syntax; HEAD and OPTIONS are Flask's own."""
    return {
        (method, re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def test_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    validate(document)  # openapi-spec-validator


def test_served_document_is_the_one_built_from_the_apps_config(app, document):
    assert document == openapi_document(app.config)
    history_limit = document["paths"]["/cache/stats/history"]["get"]["parameters"][0]["schema"]
    assert history_limit["maximum"] == app.config["STATS_HISTORY_SIZE"]


def test_every_route_is_described_and_every_described_operation_is_served(app, document):
    missing_here = served(app) - described(document)
    not_served = described(document) - served(app)
    assert not missing_here, f"routes the document lacks: {sorted(missing_here)}"
    assert not not_served, f"operations the app does not serve: {sorted(not_served)}"


def test_the_drift_check_sees_a_route_or_a_description_on_one_side_only(make_app):
    app = make_app()
    document = openapi_document(app.config)
    app.add_url_rule("/metrics/extra", "extra", lambda: "")  # e.g. a route added by another change
    del document["paths"]["/cache/clear"]
    assert served(app) - described(document) == {("GET", "/metrics/extra"), ("POST", "/cache/clear")}
    document["paths"]["/gone"] = {"get": {}}
    assert described(document) - served(app) == {("GET", "/gone")}


def test_path_parameters_are_the_routes_variables(app, document):
    for path, item in document["paths"].items():
        declared = set(re.findall(r"{([^}]+)}", path))
        for method, op in item.items():
            if method in METHODS:
                names = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
                assert names == declared, (method, path)


def test_operation_ids_are_unique_and_links_point_at_them(document):
    ids = [op["operationId"] for item in document["paths"].values() for m, op in item.items() if m in METHODS]
    assert len(ids) == len(set(ids))
    for item in document["paths"].values():
        for op in (op for m, op in item.items() if m in METHODS):
            for response in op["responses"].values():
                for link in response.get("links", {}).values():
                    assert link["operationId"] in ids


def test_request_bodies_have_exactly_the_fields_the_parsers_allow(document):
    schemas = document["components"]["schemas"]
    assert set(schemas["NewKey"]["properties"]) == NEW_KEY_FIELDS
    assert set(schemas["Push"]["properties"]) == PUSH_FIELDS
    assert set(schemas["Readings"]["properties"]) == READINGS_FIELDS
    assert set(schemas["Relay"]["properties"]) == set(RELAY_FIELDS)
    assert set(schemas["Pump"]["properties"]) == set(PUMP_FIELDS)
    assert set(schemas["WarmRequest"]["properties"]) == WARM_FIELDS
    assert set(schemas["InvalidateRequest"]["properties"]) == INVALIDATE_FIELDS
    for name in ("NewKey", "Push", "Readings", "Relay", "Pump", "WarmRequest", "InvalidateRequest"):
        assert schemas[name]["additionalProperties"] is False, name  # the parsers reject unknown fields
    environment = schemas["Environment"]["properties"]
    assert set(environment) == {"device_metadata", *BLOCKS}
    assert set(environment["device_metadata"]["properties"]) == set(METADATA_FIELDS)
    for block, (field, _, unit) in BLOCKS.items():
        assert set(environment[block]["properties"]) == {field, "timestamp", *(["unit"] if unit else [])}


def test_response_fields_are_the_services_own(document):
    schemas = document["components"]["schemas"]
    assert set(schemas["Key"]["properties"]) == set(PUBLIC_FIELDS)
    assert set(schemas["KeyCreated"]["properties"]) == {*PUBLIC_FIELDS, "api_key"}
    page = schemas["ReadingsPage"]["properties"]
    assert page["measurement"]["enum"] == list(QUERYABLE) and page["agg"]["enum"] == list(AGGS)
    for kind, (_, field) in LEGACY_TYPES.items():
        item = schemas[f"Legacy_{kind}"]["properties"]["items"]["items"]["properties"]
        assert set(item) == {"timestamp", field, *(["unit"] if kind == "temp" else [])}


class RecordingArgs(MultiDict):
    """Query arguments that remember which names the parser asked for."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def get(self, key, default=None, type=None):  # noqa: A002 - MultiDict's signature
        self.read.add(key)
        return super().get(key, default, type)

    def __contains__(self, key) -> bool:
        self.read.add(key)
        return super().__contains__(key)


def query_names(document: dict[str, Any], path: str) -> set[str]:
    return {p["name"] for p in document["paths"][path]["get"].get("parameters", []) if p["in"] == "query"}


def test_readings_query_parameters_are_exactly_those_parse_query_reads(document):
    args = RecordingArgs()
    parse_query("temp", args)
    assert query_names(document, "/api/v1/devices/{device_id}/{device_name}/readings/{measurement}") == args.read
    unit = next(
        p
        for p in document["paths"]["/api/v1/devices/{device_id}/{device_name}/readings/{measurement}"]["get"][
            "parameters"
        ]
        if p["name"] == "unit"
    )
    assert unit["schema"]["enum"] == list(TEMP_UNITS)


@pytest.mark.parametrize("kind", sorted(LEGACY_TYPES))
def test_legacy_query_parameters_are_exactly_those_legacy_query_reads(document, kind):
    args = RecordingArgs()
    legacy_query(LEGACY_TYPES[kind][0], args)
    # unit is read for temp and documented (as ignored) on every type, as opensensor took it everywhere
    assert query_names(document, f"/{kind}/{{device}}") == args.read | {"unit"}


def test_history_limit_is_read_and_bounded_as_documented(app, client, document):
    admin = create_user(app, "root", admin=True)
    bound = document["paths"]["/cache/stats/history"]["get"]["parameters"][0]["schema"]["maximum"]
    for limit in (0, bound + 1):
        response = client.get("/cache/stats/history", query_string={"limit": limit}, headers=bearer(admin))
        assert assert_error(response, 400, "validation_error")["details"] == {"field": "limit"}


def test_static_filenames_are_the_static_folders_files(document):
    [param] = document["paths"]["/docs/static/{filename}"]["get"]["parameters"]
    assert param["schema"]["enum"] == static_files() and "docs.js" in param["schema"]["enum"]
    [param] = document["paths"]["/cache/dashboard/static/{filename}"]["get"]["parameters"]
    assert param["schema"]["enum"] == static_files(DASHBOARD_STATIC_DIR)
    assert "vendor/uplot/uPlot.iife.min.js" in param["schema"]["enum"]


def examples(document: dict[str, Any]):
    """(pointer to the schema, example) for every example of a request body or a response."""
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            base = "/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method
            for media_type, media in op.get("requestBody", {}).get("content", {}).items():
                for example in media.get("examples", {}).values():
                    yield f"{base}/requestBody/content/{media_type.replace('/', '~1')}/schema", example["value"]
            for status, response in op["responses"].items():
                for media_type, media in response.get("content", {}).items():
                    for example in media.get("examples", {}).values():
                        where = f"{base}/responses/{status}/content/{media_type.replace('/', '~1')}/schema"
                        yield where, example["value"]
    for name, response in document["components"]["responses"].items():
        for example in response["content"]["application/json"]["examples"].values():
            yield f"/components/responses/{name}/content/application~1json/schema", example["value"]


def test_every_example_is_valid_against_its_schema(document):
    registry = Registry().with_resource("urn:openapi", Resource.from_contents(document, DRAFT202012))
    checked = 0
    for pointer, example in examples(document):
        validator = Draft202012Validator(
            {"$ref": f"urn:openapi#{pointer}"}, registry=registry, format_checker=FormatChecker()
        )
        errors = [error.message for error in validator.iter_errors(example)]
        assert not errors, (pointer, errors)
        checked += 1
    assert checked >= 40


def test_every_body_and_every_json_answer_has_an_example(document):
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            for media in op.get("requestBody", {}).get("content", {}).values():
                assert media.get("examples"), (method, path, "request")
            for status, response in op["responses"].items():
                media = response.get("content", {}).get("application/json")
                if status.startswith("2") and media and path != "/openapi.json":
                    assert media.get("examples"), (method, path, status)


def test_every_operation_documents_the_400_of_the_input_guard_and_its_security(document):
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                assert "400" in op["responses"], (method, path)
                assert "security" in op, (method, path)
                if op["security"] and {} not in op["security"]:
                    assert "401" in op["responses"], (method, path)
    assert set(document["components"]["securitySchemes"]) == {"bearerAuth", "apiKeyAuth", "metricsToken"}
    assert document["components"]["securitySchemes"]["apiKeyAuth"] == {
        **document["components"]["securitySchemes"]["apiKeyAuth"],
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }


def test_a_device_id_with_a_trailing_newline_is_refused_as_the_documented_pattern_says(client, owner, document):
    """Python's ``$`` matched before a final newline; the document's pattern (ECMA-262) does not."""
    pattern = document["components"]["schemas"]["DeviceId"]["pattern"]
    assert re.fullmatch(pattern, "dev-1\n") is None
    response = client.post("/api/v1/api-keys", json={"device_id": "dev-1\n", "device_name": "x"}, headers=bearer(owner))
    assert_error(response, 400, "validation_error")


def test_metrics_is_open_unless_a_metrics_token_is_set(make_app):
    assert openapi_document(make_app().config)["paths"]["/metrics"]["get"]["security"] == []
    guarded = openapi_document(make_app(METRICS_TOKEN="scrape-me").config)["paths"]["/metrics"]["get"]
    assert guarded["security"] == [{"metricsToken": []}] and "401" in guarded["responses"]
