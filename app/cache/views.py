"""The /cache admin blueprint: admin bearer tokens only."""

from __future__ import annotations

from flask import Blueprint, jsonify

from app.auth import require_admin
from app.cache.device_cache import device_cache
from app.cache.service import delete_matching, stats
from app.errors import validation_error
from app.validation import json_object, reject_unknown

bp = Blueprint("cache", __name__, url_prefix="/cache")
MAX_PATTERN = 512


@bp.before_request
def admins_only() -> None:
    require_admin()


@bp.get("/stats")
def show_stats():
    return jsonify(stats(device_cache()))


@bp.post("/clear")
def clear():
    json_object(optional=True)  # no body, or any JSON object
    return jsonify({"deleted": delete_matching(device_cache(), "*")})


@bp.post("/invalidate")
def invalidate():
    body = json_object()
    reject_unknown(body, {"pattern"}, "")
    pattern = body.get("pattern")
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
        raise validation_error(
            f"pattern must be a non-empty glob of at most {MAX_PATTERN} characters, relative to the prefix",
            field="pattern",
        )
    return jsonify({"deleted": delete_matching(device_cache(), pattern), "pattern": pattern})
