"""All analytics SQL: a link's series and breakdowns, account totals and top links, raw clicks by keyset pages."""

from __future__ import annotations

import psycopg

from ..platform.db import query

DIMENSIONS = ("country", "referrer_host", "device_type", "browser", "os", "utm_source", "utm_medium", "utm_campaign")


def link_series(conn: psycopg.Connection, params: dict) -> list[dict]:
    """Zero-filled buckets of clicks, bot clicks and unique visitors (params: link_id, start, end, tz, interval)."""
    return query(conn, "link_series", params).fetchall()


def link_breakdowns(conn: psycopg.Connection, params: dict, top: int) -> dict[str, list[dict]]:
    """The top values of every dimension with their clicks, most first."""
    breakdowns: dict[str, list] = {name: [] for name in DIMENSIONS}
    rows = query(conn, "link_breakdowns", params).fetchall()
    for row in sorted(rows, key=lambda r: (-r["clicks"], r["value"] or "")):
        if len(breakdowns[row["dimension"]]) < top:
            breakdowns[row["dimension"]].append({"value": row["value"], "clicks": row["clicks"]})
    return breakdowns


def account_totals(conn: psycopg.Connection, params: dict) -> dict:
    """The account's clicks, bot clicks and unique visitors in the range."""
    return query(conn, "account_totals", params).fetchone()


def account_top_links(conn: psycopg.Connection, params: dict) -> list[dict]:
    """The account's most clicked links in the range."""
    return query(conn, "account_top_links", params).fetchall()


def list_clicks(conn: psycopg.Connection, params: dict, after_at, after_id, limit: int) -> list[dict]:
    """A newest-first page of a link's raw clicks in the range after the cursor."""
    return query(conn, "list_clicks", {**params, "after_at": after_at, "after_id": after_id, "limit": limit}).fetchall()
