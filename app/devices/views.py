from __future__ import annotations

from flask import Blueprint, jsonify

from app.auth import api_key_header, current_user
from app.devices.lookup import lookup_device
from app.devices.service import check_read_access, list_devices, public_view, require_found
from app.errors import not_found
from app.validation import valid_pair

bp = Blueprint("devices", __name__, url_prefix="/api/v1/devices")


@bp.get("")
def index():
    return jsonify({"devices": list_devices(current_user())})


@bp.get("/<device_id>/<device_name>")
def show(device_id: str, device_name: str):
    user, key = current_user(), api_key_header()
    if not valid_pair(device_id, device_name):
        raise not_found("unknown device")
    device = require_found(lookup_device(device_id, device_name))
    check_read_access(device, user, key)
    return jsonify(public_view(device, user))
