"""Users in MongoDB, and dropping a changed user's cached entry on every replica.

Each change goes through the cache's outbox (``app/cache/outbox.py``): once a command returns,
no process accepts the old token, even if Redis could not be reached (the record is then
applied by every other process before it reads the cache again). A rerun that finds no such
user first settles what an earlier attempt left.

Tokens are made by ``app.auth.new_secret`` (their format is defined there) and only their hash
is stored. Failures an operator must hear about are ``UserError``s; MongoDB's own errors pass
through for the caller to report.
"""

from __future__ import annotations

from app.auth import TOKEN_PREFIX, User, hash_secret, new_secret
from app.cache.keys import device_key, user_key
from app.cache.shared import shared_cache
from app.db import KEYS, USERS
from app.extensions import mongo
from app.timeutil import utcnow_ms

Pair = tuple[str, str]


class UserError(Exception):
    """What an operator asked cannot be done, or was done only in part; the message says which."""


def add_user(name: str, admin: bool) -> tuple[User, str]:
    """Create a user; its token (shown only to the caller). A taken name raises ``DuplicateKeyError``."""
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


def find_user(name: str) -> User | None:
    doc = mongo.db[USERS].find_one({"name": name})
    return None if doc is None else User(doc["user_id"], doc["name"], bool(doc.get("admin")))


def existing_user(name: str) -> User:
    user = find_user(name)
    if user is None:
        shared_cache().settle(_name_scope(name))  # a rerun: what the first attempt replaced stays so
        raise UserError(f"no user named {name!r}")
    return user


def rotate_token(name: str) -> tuple[User, str]:
    """Give a user a new token; the old one is refused on every replica once this returns."""
    user = existing_user(name)
    _, token = new_secret(TOKEN_PREFIX, user.user_id)
    with shared_cache().change([user_key(user.user_id)], scope=[_name_scope(name)]):
        mongo.db[USERS].update_one({"user_id": user.user_id}, {"$set": {"token_hash": hash_secret(token)}})
    return user, token


def delete_user(name: str, delete_keys: bool) -> tuple[User, int]:
    """Delete a user (and, if asked, its device keys); how many keys went with it.

    A user who still owns device keys is kept unless ``delete_keys``: their devices would
    become unknown (the readings stay in MongoDB, but nobody can read them any more).
    """
    user = existing_user(name)
    owned = list(mongo.db[KEYS].find({"owner_id": user.user_id}, {"_id": 0, "device_id": 1, "device_name": 1}))
    if owned and not delete_keys:
        raise UserError(f"{name!r} still owns {len(owned)} device key(s): delete them first, or pass --delete-keys")
    stale = [user_key(user.user_id), *(device_key(doc["device_id"], doc["device_name"]) for doc in owned)]
    with shared_cache().change(stale, scope=[_name_scope(name)]):
        if owned:
            mongo.db[KEYS].delete_many({"owner_id": user.user_id})
        mongo.db[USERS].delete_one({"user_id": user.user_id})
    return user, len(owned)


def _name_scope(name: str) -> str:
    return f"username/{name}"
