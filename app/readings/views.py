from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, jsonify, request

from app.auth import api_key_header, auth_required, current_user, invalid, same_hash, stored_key
from app.cache.shared import shared_cache
from app.devices.lookup import lookup_device
from app.devices.service import readable_device
from app.errors import APIError, not_found
from app.readings.memo import Watch, keep
from app.readings.schema import PUSH_FIELDS, QUERYABLE, parse_query, parse_readings
from app.readings.service import query_readings, store_reading
from app.validation import check_pair, json_object, reject_unknown, valid_pair

bp = Blueprint("readings", __name__, url_prefix="/api/v1")


@bp.post("/readings")
def push():
    key = api_key_header()
    if key is None:
        raise auth_required("an X-API-Key header is required")
    current_user()  # a bearer sent along must be genuine too: a wrong header is always 401
    body = json_object()
    device_id, device_name = body.get("device_id"), body.get("device_name")
    device = lookup_device(device_id, device_name) if valid_pair(device_id, device_name) else None
    if device is None or not device["found"] or not same_hash(device.get("key_hash"), key):
        # Not this pair's key: tell an unknown key (401) from another pair's key (403).
        if stored_key(key) is None:
            raise invalid("invalid API key")
        check_pair(device_id, device_name)
        raise APIError(403, "device_mismatch", "this API key belongs to another device")
    reject_unknown(body, PUSH_FIELDS, "")
    if "readings" not in body:
        raise APIError(400, "validation_error", "readings is required", {"field": "readings"})
    values = parse_readings(body["readings"])
    return jsonify(store_reading(device, values)), 201


@bp.get("/devices/<device_id>/<device_name>/readings/<measurement>")
def query(device_id: str, device_name: str, measurement: str):
    if measurement not in QUERYABLE:
        raise not_found(f"unknown measurement {measurement!r}")
    user, key = current_user(), api_key_header()
    device = readable_device(device_id, device_name, user, key)
    now = datetime.now(UTC)
    params = parse_query(measurement, request.args, now)  # after access: no hints about private devices
    ends_now = "end" not in request.args and params["end"] == now
    watch = Watch(moving="start" not in request.args) if ends_now else None
    response = jsonify(query_readings(device, measurement, params, watch))
    if watch is not None:  # kept whole for the warm read's lane, while current (``memo.py``)
        query_string = request.environ.get("QUERY_STRING", "")
        keep(shared_cache(), device, measurement, query_string, params, response.get_data(), watch)
    return response
