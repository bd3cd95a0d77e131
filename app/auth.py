"""Credentials: user bearer tokens and device API keys.

Secrets have the form ``<prefix>_<id>_<secret>``: the id finds the stored record,
and the SHA-256 of the whole secret is compared in constant time. Only hashes are stored.
Device keys imported from opensensor (``app/compat/importer.py``) have no id: they are
found by the SHA-256 of the whole key (a unique index), which is as safe for a 256-bit
random key and is the only way to find a key that carries no id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from flask import request

from app.cache.keys import user_key
from app.cache.shared import USER, shared_cache
from app.db import KEYS, USERS
from app.errors import APIError
from app.extensions import mongo

TOKEN_PREFIX = "ost"
KEY_PREFIX = "osk"
_SECRET_RE = re.compile(r"^(ost|osk)_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")
# opensensor's keys: urlsafe base64 of 32 random bytes (44 characters); a little room around that.
_FOREIGN_KEY_RE = re.compile(r"^[A-Za-z0-9_=+/.~-]{16,256}$")


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_hash(stored: str | None, secret: str) -> bool:
    return stored is not None and hmac.compare_digest(stored, hash_secret(secret))


def new_secret(prefix: str, ident: str | None = None) -> tuple[str, str]:
    """Return (id, secret) for a new token or key: a new id, unless given (a rotated token keeps its user's)."""
    ident = ident or secrets.token_hex(8)
    return ident, f"{prefix}_{ident}_{secrets.token_urlsafe(32)}"


def secret_id(secret: str, prefix: str) -> str | None:
    match = _SECRET_RE.match(secret)
    if not match or match.group(1) != prefix:
        return None
    return match.group(2)


def mask(secret: str) -> str:
    return f"{secret[:21]}…{secret[-4:]}"


def invalid(message: str) -> APIError:
    return APIError(401, "invalid_credentials", message)


def auth_required(message: str = "authentication required") -> APIError:
    return APIError(401, "auth_required", message)


@dataclass(frozen=True)
class User:
    user_id: str
    name: str
    admin: bool


def current_user() -> User | None:
    """The bearer's user; None without the header; 401 when the header is present but wrong."""
    header = request.environ.get("HTTP_AUTHORIZATION")  # request.headers.get, without its key folding
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise invalid("malformed Authorization header, expected 'Bearer <token>'")
    user_id = secret_id(token, TOKEN_PREFIX)
    doc = shared_cache().lookup(USER, user_key(user_id), lambda: load_user(user_id)) if user_id else None
    if doc is None or not doc["found"] or not same_hash(doc.get("token_hash"), token):
        raise invalid("invalid bearer token")
    return User(doc["user_id"], doc["name"], doc["admin"])


def load_user(user_id: str) -> dict[str, Any]:
    """The user as the cache keeps it: what a request needs, and its token's hash to compare."""
    doc = mongo.db[USERS].find_one({"user_id": user_id}, {"_id": 0, "name": 1, "admin": 1, "token_hash": 1})
    if doc is None:
        return {"v": USER.version, "found": False}
    return {
        "v": USER.version,
        "found": True,
        "user_id": user_id,
        "name": doc["name"],
        "admin": bool(doc.get("admin")),
        "token_hash": doc["token_hash"],
    }


def require_user() -> User:
    user = current_user()
    if user is None:
        raise auth_required("a bearer token is required")
    return user


def require_admin() -> User:
    user = require_user()
    if not user.admin:
        raise APIError(403, "forbidden", "admin token required")
    return user


def is_key_shaped(key: str) -> bool:
    """One of our keys, or one that may have been imported from opensensor."""
    return secret_id(key, KEY_PREFIX) is not None or bool(_FOREIGN_KEY_RE.fullmatch(key))


def api_key_header() -> str | None:
    """The X-API-Key header; 401 when present but malformed."""
    key = request.environ.get("HTTP_X_API_KEY")  # the X-API-Key header
    if key is None:
        return None
    key = key.strip()
    if not is_key_shaped(key):
        raise invalid("invalid API key")
    return key


def stored_key(key: str) -> dict | None:
    """The key record of a well-formed API key, if the key is genuine.

    Ours are found by their id; an imported opensensor key by its hash.
    """
    if not is_key_shaped(key):
        return None
    key_id = secret_id(key, KEY_PREFIX)
    query = {"key_id": key_id} if key_id else {"key_hash": hash_secret(key)}
    doc = mongo.db[KEYS].find_one(query, {"_id": 0})
    if doc is None or not same_hash(doc.get("key_hash"), key):
        return None
    return doc
