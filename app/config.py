"""Configuration: defaults in code, then the environment, then test overrides.

Everything is read when ``create_app`` runs, never at import time, so a test or a
gunicorn worker gets exactly the environment it was started with. Each variable is one
``Setting`` row of ``SETTINGS``: its name, its default and its kind (a number with its bound,
a flag, text or one of some choices, or one of the formats below); adding one is one line.
Considered pydantic-settings and environs: both change what a value may be (pydantic reads
"1.0" as an int and "y" as true) and how a bad one is reported (several lines), and
pydantic-settings would put pydantic-core in the image, in place of one class of 50 lines.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


# A Setting's kind: int, float, bool or str, or a format's own function of (name, raw text).
Kind = type[int] | type[float] | type[bool] | type[str] | Callable[[str, str], Any]
_FLAGS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}


@dataclass(frozen=True)
class Setting:
    """One environment variable: its default as it would be written in the environment (None:
    unset, or derived from other settings in ``derive``) and its kind.

    ``int`` and ``float`` take a bound (``gt``: above it, ``ge``: at least it); ``bool`` is
    true/false, 1/0, yes/no or on/off; ``str`` is non-empty printable text, or one of
    ``choices`` (any case, read as written there); any other kind is a format's own function.
    """

    name: str
    default: str | None
    kind: Kind = str
    gt: float | None = None
    ge: float | None = None
    choices: tuple[str, ...] = ()

    def read(self, raw: str) -> Any:
        if self.kind in (int, float):
            return self._number(raw)
        if self.kind is bool:
            if raw.lower() not in _FLAGS:
                raise ConfigError(f"{self.name} must be true or false, got {raw!r}")
            return _FLAGS[raw.lower()]
        if self.choices:
            by_case = {choice.lower(): choice for choice in self.choices}
            if raw.lower() not in by_case:
                listed = f"{', '.join(self.choices[:-1])} or {self.choices[-1]}"
                raise ConfigError(f"{self.name} must be {listed}, got {raw!r}")
            return by_case[raw.lower()]
        if self.kind is str:
            if not raw or not raw.isprintable():
                raise ConfigError(f"{self.name} must be non-empty printable text")
            return raw
        return self.kind(self.name, raw)

    def _number(self, raw: str) -> int | float:
        try:
            value = self.kind(raw)
        except (TypeError, ValueError):
            what = "a whole number" if self.kind is int else "a number"
            raise ConfigError(f"{self.name} must be {what}, got {raw!r}") from None
        if self.gt is not None and value <= self.gt:
            raise ConfigError(f"{self.name} must be greater than {self.gt}, got {raw!r}")
        if self.ge is not None and value < self.ge:
            raise ConfigError(f"{self.name} must be {self.ge} or more, got {raw!r}")
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


def _optional_token(name: str, raw: str) -> str | None:
    """A shared secret; empty means unset (a blank line in .env must not mean "the empty token")."""
    if not raw:
        return None
    if any(c.isspace() for c in raw) or not raw.isprintable():
        raise ConfigError(f"{name} must be printable without spaces")
    return raw


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


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

SETTINGS: dict[str, Setting] = {
    setting.name: setting
    for setting in (
        # The contract of the spec.
        Setting("MONGO_URI", "mongodb://127.0.0.1:27017/opensensor", _mongo_uri),
        Setting("REDIS_URL", None, _redis_url),  # default in check_topology, unless another topology is set
        Setting("REDIS_SENTINELS", None, _nodes),
        Setting("REDIS_SENTINEL_MASTER", None),
        Setting("REDIS_PASSWORD", None),
        Setting("REDIS_SENTINEL_PASSWORD", None),
        Setting("REDIS_CLUSTER_NODES", None, _nodes),
        Setting("CELERY_BROKER_URL", None, _broker_url),  # default: the topology's database 1
        Setting("CACHE_KEY_PREFIX", "opensensor:", _prefix),
        Setting("DEVICE_CACHE_TTL", "300", int, gt=0),
        Setting("WARM_INTERVAL", "240", int, gt=0),
        Setting("WARM_TOP_N", None, int, gt=0),  # unset: every device looked up within WARM_WINDOW
        Setting("STATS_INTERVAL", "60", int, gt=0),
        # Our own knobs.
        Setting("LOG_LEVEL", "INFO", choices=LOG_LEVELS),
        Setting("NEGATIVE_CACHE_TTL", "30", int, gt=0),
        Setting("CACHE_SOCKET_TIMEOUT", "0.1", float, gt=0),
        Setting("CACHE_BREAKER_THRESHOLD", "3", int, gt=0),
        Setting("CACHE_PROBE_INTERVAL", "0.1", float, gt=0),
        Setting("L1_CACHE_SIZE", "10000", int, ge=0),
        Setting("L1_CACHE_MAX_BYTES", "67108864", int, gt=0),  # per process: raw values and keys
        Setting("L1_CACHE_TTL", None, float, gt=0),  # default: 60, or DEVICE_CACHE_TTL if shorter
        Setting("CACHE_REPLICA_WAIT_MS", "20", int, gt=0),
        Setting("CACHE_FLUSH_INTERVAL", "1", float, gt=0),
        Setting("CACHE_LOCK_TIMEOUT", "2", float, gt=0),
        Setting("CACHE_LEASE", "1", float, gt=0),  # app/cache/outbox.py
        Setting("OUTBOX_POLL_INTERVAL", "0.2", float, gt=0),
        Setting("MONGO_TIMEOUT_MS", "1000", int, gt=0),
        Setting("STATS_HISTORY_SIZE", None, int, gt=0),  # default: a day of snapshots
        Setting("HOT_HALF_LIFE", "3600", float, gt=0),
        Setting("TASK_TIME_LIMIT", "120", int, gt=0),
        Setting("HOT_MAX_DEVICES", "10000", int, gt=0),
        Setting("WARM_WINDOW", None, int, gt=0),  # default: 3 x DEVICE_CACHE_TTL
        Setting("CELERY_BROKER_SENTINEL_MASTER", None),  # default: REDIS_SENTINEL_MASTER
        Setting("CELERY_QUEUE", "celery"),
        # Operations (issue 9): Prometheus metrics and log format.
        Setting("METRICS_ENABLED", "true", bool),
        Setting("METRICS_TOKEN", "", _optional_token),
        Setting("LOG_FORMAT", "text", choices=("text", "json")),
        # Dashboards (issue 16): browsers on these origins may call the API (app/cors.py).
        Setting("CORS_ORIGINS", "", _origins),
        # Stopping (issue 14): after SIGTERM, readiness answers 503 this long before gunicorn stops
        # accepting (gunicorn.conf.py reads it in the master; the same default).
        Setting("SHUTDOWN_DRAIN_SECONDS", "5", float, ge=0),
        # Dashboards (issue 16): aggregated readings of ended buckets cached in Redis (app/readings/cache.py).
        Setting("QUERY_CACHE_ENABLED", "true", bool),
        Setting("QUERY_CACHE_TTL", "86400", int, gt=0),
    )
}
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
TOPOLOGIES = ("REDIS_URL", "REDIS_SENTINELS", "REDIS_CLUSTER_NODES")


def load_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Parse every setting; raise ``ConfigError`` naming the first bad one.

    An override given as text is read like the environment; any other value is taken as is.
    """
    overrides = dict(overrides or {})
    config: dict[str, Any] = {}
    for name, setting in SETTINGS.items():
        if name in overrides:
            value = overrides.pop(name)
            config[name] = setting.read(value) if isinstance(value, str) else value
            continue
        raw = os.environ.get(name, setting.default)
        if raw is not None:
            config[name] = setting.read(raw.strip())
    check_topology(config)
    derive(config)
    config["MAX_CONTENT_LENGTH"] = 64 * 1024
    config.update(overrides)  # test-only keys such as TESTING
    return config


