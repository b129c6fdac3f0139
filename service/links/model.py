"""Link: one row of `links`, its API representation and its cache entry (named fields the redirect script reads)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from .target import wa_me_url

LEAD_FORM_FIELDS = ("name", "phone", "email", "note")  # what a link's lead form may ask for
_TIMES = ("expires_at", "created_at", "updated_at", "deleted_at")


def _time(value: Any) -> datetime | None:
    """A timestamp from a row (datetime), a jsonb row (ISO text) or a cache entry (epoch seconds)."""
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    return datetime.fromtimestamp(value, UTC)


@dataclass(frozen=True, slots=True)
class Link:
    """A short link: the columns of `links`, nothing derived."""

    id: int
    account_id: int
    slug: str
    phone: str
    message: str | None
    title: str | None
    tags: list[str]
    expires_at: datetime | None
    max_clicks: int | None
    disabled: bool
    lead_form: dict | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Link:
        """The link in a row of `links` (as selected, or as to_jsonb() spells it)."""
        return cls(**{f.name: _time(row.get(f.name)) if f.name in _TIMES else row.get(f.name) for f in fields(cls)})

    # --- state ---------------------------------------------------------------------------------------------------
    @property
    def closes_at(self) -> float | None:
        """When the link stops opening a chat (epoch s; 0 for a disabled or deleted link), None for never."""
        if self.deleted_at is not None or self.disabled:
            return 0.0
        return self.expires_at.timestamp() if self.expires_at else None

    def gone_reason(self, now: float | None = None) -> str | None:
        """Why the link no longer opens a chat (410), or None while it does."""
        if self.deleted_at is not None:
            return "deleted"
        if self.disabled:
            return "disabled"
        if self.expires_at is not None and self.expires_at.timestamp() <= (now or time.time()):
            return "expired"
        return None

    @property
    def target_url(self) -> str:
        """The wa.me URL, always rebuilt from the stored digits and message."""
        return wa_me_url(self.phone, self.message)

    # --- representations -------------------------------------------------------------------------------------
    def to_api(self, base_url: str) -> dict:
        """The API's representation."""
        return {
            "slug": self.slug,
            "short_url": f"{base_url}/{self.slug}",
            "target_url": self.target_url,
            "phone": self.phone,
            "message": self.message,
            "title": self.title,
            "tags": self.tags,
            "expires_at": _iso(self.expires_at),
            "max_clicks": self.max_clicks,
            "disabled": self.disabled,
            "lead_form": self.lead_form,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }

    def to_cache(self) -> str:
        """The cache entry: every column by name (times as epoch seconds) plus closes_at for the redirect script."""
        # Shallow: asdict() deep-copies every list and dict, and the entry is only serialised.
        entry = {name: getattr(self, name) for name in _FIELDS}
        for name in _TIMES:
            entry[name] = entry[name].timestamp() if entry[name] else None
        entry["closes_at"] = self.closes_at
        return json.dumps(entry, separators=(",", ":"))

    @classmethod
    def from_cache(cls, raw: str) -> Link:
        """The link in a cache entry (on every cached redirect: kept to a json.loads and the times)."""
        entry = json.loads(raw)
        del entry["closes_at"]
        for name in _TIMES:
            if entry[name] is not None:
                entry[name] = datetime.fromtimestamp(entry[name], UTC)
        return cls(**entry)


_FIELDS = tuple(f.name for f in fields(Link))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
