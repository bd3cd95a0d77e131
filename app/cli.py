"""Flask CLI: ``users create|rotate-token|delete``, ``init-db`` and ``demo-data``."""

from __future__ import annotations

import json
import math
import random
import secrets
from datetime import timedelta

import click
from flask.cli import with_appcontext
from pymongo.errors import DuplicateKeyError, PyMongoError

from app.auth import TOKEN_PREFIX, User, hash_secret, new_secret
from app.cache.device_cache import device_cache
from app.cache.user_cache import forget_user
from app.db import KEYS, READINGS, USERS, ensure_schema
from app.errors import APIError
from app.extensions import mongo
from app.keys.service import create_key
from app.timeutil import utcnow_ms


@click.group()
def users() -> None:
    """Manage users (there is no external identity provider)."""


@users.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="May use the /cache admin routes.")
@with_appcontext
def create_user(name: str, admin: bool) -> None:
    """Create a user; the last line of output is JSON with its token, shown only now."""
    if not 1 <= len(name) <= 64 or not name.isprintable():
        raise click.BadParameter("must be 1-64 printable characters", param_hint="NAME")
    try:
        user, token = add_user(name, admin)
    except DuplicateKeyError:
        raise click.ClickException(f"a user named {name!r} already exists") from None
    except PyMongoError as exc:
        raise click.ClickException(f"MongoDB is unavailable: {exc.__class__.__name__}") from None
    click.echo(json.dumps({"user_id": user.user_id, "name": user.name, "admin": user.admin, "token": token}))


WAIT_OPTION = click.option(
    "--wait",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0.1, 600),
    help="Seconds to keep trying to drop the cached token when Redis does not answer.",
)


@users.command("rotate-token")
@click.argument("name")
@WAIT_OPTION
@with_appcontext
def rotate_token(name: str, wait: float) -> None:
    """Give a user a new token; the old one is refused on every replica once this returns.

    The last line of output is the same JSON as ``users create`` prints, with the new token.
    """
    doc = find_user(name)
    token = f"{TOKEN_PREFIX}_{doc['user_id']}_{secrets.token_urlsafe(32)}"
    try:
        mongo.db[USERS].update_one({"user_id": doc["user_id"]}, {"$set": {"token_hash": hash_secret(token)}})
    except PyMongoError as exc:
        raise click.ClickException(f"MongoDB is unavailable: {exc.__class__.__name__}") from None
    revoke_cached(doc["user_id"], "the token was replaced in MongoDB", wait)
    click.echo(
        json.dumps({"user_id": doc["user_id"], "name": doc["name"], "admin": bool(doc.get("admin")), "token": token})
    )


@users.command("delete")
@click.argument("name")
@click.option("--delete-keys", is_flag=True, help="Also delete the user's device keys (their devices become unknown).")
@WAIT_OPTION
@with_appcontext
def delete_user(name: str, delete_keys: bool, wait: float) -> None:
    """Delete a user; its token is refused on every replica once this returns.

    A user who still owns device keys is kept, unless ``--delete-keys`` deletes those too
    (their readings stay in MongoDB, but nobody can read them any more).
    """
    doc = find_user(name)
    try:
        owned = mongo.db[KEYS].count_documents({"owner_id": doc["user_id"]})
        if owned and not delete_keys:
            raise click.ClickException(
                f"{name!r} still owns {owned} device key(s): delete them first, or pass --delete-keys"
            )
        pairs = delete_keys_of(doc["user_id"]) if owned else []
        mongo.db[USERS].delete_one({"user_id": doc["user_id"]})
    except PyMongoError as exc:
        raise click.ClickException(f"MongoDB is unavailable: {exc.__class__.__name__}") from None
    revoke_cached(doc["user_id"], "the user was deleted from MongoDB", wait, pairs)
    click.echo(
        json.dumps({"user_id": doc["user_id"], "name": doc["name"], "deleted": True, "keys_deleted": len(pairs)})
    )


def find_user(name: str) -> dict:
    try:
        doc = mongo.db[USERS].find_one({"name": name})
    except PyMongoError as exc:
        raise click.ClickException(f"MongoDB is unavailable: {exc.__class__.__name__}") from None
    if doc is None:
        raise click.ClickException(f"no user named {name!r}")
    return doc


def delete_keys_of(user_id: str) -> list[tuple[str, str]]:
    """Delete every key of a user; the pairs whose cached lookups are stale now."""
    docs = list(mongo.db[KEYS].find({"owner_id": user_id}, {"_id": 0, "device_id": 1, "device_name": 1}))
    mongo.db[KEYS].delete_many({"owner_id": user_id})
    return [(doc["device_id"], doc["device_name"]) for doc in docs]


