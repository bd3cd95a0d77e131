"""Request parsing shared by the routes: JSON bodies, device pairs, plain values."""

from __future__ import annotations

import re
from typing import Any

from flask import request

from app.errors import APIError, validation_error

_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9._: -]{1,64}$")


def json_object(optional: bool = False) -> dict[str, Any]:
    """The request's JSON object body: 415 for another media type, 400 for bad JSON.

    With ``optional``, an empty body counts as ``{}``.
    """
    if optional and not request.get_data(cache=True):
        return {}
    if not request.is_json:
        raise APIError(415, "unsupported_media_type", "the body must be application/json")
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the parser goes; silent only covers ValueError
        body = None
    if body is None:
        raise validation_error("the body is not valid JSON")
    if not isinstance(body, dict):
        raise validation_error("the body must be a JSON object")
    return body


def valid_pair(device_id: Any, device_name: Any) -> bool:
    return (
        isinstance(device_id, str)
        and isinstance(device_name, str)
        and bool(_ID_RE.match(device_id))
        and bool(_NAME_RE.match(device_name))
    )


def check_pair(device_id: Any, device_name: Any) -> None:
    """400 unless the pair is well formed (body fields)."""
    if not isinstance(device_id, str) or not _ID_RE.match(device_id):
        raise validation_error("device_id must be 1-64 letters, digits or . _ : -", field="device_id")
    if not isinstance(device_name, str) or not _NAME_RE.match(device_name):
        raise validation_error("device_name must be 1-64 letters, digits, spaces or . _ : -", field="device_name")


def reject_unknown(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise validation_error(f"unknown field {where}{unknown[0]}", field=f"{where}{unknown[0]}")


# BSON integers are 64-bit: a bigger JSON integer would fail at insert time (a 500), not here.
_INT64 = range(-(2**63), 2**63)


# Far beyond any sensor, and small enough that sums, averages and unit conversions of
# stored values stay finite: JSON has no Infinity.
MAX_MAGNITUDE = 1e15


def is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return -MAX_MAGNITUDE <= value <= MAX_MAGNITUDE  # NaN fails both comparisons


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in _INT64
