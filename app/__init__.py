"""The application factory: a table of contents of the service."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from types import FunctionType
from typing import Any

from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider

from app.cache.serializer import JSONSerializer
from app.cache.shared import Sources, init_cache
from app.celery_app import celery_init_app
from app.config import load_config
from app.cors import register_cors
from app.db import OUTBOX
from app.devices.hot import register_hot_read
from app.devices.lookup import SCHEMA_VERSION, chain_pairs, load_device, load_devices
from app.errors import register_error_handlers
from app.extensions import cache, mongo
from app.health.shutdown import init_shutdown
from app.logging import configure_logging
from app.metrics import register_metrics
from app.redis_topology import Topology, client_options
from app.validation import guard_commands, register_input_guard


class Service(Flask):
    """Flask, minus a per-request cost: ``ensure_sync`` asks ``inspect`` whether each hook and view
    is a coroutine function on every call (four times a request); the answer never changes, so it
    is kept per function (plain functions only: bound methods are new objects on every access)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        sync = self._sync.get(func) if type(func) is FunctionType else None
        if sync is None:
            sync = super().ensure_sync(func)
            if type(func) is FunctionType:
                self._sync[func] = sync
        return sync


class JSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with its encoder built once, not per response: ``json.dumps`` with any
    keyword builds a new ``JSONEncoder`` on every call. Same settings (``default``, ``ensure_ascii``,
    keys in insertion order), so every body stays byte for byte what ``DefaultJSONProvider`` writes.
    orjson was considered: faster, but it writes non-ASCII as UTF-8 and some floats differently."""

    sort_keys = False  # the order the views build: the spec's field order

    def __init__(self, app: Flask) -> None:
        super().__init__(app)
        common = {"default": self.default, "ensure_ascii": self.ensure_ascii, "sort_keys": self.sort_keys}
        self._compact = json.JSONEncoder(separators=(",", ":"), **common)  # type: ignore[arg-type]
        self._indented = json.JSONEncoder(indent=2, **common)  # type: ignore[arg-type]

    def response(self, *args: Any, **kwargs: Any) -> Response:
        """``DefaultJSONProvider.response`` with the kept encoders (same body, same mimetype)."""
        return self._app.response_class(self.body(self._prepare_response_obj(args, kwargs)), mimetype=self.mimetype)

    def body(self, obj: Any) -> str:
        """A JSON response's body (``jsonify``'s; also the warm read's, ``app/devices/hot.py``)."""
        pretty = (self.compact is None and self._app.debug) or self.compact is False
        return f"{(self._indented if pretty else self._compact).encode(obj)}\n"


def create_app(overrides: Mapping[str, Any] | None = None) -> Flask:
    config = load_config(overrides)
    configure_logging(config["LOG_LEVEL"], config["LOG_FORMAT"])
    app = Service(__name__, static_folder=None)
    app.config.update(config)
    app.json = JSONProvider(app)
    register_extensions(app)
    register_metrics(app)
    register_blueprints(app)
    register_error_handlers(app)
    register_cors(app)
    register_hot_read(app)
    register_input_guard(app)
    register_commands(app)
    return app


def cache_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Flask-Caching on the cache's Redis (whatever its topology): JSON values, and a client
    that fails fast (redis-py's defaults retry with backoff: seconds per call on a dead Redis;
    the cache wants one short try and the circuit breaker instead)."""
    options = client_options(config["CACHE_SOCKET_TIMEOUT"], "opensensor-cache")
    return {
        **Topology.from_config(config).cache_config(options),
        "CACHE_KEY_PREFIX": config["CACHE_KEY_PREFIX"],
        "CACHE_DEFAULT_TIMEOUT": config["DEVICE_CACHE_TTL"],
        "CACHE_SERIALIZER": JSONSerializer,
    }


def register_extensions(app: Flask) -> None:
    mongo.init_app(app)
    cache.init_app(app, config=cache_config(app.config))
    sources = Sources(load_device, load_devices, chain_pairs, SCHEMA_VERSION, lambda: mongo.db[OUTBOX])
    init_cache(app, app.extensions["cache"][cache], sources)
    celery_init_app(app)
    init_shutdown(app)


def register_blueprints(app: Flask) -> None:
    from app.cache_admin.views import bp as cache_bp
    from app.compat.views import bp as compat_bp
    from app.devices.views import bp as devices_bp
    from app.docs.views import bp as docs_bp
    from app.health.views import bp as health_bp
    from app.keys.views import bp as keys_bp
    from app.monitoring.dashboard import bp as dashboard_bp
    from app.monitoring.views import bp as monitoring_bp
    from app.readings.views import bp as readings_bp

    for bp in (health_bp, keys_bp, readings_bp, devices_bp, cache_bp, monitoring_bp, dashboard_bp, compat_bp, docs_bp):
        app.register_blueprint(bp)


def register_commands(app: Flask) -> None:
    from app.cli import demo_data, init_db
    from app.compat.importer import import_opensensor
    from app.users.cli import users

    for command in (users, init_db, demo_data, import_opensensor):
        app.cli.add_command(command)
    guard_commands(app.cli)
