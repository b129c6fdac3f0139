"""All link SQL and the link cache (the entry the redirect reads, write-through after commits, invalidation)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import psycopg
import redis
from flask import current_app
from psycopg.types.json import Jsonb

from ..platform.db import Database, DeferredAccount, query
from ..platform.errors import ApiError
from ..platform.redis import RedisClient, RedisDown
from . import slugs
from .model import Link
from .schemas import EDITABLE

GENERATED_SLUG_ATTEMPTS = 8
UNKNOWN = ""  # the cache entry of a slug PostgreSQL does not know


# --- SQL ---------------------------------------------------------------------------------------------------------
def _params(data: dict) -> dict:
    params = {"message": None, "title": None, "tags": [], "expires_at": None, "max_clicks": None, **data}
    params["lead_form"] = None if params.get("lead_form") is None else Jsonb(params["lead_form"])
    return params


def insert_link(conn: psycopg.Connection, data: dict) -> Link:
    """Create a link with data's custom slug (409 when taken) or a generated one."""
    params = _params(data)
    if "slug" in data:
        row = query(conn, "insert_link", params).fetchone()
        if row is None:
            raise ApiError(409, "slug-taken", "Slug taken", f"The slug '{data['slug']}' is already in use.")
        return Link.from_row(row)
    for _ in range(GENERATED_SLUG_ATTEMPTS):
        row = query(conn, "insert_link", {**params, "slug": slugs.generate()}).fetchone()
        if row is not None:
            return Link.from_row(row)
    raise RuntimeError("could not find a free slug")  # 31^8 slugs: only reachable when nearly all are used


def get_link(conn: psycopg.Connection, slug: str) -> Link | None:
    """One live link of the transaction's account."""
    row = query(conn, "get_link", {"slug": slug}).fetchone()
    return Link.from_row(row) if row else None


def read_link(db: Database, account: int | DeferredAccount, slug: str) -> Link | None:
    """get_link in a read-only transaction of its own: one round trip to PostgreSQL."""
    row = db.read(account, "get_link", {"slug": slug}).fetchone()
    return Link.from_row(row) if row else None


def update_link(conn: psycopg.Connection, slug: str, changes: dict) -> Link | None:
    """Change the editable fields in changes of a live link, the others kept, in one statement (no read first);
    None when there is no such link."""
    params = {"slug": slug, **{name: changes.get(name) for name in EDITABLE}}
    params.update({f"set_{name}": name in changes for name in EDITABLE})
    if params["lead_form"] is not None:
        params["lead_form"] = Jsonb(params["lead_form"])
    row = query(conn, "update_link", params).fetchone()
    return Link.from_row(row) if row else None


def delete_link(conn: psycopg.Connection, slug: str) -> Link | None:
    """Soft-delete a live link; None when there is none."""
    row = query(conn, "delete_link", {"slug": slug}).fetchone()
    return Link.from_row(row) if row else None


def list_links(
    conn: psycopg.Connection, *, limit: int, tag: str | None, text: str | None, after: tuple | None
) -> list[Link]:
    """A newest-first page of the account's live links after the cursor (created_at, id)."""
    after_created, after_id = after or (None, None)
    params = {
        "limit": limit,
        "tag": tag,
        "q": _like_pattern(text) if text else None,
        "after_created": after_created,
        "after_id": after_id,
    }
    return [Link.from_row(row) for row in query(conn, "list_links", params)]


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def find_for_redirect(db: Database, slug: str) -> tuple[Link | None, int]:
    """(the link with this slug in any account, its human clicks so far), through the redirect's narrow path."""
    row = db.unscoped_one("resolve_link", {"slug": slug})
    return (Link.from_row(row["link"]), row["clicks"]) if row else (None, 0)


# --- Idempotency-Key ---------------------------------------------------------------------------------------------
def request_hash(body: dict) -> bytes:
    """What identifies a request body for Idempotency-Key: SHA-256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).digest()


def claim_idempotency_key(conn: psycopg.Connection, key: str, body_hash: bytes) -> dict | None:
    """None when the key is new (now reserved), else what it answered: {"status", "body", "request_hash"}.

    A concurrent request with the same key waits on this insert's row lock, then sees the result."""
    params = {"key": key, "request_hash": body_hash}
    if query(conn, "claim_idempotency_key", params).fetchone() is not None:
        return None
    earlier = query(conn, "get_idempotency_key", params).fetchone()
    return {**earlier, "request_hash": bytes(earlier["request_hash"])}


def finish_idempotency_key(conn: psycopg.Connection, key: str, status: int, body: dict) -> None:
    """Store the response a claimed key answered with."""
    query(conn, "finish_idempotency_key", {"key": key, "status": status, "body": json.dumps(body)})


# --- the link cache ----------------------------------------------------------------------------------------------
class LinkCache:
    """Links in Redis by slug: filled by the redirect on a miss, written through after every committed change."""

    STORE_IF_NEWER = (Path(__file__).parent / "store_if_newer.lua").read_text()

    def __init__(self, redis: RedisClient, *, ttl: int, not_found_ttl: int) -> None:
        self.redis, self.ttl, self.not_found_ttl = redis, ttl, not_found_ttl
        self._store_if_newer = redis.batcher(self.STORE_IF_NEWER)  # concurrent write-throughs share a round trip
        self._lock = threading.Lock()
        self._stale: set[str] = set()

    def key(self, slug: str) -> str:
        """The cache key of a slug. Entries are JSON objects with named fields: a new field needs no new key."""
        return self.redis.key(f"link:v4:{slug}")

    def entry(self, link: Link | None) -> tuple[str, int]:
        """(value, ttl) of the entry for link, or for a slug PostgreSQL does not know (None)."""
        if link is None:
            return UNKNOWN, self.not_found_ttl
        ttl = self.ttl
        if link.expires_at is not None:
            ttl = max(1, min(ttl, int(link.expires_at.timestamp() - time.time()) + 1))
        return link.to_cache(), ttl

    def store(self, link: Link) -> None:
        """Write-through after a committed create, edit or delete: every worker's next redirect sees it."""
        value, ttl = self.entry(link)
        version = link.updated_at.timestamp()
        try:
            # Compare-and-set on the version: of two edits committed close together, the later one's entry
            # stays even when its write-through reaches Redis first.
            self.redis.call(lambda _: self._store_if_newer([self.key(link.slug)], [value, ttl, version]))
        except RedisDown:
            # Redis may come back holding the old entry: drop it as soon as Redis answers again.
            with self._lock:
                self._stale.add(link.slug)
            self.redis.on_recover(self._drop_stale)

    def _drop_stale(self) -> None:
        with self._lock:
            slugs_, self._stale = self._stale, set()
        if not slugs_:
            return
        try:
            self.redis.client.delete(*[self.key(s) for s in slugs_])
        except redis.RedisError:
            with self._lock:
                self._stale |= slugs_
            self.redis.on_recover(self._drop_stale)


def link_cache() -> LinkCache:
    """The request's app's link cache."""
    return current_app.extensions["chatlink.link_cache"]
