"""opensensor's routes, answered by this service's own lookup, access rules, validation and storage.

- ``POST /environment/`` (and ``/environment``): a device's push, key in the body. 201 with an
  empty body; 400 without a key; 403 for an unknown key or another pair's key; 422 for a body
  that does not fit (opensensor's statuses, our error shape).
- ``GET /<type>/<device_id>|<device_name>``: one rule per opensensor type, so no pattern can
  shadow another route (``/health``, ``/cache/...``, ``/docs``...). Access follows ``/api/v1``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.datastructures import MultiDict

from app.auth import api_key_header, current_user, same_hash, stored_key
from app.compat.protocol import (
    LEGACY_TYPES,
    METADATA_FIELDS,
    Unconvertible,
    opensensor_field,
    readings_from_environment,
)
from app.devices.lookup import lookup_device
from app.devices.service import readable_device
from app.errors import APIError
from app.readings.schema import parse_query, parse_readings
from app.readings.service import query_readings, store_reading
from app.timeutil import isoformat, parse_iso
from app.validation import UnencodableText, json_object, valid_pair

bp = Blueprint("compat", __name__)

# opensensor's read window when a dashboard gives no dates.
DEFAULT_SPAN = timedelta(days=100)
# The query parameters of opensensor's reads -> ours (``unit`` only means something for temp).
QUERY_NAMES = {"start_date": "start", "end_date": "end", "resolution": "resolution", "page": "page", "size": "size"}
_EPOCH_MS_ABOVE = 2e10  # pydantic (1 and 2) read a larger number as milliseconds, a smaller one as seconds


def schema_error(message: str, field: str) -> APIError:
    """opensensor (FastAPI) answers 422 to a body or query that does not fit; the code is ours."""
    return APIError(422, "validation_error", message, {"field": field})


def _as_422(exc: APIError, rename) -> APIError:
    field = (exc.details or {}).get("field", "")
    name = rename(field) if field else field
    message = exc.message.replace(f"{field}:", f"{name}:", 1) if field else exc.message
    return schema_error(message, name)


@bp.post("/environment/")
@bp.post("/environment")
def environment() -> Response:
    try:
        body = json_object(require_media_type=False)
    except UnencodableText:
        raise  # 400 on every route, whatever the protocol
    except APIError as exc:
        if exc.status != 400:
            raise
        raise schema_error(exc.message, "body") from None
    device_id, device_name, key = _metadata(body.get("device_metadata"))
    if not key:
        field = "device_metadata.api_key"
        raise APIError(400, "validation_error", f"{field} is required", {"field": field})
    device = lookup_device(device_id, device_name) if valid_pair(device_id, device_name) else None
    if device is None or not device["found"] or not same_hash(device.get("key_hash"), key):
        if stored_key(key) is None:
            raise APIError(403, "forbidden", "invalid API key")
        raise APIError(403, "device_mismatch", "device_id and name do not match the API key")
    try:
        readings = readings_from_environment(body)
    except Unconvertible as exc:
        raise schema_error(str(exc), exc.field) from None
    if readings:  # a push without any measurement stores nothing and still succeeds, as in opensensor
        try:
            values = parse_readings(readings)
        except APIError as exc:
            raise _as_422(exc, opensensor_field) from None
        store_reading(device, values)
    response = current_app.response_class(status=201)
    del response.headers["Content-Type"]  # an empty body, like opensensor's Response(status_code=201)
    return response


def _metadata(metadata: Any) -> tuple[str, str | None, str | None]:
    """``device_metadata``'s (device_id, name, api_key); a number is read as its text.

    opensensor's pydantic 2 refused a number there (422; pydantic 1 made it text): accepting it
    breaks no device that worked there (docs/OPENSENSOR.md lists the difference).
    """
    if not isinstance(metadata, dict):
        raise schema_error("device_metadata must be an object", "device_metadata")
    values: dict[str, Any] = {}
    for field in METADATA_FIELDS:
        value = metadata.get(field)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None and not isinstance(value, str):
            raise schema_error(f"device_metadata.{field} must be a string", f"device_metadata.{field}")
        values[field] = value
    if values["device_id"] is None:
        raise schema_error("device_metadata.device_id is required", "device_metadata.device_id")
    return values["device_id"], values["name"], values["api_key"]


def legacy_read(kind: str, device: str) -> Response:
    """``device`` is ``<device_id>|<device_name>`` (opensensor's one path segment for the pair)."""
    measurement, field = LEGACY_TYPES[kind]
    device_id, _, device_name = device.partition("|")
    user, key = current_user(), api_key_header()
    found = readable_device(device_id, device_name, user, key)
    params = legacy_query(measurement, request.args)  # after access, like /api/v1: no hints about private devices
    result = query_readings(found, measurement, params)
    extra = {"unit": result["unit"]} if kind == "temp" else {}
    return jsonify(
        {
            "items": [{"timestamp": item["timestamp"], field: item["value"], **extra} for item in result["items"]],
            "total": result["total"],
            "page": result["page"],
            "size": result["size"],
            "pages": result["pages"],
        }
    )


for _kind in LEGACY_TYPES:
    bp.add_url_rule(f"/{_kind}/<device>", f"legacy_{_kind}", legacy_read, methods=["GET"], defaults={"kind": _kind})


def legacy_query(measurement: str, args: MultiDict, now: datetime | None = None) -> dict[str, Any]:
    """opensensor's query parameters, checked by ``parse_query`` (422 with opensensor's names).

    Dates default to the last 100 days as in opensensor; ``unit`` is read for temp only
    (opensensor ignored it elsewhere).
    """
    now = now or datetime.now(UTC)
    end = _date_arg(args, "end_date") or now
    try:
        start = _date_arg(args, "start_date") or end - DEFAULT_SPAN
    except OverflowError:
        raise schema_error("the default 100 days before end_date fall before year 1", "start_date") from None
    ours = MultiDict({"start": isoformat(start), "end": isoformat(end)})
    for name in ("resolution", "page", "size"):
        if name in args:
            ours[name] = args[name]
    if measurement == "temp" and "unit" in args:
        ours["unit"] = args["unit"]
    renamed = {ours_: theirs for theirs, ours_ in QUERY_NAMES.items()}
    try:
        return parse_query(measurement, ours, now=now)
    except APIError as exc:
        raise _as_422(exc, lambda name: renamed.get(name, name)) from None


def _date_arg(args: MultiDict, name: str) -> datetime | None:
    """An ISO-8601 date-time, or a Unix time in seconds (milliseconds when large), as pydantic read them."""
    raw = args.get(name)
    if raw is None:
        return None
    try:
        number = float(raw)
    except ValueError:
        number = None
    try:
        if number is not None:
            return datetime.fromtimestamp(number / 1000 if abs(number) > _EPOCH_MS_ABOVE else number, UTC)
        return parse_iso(raw)
    except (ValueError, OverflowError, OSError):
        raise schema_error(f"{name} must be an ISO-8601 date-time or a Unix time", name) from None
