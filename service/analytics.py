"""Stats and exports: per-link series and breakdowns, account totals, raw clicks as JSON pages or streamed CSV."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from flask import Blueprint, Response, current_app, g, request
from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from .auth import require_api_key
from .clicks import COLUMNS
from .db import query
from .errors import ApiError
from .pagination import decode_cursor, encode_cursor, parse_uuid
from .schemas import load_or_422
from .slugs import normalize

bp = Blueprint("analytics", __name__, url_prefix="/api/v1")
DIMENSIONS = ("country", "referrer_host", "device_type", "browser", "os", "utm_source", "utm_medium", "utm_campaign")
MAX_DAYS = {"day": 731, "hour": 31}
# What the API shows of a click: every stored column but the internal ids and the visitor hash.
CLICK_FIELDS = tuple(c for c in COLUMNS if c not in {"link_id", "account_id", "visitor_id"})


class _RangeQuery(Schema):
    """from/to as ISO dates (midnight in tz) or datetimes; tz an IANA zone."""

    class Meta:
        unknown = RAISE

    start = fields.String(data_key="from", load_default=None)
    end = fields.String(data_key="to", load_default=None)
    tz = fields.String(load_default="UTC")
    default_days = 30
    # Roll-ups are per UTC hour: ranges read from them are widened to whole hours, and the answer says so.
    whole_hours = False

    @validates_schema
    def _parse_range(self, data: dict, **_) -> None:
        try:
            zone = ZoneInfo(data["tz"])
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError("Not an IANA time zone such as America/Sao_Paulo.", "tz") from None
        end = _instant(data["end"], zone, "to") if data["end"] else datetime.now(UTC)
        start = _instant(data["start"], zone, "from") if data["start"] else end - timedelta(days=self.default_days)
        if self.whole_hours:
            start = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            end_floor = end.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
            end = end_floor if end_floor == end else end_floor + timedelta(hours=1)
        if start >= end:
            raise ValidationError("Must be before 'to'.", "from")
        data.update(zone=zone, start_at=start.astimezone(zone), end_at=end.astimezone(zone))
        self.check_span(data)

    def check_span(self, data: dict) -> None:
        """Subclasses bound the range."""


def _instant(text: str, zone: ZoneInfo, field: str) -> datetime:
    try:
        if len(text) == 10:
            moment = datetime.combine(date.fromisoformat(text), datetime.min.time(), zone)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError("Use an ISO 8601 date (2026-11-01) or date-time.", field) from None
    if not 1970 <= moment.year <= 9000:
        raise ValidationError("Use a year between 1970 and 9000.", field)
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


class LinkStatsQuery(_RangeQuery):
    whole_hours = True
    interval = fields.String(load_default="day", validate=validate.OneOf(["day", "hour"]))
    include_bots = fields.Boolean(load_default=False)
    top = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100))

    def check_span(self, data: dict) -> None:
        if data["end_at"] - data["start_at"] > timedelta(days=MAX_DAYS[data["interval"]]):
            raise ValidationError(f"At most {MAX_DAYS[data['interval']]} days per {data['interval']} series.", "from")


class AccountStatsQuery(_RangeQuery):
    whole_hours = True
    top = fields.Integer(load_default=10, validate=validate.Range(min=1, max=100))


class ClicksQuery(_RangeQuery):
    cursor = fields.String(load_default=None)
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


def _json(body: dict) -> Response:
    return current_app.response_class(json.dumps(body, ensure_ascii=False, default=str), mimetype="application/json")


def _link(conn, slug: str) -> dict:
    link = query(conn, "link_for_stats", {"slug": normalize(slug)}).fetchone()
    if link is None:
        raise ApiError(404, "link-not-found", "Link not found", f"No link '{normalize(slug)}' in this account.")
    return link


@bp.get("/links/<slug:slug>/stats")
@require_api_key
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
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        link = _link(conn, slug)
        params["link_id"] = link["id"]
        series = query(conn, "link_series", params).fetchall()
        groups = query(conn, "link_breakdowns", params).fetchall()
        leads = query(conn, "link_leads_count", params).fetchone()["leads"]
    with_bots = args["include_bots"]
    breakdowns: dict[str, list] = {name: [] for name in DIMENSIONS}
    for row in sorted(groups, key=lambda r: (-r["clicks"], r["value"] or "")):
        if len(breakdowns[row["dimension"]]) < args["top"]:
            breakdowns[row["dimension"]].append({"value": row["value"], "clicks": row["clicks"]})
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
    return _json(
        {
            "slug": link["slug"],
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
@require_api_key
def account_stats() -> Response:
    """The account's totals and top links in the range. 200; 401, 422."""
    args = load_or_422(AccountStatsQuery(), request.args.to_dict())
    params = {"start": args["start_at"], "end": args["end_at"], "limit": args["top"]}
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        totals = query(conn, "account_totals", params).fetchone()
        top = query(conn, "account_top_links", params).fetchall()
    return _json({"from": args["start_at"].isoformat(), "to": args["end_at"].isoformat(), **totals, "top_links": top})


def formula_safe(value: object) -> str:
    """A CSV cell spreadsheet programs will not evaluate: a leading = + - @ (or tab/CR) gets a quote first."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_rows(db, account_id: int, link_id: int, params: dict) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CLICK_FIELDS)
    page = {**params, "link_id": link_id, "after_at": None, "after_id": None, "limit": 5000}
    while True:
        # A page per transaction: a long export holds no connection between pages.
        with db.transaction(account_id) as conn:
            rows = query(conn, "list_clicks", page).fetchall()
        for row in rows:
            writer.writerow([formula_safe(row[f].isoformat() if f == "clicked_at" else row[f]) for f in CLICK_FIELDS])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < page["limit"]:
            return
        page["after_at"], page["after_id"] = rows[-1]["clicked_at"], rows[-1]["click_id"]


@bp.get("/links/<slug:slug>/clicks")
@require_api_key
def link_clicks(slug: str) -> Response:
    """Raw clicks newest first (cursor pages), or the whole range as formula-safe CSV. 200; 401, 404, 422."""
    args = load_or_422(ClicksQuery(), request.args.to_dict())
    params = {"start": args["start_at"], "end": args["end_at"]}
    wants_csv = request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv"
    with current_app.extensions["db"].transaction(g.account_id) as conn:
        link = _link(conn, slug)
        if not wants_csv:
            after_at, after_id = decode_cursor(args["cursor"], parse_uuid) if args["cursor"] else (None, None)
            rows = query(
                conn,
                "list_clicks",
                {
                    **params,
                    "link_id": link["id"],
                    "after_at": after_at,
                    "after_id": after_id,
                    "limit": args["limit"] + 1,
                },
            ).fetchall()
    if wants_csv:
        filename = f"{link['slug']}-clicks.csv"
        rows = _csv_rows(current_app.extensions["db"], g.account_id, link["id"], params)
        return Response(
            rows, mimetype="text/csv", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
        )
    page = rows[: args["limit"]]
    items = [{f: (row[f].isoformat() if f == "clicked_at" else row[f]) for f in CLICK_FIELDS} for row in page]
    next_cursor = encode_cursor(page[-1]["clicked_at"], page[-1]["click_id"]) if len(rows) > args["limit"] else None
    return _json({"items": items, "next_cursor": next_cursor})
