"""GET /<slug>: the hot path. Resolve the link, check the client's limits and queue the click in one Redis round
trip; a WSGI layer in front of Flask answers the 302 itself, and the Flask view renders every other outcome."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass

import psycopg
from flask import Blueprint, Response, current_app, render_template, request

from . import leads, slugs
from .cache import Cache, CachedLink, ClientLimits, RedisDown, Resolution
from .clicks import ClickCapture, ClickSink
from .db import UNAVAILABLE_ERRORS, Database
from .errors import RETRY_AFTER_UNAVAILABLE, problem, wants_json
from .limits import RedirectLimits
from .whatsapp import wa_me_url

log = logging.getLogger(__name__)
bp = Blueprint("redirect", __name__)
NO_STORE = {"Cache-Control": "private, no-store"}
OUTCOME = "chatlink.redirect_outcome"  # the environ key the fast path hands its outcome (or error) to Flask under


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a GET /<slug> answers: 302 (or the lead form, 200), 404, 410, 429 or 503."""

    status: int
    link: CachedLink | None = None
    click_id: str | None = None
    gone_reason: str | None = None
    retry_after: int = 0


NOT_FOUND = Outcome(404)
UNAVAILABLE = Outcome(503)


class Redirector:
    """Decides what GET /<slug> answers and records its click; needs no Flask request, so the fast path can use it."""

    def __init__(
        self, cache: Cache, db: Database, capture: ClickCapture, sink: ClickSink, limits: RedirectLimits
    ) -> None:
        self.cache, self.db, self.capture, self.sink, self.limits = cache, db, capture, sink, limits

    def resolve(self, slug: str, environ: dict) -> Outcome:
        # 1. Refuse what cannot be a slug before any I/O.
        slug = slugs.normalize(slug)
        if not slugs.could_exist(slug):
            return NOT_FOUND

        # 2. Capture the click (no I/O; no raw IP kept) unless this request is not one (HEAD, opted out).
        click = self.capture.capture(environ) if self.capture.should_record(environ) else None
        click_json = json.dumps(click, separators=(",", ":")) if click else None
        bot = bool(click and click["bot"])
        client = self.limits.client(environ)

        # 3. One Redis round trip checks the client's limits, resolves the link and queues the click.
        try:
            resolution = self.cache.resolve_and_record(slug, click_json, bot, limits=client)
        except RedisDown:
            return self._without_redis(slug, click, bot, client)

        # 4. On a miss, one PostgreSQL read; then the same script fills the cache and queues the click.
        if resolution.verdict in ("miss", "seed"):
            try:
                row = self.db.fetch_one("resolve_link", {"slug": slug})
            except (psycopg.Error, *UNAVAILABLE_ERRORS) as exc:  # down, or refusing (e.g. mid-failover)
                log.warning("redirect of an uncached link while PostgreSQL is down: %s", type(exc).__name__)
                return UNAVAILABLE
            link = CachedLink.from_row(row) if row else None
            try:
                resolution = self.cache.resolve_and_record(
                    slug,
                    click_json,
                    bot,
                    limits=client,
                    check_limits=False,
                    fill=link,
                    fill_unknown=link is None,
                    seed=row["clicks"] if row else None,
                )
            except RedisDown:
                resolution = Resolution(self._verdict_from_row(link, row, click, bot), link)
        return _outcome(resolution, click)

    def _without_redis(self, slug: str, click: dict | None, bot: bool, client: ClientLimits | None) -> Outcome:
        """Redis is down: the in-process limit, the link from PostgreSQL, the click straight into PostgreSQL."""
        wait = self.limits.allows_without_redis(client)
        if wait:
            return Outcome(429, retry_after=wait)
        try:
            row = self.db.fetch_one("resolve_link", {"slug": slug})
        except (psycopg.Error, *UNAVAILABLE_ERRORS) as exc:
            log.warning("redirect with Redis and PostgreSQL both down: %s", type(exc).__name__)
            return UNAVAILABLE
        link = CachedLink.from_row(row) if row else None
        return _outcome(Resolution(self._verdict_from_row(link, row, click, bot), link), click)

    def _verdict_from_row(self, link: CachedLink | None, row: dict | None, click: dict | None, bot: bool) -> str:
        """The script's decision made from the PostgreSQL row, with the click written straight to PostgreSQL."""
        if link is None:
            return "unknown"
        if link.gone_reason():
            return "gone"
        if click and not bot and link.max_clicks is not None and row["clicks"] >= link.max_clicks:
            return "limit"
        if click:
            self.sink.write(click, link.id, link.account_id)
        return "ok"


