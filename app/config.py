"""Configuration: defaults in code, then the environment, then test overrides.

Everything is read when ``create_app`` runs, never at import time, so a test or a
gunicorn worker gets exactly the environment it was started with.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

from pymongo.uri_parser import parse_uri

from app.redis_topology import Topology, parse_nodes


class ConfigError(SystemExit):
    """A malformed setting: start-up stops with this one line (no traceback, exit status 1).

    A ``SystemExit`` so that every entry point (flask CLI, gunicorn, celery) prints just the
    message; tests still catch it as ``ConfigError``.
    """

    def __str__(self) -> str:
        return str(self.code)


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be greater than 0, got {raw!r}")
    return value


def _non_negative_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < 0:
        raise ConfigError(f"{name} must be 0 or more, got {raw!r}")
    return value


def _positive_float(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be greater than 0, got {raw!r}")
    return value


def _mongo_uri(name: str, raw: str) -> str:
    try:
        parsed = parse_uri(raw, validate=True, warn=False, connect_timeout=None)
    except Exception as exc:  # noqa: BLE001 - pymongo raises several types for a bad URI
        raise ConfigError(f"{name} is not a valid MongoDB URI: {exc}") from None
    if not parsed.get("database"):
        raise ConfigError(f"{name} must name a database, e.g. mongodb://host:27017/opensensor")
    return raw


def _redis_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
        raise ConfigError(f"{name} must be a redis:// URL, got {raw!r}")
    try:
        _ = parts.port  # parsed lazily; redis-py would fail on it later, with a traceback
    except ValueError:
        raise ConfigError(f"{name} has a malformed port: {raw!r}") from None
    # A unix socket's path is the socket; its database is the ``db`` query parameter.
    db = parse_qs(parts.query).get("db", [""])[0] if parts.scheme == "unix" else parts.path.strip("/")
    if db and not db.isdigit():
        raise ConfigError(f"{name} has a malformed database number: {raw!r}")
    return raw


def _prefix(name: str, raw: str) -> str:
    # Braces are Redis Cluster hash tags: the fill locks and bookkeeping keys carry their own.
    if not raw or any(c in raw for c in "*?[]{}\\ \n"):
        raise ConfigError(f"{name} must be non-empty without spaces, braces or glob characters, got {raw!r}")
    return raw


def _nodes(name: str, raw: str) -> tuple[tuple[str, int], ...]:
    try:
        return parse_nodes(name, raw)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _text(name: str, raw: str) -> str:
    if not raw or not raw.isprintable():
        raise ConfigError(f"{name} must be non-empty printable text")
    return raw


def _broker_url(name: str, raw: str) -> str:
    """redis://, rediss://, unix:// (one Redis), sentinel://…;sentinel://… or amqp:// (RabbitMQ)."""
    scheme = urlsplit(raw).scheme
    if scheme in ("amqp", "amqps", "pyamqp"):
        if not urlsplit(raw).hostname:
            raise ConfigError(f"{name} must name a host, got {raw!r}")
        return raw
    if scheme == "sentinel":
        for part in raw.split(";"):
            parts = urlsplit(part)
            if parts.scheme != "sentinel" or not parts.hostname:
                raise ConfigError(f"{name} must be sentinel://host:port/db[;sentinel://host:port/db...], got {raw!r}")
        return raw
    try:
        return _redis_url(name, raw)
    except ConfigError:
        raise ConfigError(
            f"{name} must be a redis://, rediss://, unix://, sentinel:// or amqp:// URL, got {raw!r}"
        ) from None


