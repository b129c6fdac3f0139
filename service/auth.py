"""API keys: issue, hash, verify, revoke; the decorator that resolves the request's account."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable

import psycopg
from flask import g, request

from .platform.db import database, query
from .platform.errors import ApiError
from .platform.observe import ACCOUNT_ID

# clk_<public id>_<secret>: the fixed prefix lets secret scanners recognise leaked keys; look-up is by the
# public id so the secret itself is never searched for, only compared in constant time.
KEY_PATTERN = re.compile(r"clk_([a-z0-9]{8})_([A-Za-z0-9]{43})\Z")
_PUBLIC_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
_SECRET_ALPHABET = _PUBLIC_ALPHABET + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def hash_key(key: str) -> bytes:
    """The stored form of a key. Its secret has 256 bits of entropy, so a fast hash is safe here."""
    return hashlib.sha256(key.encode()).digest()


def presented_key(header_value: str | None) -> str | None:
    """The well-formed bearer key in an Authorization header exactly as authentication reads it, else None: the one
    spelling every rate limit and check uses, so that extra spaces cannot make it look like another key."""
    if not header_value or not header_value.startswith("Bearer "):
        return None
    match = KEY_PATTERN.match(header_value[7:].strip())
    return match[0] if match else None


def public_id_of(header_value: str | None) -> str | None:
    """The public id of a well-formed bearer key in an Authorization header, else None."""
    key = presented_key(header_value)
    return KEY_PATTERN.match(key)[1] if key else None


def issue_key(conn: psycopg.Connection, account_name: str) -> str:
    """Create the account if needed and a new key for it (owner connection); return the key, shown once."""
    account_id = query(conn, "upsert_account", {"name": account_name}).fetchone()[0]
    public_id = "".join(secrets.choice(_PUBLIC_ALPHABET) for _ in range(8))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(43))  # 43 × log2(62) ≈ 256 bits
    key = f"clk_{public_id}_{secret}"
    query(conn, "insert_api_key", {"account_id": account_id, "public_id": public_id, "secret_hash": hash_key(key)})
    return key


def revoke_key(conn: psycopg.Connection, public_id: str) -> bool:
    """Revoke the key with this public id (owner connection); False when no live key has it."""
    return query(conn, "revoke_api_key", {"public_id": public_id}).fetchone() is not None


def _unauthorized(detail: str) -> ApiError:
    # RFC 9110: a 401 names the scheme the client should use.
    return ApiError(401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="api"'})


def authenticate() -> int:
    """The account id of the request's valid, unrevoked API key; raise 401 otherwise."""
    header = request.headers.get("Authorization")
    if not header:
        raise _unauthorized("Send 'Authorization: Bearer <api key>'.")
    key = presented_key(header)
    if key is None:
        raise _unauthorized("The API key is malformed.")
    row = database().unscoped_one("find_api_key", {"public_id": public_id_of(header)})
    presented = hash_key(key)
    if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), presented):
        raise _unauthorized("The API key is not valid.")
    if row["revoked"]:
        raise _unauthorized("The API key was revoked.")
    return row["account_id"]


def require_api_key(view: Callable) -> Callable:
    """Run view only for a valid key, with g.account_id set to its account."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        g.account_id = request.environ[ACCOUNT_ID] = authenticate()  # the access log names the account
        return view(*args, **kwargs)

    return wrapped
