"""GET /docs: Swagger UI served from the app's own files, under a same-origin CSP."""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
from html.parser import HTMLParser
from urllib.parse import urljoin

import pytest
import requests

from app.docs.openapi import STATIC_DIR
from app.openapi import STATIC_TYPES
from tests.browser import CHROMIUM, chromium, new_page


class Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            if "src" in attrs:
                self.urls.append(attrs["src"])
            else:
                self.inline_scripts += 1
        for name in ("href", "src"):
            if tag != "script" and attrs.get(name):
                self.urls.append(attrs[name])


def test_docs_page_is_html_under_a_same_origin_csp(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    csp = dict(part.strip().split(" ", 1) for part in response.headers["Content-Security-Policy"].split(";"))
    assert csp["default-src"] == "'none'"
    assert csp["script-src"] == "'self'" and csp["connect-src"] == "'self'"
    assert "unsafe-eval" not in response.headers["Content-Security-Policy"]


def test_docs_page_loads_only_files_the_app_serves_and_no_inline_script(client):
    page = Assets()
    page.feed(client.get("/docs").get_data(as_text=True))
    assert page.inline_scripts == 0
    assert page.urls, "the page loads Swagger UI"
    for url in page.urls:
        assert not re.match(r"^[a-z]+:|^//", url), f"{url} is not on this origin"
        with client.get(urljoin("/docs", url)) as response:  # a file response holds the file open
            assert response.status_code == 200, url
            assert response.mimetype in STATIC_TYPES + ("application/json",), (url, response.mimetype)


def test_docs_script_starts_swagger_ui_on_openapi_json_without_the_validator_badge(client):
    with client.get("/docs/static/docs.js") as response:
        script = response.get_data(as_text=True)
    assert 'url: "openapi.json"' in script and "validatorUrl: null" in script
    assert client.get(urljoin("/docs", "openapi.json")).status_code == 200


def vendored(name: str) -> bytes:
    """A published file as the package has it (stored gzip-compressed when there is a ``.gz``)."""
    compressed = STATIC_DIR / f"{name}.gz"
    return gzip.decompress(compressed.read_bytes()) if compressed.exists() else (STATIC_DIR / name).read_bytes()


def test_the_bundle_is_sent_gzip_encoded_and_decodes_to_the_published_file(client):
    with client.get("/docs/static/swagger-ui-bundle.js.gz") as response:
        assert response.status_code == 200
        assert response.mimetype == "text/javascript" and response.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(response.get_data()) == vendored("swagger-ui-bundle.js")
    assert not (STATIC_DIR / "swagger-ui-bundle.js").exists()  # the 1.7 MB original is not tracked


def test_vendored_files_are_the_published_ones_and_carry_their_license_and_version():
    note = (STATIC_DIR / "VERSION.md").read_text()
    version = re.search(r"`swagger-ui-dist` \*\*([0-9.]+)\*\*", note).group(1)
    assert f'"{version}"' in vendored("swagger-ui-bundle.js").decode()
    hashes = dict(re.findall(r"^\| ([\w.-]+) \| ([0-9a-f]{64}) \|$", note, re.MULTILINE))
    assert set(hashes) == {"swagger-ui-bundle.js", "swagger-ui.css"}
    for name, digest in hashes.items():
        assert hashlib.sha256(vendored(name)).hexdigest() == digest, name
    assert "Apache License" in (STATIC_DIR / "LICENSE").read_text()


def test_an_unknown_asset_is_a_json_404(client):
    response = client.get("/docs/static/nope.js")
    assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="chromium is not installed (.ci/run installs it)")
def test_swagger_ui_in_a_real_browser_shows_every_operation_of_the_document(live_replica, tmp_path):
    replica = live_replica(workers=1)
    document = requests.get(f"{replica.url}/openapi.json", timeout=10).json()
    operations = sum(
        method in {"get", "put", "post", "delete", "patch"} for item in document["paths"].values() for method in item
    )
    with chromium() as browser:
        page, problems = new_page(browser)
        page.goto(f"{replica.url}/docs")
        page.wait_for_selector(".swagger-ui .info .title")
        assert document["info"]["title"] in page.locator(".swagger-ui .info .title").inner_text()
        page.wait_for_function(f"document.querySelectorAll('.opblock').length === {operations}")
        page.screenshot(path=str(tmp_path / "docs.png"))

        # The device lookup, opened: every response the document gives it, with its status.
        path = "/api/v1/devices/{device_id}/{device_name}"
        page.locator(f".opblock-summary-path[data-path='{path}']").click()
        page.wait_for_selector(".opblock.is-open .responses-table")
        shown = page.locator(".opblock.is-open .responses-table tr.response td.response-col_status").all_inner_texts()
        assert sorted(code.split()[0] for code in shown) == sorted(document["paths"][path]["get"]["responses"])
        page.screenshot(path=str(tmp_path / "lookup.png"))
    assert problems == []
    assert (tmp_path / "docs.png").stat().st_size > 10_000
