"""The external ceiling of ``bench/near_bench.py`` (issue 16 §5): a minimal Flask app doing one Redis GET.

    gunicorn bench.bareapp:app     # REDIS_URL and CACHE_KEY_PREFIX from the environment, as the service

``GET /`` answers the value of ``<CACHE_KEY_PREFIX>bench:bare`` as is (near_bench stores there the
body the service answers for the warm lookup, so both send the same bytes), ``application/json``.
None of the service's per-request work: no request hooks, metrics, request ids, input guard, JSON
encoding, auth or logging; one redis-py client per process, made on first use (after the fork).
This is what a Redis-backed lookup costs in Flask when nothing else runs; the service's warm lookup,
which answers from its near cache without Redis, is measured as a ratio to it.
"""

from __future__ import annotations

import os

import redis
from flask import Flask, Response, abort

BARE_KEY = "bench:bare"  # under CACHE_KEY_PREFIX

app = Flask(__name__)
_clients: list[redis.Redis] = []


def client() -> redis.Redis:
    if not _clients:
        _clients.append(redis.Redis.from_url(os.environ["REDIS_URL"]))
    return _clients[0]


@app.get("/")
def bare() -> Response:
    value = client().get(os.environ.get("CACHE_KEY_PREFIX", "") + BARE_KEY)
    if value is None:
        abort(404)
    return Response(value, mimetype="application/json")
