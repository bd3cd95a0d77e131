"""The warm device read answered before Flask (``app/devices/hot.py``): the bytes the view
answers, the counts it makes, and every other request passed on to Flask untouched."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from werkzeug.test import EnvironBuilder, run_wsgi_app

from app.cache.shared import USER
from app.metrics import ENVIRON_KEY
from tests.conftest import bearer, build_app, create_user, near_ready, register, stop_app
from tests.helpers import wait_until

ROUTE = "/api/v1/devices/<device_id>/<device_name>"


class Recorder:
    """Flask's WSGI app behind the lane, counting the requests the lane passed on."""

    def __init__(self, wsgi_app: Callable[..., Any]) -> None:
        self.wsgi_app = wsgi_app
        self.calls = 0

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Any:
        self.calls += 1
        return self.wsgi_app(environ, start_response)


def make(settings: dict, **extra: Any) -> tuple[Flask, Recorder]:
    app = build_app(settings, CACHE_FLUSH_INTERVAL=60, **extra)  # counters stay in the buffer to be read
    lane = app.extensions["hot_read"]
    lane.wsgi_app = recorder = Recorder(lane.wsgi_app)
    near_ready(app)
    return app, recorder


@pytest.fixture
def served(settings: dict) -> Iterator[tuple[Flask, Recorder, dict]]:
    app, recorder = make(settings)
    client = app.test_client()
    owner, other = create_user(app, "owner"), create_user(app, "other")
    register(client, owner, "pub-1", "room")
    register(client, owner, "pub-2", "room")
    key = register(client, owner, "priv-1", "cellar", private=True)
    yield app, recorder, {"owner": owner, "other": other, "key": key["api_key"]}
    stop_app(app)


def call(wsgi_app: Callable[..., Any], path: str, headers: dict, method: str = "GET") -> tuple:
    """Status, headers (X-Request-ID apart) and body of one request, and its log fields."""
    path, _, query = path.partition("?")
    environ = EnvironBuilder(path=path, query_string=query, headers=headers, method=method).get_environ()
    seen: list[dict] = []  # run_wsgi_app passes on a copy of the environ

    def app(environ: dict, start_response: Callable[..., Any]) -> Any:
        seen.append(environ)
        return wsgi_app(environ, start_response)

    body_iter, status, response_headers = run_wsgi_app(app, environ, buffered=True)
    body = b"".join(body_iter)
    listed = [(name, value) for name, value in response_headers.to_wsgi_list() if name != "X-Request-ID"]
    return (status, listed, body), response_headers.get("X-Request-ID"), seen[0].get(ENVIRON_KEY)


def warm(app: Flask, recorder: Recorder, path: str, headers: dict) -> None:
    """Read until the lane answers (the first reads fill Redis, then the near cache)."""

    def lane_answered() -> bool:
        before = recorder.calls
        call(app.wsgi_app, path, headers)
        return recorder.calls == before

    assert wait_until(lane_answered, 10), f"the lane never answered {path}"


def counts(app: Flask) -> dict[str, float]:
    cache = app.extensions["shared_cache"]
    out: dict[str, float] = {f"device {k}": v for k, v in cache.pending_counts().items()}
    out.update({f"user {k}": v for k, v in cache.pending_counts(USER).items()})
    out["requests"] = (
        REGISTRY.get_sample_value("opensensor_http_requests_total", {"method": "GET", "route": ROUTE, "status": "200"})
        or 0.0
    )
    return out


def delta(before: dict, after: dict) -> dict:
    return {name: after[name] - before[name] for name in after if after[name] != before[name]}


READS = {
    "anonymous, public": ("/api/v1/devices/pub-1/room", lambda u: {}),
    "owner's bearer, private": ("/api/v1/devices/priv-1/cellar", lambda u: bearer(u["owner"])),
    "owner's bearer, public": ("/api/v1/devices/pub-2/room", lambda u: bearer(u["owner"])),
    "another user's bearer, public": ("/api/v1/devices/pub-1/room", lambda u: bearer(u["other"])),
    "a sane X-Request-ID": ("/api/v1/devices/pub-1/room", lambda u: {"X-Request-ID": "dash-42"}),
}


@pytest.mark.parametrize("case", READS)
def test_the_lane_answers_a_warm_read_with_the_views_bytes_and_counts(served, case):
    app, recorder, users = served
    path, headers_of = READS[case]
    headers = headers_of(users)
    warm(app, recorder, path, headers)
    lane = app.wsgi_app
    flask = app.extensions["hot_read"].wsgi_app

    before = counts(app)
    by_flask, flask_id, flask_log = call(flask, path, headers)
    flask_counts = delta(before, counts(app))
    before, calls = counts(app), recorder.calls
    by_lane, lane_id, lane_log = call(lane, path, headers)
    assert recorder.calls == calls  # the lane answered, Flask never saw it
    assert by_lane == by_flask and by_lane[0] == "200 OK"
    assert delta(before, counts(app)) == flask_counts  # hits, L1 hits, the user's, the request metric
    assert flask_counts["device hits"] == 1 and flask_counts["requests"] == 1
    assert lane_log == {**flask_log, "request_id": lane_id} and lane_log["cache"] == "l1"
    if "X-Request-ID" in headers:
        assert lane_id == flask_id == headers["X-Request-ID"]
    else:
        assert lane_id and lane_id != flask_id


