"""FastRedirects: a WSGI layer in front of Flask that answers GET /<slug> 302s without a Flask request."""

from __future__ import annotations

import re

from ..links import slugs
from ..platform.observe import ROUTE, ROUTE_GROUP
from .resolver import Outcome, Redirector

OUTCOME = "chatlink.redirect_outcome"  # the environ key the fast path hands its outcome (or error) to Flask under
NO_STORE = {"Cache-Control": "private, no-store"}  # a redirect depends on state and is counted: never cached


class FastRedirects:
    """A cached redirect is most of the traffic, and Flask's request machinery costs more than the rest of it. Any
    other outcome (a page, a problem, a refusal) goes on to the Flask view with the outcome in the environ, so the
    link is resolved and its click recorded exactly once either way. Paths that cannot be a link (/livez, /api/…)
    are not touched."""

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
                    environ[ROUTE_GROUP], environ[ROUTE] = "redirect", "/<slug>"
                    start_response("302 Found", [*redirect_headers(outcome), ("Content-Length", "0")])
                    return [b""]
                environ[OUTCOME] = outcome
        return self.app(environ, start_response)


def redirect_headers(outcome: Outcome) -> list[tuple[str, str]]:
    """Location (rebuilt from the stored digits and message), no caching, and the click id when one was recorded."""
    return [("Location", outcome.link.target_url), *NO_STORE.items(), *click_id_header(outcome)]


def click_id_header(outcome: Outcome) -> list[tuple[str, str]]:
    """X-Click-Id, when the request was recorded as a click."""
    return [("X-Click-Id", outcome.click_id)] if outcome.click_id else []
