"""Opaque keyset cursors: (timestamp, id) of the last row of a page, for newest-first lists."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TypeVar

from .errors import invalid

K = TypeVar("K")
BIGINT_MAX = 2**63 - 1


def encode_cursor(at: datetime, key: object) -> str:
    """The cursor that continues after a row created at `at` with id `key`."""
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{key}".encode()).decode()


def decode_cursor(cursor: str, parse_key: Callable[[str], K]) -> tuple[datetime, K]:
    """(timestamp, id) of a cursor this API issued; a 422 naming `cursor` for anything else."""
    try:
        at, _, key = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(at), parse_key(key)
    except (ValueError, binascii.Error, UnicodeDecodeError, OverflowError):
        raise invalid({"cursor": ["Not a cursor this API returned."]}) from None


def bigint(text: str) -> int:
    """A PostgreSQL bigint, or ValueError."""
    value = int(text)
    if not 0 < value <= BIGINT_MAX:
        raise ValueError("out of range")
    return value


parse_uuid = uuid.UUID
