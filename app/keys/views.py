from __future__ import annotations

from flask import Blueprint, jsonify

from app.auth import require_user
from app.keys.service import create_key, delete_key, list_keys, parse_new_key
from app.validation import json_object

bp = Blueprint("keys", __name__, url_prefix="/api/v1/api-keys")


@bp.post("")
def create():
    user = require_user()
    fields = parse_new_key(json_object())
    return jsonify(create_key(user, fields)), 201


@bp.get("")
def index():
    return jsonify({"keys": list_keys(require_user())})


@bp.delete("/<key_id>")
def delete(key_id: str):
    delete_key(require_user(), key_id)
    return "", 204
