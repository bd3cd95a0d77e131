from __future__ import annotations

import logging

import pymongo
from flask import Blueprint, jsonify
from pymongo.errors import PyMongoError

from app.cache.shared import shared_cache
from app.extensions import mongo
from app.health.shutdown import shutdown

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__, url_prefix="/health")
PROBE_SECONDS = 0.25


@bp.get("/live")
def live():
    return jsonify({"status": "ok"})


@bp.get("")
def ready():
    """Readiness: MongoDB is required, Redis is optional (the cache fails open).

    A process draining before it stops answers 503 ``down`` whatever its checks say, while it
    still serves everything else: load balancers stop sending it new requests first.
    """
    try:
        with pymongo.timeout(PROBE_SECONDS):
            mongo.state.client().admin.command("ping")
        mongo_ok = True
    except PyMongoError as exc:
        log.debug("mongo probe failed: %s", exc)
        mongo_ok = False
    redis_ok = shared_cache().ping()
    checks = {"mongo": "ok" if mongo_ok else "unavailable", "redis": "ok" if redis_ok else "unavailable"}
    if not mongo_ok or shutdown().draining:
        return jsonify({"status": "down", "checks": checks}), 503
    return jsonify({"status": "ok" if redis_ok else "degraded", "checks": checks})
