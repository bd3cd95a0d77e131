"""Create, list and delete API keys; each change invalidates the cached lookups of its chain.

Through the cache's outbox (``app/cache/outbox.py``): the invalidation is recorded in MongoDB
before the key is, so no failure after it (MongoDB, Redis, this process killed) leaves a lookup
cached that the change replaced. A DELETE that finds nothing (a retry) first settles what an
earlier attempt of the owner's left.
"""

from __future__ import annotations

from typing import Any

from pymongo.errors import DuplicateKeyError

from app.auth import KEY_PREFIX, User, hash_secret, mask, new_secret
from app.cache.keys import device_key, query_gen_key
from app.cache.shared import shared_cache
from app.db import KEYS
from app.errors import APIError, not_found, validation_error
from app.extensions import mongo
from app.timeutil import isoformat, utcnow_ms
from app.validation import check_pair, reject_unknown

PUBLIC_FIELDS = ("key_id", "masked", "device_id", "device_name", "description", "private", "created_at")
NEW_KEY_FIELDS = {"device_id", "device_name", "description", "private"}  # the body of POST /api/v1/api-keys
MAX_DESCRIPTION = 256


def parse_new_key(body: dict[str, Any]) -> dict[str, Any]:
    reject_unknown(body, NEW_KEY_FIELDS, "")
    check_pair(body.get("device_id"), body.get("device_name"))
    description = body.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise validation_error(
            f"description must be a string of at most {MAX_DESCRIPTION} characters", field="description"
        )
    private = body.get("private", False)
    if not isinstance(private, bool):
        raise validation_error("private must be true or false", field="private")
    return {
        "device_id": body["device_id"],
        "device_name": body["device_name"],
        "description": description,
        "private": private,
    }


def _public(doc: dict[str, Any]) -> dict[str, Any]:
    out = {field: doc[field] for field in PUBLIC_FIELDS}
    out["created_at"] = isoformat(doc["created_at"])
    return out


def create_key(user: User, fields: dict[str, Any]) -> dict[str, Any]:
    key_id, secret = new_secret(KEY_PREFIX)
    doc = {
        "key_id": key_id,
        "owner_id": user.user_id,
        **fields,
        "created_at": utcnow_ms(),
        "key_hash": hash_secret(secret),
        "masked": mask(secret),
    }
    # The new id joins the chain: every pair of it (and the pair's negative entry) is stale now.
    pair = device_key(fields["device_id"], fields["device_name"])
    with shared_cache().change([pair], [(user.user_id, fields["device_name"])], scope=[_scope(user)]):
        try:
            mongo.db[KEYS].insert_one(doc)
        except DuplicateKeyError:
            # A retried insert (the first one's answer lost to a socket timeout) finds our own key.
            if mongo.db[KEYS].find_one({"key_id": key_id}, {"_id": 1}) is None:
                raise APIError(409, "conflict", "this device_id and device_name are already registered") from None
    return {**_public(doc), "api_key": secret}


def list_keys(user: User) -> list[dict[str, Any]]:
    docs = mongo.db[KEYS].find({"owner_id": user.user_id}, {"_id": 0}).sort([("created_at", 1), ("key_id", 1)])
    return [_public(doc) for doc in docs]


def delete_key(user: User, key_id: str) -> None:
    cache = shared_cache()
    doc = mongo.db[KEYS].find_one({"key_id": key_id, "owner_id": user.user_id}, {"device_id": 1, "device_name": 1})
    if doc is not None:
        pair = device_key(doc["device_id"], doc["device_name"])
        # The pair and every pair left in its chain are stale once the key is gone; so are the pair's
        # cached readings chunks (keyed by owner, a later owner could not read them anyway: this frees them).
        chunks = query_gen_key(user.user_id, doc["device_id"], doc["device_name"])
        with cache.change([pair, chunks], [(user.user_id, doc["device_name"])], scope=[_scope(user)]):
            doc = mongo.db[KEYS].find_one_and_delete({"key_id": key_id, "owner_id": user.user_id})
    if doc is None:
        cache.settle(_scope(user))  # a retry: what the first attempt replaced stays replaced
        raise not_found("unknown API key")


def _scope(user: User) -> str:
    return f"owner/{user.user_id}"
