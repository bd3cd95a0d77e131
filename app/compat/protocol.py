"""opensensor's shapes, translated into the ``readings`` object of ``POST /api/v1/readings``.

Two sources speak them: a device's ``POST /environment/`` body (measurement blocks such as
``{"co2": {"ppm": 612}}``, validated by pydantic in opensensor, whose versions 1 and 2 alike coerce
``"21.5"`` to a number and ``"true"`` to a boolean) and a ``FreeTier`` document in opensensor's
database (the same values stored as text: ``"21.5"``, ``"True"``, ``"[Decimal('0.41'), 0.39]"``, relays and
pumps as JSON text). Both become plain numbers, booleans and lists here; what values are
*allowed* is decided once, by ``app.readings.schema.parse_readings``.

Text is parsed with ``json.loads`` and regular expressions, never ``eval``; ``ast.literal_eval``
(the usual safe parser of Python literals) cannot read the ``Decimal('…')`` calls in that text.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from app.readings.schema import PUMP_FIELDS, RELAY_FIELDS

# GET /<type>/<device_id>|<device_name>: opensensor's route name -> (our measurement, its item field).
LEGACY_TYPES: dict[str, tuple[str, str]] = {
    "temp": ("temp", "temp"),
    "humidity": ("rh", "rh"),
    "CO2": ("co2", "ppm"),
    "moisture": ("moisture", "readings"),
    "pH": ("ph", "pH"),
    "VPD": ("vpd", "vpd"),
    "pressure": ("pressure", "pressure"),
    "lux": ("lux", "lux"),
    "liquid": ("liquid", "liquid"),
    "relays": ("relays", "relays"),
    "pumps": ("pumps", "pumps"),
}

# POST /environment/ block -> (the block's value field, our measurement, our unit field or None).
BLOCKS: dict[str, tuple[str, str, str | None]] = {
    "temp": ("temp", "temp", "temp_unit"),
    "rh": ("rh", "rh", None),
    "pressure": ("pressure", "pressure", "pressure_unit"),
    "lux": ("lux", "lux", None),
    "co2": ("ppm", "co2", None),
    "moisture": ("readings", "moisture", None),
    "pH": ("pH", "ph", None),
    "liquid": ("liquid", "liquid", None),
    "relays": ("relays", "relays", None),
    "pumps": ("pumps", "pumps", None),
}
METADATA_FIELDS = ("device_id", "name", "api_key")

# A FreeTier document's field -> our measurement (opensensor renamed co2 and moisture when storing).
FREETIER_FIELDS: dict[str, str] = {
    "temp": "temp",
    "rh": "rh",
    "pressure": "pressure",
    "lux": "lux",
    "ppm_CO2": "co2",
    "moisture_readings": "moisture",
    "pH": "ph",
    "liquid": "liquid",
    "relays": "relays",
    "pumps": "pumps",
}
FREETIER_UNITS: dict[str, str] = {"temp_unit": "temp_unit", "pressure_unit": "pressure_unit"}

_NUMBER_RE = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")
_DECIMAL_RE = re.compile(r"""Decimal\(\s*(['"])([^'"]*)\1\s*\)""")
# pydantic's boolean strings (the same in 1 and 2; case-insensitive), which opensensor's devices could rely on.
_TRUE = {"1", "on", "t", "true", "y", "yes"}
_FALSE = {"0", "off", "f", "false", "n", "no"}
_TEMP_UNITS = {
    "c": "C",
    "°c": "C",
    "celsius": "C",
    "f": "F",
    "°f": "F",
    "fahrenheit": "F",
    "k": "K",
    "kelvin": "K",
}


class Unconvertible(ValueError):
    """A value that has no meaning as a reading; ``field`` names it in opensensor's terms."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def as_number(value: Any) -> Any:
    """A JSON number, or a decimal string (opensensor stored and accepted those) made one.

    Anything else is returned unchanged for ``parse_readings`` to reject with its own message.
    """
    if isinstance(value, str) and _NUMBER_RE.match(value):
        text = value.strip()
        number = float(text)
        if not math.isfinite(number):
            return value
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        return number
    return value


def as_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return value


def as_int(value: Any) -> Any:
    number = as_number(value)
    if isinstance(number, float) and number.is_integer():
        return int(number)
    return number


def temp_unit(value: Any) -> Any:
    """opensensor kept any unit text; ours are C, F and K, so common spellings are mapped to them."""
    if value is None:
        return None
    if isinstance(value, str):
        return _TEMP_UNITS.get(value.strip().lower(), value)
    return value


def _json_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def number_list_text(text: str) -> list[Any]:
    """``"[Decimal('0.41'), 0.39]"`` (Python's repr of a list, as opensensor stored it) -> ``[0.41, 0.39]``.

    The ``Decimal('…')`` wrappers are unwrapped and the rest must be a JSON array of numbers.
    """
    unwrapped = _DECIMAL_RE.sub(lambda m: m.group(2), text)
    try:
        value = json.loads(unwrapped, parse_constant=_json_constant)
    except ValueError:
        raise ValueError("not a list of numbers") from None
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value):
        raise ValueError("not a list of numbers")
    return value


def _objects(value: Any, fields: dict[str, str]) -> Any:
    """Relays or pumps: opensensor's ``null`` optional fields dropped, its extra fields ignored.

    pydantic ignored unknown fields and coerced ``"1"`` to ``1``; an item's own ``timestamp``
    (pumps had one) is ignored like every timestamp a device sends.
    """
    if not isinstance(value, list):
        return value
    items = []
    for item in value:
        if not isinstance(item, dict):
            items.append(item)
            continue
        cleaned: dict[str, Any] = {}
        for name, kind in fields.items():
            if item.get(name) is None:
                continue
            raw = item[name]
            cleaned[name] = {"int": as_int, "bool": as_bool, "number": as_number}.get(kind, lambda v: v)(raw)
        items.append(cleaned)
    return items


def convert(measurement: str, value: Any) -> Any:
    """One measurement's value as opensensor gave it -> the value ``parse_readings`` expects."""
    if measurement == "moisture":
        if isinstance(value, str):
            return number_list_text(value)
        return [as_number(v) for v in value] if isinstance(value, list) else value
    if measurement == "liquid":
        return as_bool(value)
    if measurement == "relays":
        return _objects(value, RELAY_FIELDS)
    if measurement == "pumps":
        return _objects(value, PUMP_FIELDS)
    return as_number(value)


def _nothing(measurement: str, value: Any) -> bool:
    """An empty moisture list (every probe unplugged) is no reading; opensensor accepted and kept it."""
    return measurement == "moisture" and value == []


def readings_from_environment(body: dict[str, Any]) -> dict[str, Any]:
    """A ``POST /environment/`` body's measurement blocks -> a ``readings`` object (maybe empty).

    Raises ``Unconvertible`` for a block that is not an object, lacks its value or holds text
    that is no number list; unknown blocks and fields are ignored, as pydantic did.
    """
    readings: dict[str, Any] = {}
    for block, (field, measurement, unit_field) in BLOCKS.items():
        data = body.get(block)
        if data is None:
            continue
        if not isinstance(data, dict):
            raise Unconvertible(block, "must be an object")
        if data.get(field) is None:
            raise Unconvertible(f"{block}.{field}", "is required")
        try:
            value = convert(measurement, data[field])
        except ValueError as exc:
            raise Unconvertible(f"{block}.{field}", str(exc)) from None
        if _nothing(measurement, value):
            continue
        readings[measurement] = value
        if unit_field is not None and data.get("unit") is not None:
            unit = data["unit"]
            readings[unit_field] = temp_unit(unit) if unit_field == "temp_unit" else unit
    return readings


# Our validation's field names -> opensensor's, so a device's 422 names what it sent.
_OPENSENSOR_NAMES = {
    f"readings.{measurement}": f"{block}.{field}" for block, (field, measurement, _) in BLOCKS.items()
} | {"readings.temp_unit": "temp.unit", "readings.pressure_unit": "pressure.unit"}


def opensensor_field(field: str) -> str:
    """``readings.relays[0].seconds`` -> ``relays.relays[0].seconds``; unknown names pass through."""
    head, sep, rest = field.partition("[")
    return _OPENSENSOR_NAMES.get(head, head) + sep + rest


def readings_from_freetier(doc: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A stored ``FreeTier`` document -> (a ``readings`` object, [(field, why it was dropped)]).

    A value that cannot be read is dropped with its reason and the rest of the document kept.
    """
    readings: dict[str, Any] = {}
    dropped: list[tuple[str, str]] = []
    for field, measurement in FREETIER_FIELDS.items():
        if doc.get(field) is None:
            continue
        value = doc[field]
        try:
            if measurement in ("relays", "pumps") and isinstance(value, str):
                value = _json_objects(value)
            value = convert(measurement, value)
        except ValueError as exc:
            dropped.append((field, f"unparsable {field}: {exc}"))
            continue
        if not _nothing(measurement, value):
            readings[measurement] = value
    for field, unit_field in FREETIER_UNITS.items():
        measurement = unit_field.removesuffix("_unit")
        if measurement in readings and doc.get(field) is not None:
            unit = doc[field]
            readings[unit_field] = temp_unit(unit) if unit_field == "temp_unit" else unit
    return readings, dropped


def _json_objects(text: str) -> list[Any]:
    """Relays or pumps as opensensor stored them: JSON text of a list, whose items may be JSON text too."""
    try:
        value = json.loads(text, parse_constant=_json_constant)
        if not isinstance(value, list):
            value = [value]
        items = []
        for item in value:
            if isinstance(item, str):
                item = json.loads(item, parse_constant=_json_constant)
            if isinstance(item, list) and item:
                item = item[0]  # opensensor's relay reader took the first of a nested list
            items.append(item)
    except ValueError:
        raise ValueError("not a JSON list of objects") from None
    return items
