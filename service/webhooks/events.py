"""Every event payload the service sends, built in one place; queued in the transaction that caused the event."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import psycopg

from ..platform import logs
from ..platform.db import query

EVENTS = ("lead.created", "link.created")


def _event(event_type: str, data: dict, created_at: str | None = None) -> dict:
    event = {
        "id": str(uuid.uuid4()),
        "type": event_type,
        "created_at": created_at or datetime.now(UTC).isoformat(),
        "data": data,
    }
    request_id = logs.request_id.get()
    if request_id:  # the request that caused the event: its logs and the delivery's carry the same id
        event["request_id"] = request_id
    return event


def link_created(link: dict) -> dict:
    """link.created: the link as the API shows it."""
    return _event("link.created", link, link["created_at"])


def lead_created(lead_id: uuid.UUID, slug: str, click_id: str | None, values: dict, consent: bool) -> dict:
    """lead.created: the lead, its link's slug and the click that showed the form."""
    data = {"lead_id": str(lead_id), "link": slug, "click_id": click_id}
    data.update({field: values.get(field) or None for field in ("name", "phone", "email", "note")})
    data["consent"] = consent
    return _event("lead.created", data)


def queue_link_created(conn: psycopg.Connection, link: dict) -> None:
    """Queue link.created for the account's subscribed endpoints, in the transaction that created the link."""
    event = link_created(link)
    query(conn, "queue_link_created", {"event_id": event["id"], "payload": json.dumps(event)})
