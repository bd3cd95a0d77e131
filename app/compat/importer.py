"""``flask --app wsgi import-opensensor --source-uri mongodb://…/<db>``: opensensor's data, moved here.

opensensor keeps users in ``Users`` (``_id`` a UUID, ``api_keys`` embedded with the plaintext
``key``, ``device_id``, ``device_name``, ``description``, ``private_data``) and readings in the
time series ``FreeTier`` (``metadata.{device_id,name,user_id}``, measurements stored as text).
The import writes, through this service's own rules:

- one user per opensensor user (``opensensor_id`` kept, a new token printed once);
- one key record per usable api_key: hashed, ``private`` and ``description`` kept (an
  imported key is found by its hash, see ``app/auth.py``), then the pairs' cached lookups
  are invalidated;
- every reading, converted by ``app/compat/protocol.py`` and validated by ``parse_readings``,
  with its opensensor ``_id`` as ``opensensor_id``.

Safety: the source is only read. Users and keys are upserts keyed by the opensensor user id and
the key's hash (unique indexes), so a second run adds nothing. Readings are read in ``_id``
order and written in batches (``insert_many``); a checkpoint before and after each batch (in
``imports``) lets a run resume where the last one stopped, and the batch that was in flight
when it stopped is de-duplicated against what reached MongoDB. A lease in the same collection
(a document with an owner and an expiry: MongoDB has no lock of its own, and Redis is the
optional cache here) keeps two runs from importing one source at once.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import socket
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import click
from bson import Binary, ObjectId
from bson.binary import UuidRepresentation
from flask import current_app
from flask.cli import with_appcontext
from pymongo import ASCENDING, MongoClient
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError, PyMongoError
from pymongo.uri_parser import parse_uri

from app.auth import KEY_PREFIX, TOKEN_PREFIX, hash_secret, is_key_shaped, new_secret
from app.cache.device_cache import device_cache
from app.compat.protocol import readings_from_freetier
from app.db import IMPORTS, KEYS, READINGS, USERS, ensure_schema
from app.errors import APIError
from app.keys.service import MAX_DESCRIPTION, chain_pairs, parse_new_key
from app.readings.schema import parse_readings
from app.timeutil import isoformat, utcnow_ms

Pair = tuple[str, str]

# A reading stored in opensensor shortly before the last checkpoint may have a smaller _id than
# it (ObjectIds come from each client's clock): every run re-reads this much before the checkpoint.
LATE_MARGIN = timedelta(minutes=5)
LEASE = timedelta(seconds=60)


@dataclass
class Report:
    """What one run did; printed at the end as text and, on the last line, as JSON."""

    dry_run: bool
    users: Counter[str] = field(default_factory=Counter)
    keys: Counter[str] = field(default_factory=Counter)
    readings: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    dropped_values: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0  # the whole run, reading the source included

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "users": dict(self.users),
            "keys": dict(self.keys),
            "readings": dict(self.readings),
            "skipped": dict(self.skipped.most_common()),
            "dropped_values": dict(self.dropped_values.most_common()),
        }


@dataclass
class KeyPlan:
    owner: str  # the opensensor user id
    key: str
    fields: dict[str, Any]  # device_id, device_name, description, private (checked by parse_new_key)

    @property
    def pair(self) -> Pair:
        return self.fields["device_id"], self.fields["device_name"]


@dataclass
class Plan:
    users: list[str]  # opensensor user ids
    keys: list[KeyPlan]
    pair_reasons: dict[Pair, str]  # why a pair's readings cannot be imported


def opensensor_user_id(value: Any) -> str | None:
    """opensensor's user ``_id`` (a UUID stored as BSON binary) as text."""
    if isinstance(value, Binary) and value.subtype in (3, 4):
        representation = UuidRepresentation.STANDARD if value.subtype == 4 else UuidRepresentation.PYTHON_LEGACY
        return str(value.as_uuid(representation))
    if isinstance(value, uuid.UUID | ObjectId | str):
        return str(value)
    return None