def _log_level(name: str, raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(f"{name} must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw!r}")
    return level


def _flag(name: str, raw: str) -> bool:
    value = raw.lower()
    if value not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ConfigError(f"{name} must be true or false, got {raw!r}")
    return value in ("true", "1", "yes", "on")


def _optional_token(name: str, raw: str) -> str | None:
    """A shared secret; empty means unset (a blank line in .env must not mean "the empty token")."""
    if not raw:
        return None
    if any(c.isspace() for c in raw) or not raw.isprintable():
        raise ConfigError(f"{name} must be printable without spaces")
    return raw


def _log_format(name: str, raw: str) -> str:
    if raw.lower() not in ("text", "json"):
        raise ConfigError(f"{name} must be text or json, got {raw!r}")
    return raw.lower()


_ORIGIN_RE = re.compile(r"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(\d{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origins(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated ``scheme://host[:port]``, kept as a browser sends them in ``Origin``: lower
    case, without the scheme's default port (``https://a.example:443`` is ``https://a.example``).
    ``*`` is refused: each origin is listed (why: app/cors.py)."""
    origins: list[str] = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        match = _ORIGIN_RE.fullmatch(item.lower())
        if match is None or (match.group(3) is not None and not 0 < int(match.group(3)) < 65536):
            raise ConfigError(
                f"{name} must list origins as scheme://host[:port] (http or https, no path, no '*'), got {item!r}"
            )
        scheme, host, port = match.group(1), match.group(2), int(match.group(3) or _DEFAULT_PORTS[match.group(1)])
        origins.append(f"{scheme}://{host}" + (f":{port}" if port != _DEFAULT_PORTS[scheme] else ""))
    return tuple(dict.fromkeys(origins))


def broker_url_from(redis_url: str) -> str:
    """The spec's default broker: the cache's Redis server, database 1."""
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":
        query = urlencode({**dict(parse_qsl(parts.query)), "db": "1"})
        return f"unix://{parts.netloc}{parts.path}?{query}"  # urlunsplit would drop the empty netloc's //
    return urlunsplit((parts.scheme, parts.netloc, "/1", parts.query, parts.fragment))


# name -> (default, parser). A default of None is derived from other settings.
SETTINGS: dict[str, tuple[str | None, Callable[[str, str], Any]]] = {
    # The contract of the spec.
    "MONGO_URI": ("mongodb://127.0.0.1:27017/opensensor", _mongo_uri),
    "REDIS_URL": (None, _redis_url),  # default below, unless another topology is set
    "REDIS_SENTINELS": (None, _nodes),
    "REDIS_SENTINEL_MASTER": (None, _text),
    "REDIS_PASSWORD": (None, _text),
    "REDIS_SENTINEL_PASSWORD": (None, _text),
    "REDIS_CLUSTER_NODES": (None, _nodes),
    "CELERY_BROKER_URL": (None, _broker_url),
    "CACHE_KEY_PREFIX": ("opensensor:", _prefix),
    "DEVICE_CACHE_TTL": ("300", _positive_int),
    "WARM_INTERVAL": ("240", _positive_int),
    "WARM_TOP_N": (None, _positive_int),  # unset: every device looked up within DEVICE_CACHE_TTL
    "STATS_INTERVAL": ("60", _positive_int),
    # Our own knobs.
    "LOG_LEVEL": ("INFO", _log_level),
    "NEGATIVE_CACHE_TTL": ("30", _positive_int),
    "CACHE_SOCKET_TIMEOUT": ("0.1", _positive_float),
    "CACHE_BREAKER_THRESHOLD": ("3", _positive_int),
    "CACHE_PROBE_INTERVAL": ("0.1", _positive_float),
    "L1_CACHE_SIZE": ("10000", _non_negative_int),
    "L1_CACHE_TTL": (None, _positive_float),  # default: 60, or DEVICE_CACHE_TTL if shorter
    "CACHE_REPLICA_WAIT_MS": ("20", _positive_int),
    "CACHE_FLUSH_INTERVAL": ("1", _positive_float),
    "CACHE_LOCK_TIMEOUT": ("2", _positive_float),
    "MONGO_TIMEOUT_MS": ("1000", _positive_int),
    "STATS_HISTORY_SIZE": (None, _positive_int),  # default: a day of snapshots
    "HOT_HALF_LIFE": ("3600", _positive_float),
    "TASK_TIME_LIMIT": ("120", _positive_int),
    "HOT_MAX_DEVICES": ("10000", _positive_int),
    "CELERY_BROKER_SENTINEL_MASTER": (None, _text),  # default: REDIS_SENTINEL_MASTER
    "CELERY_QUEUE": ("celery", _text),
    # Operations (issue 9): Prometheus metrics and log format.
    "METRICS_ENABLED": ("true", _flag),
    "METRICS_TOKEN": ("", _optional_token),
    "LOG_FORMAT": ("text", _log_format),
    # Dashboards (issue 16): browsers on these origins may call the API (app/cors.py).
    "CORS_ORIGINS": ("", _origins),
}
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TOPOLOGIES = ("REDIS_URL", "REDIS_SENTINELS", "REDIS_CLUSTER_NODES")


def load_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parse every setting; raise ``ConfigError`` naming the first bad one."""
    overrides = dict(overrides or {})
    config: dict[str, Any] = {}
    for name, (default, parse) in SETTINGS.items():
        if name in overrides:
            value = overrides.pop(name)
            config[name] = parse(name, value) if isinstance(value, str) else value
            continue
        raw = os.environ.get(name, default)
        if raw is None:
            continue
        config[name] = parse(name, raw.strip())
    check_topology(config)
    config.setdefault("WARM_TOP_N", None)  # every device looked up within a TTL
    config.setdefault("L1_CACHE_TTL", min(60.0, config["DEVICE_CACHE_TTL"]))
    if config["L1_CACHE_TTL"] > config["DEVICE_CACHE_TTL"]:
        raise ConfigError("L1_CACHE_TTL must not be above DEVICE_CACHE_TTL")
    config.setdefault("STATS_HISTORY_SIZE", max(1, 86400 // config["STATS_INTERVAL"]))
    # The WAIT shares its command's socket timeout: leave half of it for the rest of the reply.
    if config["CACHE_REPLICA_WAIT_MS"] > config["CACHE_SOCKET_TIMEOUT"] * 500:
        raise ConfigError("CACHE_REPLICA_WAIT_MS must be at most half of CACHE_SOCKET_TIMEOUT")
    config["MAX_CONTENT_LENGTH"] = 64 * 1024
    config["JSON_SORT_KEYS"] = False
    config.update(overrides)  # test-only keys such as TESTING
    return config


def check_topology(config: dict[str, Any]) -> None:
    """One Redis topology, and a broker that fits it (filled in when not given)."""
    chosen = [name for name in TOPOLOGIES if config.get(name)]
    if len(chosen) > 1:
        raise ConfigError(f"set only one Redis topology, got {' and '.join(chosen)}")
    if config.get("REDIS_SENTINELS") and not config.get("REDIS_SENTINEL_MASTER"):
        raise ConfigError("REDIS_SENTINELS needs REDIS_SENTINEL_MASTER (the name of the master)")
    if config.get("REDIS_SENTINEL_MASTER") and not config.get("REDIS_SENTINELS"):
        raise ConfigError("REDIS_SENTINEL_MASTER needs REDIS_SENTINELS (host:port of the sentinels)")
    if not chosen:
        config["REDIS_URL"] = DEFAULT_REDIS_URL
    topology = Topology.from_config(config)
    if "CELERY_BROKER_URL" not in config:
        if topology.kind == "cluster":
            raise ConfigError(
                "REDIS_CLUSTER_NODES needs CELERY_BROKER_URL: Celery cannot use a Redis Cluster as its broker "
                "(give a redis://, sentinel:// or amqp:// URL)"
            )
        config["CELERY_BROKER_URL"] = topology.default_broker_url() or broker_url_from(config["REDIS_URL"])
    if config["CELERY_BROKER_URL"] == config.get("REDIS_URL"):
        raise ConfigError("CELERY_BROKER_URL must not be the cache's Redis database (REDIS_URL)")
    config.setdefault("CELERY_BROKER_SENTINEL_MASTER", config.get("REDIS_SENTINEL_MASTER"))
    if config["CELERY_BROKER_URL"].startswith("sentinel://") and not config["CELERY_BROKER_SENTINEL_MASTER"]:
        raise ConfigError("a sentinel:// CELERY_BROKER_URL needs CELERY_BROKER_SENTINEL_MASTER (the master's name)")
