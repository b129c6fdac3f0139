"""All lead SQL: capture through the public form's narrow path, list, erase, count."""

from __future__ import annotations

import uuid
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from ..clicks.pipeline import UTM_FIELDS
from ..platform.db import Database, query
from ..platform.metrics import Counter
from ..webhooks import events

# A lead as the API shows it (and the CSV export's columns).
LEAD_FIELDS = (
    "id",
    "created_at",
    "link",
    "name",
    "phone",
    "email",
    "note",
    "consent",
    "click_id",
    "referrer_host",
    "country",
    *UTM_FIELDS,
)


LEADS_CREATED = Counter("chatlink_leads_created_total", "Leads stored from public forms.")


def capture_lead(
    db: Database, link_id: int, slug: str, nonce: str, click_id: str | None, values: dict, consent: bool
) -> uuid.UUID | None:
    """Store a lead and queue lead.created in one transaction; None when this form token stored one before."""
    lead_id = uuid.uuid4()
    event = events.lead_created(lead_id, slug, click_id, values, consent)
    row = db.unscoped_one(
        "capture_lead",
        {
            "lead_id": lead_id,
            "link_id": link_id,
            "nonce": nonce,
            "click_id": click_id,
            **{field: values.get(field) or None for field in ("name", "phone", "email", "note")},
            "consent": consent,
            "event_id": event["id"],
            "payload": Jsonb(event),
        },
    )
    if row["lead_id"] is not None:
        LEADS_CREATED.inc()
    return row["lead_id"]


def list_leads(conn: psycopg.Connection, params: dict, after_at, after_id, limit: int) -> list[dict]:
    """A newest-first page of the account's leads in the range (optionally one link's), as the API shows them."""
    rows = query(conn, "list_leads", {**params, "after_at": after_at, "after_id": after_id, "limit": limit})
    return [to_api(row) for row in rows]


def to_api(row: dict) -> dict:
    """A lead row as the API shows it (ids as text; created_at kept a datetime for the cursor)."""
    lead = {field: row[field] for field in LEAD_FIELDS}
    lead["id"] = str(row["id"])
    lead["click_id"] = str(row["click_id"]) if row["click_id"] else None
    return lead


def erase_lead(conn: psycopg.Connection, lead_id: uuid.UUID) -> bool:
    """Erase a lead and its events; False when the account has no such lead."""
    return query(conn, "erase_lead", {"id": lead_id}).fetchone() is not None


def count_leads(conn: psycopg.Connection, link_id: int, start: datetime, end: datetime) -> int:
    """How many leads a link captured in the range."""
    return query(conn, "link_leads_count", {"link_id": link_id, "start": start, "end": end}).fetchone()["leads"]