def derive(config: dict[str, Any]) -> None:
    """The defaults that depend on other settings, and the bounds between settings."""
    config.setdefault("WARM_TOP_N", None)  # every device looked up within WARM_WINDOW
    # 3 TTLs: an entry then outlives its device's last lookup by 3-4 TTLs (issue 16 §4, docs/BENCHMARKS.md).
    config.setdefault("WARM_WINDOW", 3 * config["DEVICE_CACHE_TTL"])
    config.setdefault("L1_CACHE_TTL", min(60.0, config["DEVICE_CACHE_TTL"]))
    if config["L1_CACHE_TTL"] > config["DEVICE_CACHE_TTL"]:
        raise ConfigError("L1_CACHE_TTL must not be above DEVICE_CACHE_TTL")
    config.setdefault("STATS_HISTORY_SIZE", max(1, 86400 // config["STATS_INTERVAL"]))
    if config["OUTBOX_POLL_INTERVAL"] * 2 > config["CACHE_LEASE"]:
        raise ConfigError("OUTBOX_POLL_INTERVAL must be at most half of CACHE_LEASE")
    # The WAIT shares its command's socket timeout: leave half of it for the rest of the reply.
    if config["CACHE_REPLICA_WAIT_MS"] > config["CACHE_SOCKET_TIMEOUT"] * 500:
        raise ConfigError("CACHE_REPLICA_WAIT_MS must be at most half of CACHE_SOCKET_TIMEOUT")


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
        if not topology.has_broker:
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