def _outcome(resolution: Resolution, click: dict | None) -> Outcome:
    link, verdict = resolution.link, resolution.verdict
    if verdict == "rate":
        return Outcome(429, retry_after=resolution.retry_after)
    if link is None or verdict == "unknown":
        return NOT_FOUND
    if verdict in ("gone", "limit"):
        return Outcome(410, link, gone_reason=link.gone_reason() or "out of clicks")
    return Outcome(200 if link.lead_form else 302, link, click["id"] if click else None)


class FastRedirects:
    """WSGI middleware: answers GET /<slug> 302s without building a Flask request and response.

    A cached redirect is most of the traffic, and Flask's request machinery costs more than the rest of it. Any
    other outcome (a page, a problem, a refusal) goes on to the Flask view with the outcome in the environ, so the
    link is resolved and its click recorded exactly once either way. Paths that cannot be a link (/livez, /api/…)
    are not touched.
    """

    PATH = re.compile(r"/([A-Za-z0-9_-]{1,64})")  # what SlugConverter routes to the view

    def __init__(self, app, redirector: Redirector) -> None:
        self.app, self.redirector = app, redirector

    def __call__(self, environ: dict, start_response):
        if environ["REQUEST_METHOD"] in ("GET", "HEAD"):
            match = self.PATH.fullmatch(environ.get("PATH_INFO", ""))
            if match and slugs.could_exist(match[1].lower()):
                try:
                    outcome = self.redirector.resolve(match[1], environ)
                except Exception as exc:  # a bug: let Flask's handlers log it and answer problem+json
                    environ[OUTCOME] = exc
                    return self.app(environ, start_response)
                if outcome.status == 302:
                    start_response("302 Found", [*_redirect_headers(outcome), ("Content-Length", "0")])
                    return [b""]
                environ[OUTCOME] = outcome
        return self.app(environ, start_response)


def _redirect_headers(outcome: Outcome) -> list[tuple[str, str]]:
    headers = [
        ("Location", wa_me_url(outcome.link.phone, outcome.link.message)),
        ("Cache-Control", NO_STORE["Cache-Control"]),
    ]
    return headers + _click_id(outcome)


@bp.route("/<slug>", methods=["GET", "HEAD"])
def follow(slug: str) -> Response:
    """302 to the link's wa.me URL; 404 unknown; 410 disabled, deleted, expired or out of clicks; 503 unknowable."""
    outcome = request.environ.get(OUTCOME) or current_app.extensions["redirector"].resolve(slug, request.environ)
    if isinstance(outcome, Exception):
        raise outcome
    if outcome.status == 302:  # only without FastRedirects in front
        return current_app.response_class(status=302, headers=_redirect_headers(outcome))
    if outcome.status == 200:
        token = leads.issue_token(slugs.normalize(slug), outcome.click_id)
        response = leads.render_form(outcome.link, slugs.normalize(slug), token)
        response.headers.extend(_click_id(outcome))
        return response
    if outcome.status == 410:
        return _gone(outcome.gone_reason)
    if outcome.status == 429:
        return problem(
            429,
            "rate-limited",
            "Too many requests",
            "Too many requests from this address; retry later.",
            headers={"Retry-After": str(outcome.retry_after), **NO_STORE},
        )
    if outcome.status == 503:
        return _unavailable()
    return _not_found()


def _click_id(outcome: Outcome) -> list[tuple[str, str]]:
    return [("X-Click-Id", outcome.click_id)] if outcome.click_id else []


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
