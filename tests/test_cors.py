"""CORS_ORIGINS: browsers on listed origins call the API and opensensor's routes, nothing else.

In process with the test client (which headers, on which paths, for which origins, on errors and
preflights), then in a real browser (Debian's chromium, Playwright): a page served from a second
local origin reads a private device from a live replica with a bearer token; a page from an
origin that is not listed is stopped by the browser itself.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.config import ConfigError, load_config
from tests.browser import CHROMIUM, chromium, new_page
from tests.conftest import bearer, create_user, register
from tests.helpers import assert_error

LISTED = "https://dash.example"
ELSEWHERE = "https://evil.example"
ALLOW_ORIGIN = "Access-Control-Allow-Origin"
CORS_HEADERS = (
    ALLOW_ORIGIN,
    "Access-Control-Allow-Credentials",
    "Access-Control-Expose-Headers",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Max-Age",
)
REQUESTED_HEADERS = "authorization, x-api-key, content-type, x-request-id"


def cors_headers(response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("Access-Control-")}


def preflight(client, path: str, origin: str = LISTED, method: str = "GET", headers: str = REQUESTED_HEADERS):
    return client.options(
        path,
        headers={"Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers},
    )


@pytest.fixture
def cors_app(make_app):
    return make_app(CORS_ORIGINS=f"{LISTED}, http://127.0.0.1:3000")


@pytest.fixture
def cors_client(cors_app):
    return cors_app.test_client()


@pytest.fixture
def private(cors_app, cors_client) -> tuple[dict, dict]:
    """A user and the key of their private device ``p-1|vault``."""
    user = create_user(cors_app, "owner")
    return user, register(cors_client, user, "p-1", "vault", private=True)


# -- which responses carry the headers -------------------------------------------------------


def test_a_listed_origin_reads_a_private_device_with_credentials_and_the_request_id_exposed(cors_client, private):
    user, _ = private
    response = cors_client.get("/api/v1/devices/p-1/vault", headers={**bearer(user), "Origin": LISTED})
    assert response.status_code == 200
    assert cors_headers(response) == {
        ALLOW_ORIGIN: LISTED,  # the origin itself, never "*"
        "Access-Control-Allow-Credentials": "true",
        "Access-Control-Expose-Headers": "X-Request-ID",
    }
    assert response.headers["Vary"] == "Origin"
    assert response.headers["X-Request-ID"]


def test_an_origin_that_is_not_listed_gets_no_cors_headers(cors_client):
    for origin in (ELSEWHERE, "null", "https://dash.example.evil.example", "http://dash.example"):
        response = cors_client.get("/api/v1/devices", headers={"Origin": origin})
        assert response.status_code == 200 and cors_headers(response) == {}, origin
        assert response.headers["Vary"] == "Origin"  # the same URL answers listed origins differently
        assert cors_headers(preflight(cors_client, "/api/v1/devices", origin=origin)) == {}, origin


def test_without_cors_origins_no_response_carries_cors_headers(client, owner):
    register(client, owner, "d-1", "room")
    for path in ("/api/v1/devices", "/api/v1/devices/d-1/room", "/temp/d-1%7Croom", "/health"):
        response = client.get(path, headers={"Origin": LISTED})
        assert response.status_code == 200 and cors_headers(response) == {}, path
        assert "Vary" not in response.headers
        assert cors_headers(preflight(client, path)) == {}, path


def test_a_request_without_origin_gets_no_cors_headers(cors_client):
    response = cors_client.get("/api/v1/devices")
    assert response.status_code == 200 and cors_headers(response) == {}


@pytest.mark.parametrize(
    "path",
    ["/cache/stats", "/cache/dashboard", "/metrics", "/health", "/health/live", "/docs", "/openapi.json"],
)
def test_admin_metrics_health_and_docs_routes_never_carry_cors_headers(cors_app, cors_client, path):
    admin = create_user(cors_app, "admin", admin=True)
    response = cors_client.get(path, headers={**bearer(admin), "Origin": LISTED})
    assert response.status_code == 200, path
    assert cors_headers(response) == {} and "Vary" not in response.headers
    assert cors_headers(preflight(cors_client, path)) == {}


def test_opensensor_routes_carry_cors_headers_for_a_listed_origin(cors_client, private):
    user, key = private
    body = {"device_metadata": {"device_id": "p-1", "name": "vault", "api_key": key["api_key"]}, "rh": {"rh": 40}}
    for path in ("/environment/", "/environment"):
        response = cors_client.post(path, json=body, headers={"Origin": LISTED})
        assert response.status_code == 201 and cors_headers(response)[ALLOW_ORIGIN] == LISTED
    response = cors_client.get("/humidity/p-1%7Cvault", headers={**bearer(user), "Origin": LISTED})
    assert response.status_code == 200 and cors_headers(response)[ALLOW_ORIGIN] == LISTED
    assert response.get_json()["total"] == 1


# -- preflights ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/api/v1/devices/p-1/vault", "GET"),
        ("/api/v1/devices/p-1/vault/readings/temp", "GET"),
        ("/api/v1/api-keys", "POST"),
        ("/api/v1/api-keys/k-1", "DELETE"),
        ("/api/v1/readings", "POST"),
        ("/environment/", "POST"),
        ("/temp/p-1%7Cvault", "GET"),
    ],
)
def test_a_preflight_is_answered_before_any_auth_check(cors_client, private, path, method):
    response = preflight(cors_client, path, method=method)
    assert response.status_code == 200, response.get_data(as_text=True)  # no 401: no view ran
    headers = cors_headers(response)
    assert headers[ALLOW_ORIGIN] == LISTED and headers["Access-Control-Allow-Credentials"] == "true"
    assert headers["Access-Control-Allow-Methods"] == "DELETE, GET, HEAD, POST"
    assert headers["Access-Control-Allow-Headers"] == "authorization, content-type, x-api-key, x-request-id"
    assert headers["Access-Control-Max-Age"] == "7200"


def test_a_preflight_asking_for_another_header_or_method_is_not_granted_it(cors_client):
    response = preflight(cors_client, "/api/v1/devices", headers="authorization, x-secret")
    assert cors_headers(response)["Access-Control-Allow-Headers"] == "authorization"
    response = preflight(cors_client, "/api/v1/devices", method="PUT")
    assert "Access-Control-Allow-Methods" not in cors_headers(response)


def test_other_methods_keep_their_405_with_cors_headers(cors_client):
    response = cors_client.put("/api/v1/devices", headers={"Origin": LISTED})
    assert_error(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    assert cors_headers(response)[ALLOW_ORIGIN] == LISTED


# -- errors a browser must be able to read ---------------------------------------------------


def test_errors_carry_cors_headers_so_a_browser_can_read_them(cors_app, cors_client, private):
    user, key = private
    other = create_user(cors_app, "other")
    origin = {"Origin": LISTED}
    cases = [
        (cors_client.get("/api/v1/devices/p-1/vault", headers=origin), 401, "auth_required"),
        (cors_client.get("/api/v1/devices", headers={**origin, "Authorization": "x"}), 401, "invalid_credentials"),
        (cors_client.get("/api/v1/devices/p-1/vault", headers={**origin, **bearer(other)}), 403, "forbidden"),
        (cors_client.get("/api/v1/devices/nobody/home", headers=origin), 404, "not_found"),
        (cors_client.get("/api/v1/nothing-here", headers=origin), 404, "not_found"),
        (cors_client.delete("/api/v1/devices", headers=origin), 405, "method_not_allowed"),
        (
            cors_client.post("/api/v1/api-keys", data="x" * (65 * 1024), headers={**origin, **bearer(user)},
                             content_type="application/json"),
            413,
            "payload_too_large",
        ),
        (
            cors_client.post("/api/v1/api-keys", data="a=b", headers={**origin, **bearer(user)},
                             content_type="application/x-www-form-urlencoded"),
            415,
            "unsupported_media_type",
        ),
        (cors_client.post("/environment/", json={"device_metadata": {"device_id": "p-1"}}, headers=origin), 400,
         "validation_error"),
    ]  # fmt: skip
    for response, status, code in cases:
        assert_error(response, status, code)
        assert cors_headers(response)[ALLOW_ORIGIN] == LISTED, (status, code)
        assert response.headers["X-Request-ID"]


# -- the setting -----------------------------------------------------------------------------


def test_cors_origins_are_kept_as_browsers_send_them(monkeypatch):
    monkeypatch.setenv(
        "CORS_ORIGINS", " HTTPS://Dash.Example:443 ,http://127.0.0.1:3000,, http://[::1]:8080,http://a:80"
    )
    assert load_config()["CORS_ORIGINS"] == (LISTED, "http://127.0.0.1:3000", "http://[::1]:8080", "http://a")
    monkeypatch.setenv("CORS_ORIGINS", "")
    assert load_config()["CORS_ORIGINS"] == ()


@pytest.mark.parametrize(
    "raw",
    ["*", "https://dash.example/", "https://dash.example/app", "dash.example", "ftp://dash.example", "null",
     "https://user@dash.example", "https://dash.example:0", "https://dash.example:65536", "https://dash.example?x=1",
     f"{LISTED}, *"],
)  # fmt: skip
def test_a_malformed_origin_or_a_wildcard_stops_start_up_with_one_line(monkeypatch, raw):
    monkeypatch.setenv("CORS_ORIGINS", raw)
    with pytest.raises(ConfigError) as error:
        load_config()
    message = str(error.value)
    assert message.startswith("CORS_ORIGINS must list origins as scheme://host[:port]") and "\n" not in message


# -- a real browser ----------------------------------------------------------------------------

PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>A dashboard on another origin</title></head>
<body><h1>A private device, read from another origin</h1><pre id="result">pending</pre>
<script src="/dashboard.js"></script></body></html>
"""
# The API's address, the path and the token come in the fragment: never sent to the page's server.
SCRIPT = b"""
const params = new URLSearchParams(location.hash.slice(1));
const out = document.getElementById("result");
fetch(params.get("api") + params.get("path"), {
  headers: {"Authorization": "Bearer " + params.get("token"), "X-Request-ID": "from-the-browser"},
}).then(async (response) => {
  const body = await response.json();
  const answer = {status: response.status, request_id: response.headers.get("X-Request-ID"), body};
  out.textContent = JSON.stringify(answer, null, 2);
  out.dataset.state = "read";
}).catch((error) => {
  out.textContent = "the browser blocked the request: " + error;
  out.dataset.state = "blocked";
});
"""


