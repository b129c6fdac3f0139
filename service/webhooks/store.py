"""All SQL of the webhooks API: endpoints, their delivery log, and the account's WhatsApp Business settings."""

from __future__ import annotations

import uuid

import psycopg

from ..platform.db import query


def insert_webhook(conn: psycopg.Connection, url: str, events: list[str], secret: str) -> dict:
    """Register an endpoint for the transaction's account."""
    return query(conn, "insert_webhook", {"url": url, "events": events, "secret": secret}).fetchone()


def list_webhooks(conn: psycopg.Connection) -> list[dict]:
    """The account's endpoints, newest first (without secrets)."""
    return query(conn, "list_webhooks").fetchall()


def count_webhooks(conn: psycopg.Connection) -> int:
    """How many endpoints the transaction's account has."""
    return query(conn, "count_webhooks").fetchone()["n"]


def webhook_exists(conn: psycopg.Connection, webhook_id: uuid.UUID) -> bool:
    """True when the account has this endpoint."""
    return query(conn, "get_webhook", {"id": webhook_id}).fetchone() is not None


def delete_webhook(conn: psycopg.Connection, webhook_id: uuid.UUID) -> bool:
    """Remove an endpoint and its pending deliveries; False when the account has no such endpoint."""
    return query(conn, "delete_webhook", {"id": webhook_id}).fetchone() is not None


def list_deliveries(conn: psycopg.Connection, webhook_id: uuid.UUID) -> list[dict]:
    """An endpoint's last 100 deliveries, newest first, each with its attempts."""
    return query(conn, "list_deliveries", {"webhook_id": webhook_id}).fetchall()


def upsert_whatsapp(conn: psycopg.Connection, settings: dict) -> dict:
    """Store the account's WhatsApp Business settings; returns them without the access token."""
    return query(conn, "upsert_whatsapp", settings).fetchone()


def get_whatsapp(conn: psycopg.Connection) -> dict | None:
    """The account's WhatsApp Business settings without the access token."""
    return query(conn, "get_whatsapp").fetchone()


def delete_whatsapp(conn: psycopg.Connection) -> None:
    """Forget the account's WhatsApp Business settings."""
    query(conn, "delete_whatsapp")
