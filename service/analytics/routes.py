"""The analytics API: link stats, account stats, a link's raw clicks (JSON pages or streamed CSV)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from flask import Blueprint, Response, g, request

from ..auth import require_auth_in_transaction
from ..clicks.pipeline import API_FIELDS
from ..leads.store import count_leads
from ..links import slugs
from ..links import store as links
from ..links.model import Link
from ..platform.db import database
from ..platform.errors import not_found
from ..platform.http import csv_download, decode_cursor, json_response, load_or_422, page_of, wants_csv
from . import store
from .queries import AccountStatsQuery, ClicksQuery, LinkStatsQuery

bp = Blueprint("analytics", __name__, url_prefix="/api/v1")


def _link(conn, slug: str) -> Link:
    link = links.get_link(conn, slugs.normalize(slug))
    if link is None:
        raise not_found("link", f"No link '{slugs.normalize(slug)}' in this account.")
    return link


@bp.get("/links/<slug:slug>/stats")
@require_auth_in_transaction
def link_stats(slug: str) -> Response:
    """Totals, a zero-filled series and top-N breakdowns for one link. 200; 401, 404, 422."""
    args = load_or_422(LinkStatsQuery(), request.args.to_dict())
    params = {
        "start": args["start_at"],
        "end": args["end_at"],
        "tz": args["tz"],
        "interval": args["interval"],
        "include_bots": args["include_bots"],
    }
    with database().transaction(g.account_id, read_only=True) as conn:
        link = _link(conn, slug)
        params["link_id"] = link.id
        series = store.link_series(conn, params)
        breakdowns = store.link_breakdowns(conn, params, args["top"])
        leads = count_leads(conn, link.id, args["start_at"], args["end_at"])
    with_bots = args["include_bots"]
    zone = args["zone"]
    points = [
        {
            "start": row["bucket"].astimezone(zone).isoformat(),
            "clicks": row["clicks"] + (row["bot_clicks"] if with_bots else 0),
            "bot_clicks": row["bot_clicks"],
            "unique_visitors": row["unique_visitors"],
        }
        for row in series
    ]
    human_clicks = sum(p["clicks"] - (p["bot_clicks"] if with_bots else 0) for p in points)
    return json_response(
        {
            "slug": link.slug,
            "from": args["start_at"].isoformat(),
            "to": args["end_at"].isoformat(),
            "interval": args["interval"],
            "tz": args["tz"],
            "include_bots": with_bots,
            "clicks": sum(p["clicks"] for p in points),
            "unique_visitors": sum(p["unique_visitors"] for p in points),
            "bot_clicks": sum(p["bot_clicks"] for p in points),
            "leads": leads,
            # Leads per human click (the form page is a click); null before the first click.
            "conversion_rate": round(leads / human_clicks, 4) if human_clicks else None,
            "series": points,
            "breakdowns": breakdowns,
        }
    )


@bp.get("/stats")
@require_auth_in_transaction
def account_stats() -> Response:
    """The account's totals and top links in the range. 200; 401, 422."""
    args = load_or_422(AccountStatsQuery(), request.args.to_dict())
    params = {"start": args["start_at"], "end": args["end_at"], "limit": args["top"]}
    with database().transaction(g.account_id, read_only=True) as conn:
        totals = store.account_totals(conn, params)
        top = store.account_top_links(conn, params)
    return json_response(
        {"from": args["start_at"].isoformat(), "to": args["end_at"].isoformat(), **totals, "top_links": top}
    )


@bp.get("/links/<slug:slug>/clicks")
@require_auth_in_transaction
def link_clicks(slug: str) -> Response:
    """Raw clicks newest first (cursor pages), or the whole range as formula-safe CSV. 200; 401, 404, 422."""
    args = load_or_422(ClicksQuery(), request.args.to_dict())
    db, account_id = database(), g.account_id
    with db.transaction(account_id, read_only=True) as conn:
        link = _link(conn, slug)
        params = {"start": args["start_at"], "end": args["end_at"], "link_id": link.id}
        if not wants_csv():
            after_at, after_id = decode_cursor(args["cursor"], uuid.UUID) if args["cursor"] else (None, None)
            rows = store.list_clicks(conn, params, after_at, after_id, args["limit"] + 1)
    if wants_csv():

        def export() -> Iterator[bytes]:
            # One transaction for the whole export, opened when the body is first read and closed (the COPY
            # cancelled) when the client goes away.
            with db.transaction(account_id, pipelined=False, read_only=True) as conn:
                yield from store.export_clicks_csv(conn, params)

        return csv_download(f"{link.slug}-clicks.csv", export())
    page_rows, next_cursor = page_of(rows, args["limit"], lambda click: (click["clicked_at"], click["click_id"]))
    return json_response({"items": [{f: c[f] for f in API_FIELDS} for c in page_rows], "next_cursor": next_cursor})
