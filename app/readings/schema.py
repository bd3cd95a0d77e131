"""Validation of a pushed reading and of a query's parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from werkzeug.datastructures import MultiDict

from app.errors import validation_error
from app.timeutil import parse_iso
from app.validation import is_int, is_number, reject_unknown

# measurement -> (lowest, highest) for plain numbers; None = no bound.
NUMERIC: dict[str, tuple[float | None, float | None]] = {
    "temp": (None, None),  # bounded after unit conversion, see ABSOLUTE_ZERO_C
    "rh": (0, 100),
    "pressure": (0, None),
    "lux": (0, None),
    "co2": (0, None),
    "ph": (0, 14),
}
OTHER = ("moisture", "liquid", "relays", "pumps")
MEASUREMENTS = (*NUMERIC, *OTHER)  # what a push may store, in the spec's order
READINGS_FIELDS = {*MEASUREMENTS, "temp_unit", "pressure_unit"}  # the ``readings`` object of a push
QUERYABLE = (*MEASUREMENTS, "vpd")
NUMERIC_RESULTS = (*NUMERIC, "vpd")
AGGS = ("avg", "min", "max", "first", "last")
TEMP_UNITS = ("C", "F", "K")
ABSOLUTE_ZERO_C = -273.15
MAX_LIST = 64
MAX_SPAN = timedelta(days=366)
MAX_RESOLUTION = 10080  # minutes in a bucket: a week
MAX_PAGE_SIZE = 1000
PUSH_FIELDS = {"device_id", "device_name", "readings"}  # the body of POST /api/v1/readings

RELAY_FIELDS = {"position": "int", "enabled": "bool", "seconds": "int", "description": "str"}
PUMP_FIELDS = {
    "position": "int",
    "enabled": "bool",
    "speed": "number",
    "duration": "number",
    "description": "str",
}


def to_celsius(value: float, unit: str) -> float:
    if unit == "F":
        return (value - 32) * 5 / 9
    if unit == "K":
        return value + ABSOLUTE_ZERO_C
    return value


def from_celsius(value: float, unit: str) -> float:
    if unit == "F":
        return value * 9 / 5 + 32
    if unit == "K":
        return value - ABSOLUTE_ZERO_C
    return value


def _bad(field: str, message: str):
    return validation_error(f"{field}: {message}", field=field)


def _check_objects(name: str, items: Any, fields: dict[str, str]) -> list[dict[str, Any]]:
    if not isinstance(items, list) or len(items) > MAX_LIST:
        raise _bad(f"readings.{name}", f"must be a list of at most {MAX_LIST} objects")
    checks = {
        "int": lambda v: is_int(v) and v >= 0,
        "bool": lambda v: isinstance(v, bool),
        "number": lambda v: is_number(v) and v >= 0,
        "str": lambda v: isinstance(v, str) and len(v) <= 256,
    }
    for i, item in enumerate(items):
        where = f"readings.{name}[{i}]"
        if not isinstance(item, dict):
            raise _bad(where, "must be an object")
        reject_unknown(item, set(fields), f"{where}.")
        for field in ("position", "enabled"):
            if field not in item:
                raise _bad(f"{where}.{field}", "is required")
        for field, kind in fields.items():
            if field in item and not checks[kind](item[field]):
                raise _bad(
                    f"{where}.{field}",
                    f"must be a {'non-negative ' if kind in ('int', 'number') else ''}{kind}",
                )
    return items


def parse_readings(readings: Any) -> dict[str, Any]:
    """Validate a push's ``readings`` object; return the fields to store (temp in °C)."""
    if not isinstance(readings, dict):
        raise _bad("readings", "must be an object")
    reject_unknown(readings, READINGS_FIELDS, "readings.")
    if not any(name in readings for name in MEASUREMENTS):
        raise _bad("readings", "at least one measurement is required")
    values: dict[str, Any] = {}
    for name, (low, high) in NUMERIC.items():
        if name not in readings:
            continue
        value = readings[name]
        if not is_number(value):
            raise _bad(f"readings.{name}", "must be a number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise _bad(f"readings.{name}", f"must be between {low} and {high if high is not None else '∞'}")
        values[name] = float(value) if isinstance(value, float) else value
    if "temp_unit" in readings:
        if "temp" not in readings:
            raise _bad("readings.temp_unit", "given without temp")
        if readings["temp_unit"] not in TEMP_UNITS:
            raise _bad("readings.temp_unit", "must be C, F or K")
    if "temp" in values:
        values["temp"] = to_celsius(values["temp"], readings.get("temp_unit", "C"))
        if values["temp"] < ABSOLUTE_ZERO_C:
            raise _bad("readings.temp", "is below absolute zero")
    if "pressure_unit" in readings:
        unit = readings["pressure_unit"]
        if "pressure" not in readings:
            raise _bad("readings.pressure_unit", "given without pressure")
        if not isinstance(unit, str) or not 1 <= len(unit) <= 16:
            raise _bad("readings.pressure_unit", "must be a string of 1-16 characters")
        values["pressure_unit"] = unit
    if "moisture" in readings:
        moisture = readings["moisture"]
        if not isinstance(moisture, list) or not 1 <= len(moisture) <= MAX_LIST or not all(map(is_number, moisture)):
            raise _bad("readings.moisture", f"must be a list of 1-{MAX_LIST} numbers")
        values["moisture"] = moisture
    if "liquid" in readings:
        if not isinstance(readings["liquid"], bool):
            raise _bad("readings.liquid", "must be true or false")
        values["liquid"] = readings["liquid"]
    if "relays" in readings:
        values["relays"] = _check_objects("relays", readings["relays"], RELAY_FIELDS)
    if "pumps" in readings:
        values["pumps"] = _check_objects("pumps", readings["pumps"], PUMP_FIELDS)
    return values


def _int_arg(args: MultiDict, name: str, default: int, low: int, high: int | None) -> int:
    raw = args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad(name, "must be a whole number") from None
    if value < low or (high is not None and value > high):
        raise _bad(name, f"must be between {low} and {high}" if high else f"must be at least {low}")
    return value


def _time_arg(args: MultiDict, name: str) -> datetime | None:
    raw = args.get(name)
    if raw is None:
        return None
    try:
        return parse_iso(raw)
    except (ValueError, OverflowError):  # OverflowError: an offset pushes it outside years 1-9999
        raise _bad(name, "must be an ISO-8601 timestamp") from None


def parse_query(measurement: str, args: MultiDict, now: datetime | None = None) -> dict[str, Any]:
    now = now or datetime.now(UTC)
    end = _time_arg(args, "end")
    start = _time_arg(args, "start")
    try:
        if end is None:
            end = now if start is None or start < now else start + timedelta(hours=24)
        if start is None:
            start = end - timedelta(hours=24)
    except OverflowError:  # a default 24 h beyond year 1 or 9999 is no range at all
        raise _bad("start" if end is None else "end", "the default 24 h range falls outside years 1-9999") from None
    if start >= end:
        raise _bad("start", "must be before end")
    if end - start > MAX_SPAN:
        raise _bad("end", "the range may span at most 366 days")
    numeric = measurement in NUMERIC_RESULTS
    agg = args.get("agg", "avg" if numeric else "last")
    if agg not in AGGS:
        raise _bad("agg", f"must be one of {', '.join(AGGS)}")
    if not numeric and agg in ("avg", "min", "max"):
        raise _bad("agg", f"{agg} needs a numeric measurement; use first or last for {measurement}")
    if measurement == "vpd" and agg != "avg":
        raise _bad("agg", "vpd is derived from each bucket's averages; only avg applies")
    unit = args.get("unit")
    if unit is not None and measurement != "temp":
        raise _bad("unit", "applies only to temp")
    if unit is not None and unit not in TEMP_UNITS:
        raise _bad("unit", "must be C, F or K")
    return {
        "start": start,
        "end": end,
        "resolution": _int_arg(args, "resolution", 30, 1, MAX_RESOLUTION),
        "agg": agg,
        "unit": unit or ("C" if measurement == "temp" else None),
        "page": _int_arg(args, "page", 1, 1, None),
        "size": _int_arg(args, "size", 50, 1, MAX_PAGE_SIZE),
    }
