"""Named random secrets every worker shares through PostgreSQL (the daily visitor key, the form-token signer), and
the SecretBox that encrypts tenants' secrets at rest with SECRETS_KEY."""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from datetime import UTC, date, datetime

import psycopg
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app
from itsdangerous import URLSafeTimedSerializer

from .db import UNAVAILABLE_ERRORS, Database

log = logging.getLogger(__name__)


def service_secret(db: Database, name: str) -> bytes:
    """The secret called name, created on first use (SECURITY DEFINER narrow path)."""
    return bytes(db.unscoped_one("service_secret", {"name": name})["secret"])


def keyed_hash(key: bytes, value: str) -> str:
    """A keyed hash (HMAC-SHA-256, 128 bits in hex) of value: what is kept instead of an address."""
    return hmac.new(key, value.encode(), "sha256").hexdigest()[:32]


class VisitorKeys:
    """Today's HMAC key for visitor ids and address-keyed counters, rotated each UTC day."""

    RETRY_SECONDS = 30

    def __init__(self, db: Database) -> None:
        self.db = db
        self._day: date | None = None
        self._key = secrets.token_bytes(32)
        self._retry_at = 0.0

    def today(self) -> bytes:
        """The key of the current UTC day (a process-local one while PostgreSQL is away)."""
        day = datetime.now(UTC).date()
        if day != self._day and time.monotonic() >= self._retry_at:
            try:
                self._key, self._day = service_secret(self.db, f"visitor:{day.isoformat()}"), day
            except (psycopg.Error, *UNAVAILABLE_ERRORS):
                # Keep counting with a process-local key (unique counts may over-count) and do not ask again
                # for a while: redirects must not wait on a database that is away.
                log.warning("visitor key unavailable; using a process-local key for now")
                self._retry_at = time.monotonic() + self.RETRY_SECONDS
        return self._key


class Signer:
    """Signs and checks tokens with a named service secret, fetched on first use so the app starts without
    PostgreSQL."""

    def __init__(self, db: Database, name: str, salt: str) -> None:
        self.db, self.name, self.salt = db, name, salt
        self._serializer: URLSafeTimedSerializer | None = None

    def _get(self) -> URLSafeTimedSerializer:
        if self._serializer is None:
            self._serializer = URLSafeTimedSerializer(service_secret(self.db, self.name), salt=self.salt)
        return self._serializer

    def dumps(self, obj: object) -> str:
        """A signed, timestamped token carrying obj."""
        return self._get().dumps(obj)

    def loads(self, token: str, **kwargs):
        """obj from a token this signer made; raises itsdangerous' BadSignature / SignatureExpired."""
        return self._get().loads(token, **kwargs)


def visitor_keys() -> VisitorKeys:
    """The request's app's visitor keys."""
    return current_app.extensions["chatlink.visitor_keys"]


class SecretsKeyMissing(Exception):
    """SECRETS_KEY is empty: a secret cannot be stored (or an encrypted one read)."""


class SecretBox:
    """Encrypts secrets at rest (Fernet): SECRETS_KEY holds comma-separated keys, the first encrypts, all decrypt.

    A stored value without the prefix is a row written before encryption: read as is, encrypted by
    `make rotate-secrets`."""

    PREFIX = "fernet:"

    def __init__(self, keys: str) -> None:
        parts = [key.strip() for key in keys.split(",") if key.strip()]
        self._fernet = MultiFernet([Fernet(key) for key in parts]) if parts else None

    def _keys(self) -> MultiFernet:
        if self._fernet is None:
            raise SecretsKeyMissing("SECRETS_KEY is not set")
        return self._fernet

    def seal(self, plain: str) -> str:
        """The stored form of plain: encrypted under the first key."""
        return self.PREFIX + self._keys().encrypt(plain.encode()).decode()

    def open(self, stored: str) -> str:
        """The plain text of a stored value (one still in plain text is returned as is)."""
        if not stored.startswith(self.PREFIX):
            return stored
        try:
            return self._keys().decrypt(stored.removeprefix(self.PREFIX).encode()).decode()
        except InvalidToken:
            raise SecretsKeyMissing("no key in SECRETS_KEY decrypts this secret") from None

    def reseal(self, stored: str) -> str:
        """stored encrypted under the first key (plain text rows encrypted, older keys' rows re-encrypted)."""
        if not stored.startswith(self.PREFIX):
            return self.seal(stored)
        try:
            return self.PREFIX + self._keys().rotate(stored.removeprefix(self.PREFIX).encode()).decode()
        except InvalidToken:
            raise SecretsKeyMissing("no key in SECRETS_KEY decrypts this secret") from None


def secret_box() -> SecretBox:
    """The request's app's secret box."""
    return current_app.extensions["chatlink.secret_box"]
