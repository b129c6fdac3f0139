"""Who a request is and for which account: an API key (Bearer) or a login session (cookie, with the CSRF check);
API keys: issue, hash, verify, revoke; require_auth / require_auth_in_transaction / require_owner, one of which
every API view uses."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from flask import current_app, g, request

from .accounts.sessions import sessions
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


def new_key() -> tuple[str, str]:
    """(public id, whole key) of a fresh key."""
    public_id = "".join(secrets.choice(_PUBLIC_ALPHABET) for _ in range(8))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(43))  # 43 × log2(62) ≈ 256 bits
    return public_id, f"clk_{public_id}_{secret}"


def issue_key(conn: psycopg.Connection, account_name: str) -> str:
    """Create the account if needed and a new key for it (owner connection); return the key, shown once."""
    account_id = query(conn, "upsert_account", {"name": account_name}).fetchone()[0]
    public_id, key = new_key()
    query(conn, "insert_api_key", {"account_id": account_id, "public_id": public_id, "secret_hash": hash_key(key)})
    return key


def issue_account_key(conn: psycopg.Connection) -> dict:
    """A new key of the account conn acts for (the API-keys API): its public id, creation time and the key."""
    public_id, key = new_key()
    row = query(conn, "insert_account_key", {"public_id": public_id, "secret_hash": hash_key(key)}).fetchone()
    return {**row, "key": key}


def revoke_key(conn: psycopg.Connection, public_id: str) -> bool:
    """Revoke the key with this public id (owner connection); False when no live key has it."""
    return query(conn, "revoke_api_key", {"public_id": public_id}).fetchone() is not None


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ROLES = ("member", "owner")  # each role may do what the ones before it may


def _unauthorized(detail: str) -> ApiError:
    # RFC 9110: a 401 names the scheme the client should use.
    return ApiError(401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="api"'})


NOT_VALID = "The API key is not valid."
REVOKED = "The API key was revoked."


def _well_formed_key() -> str:
    key = presented_key(request.headers.get("Authorization", ""))
    if key is None:
        raise _unauthorized("The API key is malformed.")
    return key


def authenticate() -> int:
    """The account id of the request's valid, unrevoked API key; raise 401 otherwise."""
    key = _well_formed_key()
    row = database().unscoped_one("find_api_key", {"public_id": KEY_PATTERN.match(key)[1]})
    if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), hash_key(key)):
        raise _unauthorized(NOT_VALID)
    if row["revoked"]:
        raise _unauthorized(REVOKED)
    return row["account_id"]


# What act_for_api_key (migration 0011) fails a transaction with when it refuses a key.
KEY_REFUSED = "CK401"


@dataclass(eq=False, slots=True)
class AccountOfKey:
    """The account of the API key a request presented, not yet checked: a platform.db.DeferredAccount. The
    transaction it is given to checks the key in its first statement (act_for_api_key: look-up, comparison,
    revocation), acts for the key's account and records its id here; a refused key fails that transaction with
    SQLSTATE KEY_REFUSED."""

    public_id: str
    secret_hash: bytes
    account_id: int | None = None

    def statement(self, read_only: bool) -> tuple[str, list]:
        return "select act_for_api_key(%s, %s, %s)", [self.public_id, self.secret_hash, read_only]


def key_to_check() -> AccountOfKey:
    """The request's well-formed API key, for its transaction to check (raise 401 for a malformed one)."""
    key = _well_formed_key()
    return AccountOfKey(KEY_PATTERN.match(key)[1], hash_key(key))


def session_token() -> str | None:
    """The session token the request's cookie carries, if any."""
    return request.cookies.get(sessions().cookie_name) or None


def allowed_origins() -> set[str]:
    """Origins whose pages may change state with the session cookie: the service itself and CORS_ORIGINS."""
    settings = current_app.config["SETTINGS"]
    return {settings.public_base_url.lower(), *settings.cors_origin_list}


def _request_origin() -> str | None:
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        return origin.lower()
    referer = request.headers.get("Referer", "")
    scheme, _, rest = referer.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}".lower() if rest else None


