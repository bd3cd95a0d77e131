"""The readings of one opensensor time series, converted, validated and written in checkpointed batches.

Read in ``_id`` order; a checkpoint before and after each batch (in ``imports``) lets a run resume
where the last one stopped, and the batch that was in flight when it stopped is de-duplicated
against what reached MongoDB.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timedelta
from typing import Any, TextIO

import click
from bson import ObjectId
from pymongo import ASCENDING
from pymongo.database import Database

from app.compat.importer.plan import Pair
from app.compat.importer.report import Report
from app.compat.protocol import readings_from_freetier
from app.db import IMPORTS, READINGS
from app.errors import APIError
from app.readings.cache import drop_members
from app.readings.schema import parse_readings
from app.timeutil import utcnow_ms

# A reading stored in opensensor shortly before the last checkpoint may have a smaller _id than
# it (ObjectIds come from each client's clock): every run re-reads this much before the checkpoint.
LATE_MARGIN = timedelta(minutes=5)


class ReadingsImport:
    """The readings part of one run; ``renew`` keeps the run's lease (called after each batch)."""

    def __init__(
        self,
        source: Database,
        source_id: str,
        target: Database,
        report: Report,
        *,
        dry_run: bool,
        rescan: bool,
        batch_size: int,
        err: TextIO,
        renew: Callable[[], None],
    ) -> None:
        self.source = source
        self.source_id = source_id  # names the checkpoints
        self.target = target
        self.report = report
        self.dry_run = dry_run
        self.rescan = rescan  # read every reading again (de-duplicated), not only those after the checkpoint
        self.batch_size = batch_size
        self.err = err  # progress
        self.renew = renew

    def run(self, collection: str, owners: dict[Pair, str], pair_reasons: dict[Pair, str]) -> None:
        checkpoint_id = f"{self.source_id}/{collection}"
        state = self.target[IMPORTS].find_one({"_id": checkpoint_id}) or {}
        done, pending = state.get("done_through"), state.get("pending_through")
        horizon = max((i for i in (done, pending) if i is not None), default=None)
        query: dict[str, Any] = {}
        if self.rescan and horizon is not None:
            horizon = max(horizon, ObjectId(b"\xff" * 12))  # every batch is checked against what is stored
        elif done is not None:
            query = {"_id": {"$gt": ObjectId.from_datetime(done.generation_time - LATE_MARGIN)}}
        source = self.source[collection]
        total = source.count_documents(query)
        cursor = source.find(query, sort=[("_id", ASCENDING)], batch_size=self.batch_size)
        label = f"readings from {collection}"
        with click.progressbar(length=total, label=label, file=self.err, show_pos=True) as bar:
            for batch in _batched(cursor, self.batch_size):
                recheck = horizon is not None and batch[0]["_id"] <= horizon
                docs = [d for d in (self._reading(doc, owners, pair_reasons, horizon) for doc in batch) if d]
                if recheck and docs:
                    docs = self._not_yet_stored(docs)
                self._write(checkpoint_id, batch[-1]["_id"], docs)
                self.report.readings["imported"] += len(docs)
                bar.update(len(batch))

    def _reading(
        self, doc: dict[str, Any], owners: dict[Pair, str], pair_reasons: dict[Pair, str], horizon: ObjectId | None
    ) -> dict[str, Any] | None:
        """The reading to store for one FreeTier document, or None (counted unless seen by an earlier run)."""
        counted = horizon is None or doc["_id"] > horizon
        meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
        pair = (meta.get("device_id"), meta.get("name"))
        owner = owners.get(pair)  # type: ignore[arg-type]
        if owner is None:
            if counted:
                self.report.skipped[f"readings: {pair_reasons.get(pair, 'no opensensor key for the pair')}"] += 1  # type: ignore[arg-type]
            return None
        if not isinstance(doc.get("timestamp"), datetime):
            if counted:
                self.report.skipped["readings: no timestamp"] += 1
            return None
        readings, dropped = readings_from_freetier(doc)
        values = _validated(readings, dropped)
        if counted:
            self.report.dropped_values.update(reason for _, reason in dropped)
        if not values:
            if counted:
                self.report.skipped["readings: no usable measurement"] += 1
            return None
        meta = {"device_id": pair[0], "device_name": pair[1], "owner_id": owner}
        return {"timestamp": doc["timestamp"], "meta": meta, **values, "opensensor_id": doc["_id"]}

    def _not_yet_stored(self, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Of a batch a stopped run may have written, the readings that are not stored yet.

        Asked by the batch's time range alone and matched here: a filter on ``meta`` or an ``$in`` of
        ids makes a time series query far slower (seconds per batch on SecantusDB) for no gain.
        """
        stamps = [d["timestamp"] for d in docs]
        query = {"timestamp": {"$gte": min(stamps), "$lte": max(stamps)}, "opensensor_id": {"$exists": True}}
        stored = {d["opensensor_id"] for d in self.target[READINGS].find(query, {"_id": 0, "opensensor_id": 1})}
        return [d for d in docs if d["opensensor_id"] not in stored]

    def _write(self, checkpoint_id: str, last: ObjectId, docs: list[dict[str, Any]]) -> None:
        """pending -> insert -> done: a run stopped in between leaves ``pending_through`` ahead of ``done``."""
        if self.dry_run:
            return
        self.target[IMPORTS].update_one({"_id": checkpoint_id}, {"$set": {"pending_through": last}}, upsert=True)
        if docs:
            self.target[READINGS].insert_many(docs, ordered=False)
            # Readings in ended buckets: their cached chunks are dropped before the batch counts as done.
            drop_members({(d["meta"]["owner_id"], d["meta"]["device_id"], d["meta"]["device_name"]) for d in docs})
        self._mark_done(checkpoint_id, last, len(docs))

    def _mark_done(self, checkpoint_id: str, last: ObjectId, imported: int) -> None:
        self.target[IMPORTS].update_one(
            {"_id": checkpoint_id},
            {"$set": {"done_through": last, "updated_at": utcnow_ms()}, "$inc": {"imported": imported}},
        )
        self.renew()


def _validated(readings: dict[str, Any], dropped: list[tuple[str, str]]) -> dict[str, Any]:
    """``parse_readings`` of what can be kept: a value it refuses is dropped (with its unit) and the rest retried."""
    readings = dict(readings)
    for _ in range(len(readings) + 1):
        if not readings:
            return {}
        try:
            return parse_readings(readings)
        except APIError as exc:
            where = (exc.details or {}).get("field", "").removeprefix("readings.")
            name = re.split(r"[.\[]", where, maxsplit=1)[0]
            if name not in readings:
                return {}
            base = name.removesuffix("_unit")
            for gone in (base, f"{base}_unit"):
                readings.pop(gone, None)
            dropped.append((name, re.sub(r"\[\d+\]", "[]", exc.message.removeprefix("readings."))))
    return {}


def _batched(cursor: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    iterator = iter(cursor)
    while batch := list(itertools.islice(iterator, size)):
        yield batch
