"""Login sessions: opaque 256-bit tokens, only their SHA-256 in PostgreSQL, checked through a Redis cache,
idle and absolute timeouts on a clock the tests can move, and the CSRF token derived from each session."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from flask import Response, current_app

from ..clicks.pipeline import describe_agent
from ..config import Settings
from ..platform.db import Database, query
from ..platform.redis import RedisClient, RedisDown
from ..platform.secrets import service_secret

# last_seen_at is written at most this often per session, so a busy front end does not write on every call;
# the idle timeout is therefore exact to this much.
TOUCH_EVERY = timedelta(minutes=1)
# A cached session is re-read from PostgreSQL at least this often, which bounds how long a revocation made
# while Redis was unreachable can go unseen once it is back.
CACHE_SECONDS = 60
REVOKED = "revoked"
# Writes a cache entry unless the session was revoked meanwhile (the tombstone a revocation leaves).
_STORE_UNLESS_REVOKED = """
if redis.call('get', KEYS[1]) == ARGV[3] then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


def utcnow() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


def token_hash(token: str) -> bytes:
    """The stored form of a session (or invite) token: 256 random bits need no slow hash."""
    return hashlib.sha256(token.encode()).digest()


def agent_family(user_agent: str) -> str:
    """What a session list shows of a user agent: browser and OS family, never the full string."""
    browser, os_family, _ = describe_agent(user_agent[:512], False)
    return " on ".join(part for part in (browser, os_family) if part) or "unknown"


@dataclass(frozen=True)
class Session:
    """One live login session as the request check sees it."""

    id: uuid.UUID
    user_id: int
    account_id: int
    role: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    token_hash: bytes

    def to_cache(self) -> str:
        """The Redis entry (the token hash is its key, not its value)."""
        return json.dumps(
            {
                "id": str(self.id),
                "user_id": self.user_id,
                "account_id": self.account_id,
                "role": self.role,
                "created_at": self.created_at.isoformat(),
                "last_seen_at": self.last_seen_at.isoformat(),
                "expires_at": self.expires_at.isoformat(),
            }
        )

    @classmethod
    def from_cache(cls, raw: str, hashed: bytes) -> Session:
        """A session from its Redis entry."""
        entry = json.loads(raw)
        return cls(
            id=uuid.UUID(entry["id"]),
            user_id=entry["user_id"],
            account_id=entry["account_id"],
            role=entry["role"],
            created_at=datetime.fromisoformat(entry["created_at"]),
            last_seen_at=datetime.fromisoformat(entry["last_seen_at"]),
            expires_at=datetime.fromisoformat(entry["expires_at"]),
            token_hash=hashed,
        )


class Sessions:
    """Starts, checks and ends sessions; `clock` is what "now" means to them (tests move it)."""

    def __init__(self, db: Database, redis: RedisClient, settings: Settings) -> None:
        self.db, self.redis = db, redis
        self.idle = timedelta(minutes=settings.session_idle_minutes)
        self.lifetime = timedelta(hours=settings.session_max_hours)
        self.secure = settings.public_base_url.startswith("https://")
        # The __Host- prefix makes browsers refuse the cookie unless it is Secure, host-only and Path=/.
        self.cookie_name = "__Host-chatlink_session" if self.secure else "chatlink_session"
        self.clock: Callable[[], datetime] = utcnow
        self._store_script = redis.client.register_script(_STORE_UNLESS_REVOKED)
        self._csrf_key: bytes | None = None

    def now(self) -> datetime:
        """The current time as sessions see it."""
        return self.clock()

    # --- start and end --------------------------------------------------------------------------------------
    def start(self, conn, user_id: int, account_id: int, role: str, user_agent: str) -> tuple[str, Session]:
        """A new session (and a new token: never one the client brought) on conn, which acts for this person
        and account; returns the token, which only the cookie carries."""
        token = secrets.token_urlsafe(32)
        now = self.now()
        session = Session(uuid.uuid4(), user_id, account_id, role, now, now, now + self.lifetime, token_hash(token))
        params = {
            "id": session.id,
            "token_hash": session.token_hash,
            "user_agent": agent_family(user_agent),
            "now": now,
            "expires_at": session.expires_at,
        }
        query(conn, "insert_session", params)
        return token, session

    def forget(self, hashes: Iterable[bytes]) -> None:
        """Make revoked sessions fail at once on every worker: a tombstone replaces each cache entry (and is
        written once Redis answers again, when it does not now)."""
        keys = [self._key(h) for h in hashes]
        if not keys:
            return

        def bury(client) -> None:
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, REVOKED, ex=CACHE_SECONDS)
            pipe.execute()

        try:
            self.redis.call(bury)
        except RedisDown:
            self.redis.on_recover(lambda: self.redis.call(bury))

    # --- the check on each request --------------------------------------------------------------------------
    def check(self, token: str) -> Session | None:
        """The live session of a cookie's token, else None; Redis first, PostgreSQL when Redis misses or is
        down (PostgreSQL down raises, which answers 503)."""
        hashed = token_hash(token)
        key, cache_up = self._key(hashed), True
        try:
            raw = self.redis.call(lambda client: client.get(key))
        except RedisDown:
            raw, cache_up = None, False
        if raw == REVOKED:
            return None
        from_cache = raw is not None
        session = Session.from_cache(raw, hashed) if from_cache else self._load(hashed)
        now = self.now()
        if session is None or now >= session.expires_at or now - session.last_seen_at >= self.idle:
            return None
        if now - session.last_seen_at >= TOUCH_EVERY:
            with self.db.transaction(session.account_id, session.user_id) as conn:
                query(conn, "touch_session", {"id": session.id, "now": now})
            session, from_cache = replace(session, last_seen_at=now), False
        if cache_up and not from_cache:
            self._cache(session)
        return session

    def _load(self, hashed: bytes) -> Session | None:
        row = self.db.unscoped_one("find_session", {"token_hash": hashed})
        if row is None or row["revoked"] or row["role"] is None:  # revoked, or no longer a member
            return None
        return Session(**{k: v for k, v in row.items() if k != "revoked"}, token_hash=hashed)

    def _cache(self, session: Session) -> None:
        entry = [session.to_cache(), CACHE_SECONDS, REVOKED]
        with contextlib.suppress(RedisDown):  # the next check reads PostgreSQL
            self.redis.call(lambda _: self._store_script(keys=[self._key(session.token_hash)], args=entry))

    def _key(self, hashed: bytes) -> str:
        return self.redis.key("session:" + hashed.hex())

    # --- what the browser gets ----------------------------------------------------------------------------
    def csrf_token(self, session: Session) -> str:
        """The session's CSRF token: an HMAC of its token hash under a service secret, so it is stored nowhere
        and changes with every login."""
        if self._csrf_key is None:
            self._csrf_key = service_secret(self.db, "session-csrf")
        digest = hmac.new(self._csrf_key, session.token_hash, "sha256").digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def set_cookie(self, response: Response, token: str) -> None:
        """The session cookie: HttpOnly, SameSite=Lax, Path=/, Secure (and __Host-) when the service is https."""
        response.set_cookie(
            self.cookie_name,
            token,
            max_age=int(self.lifetime.total_seconds()),
            path="/",
            secure=self.secure,
            httponly=True,
            samesite="Lax",
        )

    def clear_cookie(self, response: Response) -> None:
        """Tell the browser to drop the cookie."""
        response.delete_cookie(self.cookie_name, path="/", secure=self.secure, httponly=True, samesite="Lax")


def sessions() -> Sessions:
    """The request's app's sessions."""
    return current_app.extensions["chatlink.sessions"]
