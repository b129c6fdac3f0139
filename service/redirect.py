"""GET /<slug>: the hot path — resolve the link in as few round trips as possible and answer 302 to wa.me."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, render_template

from . import slugs
from .cache import CachedLink, RedisDown
from .db import UNAVAILABLE_ERRORS
from .errors import RETRY_AFTER_UNAVAILABLE, problem, wants_json
from .whatsapp import wa_me_url

log = logging.getLogger(__name__)
bp = Blueprint("redirect", __name__)
NO_STORE = {"Cache-Control": "private, no-store"}


@bp.route("/<slug>", methods=["GET", "HEAD"])
def follow(slug: str) -> Response:
    """302 to the link's wa.me URL; 404 unknown; 410 disabled, deleted or expired; 503 when nothing can tell."""
    # 1. Refuse what cannot be a slug before any I/O.
    slug = slugs.normalize(slug)
    if not slugs.could_exist(slug):
        return _not_found()

    # 2. One Redis round trip; on a miss (or with Redis away) one PostgreSQL read that refills the cache.
    cache = current_app.extensions["cache"]
    try:
        hit, link = cache.get_link(slug)
    except RedisDown:
        hit, link = False, None
    if not hit:
        try:
            row = current_app.extensions["db"].fetch_one("resolve_link", {"slug": slug})
        except UNAVAILABLE_ERRORS as exc:
            log.warning("redirect of an uncached link while PostgreSQL is down: %s", type(exc).__name__)
            return _unavailable()
        link = CachedLink.from_row(row) if row else None
        cache.put_link(slug, link)

    # 3. Answer: unknown, gone, or the redirect built from the stored phone and message.
    if link is None:
        return _not_found()
    reason = link.gone_reason()
    if reason:
        return _gone(reason)
    response = current_app.response_class(status=302, headers=NO_STORE)
    response.headers["Location"] = wa_me_url(link.phone, link.message)
    return response


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