def mask_foreign(key: str) -> str:
    return f"{key[:4]}…{key[-4:]}"


def plan_import(user_docs: Iterable[dict[str, Any]], report: Report) -> Plan:
    """Decide which users and keys to import; every key left out is counted with its reason.

    A pair claimed by two opensensor users cannot be represented (one owner per pair here): it is
    left out with its readings. When one user holds several keys of a pair (opensensor allowed
    it), the newest (last in ``api_keys``) is kept.
    """
    users: list[str] = []
    claims: dict[Pair, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
    for doc in user_docs:
        owner = opensensor_user_id(doc.get("_id"))
        if owner is None:
            report.skipped["users: _id is not a UUID, ObjectId or string"] += 1
            continue
        users.append(owner)
        entries = doc.get("api_keys") or []
        for entry in entries if isinstance(entries, list) else []:
            pair = (entry.get("device_id"), entry.get("device_name")) if isinstance(entry, dict) else (None, None)
            if not all(isinstance(part, str) for part in pair) or not isinstance(entry.get("key"), str):
                report.skipped["keys: api_keys entry without a key, device_id or device_name"] += 1
                continue
            claims[pair].append((owner, {**entry, "key": entry["key"].strip()}))  # type: ignore[index]
    keys: list[KeyPlan] = []
    pair_reasons: dict[Pair, str] = {}
    pairs_of_key: dict[str, set[Pair]] = defaultdict(set)
    for pair, entries in claims.items():
        for _, entry in entries:
            pairs_of_key[entry["key"]].add(pair)
    for pair, entries in claims.items():
        label = f"{pair[0]}|{pair[1]}"
        owners = {owner for owner, _ in entries}
        if len(owners) > 1:
            pair_reasons[pair] = f"pair owned by {len(owners)} opensensor users"
            report.skipped[f"keys: {label} is owned by {len(owners)} opensensor users"] += len(entries)
            continue
        if len(entries) > 1:
            report.skipped["keys: an older key of a pair (the newest is kept)"] += len(entries) - 1
        owner, entry = entries[-1]
        key = entry["key"]
        try:
            fields = parse_new_key(
                {
                    "device_id": pair[0],
                    "device_name": pair[1],
                    "description": _description(entry.get("description")),
                    "private": bool(entry.get("private_data", False)),
                }
            )
        except APIError as exc:
            pair_reasons[pair] = "device_id or device_name not allowed here"
            report.skipped[f"keys: {label}: {exc.message}"] += 1
            continue
        if not is_key_shaped(key) or len(pairs_of_key[key]) > 1:
            pair_reasons[pair] = "its opensensor key cannot be used here"
            report.skipped[f"keys: {label}: the key is malformed or shared by several pairs"] += 1
            continue
        keys.append(KeyPlan(owner, key, fields))
    return Plan(users, keys, pair_reasons)


def _description(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    return text[:MAX_DESCRIPTION]


class Importer:
    """One run against one source database; ``target`` is this service's database."""

    def __init__(
        self,
        source: Database,
        source_id: str,
        target: Database,
        *,
        dry_run: bool,
        batch_size: int,
        out: TextIO,
        err: TextIO,
        rescan: bool = False,
    ) -> None:
        self.source = source
        self.target = target
        self.dry_run = dry_run
        self.rescan = rescan  # read every reading again (de-duplicated), not only those after the checkpoint
        self.batch_size = batch_size
        self.out = out  # tokens and the report
        self.err = err  # progress
        self.report = Report(dry_run)
        self.source_id = source_id  # names its checkpoints and its lease
        self.lease_owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    # -- users and keys --------------------------------------------------------------------

    def run(self, users_collection: str, readings_collections: list[str]) -> Report:
        started = time.monotonic()
        if not self.dry_run:
            self._take_lease()
        try:
            plan = plan_import(self.source[users_collection].find({}, {"_id": 1, "api_keys": 1}), self.report)
            user_ids = self.import_users(plan.users)
            self._renew_lease()
            owners = self.import_keys(plan, user_ids)
            for collection in readings_collections:
                self._renew_lease()
                self.import_readings(collection, owners, plan.pair_reasons)
        finally:
            if not self.dry_run:
                self._release_lease()
            self.report.seconds = time.monotonic() - started
        return self.report

    def import_users(self, opensensor_ids: list[str]) -> dict[str, str]:
        """Create the missing users, printing each new token at once; opensensor id -> our user id."""
        users = self.target[USERS]
        ours = {d["opensensor_id"]: d["user_id"] for d in users.find({"opensensor_id": {"$in": opensensor_ids}})}
        for opensensor_id in opensensor_ids:
            if opensensor_id in ours:
                self.report.users["existing"] += 1
                continue
            user_id, token = new_secret(TOKEN_PREFIX)
            name = f"opensensor-{opensensor_id}"[:64]
            if self.dry_run:
                ours[opensensor_id] = user_id
                self.report.users["imported"] += 1
                continue
            doc = {
                "user_id": user_id,
                "name": name,
                "admin": False,
                "token_hash": hash_secret(token),
                "created_at": utcnow_ms(),
                "opensensor_id": opensensor_id,
            }
            try:
                result = users.update_one({"opensensor_id": opensensor_id}, {"$setOnInsert": doc}, upsert=True)
            except DuplicateKeyError:
                self.report.skipped[f"users: a user named {name!r} exists already"] += 1
                continue
            if result.upserted_id is None:  # created meanwhile by another run: its token was printed there
                self.report.users["existing"] += 1
                ours[opensensor_id] = users.find_one({"opensensor_id": opensensor_id})["user_id"]
                continue
            ours[opensensor_id] = user_id
            self.report.users["imported"] += 1
            line = {"opensensor_id": opensensor_id, "user_id": user_id, "name": name, "token": token}
            click.echo(json.dumps(line), file=self.out)
        return ours

    def import_keys(self, plan: Plan, user_ids: dict[str, str]) -> dict[Pair, str]:
        """Write the key records; return pair -> our owner id for every pair whose readings may come in."""
        keys = self.target[KEYS]
        owners: dict[Pair, str] = {}
        touched: set[tuple[str, str]] = set()  # (owner, device_name): chains whose lookups change
        for item in plan.keys:
            owner = user_ids.get(item.owner)
            if owner is None:
                plan.pair_reasons[item.pair] = "its opensensor user was not imported"
                self.report.skipped["keys: the key's user was not imported"] += 1
                continue
            key_hash = hash_secret(item.key)
            existing = keys.find_one(
                {"key_hash": key_hash}, {"_id": 0, "owner_id": 1, "device_id": 1, "device_name": 1}
            )
            if existing is not None:
                if existing["owner_id"] == owner and (existing["device_id"], existing["device_name"]) == item.pair:
                    self.report.keys["existing"] += 1
                    owners[item.pair] = owner
                else:
                    plan.pair_reasons[item.pair] = "its key is registered here for another device"
                    self.report.skipped["keys: the key is registered here for another device"] += 1
                continue
            taken = keys.find_one({"device_id": item.pair[0], "device_name": item.pair[1]}, {"_id": 0})
            if taken is not None and taken["owner_id"] == owner and taken.get("source") == "opensensor":
                # Imported by an earlier run, and the user has made a new key in opensensor since: the
                # devices use the new one, so it replaces the old (its cached lookup holds the old hash).
                owners[item.pair] = owner
                self.report.keys["replaced"] += 1
                if not self.dry_run:
                    new = {"key_hash": key_hash, "masked": mask_foreign(item.key)}
                    keys.update_one({"key_id": taken["key_id"]}, {"$set": new})
                    touched.add((owner, item.pair[1]))
                continue
            if taken is not None:
                plan.pair_reasons[item.pair] = "pair registered here already"
                self.report.skipped[f"keys: {item.pair[0]}|{item.pair[1]} is registered here already"] += 1
                continue
            owners[item.pair] = owner
            self.report.keys["imported"] += 1
            if self.dry_run:
                continue
            key_id, _ = new_secret(KEY_PREFIX)
            doc = {
                "key_id": key_id,
                "owner_id": owner,
                **item.fields,
                "created_at": utcnow_ms(),
                "key_hash": key_hash,
                "masked": mask_foreign(item.key),
                "source": "opensensor",
            }
            try:
                keys.update_one({"key_hash": key_hash}, {"$setOnInsert": doc}, upsert=True)
            except DuplicateKeyError:  # the pair was registered between the check and the write
                owners.pop(item.pair)
                self.report.keys["imported"] -= 1
                plan.pair_reasons[item.pair] = "pair registered here already"
                self.report.skipped[f"keys: {item.pair[0]}|{item.pair[1]} is registered here already"] += 1
                continue
            touched.add((owner, item.pair[1]))
        if touched:
            # New ids join chains: every pair of those chains (and any negative entry) is stale now.
            pairs = [pair for owner, name in sorted(touched) for pair in chain_pairs(owner, name)]
            for start in range(0, len(pairs), 500):
                device_cache().invalidate(pairs[start : start + 500])
        return owners

    # -- readings --------------------------------------------------------------------------

    def import_readings(self, collection: str, owners: dict[Pair, str], pair_reasons: dict[Pair, str]) -> None:
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
        self._mark_done(checkpoint_id, last, len(docs))

    def _mark_done(self, checkpoint_id: str, last: ObjectId, imported: int) -> None:
        self.target[IMPORTS].update_one(
            {"_id": checkpoint_id},
            {"$set": {"done_through": last, "updated_at": utcnow_ms()}, "$inc": {"imported": imported}},
        )
        self._renew_lease()

    # -- the lease -------------------------------------------------------------------------

    def _take_lease(self) -> None:
        """One run per source at a time: the lease expires unless renewed, or at once when its
        holder was a process on this host that no longer exists (a killed run)."""
        leases = self.target[IMPORTS]
        lease_id = f"lease:{self.source_id}"
        now = utcnow_ms()
        held = leases.find_one({"_id": lease_id})
        stale = held is None or held.get("until") is None or _aware(held["until"]) <= now or _holder_is_gone(held)
        if stale:
            query = {"_id": lease_id, "owner": held.get("owner")} if held else {"_id": lease_id}
            try:
                result = leases.update_one(
                    query, {"$set": {"owner": self.lease_owner, "until": now + LEASE}}, upsert=True
                )
                if result.matched_count or result.upserted_id is not None:
                    return
            except DuplicateKeyError:
                pass
        raise click.ClickException(
            f"another import of this source is running ({held.get('owner') if held else '?'}); "
            f"its lease ends at {isoformat(_aware(held['until'])) if held and held.get('until') else 'soon'}"
        )

    def _renew_lease(self) -> None:
        """Extend the lease; stop at once if another run took it (this one was too slow to renew)."""
        if self.dry_run:
            return
        result = self.target[IMPORTS].update_one(
            {"_id": f"lease:{self.source_id}", "owner": self.lease_owner}, {"$set": {"until": utcnow_ms() + LEASE}}
        )
        if result.matched_count != 1:
            raise click.ClickException("the lease on this source was lost to another import; stopped (run again)")

    def _release_lease(self) -> None:
        self.target[IMPORTS].update_one(
            {"_id": f"lease:{self.source_id}", "owner": self.lease_owner}, {"$set": {"until": None}}
        )


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


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _holder_is_gone(lease: dict[str, Any]) -> bool:
    host, _, rest = str(lease.get("owner") or "").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def open_source(uri: str) -> tuple[MongoClient, Database, str]:
    """A client on the source URI (only read, by how it is used) and the source's name: its hosts
    and database without credentials, which names its checkpoints."""
    try:
        parsed = parse_uri(uri, validate=True, warn=False)
    except Exception as exc:  # noqa: BLE001 - pymongo raises several types for a bad URI
        raise click.BadParameter(f"not a valid MongoDB URI: {exc}", param_hint="--source-uri") from None
    if not parsed.get("database"):
        raise click.BadParameter(
            "must name the opensensor database, e.g. mongodb://host/opensensor", param_hint="--source-uri"
        )
    client: MongoClient = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000, appname="opensensor-import")
    hosts = ",".join(sorted(f"{host}:{port}" for host, port in parsed["nodelist"]))
    return client, client.get_default_database(), f"opensensor:{hosts}/{parsed['database']}"


@click.command("import-opensensor")
@click.option("--source-uri", required=True, help="MongoDB URI of the opensensor database (only read).")
@click.option("--dry-run", is_flag=True, help="Read and convert everything, write nothing, print the report.")
@click.option(
    "--batch-size", default=1000, show_default=True, type=click.IntRange(1, 100_000), help="Readings per bulk write."
)
@click.option("--users-collection", default="Users", show_default=True)
@click.option("--readings-collection", "readings_collections", multiple=True, default=["FreeTier"], show_default=True,
              help="Time series to import (repeatable; paid tiers had their own).")  # fmt: skip
@click.option("--rescan", is_flag=True,
              help="Read every reading again, not only those after the last checkpoint (e.g. once a pair's "
                   "conflict is resolved in opensensor); what is stored already is not written twice.")  # fmt: skip
@with_appcontext
def import_opensensor(
    source_uri: str,
    dry_run: bool,
    batch_size: int,
    users_collection: str,
    readings_collections: tuple[str, ...],
    rescan: bool,
) -> None:
    """Import opensensor's users, device keys and readings; safe to re-run (it resumes, never duplicates).

    Prints one JSON line per new user (with its token, shown only now), then the report; the last
    line is the report as JSON.
    """
    client, source, source_id = open_source(source_uri)
    # Our database through a client of its own: the service's timeouts (MONGO_TIMEOUT_MS, about a
    # second) suit a request, not a bulk write of a batch to a server busy with the import.
    target_client: MongoClient = MongoClient(
        current_app.config["MONGO_URI"], tz_aware=True, serverSelectionTimeoutMS=30_000, socketTimeoutMS=300_000
    )
    out, err = sys.stdout, sys.stderr  # read now: the CLI test runner swaps them
    try:
        target = target_client.get_default_database()
        source.command("ping")
        ensure_schema(target)  # readings must exist as a time series before the first insert
        importer = Importer(
            source, source_id, target, dry_run=dry_run, batch_size=batch_size, out=out, err=err, rescan=rescan
        )
        report = importer.run(users_collection, list(readings_collections))
    except PyMongoError as exc:
        raise click.ClickException(f"MongoDB is unavailable: {exc.__class__.__name__}: {exc}") from None
    finally:
        client.close()
        target_client.close()
    print_report(report, out)


def print_report(report: Report, out: TextIO) -> None:
    title = "dry run: nothing was written" if report.dry_run else "import finished"
    lines = [
        title,
        f"users: {report.users['imported']} imported, {report.users['existing']} already here",
        f"keys: {report.keys['imported']} imported, {report.keys['existing']} already here"
        + (f", {report.keys['replaced']} replaced by a newer opensensor key" if report.keys["replaced"] else ""),
        f"readings: {report.readings['imported']} imported in {report.seconds:.1f} s"
        f" ({report.readings['imported'] / max(report.seconds, 1e-9):,.0f} per second)",
    ]
    lines += [f"skipped {count}: {reason}" for reason, count in report.skipped.most_common()]
    lines += [f"values dropped {count}: {reason}" for reason, count in report.dropped_values.most_common()]
    for line in lines:
        click.echo(line, file=out)
    click.echo(json.dumps(report.as_dict()), file=out)
