"""An opensensor-api database, written the way opensensor writes it (for the import's tests and bench).

From opensensor-api's code: ``Users`` documents are ``{"_id": Binary.from_uuid(fief user id),
"api_keys": [APIKey.dict()]}`` with ``APIKey = {key, device_id, device_name, description,
private_data}`` and keys made by ``urlsafe_b64encode(token_bytes(32))``; ``FreeTier`` is a
time series (``timeField`` ``timestamp``, ``metaField`` ``metadata``) whose documents come from
``_record_data_to_ts_collection``: ``metadata = {device_id, name, user_id}``, every value
stored as ``str(value)`` under its collection name (``ppm_CO2``, ``moisture_readings``...),
units as ``<name>_unit``, relays and pumps as ``json.dumps`` of their items (``null`` included).
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from datetime import datetime
from typing import Any

from bson import Binary
from pymongo.database import Database

# A push body's block -> the FreeTier field opensensor stored it under.
STORED_AS = {
    "temp": "temp",
    "rh": "rh",
    "pressure": "pressure",
    "lux": "lux",
    "co2": "ppm_CO2",
    "moisture": "moisture_readings",
    "pH": "pH",
    "liquid": "liquid",
    "relays": "relays",
    "pumps": "pumps",
}
RELAY_DEFAULTS = {"seconds": None, "description": None}
PUMP_DEFAULTS = {"speed": None, "duration": None, "timestamp": None, "description": None}


def opensensor_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()


def create_collections(db: Database) -> None:
    db.create_collection(
        "FreeTier", timeseries={"timeField": "timestamp", "metaField": "metadata", "granularity": "minutes"}
    )


def add_user(db: Database, keys: list[dict[str, Any]], user_id: uuid.UUID | None = None) -> uuid.UUID:
    """A Users document; each key: device_id, device_name, and optionally key, description, private_data."""
    user_id = user_id or uuid.uuid4()
    api_keys = [
        {
            "key": k.get("key") or opensensor_key(),
            "device_id": k["device_id"],
            "device_name": k["device_name"],
            "description": k.get("description", ""),
            "private_data": k.get("private_data", False),
        }
        for k in keys
    ]
    db["Users"].insert_one({"_id": Binary.from_uuid(user_id), "api_keys": api_keys})
    return user_id


def api_keys_of(db: Database, user_id: uuid.UUID) -> list[dict[str, Any]]:
    return db["Users"].find_one({"_id": Binary.from_uuid(user_id)})["api_keys"]


def stored_document(
    device_id: str, name: str | None, user_id: uuid.UUID | None, at: datetime, blocks: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The FreeTier document opensensor stores for a push of these measurement blocks at ``at`` (naive UTC)."""
    metadata: dict[str, Any] = {"device_id": device_id, "name": name}
    if user_id is not None:
        metadata["user_id"] = Binary.from_uuid(user_id)
    doc: dict[str, Any] = {"timestamp": at, "metadata": metadata}
    for block, data in blocks.items():
        column = STORED_AS[block]
        for key, value in data.items():
            if value is None or key == "timestamp":
                continue
            if key == "unit":
                doc[f"{column}_unit"] = value
            elif key in ("relays", "pumps"):
                defaults = RELAY_DEFAULTS if key == "relays" else PUMP_DEFAULTS
                doc[column] = json.dumps([{**defaults, **item} for item in value])
            else:
                doc[column] = value if isinstance(value, str) else str(value)
    return doc


def add_readings(db: Database, docs: list[dict[str, Any]]) -> None:
    if docs:
        db["FreeTier"].insert_many(docs, ordered=False)


def snapshot(db: Database) -> dict[str, list[dict[str, Any]]]:
    """Everything in the source, to show the import changed nothing there."""
    return {name: list(db[name].find({}).sort("_id", 1)) for name in sorted(db.list_collection_names())}
