"""Which opensensor users and keys can be imported, decided before anything is written.

Every key left out is counted in the report with its reason; a pair whose key is left out has
its readings left out too (``Plan.pair_reasons`` says why).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bson import Binary, ObjectId
from bson.binary import UuidRepresentation

from app.auth import is_key_shaped
from app.compat.importer.report import Report
from app.errors import APIError
from app.keys.service import MAX_DESCRIPTION, parse_new_key

Pair = tuple[str, str]
Claim = tuple[str, dict[str, Any]]  # (opensensor user id, its api_keys entry)


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
    """Decide which users and keys to import.

    A pair claimed by two opensensor users cannot be represented (one owner per pair here): it is
    left out with its readings. When one user holds several keys of a pair (opensensor allowed
    it), the newest (last in ``api_keys``) is kept. A device is private when any of its keys is:
    opensensor refused a device to everyone but its owner as soon as one key of the owner's
    keys under its name (its chain) had ``private_data`` (``device_id_is_allowed_for_user``), so
    every pair of such a chain is imported private, whichever key is kept.
    """
    users, claims = _claims(user_docs, report)
    pairs_of_key: dict[str, set[Pair]] = defaultdict(set)
    private_chains: set[tuple[str, str]] = set()  # (opensensor user id, device_name)
    for pair, entries in claims.items():
        for owner, entry in entries:
            pairs_of_key[entry["key"]].add(pair)
            if entry.get("private_data"):
                private_chains.add((owner, pair[1]))
    plan = Plan(users, [], {})
    for pair, entries in claims.items():
        owners = {owner for owner, _ in entries}
        if len(owners) > 1:
            plan.pair_reasons[pair] = f"pair owned by {len(owners)} opensensor users"
            report.skipped[f"keys: {pair[0]}|{pair[1]} is owned by {len(owners)} opensensor users"] += len(entries)
            continue
        if len(entries) > 1:
            report.skipped["keys: an older key of a pair (the newest is kept)"] += len(entries) - 1
        owner, entry = entries[-1]
        private = (owner, pair[1]) in private_chains
        item = _key_plan(pair, owner, entry, private, len(pairs_of_key[entry["key"]]) > 1, plan, report)
        if item is not None:
            plan.keys.append(item)
    return plan


def _claims(user_docs: Iterable[dict[str, Any]], report: Report) -> tuple[list[str], dict[Pair, list[Claim]]]:
    """The users, and every usable api_keys entry by the pair it names, in the source's order."""
    users: list[str] = []
    claims: dict[Pair, list[Claim]] = defaultdict(list)
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
    return users, claims


def _key_plan(
    pair: Pair, owner: str, entry: dict[str, Any], private: bool, shared: bool, plan: Plan, report: Report
) -> KeyPlan | None:
    """The key record to write for a pair, or None (the reason counted) when it cannot be used here."""
    label = f"{pair[0]}|{pair[1]}"
    fields = {
        "device_id": pair[0],
        "device_name": pair[1],
        "description": _description(entry.get("description")),
        "private": private,
    }
    try:
        fields = parse_new_key(fields)
    except APIError as exc:
        plan.pair_reasons[pair] = "device_id or device_name not allowed here"
        report.skipped[f"keys: {label}: {exc.message}"] += 1
        return None
    if not is_key_shaped(entry["key"]) or shared:
        plan.pair_reasons[pair] = "its opensensor key cannot be used here"
        report.skipped[f"keys: {label}: the key is malformed or shared by several pairs"] += 1
        return None
    return KeyPlan(owner, entry["key"], fields)


def _description(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    return text[:MAX_DESCRIPTION]