def revoke_cached(user_id: str, done: str, wait: float, pairs: list[tuple[str, str]] | None = None) -> None:
    """Drop the user's cached entry (and lookups of its devices) everywhere, or fail loudly."""
    dc = device_cache()
    if pairs:
        dc.invalidate(pairs)
    if not forget_user(dc, user_id, wait):
        raise click.ClickException(
            f"{done}, but the cache's Redis could not be reached to drop the old entry: replicas may accept "
            f"the old token for up to {dc.ttl}s. Run the command again once Redis answers."
        )


def add_user(name: str, admin: bool) -> tuple[User, str]:
    user_id, token = new_secret(TOKEN_PREFIX)
    mongo.db[USERS].insert_one(
        {
            "user_id": user_id,
            "name": name,
            "admin": admin,
            "token_hash": hash_secret(token),
            "created_at": utcnow_ms(),
        }
    )
    return User(user_id, name, admin), token


@click.command("init-db")
@with_appcontext
def init_db() -> None:
    """Create the collections and indexes (idempotent)."""
    try:
        done = ensure_schema(mongo.state.client().get_default_database())
    except PyMongoError as exc:
        raise click.ClickException(f"MongoDB is unavailable: {exc}") from None
    for line in done:
        click.echo(line)
    click.echo("database ready")


def demo_values(rng: random.Random, hours: float) -> dict:
    """One plausible indoor-greenhouse reading at a time of day (hours since midnight)."""
    day = math.sin((hours - 9) / 24 * 2 * math.pi)
    temp = 22 + 4 * day + rng.gauss(0, 0.4)
    return {
        "temp": round(temp, 2),
        "rh": round(min(100.0, max(0.0, 60 - 12 * day + rng.gauss(0, 2))), 1),
        "co2": round(max(300.0, 650 - 150 * day + rng.gauss(0, 25))),
        "lux": round(max(0.0, 30000 * day + rng.gauss(0, 500))) if day > 0 else 0,
        "moisture": [round(rng.uniform(35, 55), 1), round(rng.uniform(35, 55), 1)],
        "liquid": rng.random() > 0.05,
    }


@click.command("demo-data")
@click.option("--devices", "count", default=10, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--days", default=3, show_default=True, type=click.IntRange(0, 366))
@click.option(
    "--interval",
    default=10,
    show_default=True,
    type=click.IntRange(1, 1440),
    help="Minutes between readings.",
)
@click.option("--owner", default="demo", show_default=True, help="User who owns the devices (created if missing).")
@click.option("--seed", default=1, show_default=True, type=int)
@with_appcontext
def demo_data(count: int, days: int, interval: int, owner: str, seed: int) -> None:
    """Register COUNT devices (in chains of two ids per name) and push DAYS of readings.

    The last line of output is JSON with the owner, a token if the owner was created,
    and one device key to try.
    """
    rng = random.Random(seed)
    try:
        doc = mongo.db[USERS].find_one({"name": owner})
        token = None
        if doc is None:
            user, token = add_user(owner, admin=False)
        else:
            user = User(doc["user_id"], doc["name"], bool(doc.get("admin")))
        devices = []
        with click.progressbar(range(count), label="registering devices") as bar:
            for i in bar:
                fields = {
                    "device_id": f"demo-{i + 1:05d}",
                    "device_name": f"Room {i // 2 + 1}",
                    "description": "demo sensor",
                    "private": i % 5 == 4,
                }
                try:
                    devices.append(create_key(user, fields))
                except APIError as exc:
                    if exc.status != 409:
                        raise
        now = utcnow_ms()
        steps = days * 24 * 60 // interval
        total = 0
        with click.progressbar(devices, label="pushing readings") as bar:
            for n, device in enumerate(bar):
                # The two ids of a chain take turns: the second replaced the first half-way.
                first_half = n % 2 == 0
                span = range(steps // 2, steps) if first_half else range(0, steps // 2)
                batch = []
                for step in span:
                    at = now - timedelta(minutes=step * interval)
                    batch.append(
                        {
                            "timestamp": at,
                            "meta": {
                                "device_id": device["device_id"],
                                "device_name": device["device_name"],
                                "owner_id": user.user_id,
                            },
                            **demo_values(rng, at.hour + at.minute / 60),
                        }
                    )
                if batch:
                    mongo.db[READINGS].insert_many(batch, ordered=False)
                    total += len(batch)
    except PyMongoError as exc:
        raise click.ClickException(f"MongoDB is unavailable: {exc.__class__.__name__}") from None
    sample = devices[0] if devices else None
    click.echo(
        json.dumps(
            {
                "owner": owner,
                "user_id": user.user_id,
                "token": token,
                "devices": len(devices),
                "readings": total,
                "api_key": sample["api_key"] if sample else None,
                "device": {"device_id": sample["device_id"], "device_name": sample["device_name"]} if sample else None,
            }
        )
    )
