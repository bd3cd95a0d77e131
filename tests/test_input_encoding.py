"""Text that UTF-8 cannot encode (lone surrogates) is a 400 wherever it enters, never a 500.

Issue 8, defect 3: ``POST /cache/invalidate {"pattern": "\\ud800"}`` answered 500 (redis-py's
UnicodeEncodeError). JSON escapes are the way a lone surrogate reaches the app over HTTP;
werkzeug turns percent-encoded invalid UTF-8 in a path into U+FFFD and keeps it percent-encoded
in a query, gunicorn refuses raw non-ASCII bytes in the request line, and a server that decodes
with ``surrogateescape`` (or raw bytes in ``QUERY_STRING``) would hand over the rest. Every route
of ``app.url_map`` is fuzzed with each of them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder, run_wsgi_app

from tests.conftest import bearer, create_user, register
from tests.helpers import assert_error, stored_readings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SURROGATES = ["\ud800", "\udfff", "\udcff", "ok\udc80ok"]
INVALID_UTF8 = ["%ED%A0%80", "%FF", "%C0%80", "%E2%82"]  # a surrogate's bytes, 0xFF, overlong NUL, truncated


def routes(app) -> list[tuple[str, str]]:
    """Every (method, rule) the app serves, HEAD and OPTIONS aside."""
    return sorted(
        (method, rule.rule) for rule in app.url_map.iter_rules() for method in rule.methods - {"HEAD", "OPTIONS"}
    )


def concrete(rule: str, value: str = "x|y") -> str:
    return re.sub(r"<(?:[^:<>]+:)?[^<>]+>", value, rule)


@pytest.fixture
def world(app, client, owner):
    admin = create_user(app, "root", admin=True)
    key = register(client, owner, "dev-1", "room")
    return {"admin": admin, "owner": owner, "key": key}


def auth_for(rule: str, world) -> dict[str, str]:
    """The credentials a route needs, so that the body is what decides."""
    if rule.startswith("/cache"):
        return bearer(world["admin"])
    if rule.startswith("/api/v1/readings"):
        return {"X-API-Key": world["key"]["api_key"]}
    return bearer(world["owner"])


def test_invalidate_with_a_lone_surrogate_pattern_is_400_not_500(client, world):
    """The exact case of issue 8: a valid JSON escape that redis-py cannot encode."""
    response = client.post(
        "/cache/invalidate",
        data='{"pattern": "\\ud800"}',
        content_type="application/json",
        headers=auth_for("/cache", world),
    )
    error = assert_error(response, 400, "validation_error")
    assert error["details"] == {"field": "pattern"}


def test_every_json_route_rejects_a_lone_surrogate_at_any_depth(app, client, world):
    posts = [rule for method, rule in routes(app) if method == "POST"]
    assert len(posts) >= 6
    pair = {"device_id": "dev-1", "device_name": "room"}
    relay = {"position": 1, "enabled": True, "description": "a\ud800"}
    metadata = {"device_id": "dev-1", "name": "room", "api_key": world["key"]["api_key"]}
    bodies = [
        {"pattern": "\ud800"},
        {**pair, "description": "\udfff"},
        {**pair, "readings": {"pressure": 1, "pressure_unit": "\udc00"}},
        {**pair, "readings": {"relays": [relay]}},
        {"device_metadata": metadata, "pressure": {"pressure": 1, "unit": "\ud800"}},
        {"\ud800": 1},
        {"a": [[[{"b": "\udbff"}]]]},
    ]
    for rule in posts:
        for body in bodies:
            data = json.dumps(body)  # ASCII-only JSON: the surrogate travels as a \\uXXXX escape
            response = client.post(
                concrete(rule), data=data, content_type="application/json", headers=auth_for(rule, world)
            )
            assert_error(response, 400, "validation_error")
    assert stored_readings(app) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
surrogate_text = st.builds(
    lambda a, s, b: a + s + b, st.text(max_size=3), st.characters(categories=["Cs"]), st.text(max_size=3)
)


@st.composite
def bodies_with_a_surrogate(draw) -> dict:
    """A JSON object with one unencodable string somewhere: as a value or as a key, at any depth."""
    body = draw(st.dictionaries(st.text(max_size=5), json_values, max_size=3))
    path = draw(st.lists(st.text(min_size=1, max_size=4), min_size=0, max_size=3))
    bad = draw(surrogate_text)
    node = body
    for part in path:
        node = node.setdefault(part, {}) if isinstance(node.get(part), dict) else node.setdefault(part + "_", {})
    if draw(st.booleans()):
        node[bad] = draw(json_values)
    else:
        node[draw(st.text(max_size=4))] = bad
    return body


@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(body=bodies_with_a_surrogate(), route=st.integers(min_value=0, max_value=50))
def test_any_json_body_with_a_surrogate_is_a_400_on_any_json_route(app, client, world, body, route):
    posts = [rule for method, rule in routes(app) if method == "POST"]
    rule = posts[route % len(posts)]
    response = client.post(
        concrete(rule), data=json.dumps(body), content_type="application/json", headers=auth_for(rule, world)
    )
    assert_error(response, 400, "validation_error")


@pytest.mark.parametrize("bad", SURROGATES)
def test_a_surrogate_in_a_header_is_400_on_every_route(app, client, world, bad):
    for method, rule in routes(app):
        for header in ("X-API-Key", "Authorization", "X-Anything"):
            response = client.open(concrete(rule), method=method, headers={**auth_for(rule, world), header: bad})
            assert_error(response, 400, "validation_error")


@pytest.mark.parametrize("bad", SURROGATES)
def test_a_surrogate_in_a_path_segment_is_400_on_every_route(app, world, bad):
    """PEP 3333 wants latin-1 here; a server decoding with surrogateescape made werkzeug's routing raise.

    Called as WSGI directly: Flask's test client itself cannot build a request from such an environ.
    """
    for method, rule in routes(app):
        environ = EnvironBuilder(method=method, headers=auth_for(rule, world)).get_environ()
        environ["PATH_INFO"] = concrete(rule, f"a{bad}b") if "<" in rule else rule + bad
        body, status, headers = run_wsgi_app(app, environ, buffered=True)
        assert status.startswith("400 ") and headers["Content-Type"] == "application/json", (rule, status)
        assert json.loads(b"".join(body))["error"]["code"] == "validation_error"


def test_raw_bytes_in_the_query_string_are_400_on_every_route(app, client, world):
    for method, rule in routes(app):
        for query in ("start=\xff", "\xed\xa0\x80=1", "a=%FF&b=\xc3"):
            response = client.open(
                concrete(rule), method=method, headers=auth_for(rule, world), environ_overrides={"QUERY_STRING": query}
            )
            assert_error(response, 400, "validation_error")


@pytest.mark.parametrize("bad", INVALID_UTF8)
def test_percent_encoded_invalid_utf8_in_paths_and_queries_is_never_a_500(app, client, world, bad):
    for method, rule in routes(app):
        variables = re.findall(r"<(?:[^:<>]+:)?([^<>]+)>", rule)
        urls = [concrete(rule, f"a{bad}b") for _ in variables[:1]] + [
            concrete(rule) + f"?start={bad}&{bad}=1&unit={bad}"
        ]
        for url in urls:
            response = client.open(url, method=method, headers=auth_for(rule, world))
            assert response.status_code < 500, (method, url, response.get_data(as_text=True))
            if response.status_code >= 400:
                assert_error(response, response.status_code, response.get_json()["error"]["code"])


def cli_commands(group, prefix=()):
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            yield from cli_commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


def test_every_cli_command_refuses_unencodable_arguments(app):
    """Each command's string arguments and options get a lone surrogate; each answers a usage error."""
    runner = app.test_cli_runner()
    checked = []
    for path, command in cli_commands(app.cli):
        for param in command.params:
            if getattr(param, "is_flag", False) or param.type.name not in ("text", "path"):
                continue
            args = [*path]
            for other in command.params:  # the other required values, well formed
                if other is not param and other.required:
                    args += ([] if other.param_type_name == "argument" else [other.opts[0]]) + [
                        "mongodb://127.0.0.1:1/x"
                    ]
            args += ([] if param.param_type_name == "argument" else [param.opts[0]]) + ["bad\udcff"]
            result = runner.invoke(args=args)
            assert result.exit_code == 2, (args, result.output)
            assert "is not valid UTF-8 text" in result.output and "Traceback" not in result.output
            checked.append(" ".join(path))
    assert {"users create", "import-opensensor", "demo-data"} <= set(checked)
    with app.app_context():
        assert app.extensions["mongo"].db["users"].count_documents({}) == 0


def test_a_user_name_of_invalid_utf8_bytes_on_the_command_line_is_a_usage_error(settings):
    """Real argv bytes: Python hands them to click as lone surrogates (surrogateescape)."""
    env = {**os.environ, **{k: str(v) for k, v in settings.items() if k != "TESTING"}}
    args = [sys.executable.encode(), b"-m", b"flask", b"--app", b"wsgi", b"users", b"create", b"bob\xff"]
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert b"is not valid UTF-8 text" in result.stderr and b"Traceback" not in result.stderr
