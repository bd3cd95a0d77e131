from __future__ import annotations

from flask import Blueprint, jsonify

from app.auth import api_key_header, current_user, invalid, stored_key
from app.devices.service import list_devices, public_view, readable_device

bp = Blueprint("devices", __name__, url_prefix="/api/v1/devices")


@bp.get("")
def index():
    user, key = current_user(), api_key_header()
    if key is not None and stored_key(key) is None:
        raise invalid("invalid API key")  # a wrong header is never silently anonymous
    return jsonify({"devices": list_devices(user)})


@bp.get("/<device_id>/<device_name>")
def show(device_id: str, device_name: str):
    user, key = current_user(), api_key_header()
    device = readable_device(device_id, device_name, user, key)
    return jsonify(public_view(device, user.user_id if user is not None else None))
