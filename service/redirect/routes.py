"""The GET /<slug> view: renders every outcome the fast path did not answer (pages, problems, refusals)."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, render_template, request

from ..leads import form
from ..links import slugs
from ..platform.errors import ApiError, problem, unavailable, wants_json
from .fastpath import NO_STORE, OUTCOME, click_id_header, redirect_headers
from .resolver import redirector

bp = Blueprint("redirect", __name__)


@bp.route("/<slug:slug>", methods=["GET", "HEAD"])
def follow(slug: str) -> Response:
    """302 to the link's wa.me URL; 404 unknown; 410 disabled, deleted, expired or out of clicks; 503 unknowable."""
    outcome = request.environ.get(OUTCOME) or redirector().resolve(slug, request.environ)
    if isinstance(outcome, Exception):
        raise outcome
    if outcome.status == 302:  # only without FastRedirects in front
        return current_app.response_class(status=302, headers=redirect_headers(outcome))
    if outcome.status == 200:
        slug = slugs.normalize(slug)
        response = form.render_form(outcome.link, slug, form.issue_token(slug, outcome.click_id))
        response.headers.extend(click_id_header(outcome))
        return response
    if outcome.status == 410:
        return _page(
            410,
            "link-gone",
            "Link no longer available",
            f"This link is {outcome.gone_reason} and no longer opens a chat.",
            "gone.html",
        )
    if outcome.status == 429:
        raise ApiError(
            429,
            "rate-limited",
            "Too many requests",
            "Too many requests from this address; retry later.",
            headers={"Retry-After": str(outcome.retry_after), **NO_STORE},
        )
    if outcome.status == 503:
        raise unavailable("This link cannot be resolved right now; retry shortly.", headers=NO_STORE)
    return _page(404, "link-not-found", "Link not found", "No link has this address.", "not_found.html")


def _page(status: int, type_: str, title: str, detail: str, template: str) -> Response:
    """problem+json for clients that ask for JSON, a small HTML page for people; never cached."""
    if wants_json():
        response = problem(status, type_, title, detail)
    else:
        response = current_app.response_class(
            render_template(template, detail=detail), status=status, mimetype="text/html"
        )
    response.headers.update(NO_STORE)
    return response
