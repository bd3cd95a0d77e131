"""The live side of a cached readings query: one index-friendly MongoDB query per stretch.

What a cached query still computes (the range's partial first bucket, the missing chunks, the open
bucket and the buckets within the margin) lies in a few disjoint stretches of time, for each chain
member. They are not asked for in one aggregation: SecantusDB (the embedded MongoDB of the tests and
benches) reaches the index ``(meta.device_id, meta.device_name, timestamp)`` only from a first
``$match`` holding exactly one id as an equality, the name and one ``timestamp`` range; ``$in`` over a
chain, ``$or`` over stretches, ``$unionWith`` and any other field in that ``$match`` scan the whole
collection. So each stretch of each member is its own aggregation of that shape (milliseconds: a
stretch is minutes to a chunk of buckets), and the partials merge in Python (``partials.py``), exactly.
MongoDB proper would take the index for each branch of an ``$or`` as well; separate queries cost it
only their round trips.

Bounded: a member's stretches are the union of its head, tail and missing-chunk runs (adjacent ones
merged, so every reading is read once). A member whose chunks are so scattered that this leaves more
than ``MAX_PER_MEMBER`` stretches is recomputed whole (one stretch, its chunks all rewritten, so the
next query finds them contiguous); a query needing more than ``MAX_QUERIES`` in all (a very long
chain) is not cached.
"""

from __future__ import annotations

from typing import Any

from app.db import READINGS
from app.extensions import mongo
from app.readings.partials import EPOCH, MS, Partial, accumulators, from_group, of_reading, to_ms

MAX_PER_MEMBER = 4  # head, one run of missing chunks, tail; and one more run
MAX_QUERIES = 32  # in all, per cached query

Span = tuple[int, int]  # [from ms, to ms)
Stretch = tuple[str, int, int]  # device id, from ms (inclusive), to ms (exclusive)


def union(spans: list[Span]) -> list[Span]:
    """Sorted, disjoint spans covering the same instants; touching spans become one."""
    out: list[Span] = []
    for low, high in sorted(spans):
        if low >= high:
            continue
        if out and low <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def index_filter(device_id: str, device_name: str, low: int, high: int | None = None) -> dict[str, Any]:
    """One member's readings in [low, high) ms (no upper bound: None), by the index's fields only
    (the shape SecantusDB takes to the index ``(meta.device_id, meta.device_name, timestamp)``)."""
    timestamp = {"$gte": EPOCH + low * MS}
    if high is not None:
        timestamp["$lt"] = EPOCH + high * MS
    return {"meta.device_id": device_id, "meta.device_name": device_name, "timestamp": timestamp}


def pipeline(
    device: dict[str, Any], measurement: str, fam: str, q: dict[str, Any], stretch: Stretch, width: int
) -> list[dict[str, Any]]:
    """One stretch of one member, bucketed, each bucket split by whether its readings lie in the range.

    The first ``$match`` holds the index's fields only (the shape SecantusDB takes to the index);
    the owner and the measurement's presence are filtered after it.
    """
    device_id, low, high = stretch
    if measurement == "vpd":
        present: dict[str, Any] = {"$or": [{"temp": {"$exists": True}}, {"rh": {"$exists": True}}]}
    else:
        present = {measurement: {"$exists": True}}
    epoch_ms = {"$toLong": "$timestamp"}
    inside = {"$and": [{"$gte": ["$timestamp", q["start"]]}, {"$lt": ["$timestamp", q["end"]]}]}
    return [
        {"$match": index_filter(device_id, device["device_name"], low, high)},
        {"$match": {"meta.owner_id": device["owner_id"], **present}},
        {"$sort": {"timestamp": 1, "_id": 1}},
        {
            "$group": {
                "_id": {"b": {"$subtract": [epoch_ms, {"$mod": [epoch_ms, width]}]}, "s": inside},
                **accumulators(fam, measurement),
            }
        },
    ]


def aggregate(
    device: dict[str, Any], measurement: str, fam: str, q: dict[str, Any], stretches: list[Stretch], width: int
) -> list[tuple[str, int, bool, Partial]]:
    """(device id, bucket ms, in the range, partial) of every group of every stretch."""
    out: list[tuple[str, int, bool, Partial]] = []
    collection = mongo.db[READINGS]
    for stretch in stretches:
        for group in collection.aggregate(pipeline(device, measurement, fam, q, stretch, width)):
            key = group["_id"]
            out.append((stretch[0], key["b"], bool(key["s"]), from_group(fam, group)))
    return out


def bucket_readings(
    device: dict[str, Any], device_id: str, measurement: str, fam: str, low: int, high: int
) -> list[tuple[int, Partial]]:
    """Every reading of one member in [low, high) ms, as (ms, partial) in the pipeline's order (time,
    then ``_id``): an ended bucket at a range's edge, cached whole (``cache.py``). The filter holds
    the index's fields only, as ``pipeline``'s first ``$match`` does; the rest is checked here.
    Raises ``Unfit`` for a value only MongoDB aggregates faithfully."""
    fields = ("temp", "rh") if measurement == "vpd" else (measurement,)
    cursor = mongo.db[READINGS].find(
        index_filter(device_id, device["device_name"], low, high),
        {"timestamp": 1, "meta.owner_id": 1, **dict.fromkeys(fields, 1)},
        sort=[("timestamp", 1), ("_id", 1)],
    )
    out = []
    for doc in cursor:
        if doc["meta"].get("owner_id") != device["owner_id"]:
            continue
        at_ms = to_ms(doc["timestamp"])
        values = {name: doc[name] for name in fields if name in doc}
        partial = of_reading(fam, measurement, at_ms, str(doc["_id"]), values)
        if partial is not None:
            out.append((at_ms, partial))
    return out
