"""GET /metrics: names and labels, multiprocess sums over gunicorn workers, token, off switch, gauge."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request

import pytest
import redis
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from app.cache.admin import collect_snapshot
from app.timeutil import parse_iso
from devstack.processes import ROOT
from tests.conftest import bearer, create_user, register
from tests.helpers import assert_error

METRICS = {
    "opensensor_http_requests_total": ("counter", {"method", "route", "status"}),
    "opensensor_http_request_duration_seconds": ("histogram", {"method", "route"}),
    "opensensor_cache_gets_total": ("counter", {"cache", "result"}),
    "opensensor_cache_loads_total": ("counter", {"cache"}),
    "opensensor_cache_load_duration_seconds": ("histogram", {"cache"}),
    "opensensor_cache_errors_total": ("counter", {"cache"}),
    "opensensor_cache_invalidations_total": ("counter", {"cache"}),
    "opensensor_cache_breaker_open": ("gauge", {"cache"}),
}
LOOKUP_ROUTE = "/api/v1/devices/<device_id>/<device_name>"


def scrape_text(base: str, headers: dict | None = None) -> str:
    request = urllib.request.Request(base + "/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a scrape: (name, labels) -> value."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def total(text: str, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples(text).items() if n == name and set(labels.items()) <= ls)


def get(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def test_every_metric_exists_from_the_first_scrape_of_a_live_replica(live_replica):
    replica = live_replica(workers=2)
    text = scrape_text(replica.url)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for name, (kind, labels) in METRICS.items():
        base = name.removesuffix("_total")  # the parser names counter families without it
        assert base in families, f"{name} missing from the first scrape:\n{text}"
        family = families[base]
        assert family.type == kind
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, sample
    values = samples(text)
    for result in ("hit", "miss"):
        assert values[("opensensor_cache_gets_total", frozenset({("cache", "device"), ("result", result)}))] == 0
    for name in ("loads", "errors", "invalidations"):
        assert values[(f"opensensor_cache_{name}_total", frozenset({("cache", "device")}))] == 0
    assert values[("opensensor_cache_breaker_open", frozenset({("cache", "device")}))] == 0
    assert total(text, "opensensor_stats_interval_seconds") == 60


def test_lookups_served_by_recycled_workers_add_up_exactly_in_one_scrape(app, client, live_replica, tmp_path):
    """N lookups, each worker replaced after a few requests: one scrape sums every worker's files."""
    register(client, create_user(app, "owner"), "dev-1", "room")
    metrics_dir = tmp_path / "metrics"
    replica = live_replica(workers=2, extra_args=["--max-requests", "7"], PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    before = scrape_text(replica.url)
    lookups = 30
    for _ in range(lookups):
        assert get(f"{replica.url}/api/v1/devices/dev-1/room") == 200
    after = scrape_text(replica.url)
    gets = total(after, "opensensor_cache_gets_total") - total(before, "opensensor_cache_gets_total")
    assert gets == lookups
    route = {"route": LOOKUP_ROUTE, "method": "GET", "status": "200"}
    assert total(after, "opensensor_http_requests_total", **route) == lookups
    assert total(after, "opensensor_cache_loads_total") == 1  # the first lookup; the others were hits
    pids = {re.search(r"_(\d+)\.db$", path.name).group(1) for path in metrics_dir.glob("counter_*.db")}
    assert len(pids) >= 3, pids  # workers were recycled: dead workers' counts are still summed


def test_metrics_off_serves_404_and_records_nothing(app, client, live_replica, tmp_path):
    register(client, create_user(app, "owner"), "dev-1", "room")
    metrics_dir = tmp_path / "metrics"
    replica = live_replica(workers=1, METRICS_ENABLED="false", PROMETHEUS_MULTIPROC_DIR=metrics_dir)
    assert get(f"{replica.url}/api/v1/devices/dev-1/room") == 200
    assert get(f"{replica.url}/metrics") == 404
    assert list(metrics_dir.iterdir()) == []


def test_metrics_token_is_required_when_set(make_app):
    client = make_app(METRICS_TOKEN="s3cret-metrics-token").test_client()
    assert_error(client.get("/metrics"), 401, "auth_required")
    assert_error(client.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401, "invalid_credentials")
    assert_error(
        client.get("/metrics", headers={"Authorization": "Basic s3cret-metrics-token"}), 401, "invalid_credentials"
    )
    response = client.get("/metrics", headers={"Authorization": "Bearer s3cret-metrics-token"})
    assert response.status_code == 200
    assert "opensensor_cache_gets_total" in response.get_data(as_text=True)


def test_routes_are_url_rules_and_no_label_carries_a_device_user_or_token(app, client):
    owner = create_user(app, "owner")
    register(client, owner, "secret-id-42", "secret room", private=True)
    client.get("/api/v1/devices/secret-id-42/secret room", headers=bearer(owner))
    client.get("/api/v1/devices/unknown-id-43/nowhere")
    client.get("/no/such/path/unknown-id-44")
    client.open("/api/v1/devices", method="BREW")
    text = client.get("/metrics").get_data(as_text=True)
    for secret in ("secret-id-42", "secret room", "secret%20room", "unknown-id-43", "unknown-id-44", owner["token"]):
        assert secret not in text
    routes = {dict(labels).get("route") for (name, labels) in samples(text) if name.startswith("opensensor_http")}
    assert LOOKUP_ROUTE in routes
    assert "<unmatched>" in routes
    assert all(route == "<unmatched>" or route.startswith("/") for route in routes)
    methods = {dict(labels)["method"] for (name, labels) in samples(text) if name == "opensensor_http_requests_total"}
    assert "BREW" not in methods and "other" in methods


def test_cache_metrics_follow_hits_misses_loads_invalidations_and_the_breaker(app, client):
    def value(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"cache": "device", **labels}) or 0.0

    owner = create_user(app, "owner")
    register(client, owner, "d1", "room")
    before = {n: value(f"opensensor_cache_{n}_total") for n in ("loads", "invalidations")}
    hits, misses = (
        value("opensensor_cache_gets_total", result="hit"),
        value("opensensor_cache_gets_total", result="miss"),
    )
    for _ in range(3):
        assert client.get("/api/v1/devices/d1/room").status_code == 200
    assert value("opensensor_cache_gets_total", result="miss") == misses + 1
    assert value("opensensor_cache_gets_total", result="hit") == hits + 2
    assert value("opensensor_cache_loads_total") == before["loads"] + 1
    assert value("opensensor_cache_load_duration_seconds_count") >= 1
    register(client, owner, "d2", "room")  # the chain of "room" changed: both pairs invalidated
    assert value("opensensor_cache_invalidations_total") == before["invalidations"] + 2

    breaker = app.extensions["shared_cache"].breaker
    app.extensions["shared_cache"].background.probe = lambda: False  # Redis is fine: keep the probe from closing it
    breaker.trip(redis.ConnectionError("test"))
    assert value("opensensor_cache_breaker_open") == 1
    breaker.close()
    assert value("opensensor_cache_breaker_open") == 0


