"""Partial aggregates of one bucket that combine exactly: across chain members, across chunks.

A readings query's answer per bucket (``avg``, ``min``, ``max``, ``first``, ``last``; VPD from the
bucket's average temperature and humidity) is a function of partials that merge without loss:
the count and sum (avg), min, max, the first and last reading with their time and ``_id`` (ties
in time are broken by ``_id``, as the uncached pipeline's ``$sort`` does), and for VPD the counts
and sums of temperature and humidity. A partial is a JSON list, so chunks of them go to Redis as
plain JSON.

Families (what one cached chunk holds, so one chunk serves every aggregation it can):
  ``n``       numeric measurement: [count, sum, min, max, first_ms, first_id, first, last_ms, last_id, last]
  ``first``   non-numeric, agg first: [count, first_ms, first_id, first]
  ``last``    non-numeric, agg last:  [count, last_ms, last_id, last]
  ``vpd``     [count, temp_count, temp_sum, rh_count, rh_sum]
Non-numeric values (lists of relays...) can be large: their chunks hold only the end asked for.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app.readings.schema import NUMERIC

Partial = list[Any]


def family(measurement: str, agg: str) -> str:
    if measurement == "vpd":
        return "vpd"
    return "n" if measurement in NUMERIC else agg


def _present(field: str) -> dict[str, Any]:
    """1 for a reading that has the field, else 0 (a bucket's avg counts only those, as ``$avg`` does)."""
    return {"$sum": {"$cond": [{"$eq": [{"$type": f"${field}"}, "missing"]}, 0, 1]}}


def accumulators(fam: str, measurement: str) -> dict[str, Any]:
    """The ``$group`` accumulators of one family (the input sorted by time, then ``_id``)."""
    field = f"${measurement}"
    if fam == "vpd":
        return {
            "n": {"$sum": 1},
            "tc": _present("temp"),
            "ts": {"$sum": "$temp"},
            "rc": _present("rh"),
            "rs": {"$sum": "$rh"},
        }
    first = {"ft": {"$first": "$timestamp"}, "fi": {"$first": "$_id"}, "fv": {"$first": field}}
    last = {"lt": {"$last": "$timestamp"}, "li": {"$last": "$_id"}, "lv": {"$last": field}}
    if fam == "first":
        return {"n": {"$sum": 1}, **first}
    if fam == "last":
        return {"n": {"$sum": 1}, **last}
    return {"n": {"$sum": 1}, "s": {"$sum": field}, "lo": {"$min": field}, "hi": {"$max": field}, **first, **last}


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def to_ms(at: datetime) -> int:
    """Milliseconds since the epoch, floored as BSON stores a datetime (no float rounding)."""
    return (at - EPOCH) // MS


def from_group(fam: str, doc: dict[str, Any]) -> Partial:
    """The partial of one ``$group`` result."""
    if fam == "vpd":
        return [doc["n"], doc["tc"], doc["ts"], doc["rc"], doc["rs"]]
    if fam == "first":
        return [doc["n"], to_ms(doc["ft"]), str(doc["fi"]), doc["fv"]]
    if fam == "last":
        return [doc["n"], to_ms(doc["lt"]), str(doc["li"]), doc["lv"]]
    return [
        doc["n"], doc["s"], doc["lo"], doc["hi"],
        to_ms(doc["ft"]), str(doc["fi"]), doc["fv"], to_ms(doc["lt"]), str(doc["li"]), doc["lv"],
    ]  # fmt: skip


class Unfit(ValueError):
    """A stored value whose ``$group`` result Python does not reproduce (a non-number where a
    number belongs, from an import): that part of the query is left to MongoDB."""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def of_reading(fam: str, measurement: str, at_ms: int, oid: str, values: dict[str, Any]) -> Partial | None:
    """One reading's partial, as ``accumulators`` would make it of a bucket holding only that
    reading; None if the query's ``$match`` leaves it out (it lacks the measurement)."""
    if fam == "vpd":
        if "temp" not in values and "rh" not in values:
            return None
        temp, rh = values.get("temp", 0), values.get("rh", 0)
        if not (_number(temp) and _number(rh)):
            raise Unfit(measurement)
        return [1, int("temp" in values), temp, int("rh" in values), rh]
    if measurement not in values:
        return None
    value = values[measurement]
    if fam in ("first", "last"):
        return [1, at_ms, oid, value]
    if not _number(value):
        raise Unfit(measurement)
    return [1, value, value, value, at_ms, oid, value, at_ms, oid, value]


def merge(fam: str, a: Partial, b: Partial) -> Partial:
    """Two partials of the same bucket (disjoint readings) as one. ObjectIds compare as their hex."""
    if fam == "vpd":
        return [a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], a[4] + b[4]]
    if fam == "first":
        return [a[0] + b[0], *(a[1:] if (a[1], a[2]) <= (b[1], b[2]) else b[1:])]
    if fam == "last":
        return [a[0] + b[0], *(a[1:] if (a[1], a[2]) >= (b[1], b[2]) else b[1:])]
    first = a[4:7] if (a[4], a[5]) <= (b[4], b[5]) else b[4:7]
    last = a[7:10] if (a[7], a[8]) >= (b[7], b[8]) else b[7:10]
    return [a[0] + b[0], a[1] + b[1], min(a[2], b[2]), max(a[3], b[3]), *first, *last]


def finish(fam: str, agg: str, p: Partial) -> tuple[Any, int] | None:
    """(the bucket's value as the uncached pipeline gives it, count); None: no such bucket.

    For VPD the value is (avg temp, avg rh); a bucket lacking either has no VPD.
    """
    if fam == "vpd":
        if not p[1] or not p[3]:
            return None
        return (p[2] / p[1], p[4] / p[3]), p[0]
    if fam in ("first", "last"):
        return p[3], p[0]
    value = {"avg": lambda: p[1] / p[0], "min": lambda: p[2], "max": lambda: p[3],
             "first": lambda: p[6], "last": lambda: p[9]}[agg]()  # fmt: skip
    return value, p[0]
