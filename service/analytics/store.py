"""All analytics SQL: a link's series and breakdowns, account totals and top links, raw clicks (pages, CSV)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta

import psycopg

from ..platform.db import copy_out, query

DIMENSIONS = ("country", "referrer_host", "device_type", "browser", "os", "utm_source", "utm_medium", "utm_campaign")


def by_utc_periods(start: datetime, end: datetime) -> dict:
    """[start, end) cut so that every count is exact and as few roll-up rows as possible are read: the whole UTC
    months inside it (first_month ≤ month < end_month: monthly roll-ups), the whole UTC days around them
    (first_day ≤ day < first_month and end_month ≤ day < end_day: daily roll-ups), and the partial days at either
    end (head, tail: read hour by hour or click by click)."""
    first_day = (start.astimezone(UTC) + timedelta(days=1) - timedelta(microseconds=1)).date()
    end_day = end.astimezone(UTC).date()
    if first_day >= end_day:  # no whole day inside: all of it is the head
        return {
            "first_day": end_day,
            "first_month": end_day,
            "end_month": end_day,
            "end_day": end_day,
            "head_start": start,
            "head_end": end,
            "tail_start": end,
            "tail_end": end,
        }
    first_month = first_day if first_day.day == 1 else (first_day.replace(day=28) + timedelta(days=4)).replace(day=1)
    end_month = end_day.replace(day=1)
    if first_month >= end_month:  # no whole month inside: the days from first_day to end_day are the head's
        first_month = end_month = end_day
    return {
        "first_day": first_day,
        "first_month": first_month,
        "end_month": end_month,
        "end_day": end_day,
        "head_start": start,
        "head_end": _midnight(first_day),
        "tail_start": _midnight(end_day),
        "tail_end": end,
    }


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, UTC)


def link_series(conn: psycopg.Connection, params: dict) -> list[dict]:
    """Zero-filled buckets of clicks, bot clicks and unique visitors (params: link_id, start, end, tz, interval)."""
    return query(conn, "link_series", params).fetchall()


def link_breakdowns(conn: psycopg.Connection, params: dict, top: int) -> dict[str, list[dict]]:
    """The top values of every dimension with their clicks, most first (params: link_id, start, end, include_bots)."""
    breakdowns: dict[str, list] = {name: [] for name in DIMENSIONS}
    rows = query(conn, "link_breakdowns", {**params, **by_utc_periods(params["start"], params["end"])}).fetchall()
    for row in sorted(rows, key=lambda r: (-r["clicks"], r["value"] or "")):
        if len(breakdowns[row["dimension"]]) < top:
            breakdowns[row["dimension"]].append({"value": row["value"], "clicks": row["clicks"]})
    return breakdowns


def account_totals(conn: psycopg.Connection, params: dict) -> dict:
    """The account's clicks, bot clicks and unique visitors in the range (params: start, end)."""
    return query(conn, "account_totals", {**params, **by_utc_periods(params["start"], params["end"])}).fetchone()


def account_top_links(conn: psycopg.Connection, params: dict) -> list[dict]:
    """The account's most clicked links in the range (params: start, end, limit)."""
    return query(conn, "account_top_links", {**params, **by_utc_periods(params["start"], params["end"])}).fetchall()


def _after(after_at, after_id) -> dict:
    """The keyset position to continue after; the first page starts after the newest possible one."""
    return (
        {"after_at": "infinity", "after_id": LAST_UUID}
        if after_at is None
        else {"after_at": after_at, "after_id": after_id}
    )


LAST_UUID = "ffffffff-ffff-ffff-ffff-ffffffffffff"


def list_clicks(conn: psycopg.Connection, params: dict, after_at, after_id, limit: int) -> list[dict]:
    """A newest-first page of a link's raw clicks in the range after the cursor."""
    return query(conn, "list_clicks", {**params, **_after(after_at, after_id), "limit": limit}).fetchall()


# An export runs as long as its client reads (a million clicks take seconds), not DB_TIMEOUT_MS; still bounded, so
# that a client that stops reading without going away cannot hold a pooled connection for ever.
EXPORT_STATEMENT_TIMEOUT = "30min"


def export_clicks_csv(conn: psycopg.Connection, params: dict) -> Iterator[bytes]:
    """A link's clicks in the range (params: link_id, start, end), newest first, as formula-safe CSV with its header
    line, written by PostgreSQL (COPY) and streamed in chunks: no row is held in Python."""
    conn.execute("select set_config('statement_timeout', %s, true)", [EXPORT_STATEMENT_TIMEOUT])
    yield from copy_out(conn, "export_clicks_csv", params)
