"""Invalidations that outlive their process: an outbox in MongoDB, written before the change.

A change (a key created or deleted, a token rotated, a user deleted, the import, ``/cache/clear``
and ``/cache/invalidate``) first inserts a record of what it makes stale into ``cache_outbox``:
keys, chains (``owner``, ``device_name``: resolved to their pairs when applied, so a pair that
joins the chain meanwhile is dropped too), globs, and scopes a retry can settle. Then:

1. the change itself, in MongoDB;
2. the maker applies the record (UNLINK, acknowledged by a replica where one exists: see
   ``replicas.py``) and queues it for removal (one ``delete_many`` a second or so for all);
3. if that failed (Redis paused, failing over, unreachable from this process), the maker marks
   the record *held* and answers only after ``CACHE_LEASE`` seconds.

Every process polls the outbox every ``OUTBOX_POLL_INTERVAL`` seconds, applies the held records
and those older than ``takeover`` (their maker died mid-change), removes those it applied, and
only then renews its **lease**: a process serves from Redis or its near cache only while its
last complete poll started less than ``CACHE_LEASE`` seconds ago. So once a change has answered,
every process has either applied its record or stopped reading the cache: a process killed
right after its response, or cut off from Redis, leaves its invalidation to the others. While
MongoDB is unreachable no process can renew its lease, so lookups go to MongoDB (503 while it
is down) instead of a cache nobody can keep coherent.

``takeover`` is the longest a live maker's change can take (twice ``MONGO_TIMEOUT_MS``, pymongo's
socket timeout, plus a second): a record that old is no longer in progress.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import pymongo
from bson import ObjectId
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, PyMongoError

from app.timeutil import utcnow_ms

if TYPE_CHECKING:
    from app.cache.shared import SharedCache

log = logging.getLogger("app.cache")

POLL_LIMIT = 100  # records applied per round (more wait for the next: the lease is not renewed)


@dataclass
class Record:
    """What a change makes stale (keys relative to the prefix, chains, globs), and its scopes."""

    keys: list[str] = field(default_factory=list)
    chains: list[tuple[str, str]] = field(default_factory=list)
    globs: list[str] = field(default_factory=list)
    scope: list[str] = field(default_factory=list)
    id: ObjectId = field(default_factory=ObjectId)

    def document(self) -> dict[str, Any]:
        return {
            "_id": self.id,
            "keys": self.keys,
            "chains": [list(chain) for chain in self.chains],
            "globs": self.globs,
            "scope": self.scope,
            "at": utcnow_ms(),
            "held": False,
        }

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Record:
        chains = [(owner, name) for owner, name in doc.get("chains", [])]
        return cls(doc.get("keys", []), chains, doc.get("globs", []), doc.get("scope", []), doc["_id"])


class Outbox:
    def __init__(self, cache: SharedCache, config: dict[str, Any], collection: Callable[[], Collection]) -> None:
        self.cache = cache
        self.collection = collection
        self.lease: float = config["CACHE_LEASE"]
        self.poll_interval: float = config["OUTBOX_POLL_INTERVAL"]
        self.takeover = 2 * config["MONGO_TIMEOUT_MS"] / 1000 + 1.0
        self.after_fork()

    def after_fork(self) -> None:
        """A forked child has no lease (its first lookup polls) and removes nothing of its parent's."""
        self.lease_until = 0.0
        self._applied: list[ObjectId] = []  # to remove from the outbox
        self._done: set[ObjectId] = set()  # applied here: not applied again while it waits for removal
        self._lock = threading.Lock()  # the applied ids
        self._polling = threading.Lock()  # one poll at a time in the process
        self._next_inline = 0.0
        self._next_removal = 0.0

    # -- the maker's side -----------------------------------------------------------------

    def open(self, record: Record) -> Record:
        """Record the invalidation before the change (a MongoDB error here: nothing changed)."""
        # A duplicate is its own id (only _id is unique here): pymongo retried the insert after a
        # network error and the first attempt had landed. MongoDB answers such a retry as done;
        # SecantusDB, the embedded server, refuses it (seen as a 503 on a push under a loaded run).
        with contextlib.suppress(DuplicateKeyError):
            self.collection().insert_one(record.document())
        return record

    def applied(self, record: Record) -> None:
        """The maker applied it: removed with the next background round."""
        with self._lock:
            self._applied.append(record.id)
            self._done.add(record.id)

    def hold(self, record: Record) -> None:
        """The maker could not apply it: every other process must, before it reads the cache again.
        Waits until every process has polled since, or stopped reading the cache (its lease ran out).

        Counted from the mark's end: a poll that started while the write was in flight may have
        read the outbox without it, and renewed its lease from its own start."""
        began = time.monotonic()
        try:
            doc = {**record.document(), "held": True}
            self.collection().replace_one({"_id": record.id}, doc, upsert=True)
            marked = time.monotonic()
        except PyMongoError as exc:
            # Not marked: the record, inserted before the change, is taken over once it is older
            # than ``takeover`` (counted from its insert, which came before ``began``).
            log.warning("could not mark an invalidation held (%s): waiting for its takeover", exc)
            marked = began + self.takeover
        time.sleep(max(0.0, marked + self.lease - time.monotonic()))

    def settle(self, scopes: Iterable[str]) -> None:
        """Apply every record of these scopes now (a retried change, which finds nothing left to
        change, must still leave nothing behind that the first attempt replaced)."""
        records = [Record.from_document(doc) for doc in self.collection().find({"scope": {"$in": list(scopes)}})]
        for record in records:
            if self.cache.apply(record):
                self.applied(record)
            else:
                self.hold(record)

    # -- every process's side ---------------------------------------------------------------

    def lease_current(self) -> bool:
        return time.monotonic() < self.lease_until

    def lease_valid(self) -> bool:
        """Whether this process may read the cache: its lease is current, or renewed now (a poll
        in the request, at most once per poll interval: the first lookup of a process, or after
        MongoDB came back; a poll in progress elsewhere is waited for)."""
        if time.monotonic() < self.lease_until:
            return True
        if not self._polling.acquire(timeout=self.lease / 2):
            return False
        try:
            now = time.monotonic()
            if now < self.lease_until:
                return True  # renewed by the poll we waited for
            if now < self._next_inline:
                return False
            self._next_inline = now + self.poll_interval
            return self._poll()
        finally:
            self._polling.release()

    def poll(self) -> bool:
        """Apply the records others left (held, or old enough to be taken over), remove what was
        applied, and renew the lease if nothing is left that this process could read past."""
        with self._polling:
            return self._poll()

    def _poll(self) -> bool:
        started = time.monotonic()
        try:
            with pymongo.timeout(self.lease / 2):
                since = utcnow_ms() - timedelta(seconds=self.takeover)
                docs = list(self.collection().find({"$or": [{"held": True}, {"at": {"$lt": since}}]}).limit(POLL_LIMIT))
        except PyMongoError as exc:
            log.debug("outbox poll failed: %s", exc)
            return False
        complete = len(docs) < POLL_LIMIT
        with self._lock:
            self._done &= {doc["_id"] for doc in docs} | set(self._applied)
            done = set(self._done)
        for doc in docs:
            if doc["_id"] in done:
                continue
            record = Record.from_document(doc)
            if self.cache.apply(record):
                self.applied(record)
                continue
            complete = False
            if self.cache.invalidator.pending:
                # Redis refused the drop (its keys stay pending, retried by the probe): the rest wait
                # for a later poll. Each would cost this poll, maybe a request's, another timeout.
                break
        if started >= self._next_removal:
            # Once per third of ``takeover`` (so before anyone would take them over): one delete_many
            # for every record applied since, which keeps a change's cost near one write more.
            self._next_removal = started + self.takeover / 3
            self.remove_applied()
        if complete:
            self.lease_until = started + self.lease
        return complete and time.monotonic() < self.lease_until

    def remove_applied(self) -> None:
        with self._lock:
            ids, self._applied = self._applied, []
        if not ids:
            return
        try:
            with pymongo.timeout(self.lease / 2):
                self.collection().delete_many({"_id": {"$in": ids}})
        except PyMongoError:
            with self._lock:
                self._applied.extend(ids)  # applied already: removed next round

    def pending_records(self) -> int:
        """Records in the outbox now (tests, the CLI's report)."""
        return self.collection().count_documents({})