def test_breaker_gauge_is_the_max_of_live_workers_and_a_dead_worker_leaves_it(tmp_path):
    """The gauge's multiprocess mode with gunicorn.conf.py's child_exit, in forked processes."""
    script = textwrap.dedent(
        """
        import os, runpy, sys
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector
        from app import metrics

        def worker(is_open):
            pid = os.fork()
            if pid == 0:
                metrics.cache_breaker_open.labels("device").set(1 if is_open else 0)
                os._exit(0)
            os.waitpid(pid, 0)
            return pid

        def value():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return registry.get_sample_value("opensensor_cache_breaker_open", {"cache": "device"})

        conf = runpy.run_path("gunicorn.conf.py")
        opened, closed = worker(True), worker(False)
        print(value())
        conf["child_exit"](None, type("W", (), {"pid": opened}))
        print(value())
        conf["child_exit"](None, type("W", (), {"pid": closed}))
        print(value())
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1.0", "0.0", "None"]


def test_two_replicas_from_one_checkout_keep_their_own_metric_files(live_replica, tmp_path):
    temp = tmp_path / "tmp"  # where each master makes its directory (tempfile follows TMPDIR)
    temp.mkdir()
    first, second = live_replica(workers=1, TMPDIR=temp), live_replica(workers=1, TMPDIR=temp)
    route = {"route": "/health/live", "status": "200"}
    # Counted from here: how many readiness checks the fixture made depends on the machine's load.
    before = [total(scrape_text(replica.url), "opensensor_http_requests_total", **route) for replica in (first, second)]
    for _ in range(3):
        assert get(f"{first.url}/health/live") == 200
    # the three went to the first only
    assert total(scrape_text(first.url), "opensensor_http_requests_total", **route) == before[0] + 3
    assert total(scrape_text(second.url), "opensensor_http_requests_total", **route) == before[1]
    assert len(list(temp.glob("opensensor-metrics-*"))) == 2
    first.stop()
    (left,) = temp.glob("opensensor-metrics-*")  # a master removes the directory it made, only that one
    assert any(left.glob("*.db"))
    assert total(scrape_text(second.url), "opensensor_http_requests_total", **route) == before[1]


@pytest.mark.parametrize("collector_ran", [True, False])
def test_stats_collector_heartbeat_is_exported_for_the_silent_collector_alert(make_app, collector_ran):
    app = make_app(STATS_INTERVAL=7)
    client = app.test_client()
    if collector_ran:
        with app.app_context():
            snapshot = collect_snapshot(app.extensions["shared_cache"], 10)
    text = client.get("/metrics").get_data(as_text=True)
    assert total(text, "opensensor_stats_interval_seconds") == 7
    heartbeat = [
        v for (n, _), v in samples(text).items() if n == "opensensor_stats_collector_last_run_timestamp_seconds"
    ]
    if collector_ran:
        assert heartbeat == [parse_iso(snapshot["at"]).timestamp()]
    else:
        assert heartbeat == []
