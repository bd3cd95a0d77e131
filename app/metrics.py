"""Every Prometheus metric of the service, and the request hooks: request ids, timing, log fields.

Other code records through the small functions here (``cache_event``, ``load_timer``, ...) and
never builds a metric of its own. The values are this process's: under gunicorn,
``PROMETHEUS_MULTIPROC_DIR`` (set by ``gunicorn.conf.py`` before any worker starts) makes
prometheus_client keep them in per-process files that one scrape sums over every worker of the
replica. Without it (flask CLI, Celery, tests in process) they stay in the process, where nothing
scrapes them; Celery is watched through its task events instead (docs/DEPLOY.md).

``METRICS_ENABLED=false`` turns recording off in the process (``register_metrics`` sets the
switch); request ids and the request's log fields stay on, they are not metrics.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# ``*_created`` series exist only in single-process mode; without them both modes export the same.
disable_created_metrics()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

http_requests = Counter(
    "opensensor_http_requests_total",
    "HTTP requests answered, by method, Flask URL rule and status.",
    ["method", "route", "status"],
)
http_request_duration = Histogram(
    "opensensor_http_request_duration_seconds",
    "Time from the request reaching Flask to its response, by method and Flask URL rule.",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
cache_gets = Counter(
    "opensensor_cache_gets_total",
    "Cache lookups: hit answered from the cache, miss not (Redis unreachable included).",
    ["cache", "result"],
)
cache_loads = Counter(
    "opensensor_cache_loads_total",
    "MongoDB queries made for the cache: a miss's load, or one batch of a warm-up.",
    ["cache"],
)
cache_load_duration = Histogram(
    "opensensor_cache_load_duration_seconds",
    "Time of one MongoDB load for the cache.",
    ["cache"],
    buckets=LATENCY_BUCKETS,
)
cache_errors = Counter("opensensor_cache_errors_total", "Failed Redis operations of the cache.", ["cache"])
cache_invalidations = Counter(
    "opensensor_cache_invalidations_total",
    "Cached lookups dropped because an API key of their device changed.",
    ["cache"],
)
cache_l1_hits = Counter(
    "opensensor_cache_l1_hits_total",
    'The part of the hits (result="hit") answered by the process\'s near cache, without Redis.',
    ["cache"],
)
# livemax: 1 while any live worker's breaker is open; a dead worker's file goes with it (child_exit).
cache_breaker_open = Gauge(
    "opensensor_cache_breaker_open",
    "1 while the cache's circuit breaker is open (Redis failing, lookups served from MongoDB).",
    ["cache"],
    multiprocess_mode="livemax",
)

CACHE = "device"  # the device lookups; the label value of the breaker and errors
CACHES = ("device", "user", "query")  # the kinds of lookup the cache holds (a verified token's user, readings chunks)
# SharedCache.count's event names -> the counter and the labels (after ``cache``) it increments.
CACHE_EVENTS: dict[str, tuple[Counter, tuple[str, ...]]] = {
    "hits": (cache_gets, ("hit",)),
    "misses": (cache_gets, ("miss",)),
    "l1_hits": (cache_l1_hits, ()),
    "loads": (cache_loads, ()),
    "errors": (cache_errors, ()),
}

REQUEST_ID_HEADER = "X-Request-ID"
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UNMATCHED_ROUTE = "<unmatched>"  # every path no URL rule matched: one label value, not one per path
SCRAPE_ROUTE = "/metrics"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ENVIRON_KEY = "opensensor.request"  # the request's log fields, for gunicorn's access line

_recording = False
_increments: dict[tuple[str, str], Callable[[float], None]] = {}


def register_metrics(app: Flask) -> None:
    """Request ids and log fields on every request; metrics too unless ``METRICS_ENABLED=false``.

    With metrics on, every series whose labels are known is created at 0 now, so the first
    scrape shows them all (an alert on a ratio needs both sides to exist from the start).
    """
    global _recording
    _recording = bool(app.config["METRICS_ENABLED"])
    app.before_request(_start_request)
    app.after_request(_finish_request)
    if _recording:
        _create_known_series()


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _create_known_series() -> None:
    for cache in CACHES:
        for name, (counter, labels) in CACHE_EVENTS.items():
            _increments[name, cache] = counter.labels(cache, *labels).inc
        for metric in (cache_load_duration, cache_invalidations):
            metric.labels(cache)
    cache_breaker_open.labels(CACHE).set(0)
    # The scrape's own series, as Prometheus's Go client does for its handler.
    http_requests.labels("GET", SCRAPE_ROUTE, "200")
    http_request_duration.labels("GET", SCRAPE_ROUTE)


# -- what other modules call ----------------------------------------------------------------


def cache_event(name: str, cache: str = CACHE, amount: int = 1) -> None:
    """Counted events of a kind of lookup: ``hits``, ``misses``, ``l1_hits``, ``loads``, ``errors``."""
    if _recording:
        _increments[name, cache](amount)


def load_timer(cache: str = CACHE) -> AbstractContextManager[object]:
    """Times one MongoDB load of the cache (a ``with`` block)."""
    return cache_load_duration.labels(cache).time() if _recording else nullcontext()


def cache_invalidated(count: int, cache: str = CACHE) -> None:
    if _recording and count:
        cache_invalidations.labels(cache).inc(count)


def breaker_changed(is_open: bool) -> None:
    if _recording:
        cache_breaker_open.labels(CACHE).set(1 if is_open else 0)


def note_cache_result(result: str) -> None:
    """The device cache's answer to this request (``l1``, ``hit``, ``miss``, ``bypass``), for its log line."""
    if has_request_context():
        g.cache_result = result


