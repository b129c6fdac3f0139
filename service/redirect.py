"""GET /<slug>: the hot path — resolve the link and queue its click in one Redis round trip, answer 302 to wa.me."""

from __future__ import annotations

import json
import logging

import psycopg
from flask import Blueprint, Response, current_app, render_template, request

from . import leads, slugs
from .cache import CachedLink, RedisDown
from .db import UNAVAILABLE_ERRORS
from .errors import RETRY_AFTER_UNAVAILABLE, problem, wants_json
from .whatsapp import wa_me_url

log = logging.getLogger(__name__)
bp = Blueprint("redirect", __name__)
NO_STORE = {"Cache-Control": "private, no-store"}


@bp.route("/<slug>", methods=["GET", "HEAD"])
def follow(slug: str) -> Response:
    """302 to the link's wa.me URL; 404 unknown; 410 disabled, deleted, expired or out of clicks; 503 unknowable."""
    # 1. Refuse what cannot be a slug before any I/O.
    slug = slugs.normalize(slug)
    if not slugs.could_exist(slug):
        return _not_found()

    # 2. Capture the click (no I/O; no raw IP kept) unless this request is not one (HEAD, opted out).
    capture = current_app.extensions["click_capture"]
    click = capture.capture(request) if capture.should_record(request) else None
    click_json = json.dumps(click, separators=(",", ":")) if click else None
    bot = bool(click and click["bot"])

    # 3. One Redis round trip resolves the link and queues the click.
    cache = current_app.extensions["cache"]
    try:
        hit, link, verdict = cache.resolve_and_record(slug, click_json, bot)
    except RedisDown:
        hit, link, verdict = False, None, "miss"

    # 4. On a miss, one PostgreSQL read; then the same script fills the cache and queues the click.
    if not hit or verdict == "seed":
        try:
            row = current_app.extensions["db"].fetch_one("resolve_link", {"slug": slug})
        except (psycopg.Error, *UNAVAILABLE_ERRORS) as exc:  # down, or refusing (e.g. mid-failover)
            log.warning("redirect of an uncached link while PostgreSQL is down: %s", type(exc).__name__)
            return _unavailable()
        link = CachedLink.from_row(row) if row else None
        try:
            _, link, verdict = cache.resolve_and_record(
                slug, click_json, bot, fill=link, fill_none=link is None, seed=row["clicks"] if row else None
            )
        except RedisDown:
            verdict = _verdict_without_redis(link, row, click, bot)

    # 5. Answer: unknown, gone, or the redirect built from the stored phone and message.
    if link is None or verdict == "unknown":
        return _not_found()
    if verdict in ("gone", "limit"):
        return _gone(link.gone_reason() or "out of clicks")
    if link.lead_form:
        response = leads.render_form(link, slug, leads.issue_token(slug, click["id"] if click else None))
        if click:
            response.headers["X-Click-Id"] = click["id"]
        return response
    response = current_app.response_class(status=302, headers=NO_STORE)
    response.headers["Location"] = wa_me_url(link.phone, link.message)
    if click:
        response.headers["X-Click-Id"] = click["id"]
    return response


def _verdict_without_redis(link: CachedLink | None, row: dict | None, click: dict | None, bot: bool) -> str:
    """The script's decision made from the PostgreSQL row, with the click written straight to PostgreSQL."""
    if link is None:
        return "unknown"
    if link.gone_reason():
        return "gone"
    if click and not bot and link.max_clicks is not None and row["clicks"] >= link.max_clicks:
        return "limit"
    if click:
        current_app.extensions["click_sink"].write(click, link.id, link.account_id)
    return "ok"


def _not_found() -> Response:
    if wants_json():
        response = problem(404, "link-not-found", "Link not found", "No link has this address.")
    else:
        response = current_app.response_class(render_template("not_found.html"), status=404, mimetype="text/html")
    response.headers.update(NO_STORE)
    return response


def _gone(reason: str) -> Response:
    detail = f"This link is {reason} and no longer opens a chat."
    if wants_json():
        response = problem(410, "link-gone", "Link no longer available", detail)
    else:
        response = current_app.response_class(
            render_template("gone.html", detail=detail), status=410, mimetype="text/html"
        )
    response.headers.update(NO_STORE)
    return response


def _unavailable() -> Response:
    return problem(
        503,
        "dependency-unavailable",
        "Service temporarily unavailable",
        "This link cannot be resolved right now; retry shortly.",
        headers={"Retry-After": RETRY_AFTER_UNAVAILABLE, **NO_STORE},
    )
