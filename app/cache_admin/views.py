"""The /cache admin blueprint: admin bearer tokens only."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from kombu.exceptions import OperationalError

from app.auth import require_admin
from app.cache.admin import cache_unavailable, delete_matching, history, stats
from app.cache.shared import shared_cache
from app.cache_admin.schema import INVALIDATE_FIELDS, MAX_PATTERN, MAX_WARM_LIMIT, WARM_FIELDS
from app.errors import validation_error
from app.validation import is_int, json_object, reject_unknown

bp = Blueprint("cache", __name__, url_prefix="/cache")


@bp.before_request
def admins_only() -> None:
    require_admin()


@bp.get("/stats")
def show_stats():
    return jsonify(stats(shared_cache(), current_app.config["STATS_INTERVAL"]))


@bp.get("/stats/history")
def show_history():
    size = current_app.config["STATS_HISTORY_SIZE"]
    raw = request.args.get("limit", str(min(60, size)))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= size:
        raise validation_error(f"limit must be a whole number from 1 to {size}", field="limit")
    return jsonify({"snapshots": history(shared_cache(), int(raw))})


@bp.post("/warm")
def warm():
    body = json_object(optional=True)
    reject_unknown(body, WARM_FIELDS, "")
    limit = body.get("limit")
    if limit is not None and (not is_int(limit) or not 1 <= limit <= MAX_WARM_LIMIT):
        raise validation_error(f"limit must be a whole number from 1 to {MAX_WARM_LIMIT}", field="limit")
    try:
        # This app's Celery (not the process default): the task name is the contract with the worker.
        result = current_app.extensions["celery"].send_task("tasks.warm.warm_hot_devices", args=[limit], retry=False)
    except OperationalError:
        raise cache_unavailable() from None
    return jsonify({"task_id": result.id}), 202


@bp.post("/clear")
def clear():
    json_object(optional=True)  # no body, or any JSON object
    return jsonify({"deleted": delete_matching(shared_cache(), "*")})


@bp.post("/invalidate")
def invalidate():
    body = json_object()
    reject_unknown(body, INVALIDATE_FIELDS, "")
    pattern = body.get("pattern")
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
        raise validation_error(
            f"pattern must be a non-empty glob of at most {MAX_PATTERN} characters, relative to the prefix",
            field="pattern",
        )
    return jsonify({"deleted": delete_matching(shared_cache(), pattern), "pattern": pattern})
