"""The service plus three bench-only routes, for ``bench/cache_bench.py`` (issue 3).

Every route answers a public device with the same body as the real lookup route
(``GET /api/v1/devices/<id>/<name>``), doing the same request work around a different lookup:

- ``/bench/ceiling``                 one Redis GET of a value the size of the cached lookup, on the
                                     cache's own client (same socket options), decoded and answered
                                     as the same JSON body: the ceiling for any Redis-backed cache.
- ``/bench/memoize/<id>/<name>``     ``load_device`` behind plain Flask-Caching ``@cache.memoize``
                                     (its own ``Cache`` on the same Redis: Flask-Caching defaults
                                     except the URL, a key namespace, the TTL and JSON values).
- ``/bench/uncached/<id>/<name>``    ``load_device`` straight from MongoDB.

Never mounted by ``wsgi.py``: only ``gunicorn bench.benchapp:app`` serves these.
"""

from __future__ import annotations

import json

from flask import Blueprint, current_app, jsonify
from flask_caching import Cache

from app import create_app
from app.auth import api_key_header, current_user
from app.cache.serializer import JSONSerializer
from app.cache.shared import shared_cache
from app.devices.lookup import load_device
from app.devices.service import check_read_access, public_view, require_found
from app.errors import not_found
from app.validation import valid_pair

CEILING_KEY = "bench:ceiling"  # under CACHE_KEY_PREFIX; cache_bench.py copies the cached lookup here
MEMO_NAMESPACE = "bench:memo:"  # appended to CACHE_KEY_PREFIX

bp = Blueprint("bench", __name__, url_prefix="/bench")
memo_cache = Cache()
memoized_load_device = memo_cache.memoize()(load_device)


def _answer(device_id: str, device_name: str, lookup):
    """The real route (``devices.views.show`` and ``service.readable_device``) with the lookup swapped.

    Keep in step with those two; cache_bench.py checks that every variant answers the same body.
    """
    user, key = current_user(), api_key_header()
    device = lookup(device_id, device_name) if valid_pair(device_id, device_name) else {"found": False}
    require_found(device, key)
    check_read_access(device, user, key)
    return jsonify(public_view(device, user.user_id if user is not None else None))


@bp.get("/ceiling")
def ceiling():
    client = shared_cache().client
    raw = client.get(current_app.config["CACHE_KEY_PREFIX"] + CEILING_KEY)
    if raw is None:
        raise not_found("bench ceiling value missing")
    return jsonify(public_view(json.loads(raw), None))


@bp.get("/memoize/<device_id>/<device_name>")
def memoize(device_id: str, device_name: str):
    return _answer(device_id, device_name, memoized_load_device)


@bp.get("/uncached/<device_id>/<device_name>")
def uncached(device_id: str, device_name: str):
    return _answer(device_id, device_name, load_device)


def memo_cache_config(config) -> dict:
    return {
        "CACHE_TYPE": "RedisCache",
        "CACHE_REDIS_URL": config["REDIS_URL"],
        "CACHE_KEY_PREFIX": config["CACHE_KEY_PREFIX"] + MEMO_NAMESPACE,
        "CACHE_DEFAULT_TIMEOUT": config["DEVICE_CACHE_TTL"],
        "CACHE_SERIALIZER": JSONSerializer,
    }


app = create_app()
memo_cache.init_app(app, config=memo_cache_config(app.config))
app.register_blueprint(bp)