def exposition(extra: Iterable[Collector] = ()) -> bytes:
    """The Prometheus text of this replica: every worker's files, or this process's registry."""
    registry = CollectorRegistry()
    if multiprocess_dir():
        MultiProcessCollector(registry)
    else:
        registry.register(REGISTRY)
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


# -- request hooks -----------------------------------------------------------------------------

_children: dict[tuple[Any, ...], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, kept: prometheus_client validates and locks on every call."""
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    return child


def request_id_from(header: str | None) -> str:
    """The caller's id when it is sane (it is echoed and logged), else a new one: this process's
    random prefix and a count, unique without a system call per request."""
    if header is not None and SANE_REQUEST_ID.fullmatch(header):
        return header
    return f"{_ids.prefix}-{next(_ids.count):x}"


class _Ids:
    prefix = ""
    count = itertools.count(1)

    def renew(self) -> None:
        """A new random prefix: at import and in every forked child (gunicorn and Celery workers)."""
        self.prefix, self.count = secrets.token_hex(8), itertools.count(1)


_ids = _Ids()
_ids.renew()
os.register_at_fork(after_in_child=_ids.renew)  # not os.getpid() per request: a fork is the only way to a copy

# (method, route, status) -> the request counter's ``inc`` and the duration histogram's ``observe``.
_request_series: dict[tuple[str, str, int], tuple[Callable[[], None], Callable[[float], None]]] = {}


def _series(method: str, route: str, status: int) -> tuple[Callable[[], None], Callable[[float], None]]:
    """The children of one request's series, kept: bounded by methods x URL rules x statuses."""
    key = (method, route, status)
    series = _request_series.get(key)
    if series is None:
        series = _request_series[key] = (
            _child(http_requests, method, route, str(status)).inc,
            _child(http_request_duration, method, route).observe,
        )
    return series


def _start_request() -> None:
    # One proxy look-up each (a werkzeug LocalProxy access costs a context-var read and a call).
    ctx = g._get_current_object()
    ctx.request_started = time.perf_counter()
    ctx.request_id = request_id_from(request.environ.get("HTTP_X_REQUEST_ID"))  # the X-Request-ID header


def _finish_request(response: Response) -> Response:
    req, ctx = request._get_current_object(), g._get_current_object()
    request_id = getattr(ctx, "request_id", None) or request_id_from(None)
    response.headers[REQUEST_ID_HEADER] = request_id
    rule = req.url_rule
    finished(
        req.environ,
        req.method,
        rule.rule if rule is not None else UNMATCHED_ROUTE,
        response.status_code,
        getattr(ctx, "request_started", None),
        request_id,
        getattr(ctx, "cache_result", None),
    )
    return response


def finished(
    environ: dict[str, Any],
    method: str,
    route: str,
    status: int,
    started: float | None,
    request_id: str,
    cache_result: str | None,
) -> None:
    """A request answered: its metrics, and its log fields for gunicorn's access line. Called by
    the request hook above and by the warm read answered before Flask (``app/devices/hot.py``)."""
    if _recording:
        count, observe = _series(method if method in METHODS else "other", route, status)
        count()
        if started is not None:
            observe(time.perf_counter() - started)
    environ[ENVIRON_KEY] = {"request_id": request_id, "route": route, "cache": cache_result}