class DashboardPage(BaseHTTPRequestHandler):
    files = {"/": ("text/html", PAGE), "/dashboard.js": ("text/javascript", SCRIPT)}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        content_type, body = self.files.get(self.path.partition("?")[0], ("text/plain", b""))
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def page_server() -> Iterator[str]:
    """The dashboard page on a port of its own: an origin other than the API's."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), DashboardPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="chromium is not installed (.ci/run installs it)")
def test_in_a_browser_a_listed_origin_reads_a_private_device_and_another_is_blocked(
    app, client, live_replica, tmp_path
):
    user = create_user(app, "owner")
    register(client, user, "p-1", "vault", private=True)
    with page_server() as listed, page_server() as elsewhere:
        replica = live_replica(workers=1, CORS_ORIGINS=listed)
        with chromium() as browser:
            page, problems = new_page(browser)
            loads = iter(range(1, 100))

            def load(origin: str, token: str) -> str:
                fragment = f"api={replica.url}&path=/api/v1/devices/p-1/vault&token={token}"
                page.goto(f"{origin}/?load={next(loads)}#{fragment}")  # a new document each time
                page.wait_for_selector("#result[data-state]")
                return page.locator("#result").get_attribute("data-state")

            assert load(listed, user["token"]) == "read"
            answer = json.loads(page.locator("#result").inner_text())
            assert answer["status"] == 200 and answer["body"]["public"] is False
            assert answer["body"]["owner_id"] == user["user_id"]
            assert answer["request_id"] == "from-the-browser"  # an exposed header: the page can read it
            page.screenshot(path=str(tmp_path / "cors-listed-origin.png"), full_page=True)
            assert problems == []

            assert load(listed, "ost_0000000000000000_" + "x" * 40) == "read"  # an error is readable too
            answer = json.loads(page.locator("#result").inner_text())
            assert answer["status"] == 401 and answer["body"]["error"]["code"] == "invalid_credentials"
            problems.clear()  # the browser reports the 401 as a failed load: expected

            assert load(elsewhere, user["token"]) == "blocked"
            assert "Failed to fetch" in page.locator("#result").inner_text()
            assert any("blocked by CORS policy" in problem for problem in problems), problems
    assert (tmp_path / "cors-listed-origin.png").stat().st_size > 5_000