def check_origin() -> None:
    """403 unless the request comes from a page of an allowed origin (Origin, else Referer)."""
    if _request_origin() not in allowed_origins():
        raise ApiError(
            403, "csrf-failed", "Cross-site request refused", "The request's Origin is not allowed to use this session."
        )


def _check_csrf(session) -> None:
    check_origin()
    presented = request.headers.get("X-CSRF-Token", "")
    if not hmac.compare_digest(presented.encode(), sessions().csrf_token(session).encode()):
        raise ApiError(
            403,
            "csrf-failed",
            "Cross-site request refused",
            "Send the session's CSRF token (from log-in or GET /api/v1/sessions/current) in X-CSRF-Token.",
        )


def identify(*, key_checked_by_transaction: bool = False) -> None:
    """Resolve the request's identity into g: account_id, role, and for a session user_id and session.
    A Bearer key wins over a cookie and acts as the account's owner; a session acts with its member's role
    and must pass the CSRF check to change anything. key_checked_by_transaction: a key's account_id is an
    AccountOfKey, checked by the first transaction it is given to (see require_auth_in_transaction)."""
    g.user_id, g.session = None, None
    if request.headers.get("Authorization"):
        g.role = "owner"
        g.account_id = key_to_check() if key_checked_by_transaction else authenticate()
        if not key_checked_by_transaction:
            request.environ[ACCOUNT_ID] = g.account_id  # the access log names the account
        return
    token = session_token()
    if token is None:
        raise _unauthorized("Send 'Authorization: Bearer <api key>', or log in (POST /api/v1/sessions).")
    session = sessions().check(token)
    if session is None:
        raise _unauthorized("The session has ended; log in again.")
    if request.method in UNSAFE_METHODS:
        _check_csrf(session)
    g.account_id, g.role, g.user_id, g.session = session.account_id, session.role, session.user_id, session
    request.environ[ACCOUNT_ID] = g.account_id


def _requiring(role: str, *, key_checked_by_transaction: bool = False) -> Callable[[Callable], Callable]:
    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            identify(key_checked_by_transaction=key_checked_by_transaction)
            if ROLES.index(g.role) < ROLES.index(role):
                raise ApiError(403, "forbidden", "Forbidden", f"Only an account {role} may do this.")
            if not isinstance(g.account_id, AccountOfKey):
                return view(*args, **kwargs)
            return _with_key_checked(g.account_id, view, args, kwargs)

        return wrapped

    return decorate


def _with_key_checked(account: AccountOfKey, view: Callable, args, kwargs):
    """Run view, whose transactions check the key; whatever it answers, a bad key's 401 comes first."""
    try:
        response = view(*args, **kwargs)
    except psycopg.Error as exc:
        if exc.sqlstate == KEY_REFUSED:
            raise _unauthorized(REVOKED if exc.diag.message_primary == "revoked" else NOT_VALID) from None
        raise
    except ApiError:
        _ensure_checked(account)  # refused before its transaction (a 422, say): a bad key's 401 still comes first
        raise
    _ensure_checked(account)  # a view that opened no transaction: the key is checked before the answer leaves
    return response


def _ensure_checked(account: AccountOfKey) -> None:
    if account.account_id is None:
        account.account_id = authenticate()
    request.environ[ACCOUNT_ID] = account.account_id  # the access log names the account


def require_auth(view: Callable) -> Callable:
    """Run view for an API key or any member's session, with g.account_id set to its account."""
    return _requiring("member")(view)


def require_auth_in_transaction(view: Callable) -> Callable:
    """require_auth for a view that does nothing outside PostgreSQL before its first transaction of g.account_id:
    an API key is checked inside that transaction, in the round trip of its first statement, instead of by a
    look-up of its own before the view. (Before its answer leaves, a view that opened none has the key checked.)"""
    return _requiring("member", key_checked_by_transaction=True)(view)


def require_owner(view: Callable) -> Callable:
    """Run view only for an API key or an owner's session (403 problem+json for a member)."""
    return _requiring("owner")(view)
