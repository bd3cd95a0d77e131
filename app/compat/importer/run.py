"""One run against one source database: users, then keys, then each time series' readings.

Users and keys are upserts keyed by the opensensor user id and the key's hash (unique indexes),
so a second run adds nothing; the readings are ``readings.py``'s.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, TextIO

import click
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from app.auth import KEY_PREFIX, TOKEN_PREFIX, hash_secret, new_secret
from app.cache.shared import shared_cache
from app.compat.importer.lease import Lease
from app.compat.importer.plan import KeyPlan, Pair, Plan, mask_foreign, plan_import
from app.compat.importer.readings import ReadingsImport
from app.compat.importer.report import Report
from app.db import IMPORTS, KEYS, USERS
from app.timeutil import utcnow_ms

CHAINS_PER_RECORD = 500  # chains one outbox record names (one MongoDB query each when applied)


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
        self.out = out  # tokens and the report
        self.report = Report(dry_run)
        self.lease = None if dry_run else Lease(target[IMPORTS], source_id)  # source_id names it
        self.readings = ReadingsImport(
            source, source_id, target, self.report,
            dry_run=dry_run, rescan=rescan, batch_size=batch_size, err=err, renew=self._renew_lease,
        )  # fmt: skip

    def run(self, users_collection: str, readings_collections: list[str]) -> Report:
        started = time.monotonic()
        if self.lease is not None:
            self.lease.take()
        try:
            plan = plan_import(self.source[users_collection].find({}, {"_id": 1, "api_keys": 1}), self.report)
            user_ids = self.import_users(plan.users)
            self._renew_lease()
            owners = self.import_keys(plan, user_ids)
            for collection in readings_collections:
                self._renew_lease()
                self.readings.run(collection, owners, plan.pair_reasons)
        finally:
            if self.lease is not None:
                self.lease.release()
            self.report.seconds = time.monotonic() - started
        return self.report

    def _renew_lease(self) -> None:
        if self.lease is not None:
            self.lease.renew()

    # -- users -----------------------------------------------------------------------------

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

    # -- keys ------------------------------------------------------------------------------

    def import_keys(self, plan: Plan, user_ids: dict[str, str]) -> dict[Pair, str]:
        """Write the key records; return pair -> our owner id for every pair whose readings may come in.

        New ids join chains: the lookups of every chain the plan may touch are stale, recorded in
        the cache's outbox before the first write (500 chains a record) and dropped after the last.
        """
        chains = sorted({(user_ids[item.owner], item.pair[1]) for item in plan.keys if item.owner in user_ids})
        with contextlib.ExitStack() as changes:
            if not self.dry_run:
                for start in range(0, len(chains), CHAINS_PER_RECORD):
                    changes.enter_context(shared_cache().change(chains=chains[start : start + CHAINS_PER_RECORD]))
            return self._import_keys(plan, user_ids)

    def _import_keys(self, plan: Plan, user_ids: dict[str, str]) -> dict[Pair, str]:
        keys = self.target[KEYS]
        owners: dict[Pair, str] = {}
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
                continue
            if taken is None and self._insert_key(item, owner, key_hash, plan):
                owners[item.pair] = owner
            elif taken is not None:
                self._registered_here_already(item.pair, plan)
        return owners

    def _insert_key(self, item: KeyPlan, owner: str, key_hash: str, plan: Plan) -> bool:
        """Store a new key record (counted as imported); False when the pair was registered meanwhile."""
        if self.dry_run:
            self.report.keys["imported"] += 1
            return True
        key_id, _ = new_secret(KEY_PREFIX)
        doc: dict[str, Any] = {
            "key_id": key_id,
            "owner_id": owner,
            **item.fields,
            "created_at": utcnow_ms(),
            "key_hash": key_hash,
            "masked": mask_foreign(item.key),
            "source": "opensensor",
        }
        try:
            self.target[KEYS].update_one({"key_hash": key_hash}, {"$setOnInsert": doc}, upsert=True)
        except DuplicateKeyError:  # the pair was registered between the check and the write
            self._registered_here_already(item.pair, plan)
            return False
        self.report.keys["imported"] += 1
        return True

    def _registered_here_already(self, pair: Pair, plan: Plan) -> None:
        plan.pair_reasons[pair] = "pair registered here already"
        self.report.skipped[f"keys: {pair[0]}|{pair[1]} is registered here already"] += 1
