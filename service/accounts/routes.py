"""The people API: log-in sessions, password change, members and invites, self sign-up, API keys."""

from __future__ import annotations

import base64
import hashlib
import uuid
from datetime import timedelta
from pathlib import Path

from flask import Blueprint, Response, g, render_template, request
from marshmallow import RAISE, Schema, fields, validate

from ..auth import check_origin, issue_account_key, require_auth, require_owner
from ..config import settings
from ..platform.db import database
from ..platform.errors import ApiError, invalid, not_found
from ..platform.http import json_response, load_or_422, read_json_object
from . import store
from .passwords import hash_password, needs_rehash, normalize_email, password_problems, verify_password
from .sessions import Session, sessions

bp = Blueprint("accounts", __name__, url_prefix="/api/v1")
pages = Blueprint("accounts_pages", __name__)
INVITE_LIFETIME = timedelta(hours=72)
INVITE_SCRIPT = Path(__file__).with_name("invite.js").read_text()
_SCRIPT_HASH = base64.b64encode(hashlib.sha256(INVITE_SCRIPT.encode()).digest()).decode()
INVITE_PAGE_HEADERS = {
    # The page's one script is allowed by its hash and may only call this service; nothing may frame it.
    "Content-Security-Policy": f"default-src 'none'; script-src 'sha256-{_SCRIPT_HASH}'; style-src 'unsafe-inline'; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ROLE = fields.String(load_default="member", validate=validate.OneOf(["owner", "member"]))


class Strict(Schema):
    """Unknown fields are refused."""

    class Meta:
        unknown = RAISE


class LoginIn(Strict):
    """POST /api/v1/sessions."""

    email = fields.String(required=True, validate=validate.Length(max=254))
    password = fields.String(required=True, validate=validate.Length(max=1024))
    account_id = fields.Integer(strict=True, validate=validate.Range(min=1))


class PasswordChangeIn(Strict):
    """PUT /api/v1/me/password."""

    current_password = fields.String(required=True, validate=validate.Length(max=1024))
    new_password = fields.String(required=True)


class InviteIn(Strict):
    """POST /api/v1/members."""

    email = fields.Email(required=True, validate=validate.Length(max=254))
    role = ROLE


class AcceptIn(Strict):
    """POST /api/v1/invites/accept."""

    token = fields.String(required=True, validate=validate.Length(max=200))
    password = fields.String(required=True)


class SignupIn(Strict):
    """POST /api/v1/signup."""

    email = fields.Email(required=True, validate=validate.Length(max=254))
    password = fields.String(required=True)
    account = fields.String(required=True, validate=validate.Length(min=1, max=100))


def _bad_login() -> ApiError:
    # One answer for an unknown email and a wrong password, so the answer tells nothing about who has an account.
    return ApiError(401, "login-failed", "Log-in failed", "The email or the password is wrong.")


def _checked_password(data: dict, field: str) -> str:
    problems = password_problems(data[field])
    if problems:
        raise invalid({field: problems})
    return data[field]


def _session_json(session: Session) -> dict:
    return {
        "id": str(session.id),
        "account_id": session.account_id,
        "role": session.role,
        "created_at": session.created_at,
        "last_seen_at": session.last_seen_at,
        "expires_at": session.expires_at,
    }


def _current_session() -> Session:
    if g.session is None:
        raise ApiError(403, "session-required", "Session required", "This acts on a log-in session, not an API key.")
    return g.session


# --- sessions ----------------------------------------------------------------------------------------------------
@bp.post("/sessions")
def login() -> Response:
    """Log in: 201 with the session, the person and the CSRF token, and the session cookie; 401 for a wrong
    email or password alike; 403 from a foreign origin or for a person of no account; 422; 429."""
    if request.headers.get("Origin") or request.headers.get("Referer"):
        check_origin()  # no log-in CSRF: a foreign page may not log a browser into an account
    data = load_or_422(LoginIn, read_json_object())
    db = database()
    found = store.find_login(db, normalize_email(data["email"]))
    stored_hash = found["password_hash"] if found else None
    if not verify_password(stored_hash, data["password"]):  # an unknown email costs one verification too
        raise _bad_login()
    user_id = found["user_id"]
    with db.transaction(user_id=user_id) as conn:
        if needs_rehash(stored_hash):
            store.set_password_hash(conn, hash_password(data["password"]), changed=False)
        roles = {m["account_id"]: m["role"] for m in store.memberships(conn)}
        user = store.get_user(conn)
    account_id = data.get("account_id") or next(iter(roles), None)
    if account_id not in roles:
        raise ApiError(403, "no-membership", "No such account", "This person is not a member of that account.")
    with db.transaction(account_id, user_id) as conn:
        token, session = sessions().start(conn, user_id, account_id, roles[account_id], request.user_agent.string)
    body = {
        "session": _session_json(session),
        "user": {"id": user["id"], "email": user["email"]},
        "accounts": [{"account_id": a, "role": r} for a, r in roles.items()],
        "csrf_token": sessions().csrf_token(session),
    }
    response = json_response(body, 201)
    sessions().set_cookie(response, token)
    return response


@bp.get("/sessions/current")
@require_auth
def current_session() -> Response:
    """The session of the cookie, with its CSRF token. 200; 401, 403 with an API key."""
    session = _current_session()
    return json_response({"session": _session_json(session), "csrf_token": sessions().csrf_token(session)})


@bp.delete("/sessions/current")
@require_auth
def logout() -> Response:
    """Log out: end this session and drop the cookie. 204; 401, 403."""
    session = _current_session()
    _end_session(session.id)
    response = Response(status=204)
    sessions().clear_cookie(response)
    return response


@bp.get("/sessions")
@require_auth
def list_sessions() -> Response:
    """The person's live sessions (every account): created, last seen, user-agent family. 200; 401, 403."""
    session = _current_session()
    with database().transaction(session.account_id, session.user_id) as conn:
        rows = store.list_sessions(conn, sessions().now())
    items = [{**r, "id": str(r["id"]), "current": r["id"] == session.id} for r in rows]
    return json_response({"items": items})


@bp.delete("/sessions/<session_id>")
@require_auth
def revoke_session(session_id: str) -> Response:
    """End one of the person's sessions. 204; 401, 403, 404."""
    _current_session()
    try:
        parsed = uuid.UUID(session_id)
    except ValueError:
        parsed = None
    if parsed is None or not _end_session(parsed):
        raise not_found("session", "No such live session of yours.")
    return Response(status=204)


def _end_session(session_id: uuid.UUID) -> bool:
    with database().transaction(g.account_id, g.user_id) as conn:
        hashed = store.revoke_session(conn, session_id, sessions().now())
    if hashed:
        sessions().forget([hashed])
    return hashed is not None


@bp.put("/me/password")
@require_auth
def change_password() -> Response:
    """Change the person's password; every other session of theirs ends. 204; 401 wrong current password,
    403, 422."""
    session = _current_session()
    data = load_or_422(PasswordChangeIn, read_json_object())
    new_password = _checked_password(data, "new_password")
    db = database()
    with db.transaction(session.account_id, session.user_id) as conn:
        email = store.get_user(conn)["email"]
    found = store.find_login(db, email)
    if not verify_password(found["password_hash"], data["current_password"]):
        raise invalid({"current_password": ["Not the current password."]})
    new_hash = hash_password(new_password)
    with db.transaction(session.account_id, session.user_id) as conn:
        store.set_password_hash(conn, new_hash, changed=True)
        ended = store.revoke_other_sessions(conn, session.id, sessions().now())
    sessions().forget(ended)
    return Response(status=204)


# --- members and invites -----------------------------------------------------------------------------------------
@bp.post("/members")
@require_owner
def invite_member() -> Response:
    """Invite a person by email: 201 with a one-time invite link valid 72 h (sending it is up to the caller).
    401, 403 for a member, 422."""
    data = load_or_422(InviteIn, read_json_object())
    expires_at = sessions().now() + INVITE_LIFETIME
    with database().transaction(g.account_id) as conn:
        token, invite = store.insert_invite(conn, normalize_email(data["email"]), data["role"], expires_at)
    url = invite_url(settings().public_base_url, token)
    return json_response({**invite, "id": str(invite["id"]), "invite_url": url}, 201)


def invite_url(base_url: str, token: str) -> str:
    """The link a person opens to accept: the token in the fragment, which browsers never send to a server,
    so no access log or Referer ever carries it."""
    return f"{base_url}/invite#token={token}"


@bp.get("/members")
@require_owner
def list_members() -> Response:
    """The account's people and roles. 200; 401, 403."""
    with database().transaction(g.account_id) as conn:
        return json_response({"items": store.list_members(conn)})


@bp.delete("/members/<int:user_id>")
@require_owner
def remove_member(user_id: int) -> Response:
    """Remove a person from the account; their sessions in it end. 204; 401, 403, 404."""
    with database().transaction(g.account_id) as conn:
        ended = store.remove_member(conn, user_id, sessions().now())
    if ended is None:
        raise not_found("member", "No such person in this account.")
    sessions().forget(ended)
    return Response(status=204)


@pages.get("/invite")
def invite_page() -> Response:
    """The page an invite or set-password link opens: it posts the fragment's token with the chosen password."""
    return Response(render_template("invite.html", script=INVITE_SCRIPT), headers=INVITE_PAGE_HEADERS)


@bp.post("/invites/accept")
def accept_invite() -> Response:
    """Accept an invite (or a set-password link): a new person sets their password; a person who already
    has one proves it. 200 with the account and role; 400 for a used, expired or unknown token; 401; 422."""
    data = load_or_422(AcceptIn, read_json_object())
    db = database()
    invite = store.find_invite(db, data["token"])
    now = sessions().now()
    if invite is None or invite["used"] or invite["expires_at"] <= now:
        raise ApiError(400, "invite-invalid", "Invalid invite", "This link was used, has expired or never existed.")
    found = store.find_login(db, invite["email"])
    if invite["purpose"] == "invite" and found and found["password_hash"]:
        # The owner who invited must not be able to take over someone's existing login: prove it is you.
        if not verify_password(found["password_hash"], data["password"]):
            raise _bad_login()
        new_hash = None
    else:
        new_hash = hash_password(_checked_password(data, "password"))
    with db.transaction(invite["account_id"]) as conn:
        if not store.use_invite(conn, invite["id"], now):
            raise ApiError(400, "invite-invalid", "Invalid invite", "This link was used or has expired.")
        user_id = found["user_id"] if found else store.insert_user(conn, invite["email"], new_hash)
        conn.execute("select set_config('chatlink.user_id', %s, true)", [str(user_id)])
        if found and new_hash:
            store.set_password_hash(conn, new_hash, changed=True)
            ended = store.revoke_other_sessions(conn, None, now)
        else:
            ended = []
        store.add_member(conn, user_id, invite["role"])
    sessions().forget(ended)
    return json_response({"account_id": invite["account_id"], "role": invite["role"], "email": invite["email"]})


@bp.post("/signup")
def signup() -> Response:
    """Create an account and its owner (only with SIGNUP_ENABLED=1). 201; 404 when off; 409; 422."""
    if not settings().signup_enabled:
        raise ApiError(404, "not-found", "Not Found", "Sign-up is not enabled on this service.")
    data = load_or_422(SignupIn, read_json_object())
    new_hash = hash_password(_checked_password(data, "password"))
    created = store.sign_up(database(), data["account"], normalize_email(data["email"]), new_hash)
    if created is None:
        raise ApiError(409, "signup-conflict", "Cannot sign up", "This account name or email is already taken.")
    return json_response(created, 201)


# --- API keys ----------------------------------------------------------------------------------------------------
@bp.post("/api-keys")
@require_owner
def create_key() -> Response:
    """A new API key of the account; the key is in this answer only. 201; 401, 403."""
    with database().transaction(g.account_id) as conn:
        row = issue_account_key(conn)
    return json_response({"id": row["public_id"], "key": row["key"], "created_at": row["created_at"]}, 201)


@bp.get("/api-keys")
@require_owner
def list_keys() -> Response:
    """The account's keys: public id, created, revoked (never the secret). 200; 401, 403."""
    with database().transaction(g.account_id) as conn:
        rows = store.list_keys(conn)
    items = [{"id": r["public_id"], "created_at": r["created_at"], "revoked_at": r["revoked_at"]} for r in rows]
    return json_response({"items": items})


@bp.delete("/api-keys/<public_id>")
@require_owner
def revoke_key(public_id: str) -> Response:
    """Revoke a key of the account (by its public id). 204; 401, 403, 404."""
    with database().transaction(g.account_id) as conn:
        if not store.revoke_key(conn, public_id.removeprefix("clk_").split("_")[0]):
            raise not_found("api-key", "No live key with this id in this account.")
    return Response(status=204)