PASSED_ON = {
    "unknown device (404)": ("/api/v1/devices/nope-1/room", lambda u: {}, 404),
    "private, anonymous (401)": ("/api/v1/devices/priv-1/cellar", lambda u: {}, 401),
    "private, another user (403)": ("/api/v1/devices/priv-1/cellar", lambda u: bearer(u["other"]), 403),
    "a wrong bearer token (401)": (
        "/api/v1/devices/pub-1/room",
        lambda u: {"Authorization": "Bearer " + u["owner"]["token"][:-2] + "xx"},
        401,
    ),
    "a malformed Authorization (401)": ("/api/v1/devices/pub-1/room", lambda u: {"Authorization": "Basic x"}, 401),
    "an empty X-API-Key (401)": ("/api/v1/devices/pub-1/room", lambda u: {"X-API-Key": ""}, 401),
    "the pair's own API key": ("/api/v1/devices/priv-1/cellar", lambda u: {"X-API-Key": u["key"]}, 200),
    "a query string": ("/api/v1/devices/pub-1/room?x=1", lambda u: {}, 200),
    "a trailing slash": ("/api/v1/devices/pub-1/room/", lambda u: {}, 404),
    "an Origin": ("/api/v1/devices/pub-1/room", lambda u: {"Origin": "https://dash.example"}, 200),
}


@pytest.mark.parametrize("case", PASSED_ON)
def test_anything_else_goes_to_flask_and_is_counted_once(served, case):
    app, recorder, users = served
    path, headers_of, status = PASSED_ON[case]
    warm(app, recorder, "/api/v1/devices/pub-1/room", {})
    warm(app, recorder, "/api/v1/devices/priv-1/cellar", bearer(users["owner"]))
    headers = headers_of(users)
    flask = app.extensions["hot_read"].wsgi_app
    call(flask, path, headers)  # warm whatever this one looks up too (a user, a miss)

    before = counts(app)
    by_flask = call(flask, path, headers)[0]
    flask_counts = delta(before, counts(app))
    before, calls = counts(app), recorder.calls
    by_stack = call(app.wsgi_app, path, headers)[0]
    assert recorder.calls == calls + 1  # passed on
    assert by_stack == by_flask and int(by_stack[0].split()[0]) == status
    assert looked_up(delta(before, counts(app))) == looked_up(flask_counts)  # nothing counted twice


def looked_up(counted: dict) -> tuple[float, float]:
    """Device and user lookups counted (a hit or a miss each; a hit may be L1's by now)."""
    return tuple(counted.get(f"{kind} hits", 0) + counted.get(f"{kind} misses", 0) for kind in ("device", "user"))


def test_head_goes_to_flask(served):
    app, recorder, _ = served
    warm(app, recorder, "/api/v1/devices/pub-1/room", {})
    calls = recorder.calls
    status = call(app.wsgi_app, "/api/v1/devices/pub-1/room", {}, method="HEAD")[0][0]
    assert status == "200 OK" and recorder.calls == calls + 1


def test_the_lane_stands_aside_while_the_cache_may_not_serve(served):
    """Breaker open, an invalidation pending, or the lease run out: Flask's lookup decides."""
    app, recorder, _ = served
    cache = app.extensions["shared_cache"]
    path = "/api/v1/devices/pub-1/room"
    warm(app, recorder, path, {})
    for blocked in ("breaker", "pending", "lease"):
        calls = recorder.calls
        if blocked == "breaker":
            cache.breaker._opened_at = 1.0
        elif blocked == "pending":
            cache.invalidator._pending.add("x")
        else:
            cache.outbox.lease_until = 0.0
            cache.outbox._next_inline = float("inf")  # and no inline poll renews it
        try:
            call(app.wsgi_app, path, {})
            assert recorder.calls == calls + 1, blocked
        finally:
            cache.breaker._opened_at = None
            cache.invalidator._pending.clear()
            cache.outbox._next_inline = 0.0
        warm(app, recorder, path, {})


def test_with_cors_on_a_read_without_origin_says_vary_as_flask_does(settings):
    app, recorder = make(settings, CORS_ORIGINS="https://dash.example")
    try:
        register(app.test_client(), create_user(app, "owner"), "pub-1", "room")
        path = "/api/v1/devices/pub-1/room"
        warm(app, recorder, path, {})
        by_flask = call(app.extensions["hot_read"].wsgi_app, path, {})[0]
        calls = recorder.calls
        by_lane = call(app.wsgi_app, path, {})[0]
        assert recorder.calls == calls and by_lane == by_flask
        assert ("Vary", "Origin") in by_lane[1]
    finally:
        stop_app(app)


def test_a_change_is_seen_by_the_next_read_through_the_lane(served):
    app, recorder, users = served
    client = app.test_client()
    path = "/api/v1/devices/pub-1/room"
    warm(app, recorder, path, {})
    key = register(client, users["owner"], "pub-3", "room")
    assert "pub-3" in client.get(path).get_json()["chain"]
    assert client.delete(f"/api/v1/api-keys/{key['key_id']}", headers=bearer(users["owner"])).status_code == 204
    assert "pub-3" not in client.get(path).get_json()["chain"]
