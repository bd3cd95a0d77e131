"""Store a push and answer a bucketed query; buckets are computed by MongoDB."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from app.db import READINGS
from app.extensions import mongo
from app.readings.cache import Rows, cached_rows
from app.readings.log import append
from app.readings.memo import Watch
from app.readings.schema import MEASUREMENTS, from_celsius
from app.timeutil import isoformat, utcnow_ms

MAX_SKIP = 2**62  # no range holds this many buckets; any larger $skip is just as empty


def store_reading(device: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    timestamp = utcnow_ms()
    meta = {
        "device_id": device["device_id"],
        "device_name": device["device_name"],
        "owner_id": device["owner_id"],
    }
    doc = {"timestamp": timestamp, "meta": meta, **values}
    mongo.db[READINGS].insert_one(doc)
    append((device["owner_id"], device["device_id"], device["device_name"]), doc)  # before the answer
    return {
        "device_id": device["device_id"],
        "device_name": device["device_name"],
        "timestamp": isoformat(timestamp),
        "stored": [name for name in MEASUREMENTS if name in values],
    }


def vpd_kpa(temp_c: float, rh: float) -> float:
    """Vapour-pressure deficit from the Tetens equation (saturation pressure in kPa).

    At or below -237.3 °C the equation's denominator flips sign (math.exp would overflow);
    saturation pressure there is effectively zero, as the equation tends to from above.
    """
    if temp_c <= -237.3:
        return 0.0
    saturation = 0.6108 * math.exp(17.27 * temp_c / (temp_c + 237.3))
    return saturation * (1 - rh / 100)


def _pipeline(device: dict[str, Any], measurement: str, q: dict[str, Any]) -> list[dict[str, Any]]:
    match: dict[str, Any] = {
        "meta.owner_id": device["owner_id"],
        "meta.device_name": device["device_name"],
        "meta.device_id": {"$in": device["chain"]},
        "timestamp": {"$gte": q["start"], "$lt": q["end"]},
    }
    complete: list[dict[str, Any]] = []
    if measurement == "vpd":
        # The bucket's average temp and average rh, each over every reading that has it:
        # a device may push them separately. A bucket lacking either has no VPD.
        match["$or"] = [{"temp": {"$exists": True}}, {"rh": {"$exists": True}}]
        accumulators = {"temp": {"$avg": "$temp"}, "rh": {"$avg": "$rh"}}
        complete = [{"$match": {"temp": {"$ne": None}, "rh": {"$ne": None}}}]
    else:
        match[measurement] = {"$exists": True}
        accumulators = {"value": {f"${q['agg']}": f"${measurement}"}}
    millis = q["resolution"] * 60_000
    epoch_ms = {"$toLong": "$timestamp"}
    # Beyond any possible bucket count a page is empty anyway; capped so $skip fits in a BSON int64.
    page_start = min((q["page"] - 1) * q["size"], MAX_SKIP)
    return [
        {"$match": match},
        {"$sort": {"timestamp": 1, "_id": 1}},  # $first/$last follow time order
        {
            "$group": {
                "_id": {"$subtract": [epoch_ms, {"$mod": [epoch_ms, millis]}]},
                "count": {"$sum": 1},
                **accumulators,
            }
        },
        *complete,
        {
            "$facet": {
                "total": [{"$count": "n"}],
                "items": [{"$sort": {"_id": 1}}, {"$skip": page_start}, {"$limit": q["size"]}],
            }
        },
    ]


def aggregate_rows(device: dict[str, Any], measurement: str, q: dict[str, Any]) -> Rows:
    """The uncached answer: total buckets and this page's (bucket ms, value, count), VPD's value (temp, rh)."""
    result = next(mongo.db[READINGS].aggregate(_pipeline(device, measurement, q)), {"total": [], "items": []})
    total = result["total"][0]["n"] if result["total"] else 0
    rows = [
        (b["_id"], (b["temp"], b["rh"]) if measurement == "vpd" else b["value"], b["count"]) for b in result["items"]
    ]
    return total, rows


def query_readings(
    device: dict[str, Any], measurement: str, q: dict[str, Any], watch: Watch | None = None
) -> dict[str, Any]:
    """The same answer from the query cache (app/readings/cache.py) or, when it cannot serve,
    MongoDB. ``watch``: a query ending now, which the view may keep whole (``memo.py``)."""
    total, rows = cached_rows(device, measurement, q, watch) or aggregate_rows(device, measurement, q)
    items = []
    for bucket_ms, raw, count in rows:
        if measurement == "vpd":
            value: Any = vpd_kpa(*raw)
        elif measurement == "temp":
            value = from_celsius(raw, q["unit"])
        else:
            value = raw
        stamp = datetime.fromtimestamp(bucket_ms / 1000, UTC)
        items.append({"timestamp": isoformat(stamp), "value": value, "count": count})
    body: dict[str, Any] = {
        "device": {
            "device_id": device["device_id"],
            "device_name": device["device_name"],
            "chain": device["chain"],
            "public": device["public"],
        },
        "measurement": measurement,
    }
    if measurement == "temp":
        body["unit"] = q["unit"]
    elif measurement == "vpd":
        body["unit"] = "kPa"
    body.update(
        {
            "agg": q["agg"],
            "resolution": q["resolution"],
            "start": isoformat(q["start"]),
            "end": isoformat(q["end"]),
            "items": items,
            "page": q["page"],
            "size": q["size"],
            "total": total,
            "pages": math.ceil(total / q["size"]),
        }
    )
    return body
