"""Users in MongoDB, and dropping a changed user's cached entry on every replica.

Tokens are made by ``app.auth.new_secret`` (their format is defined there) and only their hash
is stored. Failures an operator must hear about are ``UserError``s; MongoDB's own errors pass
through for the caller to report.
"""

from __future__ import annotations

from app.auth import TOKEN_PREFIX, User, hash_secret, new_secret
from app.cache.device_cache import device_cache
from app.cache.user_cache import forget_user
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
        raise UserError(f"no user named {name!r}")
    return user


def rotate_token(name: str, wait: float) -> tuple[User, str]:
    """Give a user a new token; the old one is refused on every replica once this returns."""
    user = existing_user(name)
    _, token = new_secret(TOKEN_PREFIX, user.user_id)
    mongo.db[USERS].update_one({"user_id": user.user_id}, {"$set": {"token_hash": hash_secret(token)}})
    revoke_cached(user.user_id, [], wait, "the token was replaced in MongoDB")
    return user, token


def delete_user(name: str, delete_keys: bool, wait: float) -> tuple[User, int]:
    """Delete a user (and, if asked, its device keys); how many keys went with it.

    A user who still owns device keys is kept unless ``delete_keys``: their devices would
    become unknown (the readings stay in MongoDB, but nobody can read them any more).
    """
    user = existing_user(name)
    owned = mongo.db[KEYS].count_documents({"owner_id": user.user_id})
    if owned and not delete_keys:
        raise UserError(f"{name!r} still owns {owned} device key(s): delete them first, or pass --delete-keys")
    pairs = delete_keys_of(user.user_id) if owned else []
    mongo.db[USERS].delete_one({"user_id": user.user_id})
    revoke_cached(user.user_id, pairs, wait, "the user was deleted from MongoDB")
    return user, len(pairs)


def delete_keys_of(user_id: str) -> list[Pair]:
    """Delete every key of a user; the pairs whose cached lookups are stale now."""
    docs = list(mongo.db[KEYS].find({"owner_id": user_id}, {"_id": 0, "device_id": 1, "device_name": 1}))
    mongo.db[KEYS].delete_many({"owner_id": user_id})
    return [(doc["device_id"], doc["device_name"]) for doc in docs]


def revoke_cached(user_id: str, pairs: list[Pair], wait: float, done: str) -> None:
    """Drop the user's cached entry (and lookups of its devices) everywhere, or fail loudly.

    ``done`` says what already changed in MongoDB, for the message when Redis does not answer
    within ``wait`` seconds. The one place the users' commands touch the cache.
    """
    dc = device_cache()
    if pairs:
        dc.invalidate(pairs)
    if not forget_user(dc, user_id, wait):
        raise UserError(
            f"{done}, but the cache's Redis could not be reached to drop the old entry: replicas may accept "
            f"the old token for up to {dc.ttl}s. Run the command again once Redis answers."
        )
