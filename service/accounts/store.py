"""All SQL of people: log-in look-ups, users, memberships, invites and sessions (named queries in accounts.sql)."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime

import psycopg

from ..platform.db import Database, query
from .sessions import token_hash


def find_login(db: Database, email: str) -> dict | None:
    """{user_id, password_hash} of a normalised email, before anyone is known (narrow path)."""
    return db.unscoped_one("find_login", {"email": email})


def find_invite(db: Database, token: str) -> dict | None:
    """The invite or set-password token with this text, before anyone is known (narrow path)."""
    return db.unscoped_one("find_invite", {"token_hash": token_hash(token)})


def sign_up(db: Database, account: str, email: str, password_hash: str) -> dict | None:
    """{account_id, user_id} of a new account and its owner; None when the account name or email is taken."""
    try:
        return db.unscoped_one("sign_up", {"account": account, "email": email, "password_hash": password_hash})
    except psycopg.errors.UniqueViolation:
        return None


def insert_user(conn: psycopg.Connection, email: str, password_hash: str) -> int | None:
    """A new person's id; None when the email is taken."""
    return query(conn, "insert_user", {"email": email, "password_hash": password_hash}).fetchone()["id"]


def set_password_hash(conn: psycopg.Connection, password_hash: str, changed: bool) -> None:
    """Store the acting person's hash (changed=False for a re-hash of the same password)."""
    query(conn, "set_password_hash", {"password_hash": password_hash, "changed": changed})


def get_user(conn: psycopg.Connection) -> dict:
    """The acting person: id, email, created_at."""
    return query(conn, "get_user").fetchone()


def memberships(conn: psycopg.Connection) -> list[dict]:
    """The acting person's {account_id, role}, oldest first."""
    return query(conn, "user_memberships").fetchall()


def add_member(conn: psycopg.Connection, user_id: int, role: str) -> None:
    """Give a person a role in the acting account (keeping an existing membership as it is)."""
    query(conn, "upsert_membership", {"user_id": user_id, "role": role})


def list_members(conn: psycopg.Connection) -> list[dict]:
    """The acting account's people."""
    return query(conn, "list_members").fetchall()


def remove_member(conn: psycopg.Connection, user_id: int, now: datetime) -> list[bytes] | None:
    """Remove a person from the acting account and end their sessions in it; the ended sessions' token
    hashes, or None when they were not a member."""
    if query(conn, "delete_member", {"user_id": user_id}).fetchone() is None:
        return None
    rows = query(conn, "revoke_member_sessions", {"user_id": user_id, "now": now}).fetchall()
    return [bytes(r["token_hash"]) for r in rows]


def insert_invite(conn: psycopg.Connection, email: str, role: str, expires_at: datetime) -> tuple[str, dict]:
    """A one-time invite into the acting account: (the token, shown once, and the stored invite)."""
    token = secrets.token_urlsafe(32)
    params = {
        "id": uuid.uuid4(),
        "email": email,
        "role": role,
        "purpose": "invite",
        "token_hash": token_hash(token),
        "expires_at": expires_at,
    }
    return token, query(conn, "insert_invite", params).fetchone()


def use_invite(conn: psycopg.Connection, invite_id: uuid.UUID, now: datetime) -> bool:
    """Mark an invite of the acting account used; False when it was used or expired meanwhile."""
    return query(conn, "use_invite", {"id": invite_id, "now": now}).fetchone() is not None


def list_sessions(conn: psycopg.Connection, now: datetime) -> list[dict]:
    """The acting person's live sessions."""
    return query(conn, "list_sessions", {"now": now}).fetchall()


def revoke_session(conn: psycopg.Connection, session_id: uuid.UUID, now: datetime) -> bytes | None:
    """End one of the acting person's sessions; its token hash, or None when there is no such live one."""
    row = query(conn, "revoke_session", {"id": session_id, "now": now}).fetchone()
    return bytes(row["token_hash"]) if row else None


def revoke_other_sessions(conn: psycopg.Connection, keep: uuid.UUID | None, now: datetime) -> list[bytes]:
    """End every session of the acting person but keep; their token hashes."""
    rows = query(conn, "revoke_other_sessions", {"keep": keep, "now": now}).fetchall()
    return [bytes(r["token_hash"]) for r in rows]


def list_keys(conn: psycopg.Connection) -> list[dict]:
    """The acting account's API keys (public id and dates)."""
    return query(conn, "list_account_keys").fetchall()


def revoke_key(conn: psycopg.Connection, public_id: str) -> bool:
    """Revoke a live key of the acting account; False when there is none with this public id."""
    return query(conn, "revoke_account_key", {"public_id": public_id}).fetchone() is not None


# --- the admin command (owner connection) -----------------------------------------------------------------------
def admin_user(conn: psycopg.Connection, account_name: str, email: str, role: str) -> tuple[int, int]:
    """(account id, user id) after creating what is missing and giving the person the role."""
    account_id = query(conn, "upsert_account", {"name": account_name}).fetchone()[0]
    user_id = query(conn, "admin_user", {"email": email}).fetchone()[0]
    query(conn, "admin_membership", {"account_id": account_id, "user_id": user_id, "role": role})
    return account_id, user_id


def admin_set_password(conn: psycopg.Connection, user_id: int, password_hash: str) -> None:
    """Store a person's hash (admin command)."""
    query(conn, "admin_set_password", {"user_id": user_id, "password_hash": password_hash})


def admin_set_password_token(
    conn: psycopg.Connection, account_id: int, email: str, role: str, expires_at: datetime
) -> str:
    """A one-time set-password token for a person (admin command); the token, shown once."""
    token = secrets.token_urlsafe(32)
    params = {
        "id": uuid.uuid4(),
        "account_id": account_id,
        "email": email,
        "role": role,
        "token_hash": token_hash(token),
        "expires_at": expires_at,
    }
    query(conn, "admin_invite", params)
    return token
