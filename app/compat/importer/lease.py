"""One import of a source at a time: a lease document in ``imports`` with an owner and an expiry.

MongoDB has no lock of its own and Redis is the optional cache here, so the lease is a document:
taken with a conditional upsert, renewed with each batch, released at the end, and taken over
when it expired or when its holder was a process on this host that no longer exists.
"""

from __future__ import annotations

import os
import secrets
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from app.timeutil import isoformat, utcnow_ms

LEASE = timedelta(seconds=60)


class Lease:
    def __init__(self, imports: Collection, source_id: str) -> None:
        self.imports = imports
        self.lease_id = f"lease:{source_id}"
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    def take(self) -> None:
        """The lease expires unless renewed, or at once when its holder was a process on this host
        that no longer exists (a killed run)."""
        now = utcnow_ms()
        held = self.imports.find_one({"_id": self.lease_id})
        stale = held is None or held.get("until") is None or _aware(held["until"]) <= now or _holder_is_gone(held)
        if stale:
            query = {"_id": self.lease_id, "owner": held.get("owner")} if held else {"_id": self.lease_id}
            try:
                result = self.imports.update_one(
                    query, {"$set": {"owner": self.owner, "until": now + LEASE}}, upsert=True
                )
                if result.matched_count or result.upserted_id is not None:
                    return
            except DuplicateKeyError:
                pass
        raise click.ClickException(
            f"another import of this source is running ({held.get('owner') if held else '?'}); "
            f"its lease ends at {isoformat(_aware(held['until'])) if held and held.get('until') else 'soon'}"
        )

    def renew(self) -> None:
        """Extend the lease; stop at once if another run took it (this one was too slow to renew)."""
        result = self.imports.update_one(
            {"_id": self.lease_id, "owner": self.owner}, {"$set": {"until": utcnow_ms() + LEASE}}
        )
        if result.matched_count != 1:
            raise click.ClickException("the lease on this source was lost to another import; stopped (run again)")

    def release(self) -> None:
        self.imports.update_one({"_id": self.lease_id, "owner": self.owner}, {"$set": {"until": None}})


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
