"""``GET /metrics``: this replica's Prometheus metrics, plus the stats collector's heartbeat."""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from flask import Blueprint, Response, current_app, request
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from app import metrics
from app.auth import auth_required, invalid
from app.cache.admin import collector_state
from app.cache.shared import SharedCache, shared_cache
from app.errors import not_found
from app.redis_topology import REDIS_ERRORS
from app.timeutil import parse_iso

bp = Blueprint("monitoring", __name__)


class CollectorHeartbeat:
    """Beat's heartbeat, read from Redis at scrape time: when the stats collector last ran.

    A Redis-wide value, so every replica exports the same one (alerts take ``max``); absent
    while Redis is unreachable (the breaker alert covers that) or before the first run.
    """

    def __init__(self, dc: SharedCache, interval: int) -> None:
        self.dc = dc
        self.interval = interval

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "opensensor_stats_interval_seconds",
            "STATS_INTERVAL: seconds between two runs of the stats collector.",
            value=self.interval,
        )
        if not self.dc.breaker.allow():
            return
        try:
            last_run = collector_state(self.dc, self.dc.client, self.interval)["last_run"]
        except REDIS_ERRORS:
            return
        if last_run is not None:
            yield GaugeMetricFamily(
                "opensensor_stats_collector_last_run_timestamp_seconds",
                "Unix time of the stats collector's last run (beat's heartbeat).",
                value=parse_iso(last_run).timestamp(),
            )


def require_metrics_token() -> None:
    token = current_app.config.get("METRICS_TOKEN")
    if not token:
        return
    header = request.headers.get("Authorization")
    if header is None:
        raise auth_required("this endpoint needs 'Authorization: Bearer <METRICS_TOKEN>'")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise invalid("invalid metrics token")


@bp.get(metrics.SCRAPE_ROUTE)
def scrape() -> Response:
    if not current_app.config["METRICS_ENABLED"]:
        raise not_found("metrics are disabled (METRICS_ENABLED=false)")
    require_metrics_token()
    heartbeat = CollectorHeartbeat(shared_cache(), current_app.config["STATS_INTERVAL"])
    return Response(metrics.exposition([heartbeat]), content_type=CONTENT_TYPE_PLAIN_0_0_4)
