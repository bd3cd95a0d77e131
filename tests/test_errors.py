"""Every error has the spec's JSON shape: unknown routes, wrong methods, bodies, and bugs (500)."""

from __future__ import annotations

import json
import logging

import pytest

from tests.conftest import bearer, build_app, stop_app
from tests.helpers import assert_error


@pytest.mark.parametrize(
    "path",
    ["/", "/api", "/api/v1", "/api/v1/nope", "/api/v1/devices/a", "/api/v1/devices/a/b/c", "/health/nope", "/cache"],
)
def test_unknown_route_is_a_json_404(client, path):
    assert_error(client.get(path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("get", "/api/v1/readings", {"POST"}),
        ("put", "/api/v1/readings", {"POST"}),
        ("delete", "/api/v1/api-keys", {"GET", "POST"}),
        ("get", "/api/v1/api-keys/0123456789abcdef", {"DELETE"}),
        ("post", "/api/v1/devices", {"GET"}),
        ("delete", "/api/v1/devices/a/b", {"GET"}),
        ("post", "/api/v1/devices/a/b/readings/temp", {"GET"}),
        ("post", "/health", {"GET"}),
        ("patch", "/health/live", {"GET"}),
    ],
)
def test_wrong_method_is_a_json_405_with_allow(client, method, path, allowed):
    response = getattr(client, method)(path)
    assert_error(response, 405, "method_not_allowed")
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}


def test_unexpected_exception_is_a_json_500_without_traceback(settings, caplog):
    app = build_app(settings)

    def explode():
        raise RuntimeError("secret detail from deep inside")

    app.add_url_rule("/boom", "boom", explode)
    try:
        with caplog.at_level(logging.ERROR, logger="app.errors"):
            response = app.test_client().get("/boom")
        error = assert_error(response, 500, "internal_error")
        assert "secret detail" not in response.get_data(as_text=True)
        assert "RuntimeError" not in response.get_data(as_text=True)
        assert error["message"] == "internal server error"
        assert any(record.exc_info for record in caplog.records), "the traceback is logged, not sent"
    finally:
        stop_app(app)


def test_body_over_64_kib_on_key_creation_is_413(client, owner):
    body = json.dumps({"device_id": "d", "device_name": "n", "description": "x" * 66_000})
    response = client.post("/api/v1/api-keys", data=body, content_type="application/json", headers=bearer(owner))
    assert_error(response, 413, "payload_too_large")
    assert client.get("/api/v1/api-keys", headers=bearer(owner)).get_json() == {"keys": []}


def test_json_with_a_charset_parameter_is_json(client, owner):
    body = json.dumps({"device_id": "d", "device_name": "n"})
    response = client.post(
        "/api/v1/api-keys", data=body, content_type="application/json; charset=utf-8", headers=bearer(owner)
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        ("{}", "text/plain", 415, "unsupported_media_type"),
        ("a=b", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        ("", None, 415, "unsupported_media_type"),
        ("{", "application/json", 400, "validation_error"),
        ("", "application/json", 400, "validation_error"),
        ("null", "application/json", 400, "validation_error"),
        ("42", "application/json", 400, "validation_error"),
        ('"text"', "application/json", 400, "validation_error"),
        (b"\xff\xfe{}", "application/json", 400, "validation_error"),
    ],
    ids=["text", "form", "no body", "truncated", "empty json", "null", "number", "string", "not utf-8"],
)
def test_bodies_that_are_not_a_json_object_are_rejected(client, owner, data, content_type, status, code):
    kwargs = {"data": data} | ({"content_type": content_type} if content_type else {})
    assert_error(client.post("/api/v1/api-keys", headers=bearer(owner), **kwargs), status, code)


def test_responses_are_json_utf_8(client, owner):
    response = client.get("/api/v1/devices")
    assert response.mimetype == "application/json"
    assert response.mimetype_params.get("charset", "utf-8").lower() == "utf-8"


def test_deeply_nested_json_is_a_validation_error_not_a_500(client, owner):
    for data in ("[" * 30_000 + "]" * 30_000, '{"a":' * 10_000 + "1" + "}" * 10_000):
        response = client.post("/api/v1/api-keys", data=data, content_type="application/json", headers=bearer(owner))
        assert_error(response, 400, "validation_error")
