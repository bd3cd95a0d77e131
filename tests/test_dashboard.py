"""GET /cache/dashboard: the page and its assets without a token, a strict CSP, and a real browser
(Debian's chromium driven by Playwright) drawing the history with an admin token."""

from __future__ import annotations

import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask

from app.cache.admin import collect_snapshot
from tests.browser import CHROMIUM, chromium, new_page
from tests.conftest import bearer, create_user, register
from tests.helpers import assert_error

VENDOR = Path(__file__).resolve().parents[1] / "app" / "monitoring" / "static" / "vendor" / "uplot"
CHARTS = ["chart-hit-ratio", "chart-lookups", "chart-loads", "chart-errors", "chart-keys", "chart-memory"]


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        if self.tags and self.tags[-1][0] == "script" and data.strip():
            self.inline_script = True


def test_page_and_assets_load_without_a_token_under_a_same_origin_policy(app, client):
    response = client.get("/cache/dashboard")
    assert response.status_code == 200 and response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "style-src 'self'" in csp
    assert "unsafe-inline" not in csp and "http" not in csp
    page = Tags()
    page.feed(response.get_data(as_text=True))
    assert not page.inline_script
    for tag, attrs in page.tags:  # no inline style or event handler either
        assert tag != "style" and "style" not in attrs and not any(a.startswith("on") for a in attrs), tag
    assets = [attrs.get("src") or attrs.get("href") for tag, attrs in page.tags if tag in ("script", "link")]
    assert len(assets) == 5
    for asset in assets:
        assert asset.startswith("/cache/dashboard/static/"), asset  # never another origin
        with client.get(asset) as loaded:
            assert loaded.status_code == 200, asset
            assert "Content-Security-Policy" in loaded.headers
    assert f'data-stats-interval="{app.config["STATS_INTERVAL"]}"' in response.get_data(as_text=True)


def test_vendored_chart_library_is_pinned_with_its_license():
    version = (VENDOR / "VERSION").read_text()
    pinned = re.search(r"uPlot (\d+\.\d+\.\d+)", version).group(1)
    assert f"(v{pinned})" in (VENDOR / "uPlot.iife.min.js").read_text()[:200]
    assert "MIT License" in (VENDOR / "LICENSE").read_text()


def test_the_json_routes_behind_the_page_stay_admin_only(app, client):
    assert_error(client.get("/cache/stats"), 401, "auth_required")
    assert_error(client.get("/cache/stats/history", headers=bearer(create_user(app, "u"))), 403, "forbidden")


def seed_history(app: Flask, client, snapshots: int) -> None:
    """Snapshots of real lookups through the app's own stats function, a little apart in time."""
    owner = create_user(app, "owner")
    for i in range(snapshots):
        register(client, owner, f"dev-{i}", "room")
    with app.app_context():
        for i in range(snapshots):
            for j in range(i + 1):  # more devices and more hits each round
                for _ in range(3):
                    assert client.get(f"/api/v1/devices/dev-{j}/room").status_code == 200
            collect_snapshot(app.extensions["shared_cache"], app.config["STATS_HISTORY_SIZE"])
            time.sleep(0.3)


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="chromium is not installed (.ci/run installs it)")
def test_dashboard_in_a_real_browser_draws_the_history_and_acts_with_confirmation(app, client, live_replica, tmp_path):
    seed_history(app, client, snapshots=5)
    admin, user = create_user(app, "admin", admin=True), create_user(app, "someone")
    replica = live_replica(workers=1, STATS_INTERVAL=30)
    with chromium() as browser:
        page, problems = new_page(browser)
        page.goto(f"{replica.url}/cache/dashboard")
        assert page.locator("#message").inner_text() == "Enter an admin token to load the cache's statistics."
        assert page.locator("#interval").inner_text() == "30"

        wrong = "ost_0000000000000000_" + "x" * 40
        for token, shown in ((wrong, "401 invalid_credentials"), (user["token"], "403 forbidden")):
            page.fill("#token", token)
            page.click("button[type=submit]")
            page.wait_for_selector(f"#message.error:has-text('{shown}')")
        # The browser reports each of the four 401 and 403 answers (stats and history, twice) as a failed
        # load: expected. The message shows at the first; the other's report can come after it.
        for _ in range(100):
            if len(problems) >= 4:
                break
            page.wait_for_timeout(20)
        assert len(problems) == 4 and all("(UNAUTHORIZED)" in p or "(FORBIDDEN)" in p for p in problems), problems
        problems.clear()

        page.fill("#token", admin["token"])
        page.click("button[type=submit]")
        for chart in CHARTS:
            page.wait_for_selector(f"#{chart}[data-points='5'] canvas")
        assert page.evaluate("sessionStorage.getItem('opensensor.dashboard.token')") == admin["token"]
        assert page.locator("#message").is_hidden()
        assert page.locator("#breaker").inner_text() == "closed"
        assert page.locator("#collector").inner_text() == "running"
        # 5 devices, and the users whose tokens were checked: owner, admin, someone (a forged id is not kept)
        assert page.locator("#keys").inner_text() == "8"
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

        page.once("dialog", lambda dialog: dialog.accept())
        page.fill("#pattern", "device:dev-0|*")
        page.click("#invalidate-form button")
        page.wait_for_selector("#message.ok:has-text('Deleted 1 keys matching device:dev-0|*.')")
    assert problems == []
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000
