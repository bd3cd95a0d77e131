"""MongoDB: one client per process, created lazily after fork, and the schema in code.

Collections and indexes are declared here and ensured idempotently by
``flask --app wsgi init-db`` and by the first use of the database in each process
(before the first insert, so ``readings`` is always created as a time series).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from flask import Flask, current_app
from pymongo import ASCENDING, MongoClient
from pymongo.database import Database
from pymongo.errors import CollectionInvalid, OperationFailure, PyMongoError

log = logging.getLogger(__name__)

USERS = "users"
KEYS = "api_keys"
READINGS = "readings"
IMPORTS = "imports"  # checkpoints and the lease of ``import-opensensor`` (app/compat/importer/)
OUTBOX = "cache_outbox"  # invalidations recorded with their changes (app/cache/outbox.py)

INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict[str, Any]]]] = {
    USERS: [
        ([("user_id", ASCENDING)], {"unique": True, "name": "user_id_unique"}),
        ([("name", ASCENDING)], {"unique": True, "name": "name_unique"}),
        # A user imported from opensensor keeps its id there: one user per opensensor user, however often
        # the import runs. Sparse: users made here have none.
        ([("opensensor_id", ASCENDING)], {"unique": True, "sparse": True, "name": "opensensor_id_unique"}),
    ],
    KEYS: [
        ([("key_id", ASCENDING)], {"unique": True, "name": "key_id_unique"}),
        # Finds a key imported from opensensor (no id in it) by its SHA-256; one record per secret.
        ([("key_hash", ASCENDING)], {"unique": True, "name": "key_hash_unique"}),
        # One owner per pair, enforced by the database, not by read-then-write.
        ([("device_id", ASCENDING), ("device_name", ASCENDING)], {"unique": True, "name": "pair_unique"}),
        ([("device_name", ASCENDING), ("owner_id", ASCENDING)], {"name": "name_owner"}),
        ([("owner_id", ASCENDING)], {"name": "owner"}),
    ],
    OUTBOX: [
        ([("held", ASCENDING), ("at", ASCENDING)], {"name": "held_at"}),
        ([("scope", ASCENDING)], {"name": "scope"}),
    ],
    READINGS: [
        (
            [("meta.device_id", ASCENDING), ("meta.device_name", ASCENDING), ("timestamp", ASCENDING)],
            {"name": "pair_time"},
        ),
    ],
}

TIMESERIES = {"timeField": "timestamp", "metaField": "meta", "granularity": "minutes"}


class MongoState:
    """Per-app state: the URI and the process's client (rebuilt in a forked child)."""

    def __init__(self, uri: str, timeout_ms: int):
        self.uri = uri
        self.timeout_ms = timeout_ms
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._client: MongoClient | None = None
        self._schema_ready = False

    def client(self) -> MongoClient:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    # A client inherited over fork is unusable; start afresh.
                    self._client = MongoClient(
                        self.uri,
                        serverSelectionTimeoutMS=self.timeout_ms,
                        connectTimeoutMS=self.timeout_ms,
                        socketTimeoutMS=self.timeout_ms * 2,
                        tz_aware=True,
                        appname="opensensor",
                    )
                    self._schema_ready = False
                    self._pid = os.getpid()
        assert self._client is not None
        return self._client

    @property
    def db(self) -> Database:
        database = self.client().get_default_database()
        if not self._schema_ready:
            ensure_schema(database)
            self._schema_ready = True
        return database

    def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            self._client.close()
        self._client = None
        self._pid = None


class Mongo:
    """``mongo.db`` is the current app's database."""

    def init_app(self, app: Flask) -> None:
        app.extensions["mongo"] = MongoState(app.config["MONGO_URI"], app.config["MONGO_TIMEOUT_MS"])

    @property
    def state(self) -> MongoState:
        return current_app.extensions["mongo"]

    @property
    def db(self) -> Database:
        return self.state.db


def ensure_schema(db: Database) -> list[str]:
    """Create the time-series collection and every index; safe to run any number of times."""
    done = []
    if READINGS not in db.list_collection_names():
        try:
            db.create_collection(READINGS, timeseries=TIMESERIES)
            done.append(f"created time-series collection {READINGS}")
        except (CollectionInvalid, OperationFailure) as exc:  # created concurrently by another process
            log.debug("readings collection exists: %s", exc)
    for collection, indexes in INDEXES.items():
        for keys, options in indexes:
            try:
                db[collection].create_index(keys, **options)
            except OperationFailure as exc:
                raise PyMongoError(f"cannot create index {options['name']} on {collection}: {exc}") from exc
            done.append(f"index {collection}.{options['name']}")
    return done
