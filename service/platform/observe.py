"""The outermost WSGI layer: a request id for every request, its metrics and its access-log line — for the fast
path's 302s too, which never reach Flask."""

from __future__ import annotations

import logging
import re
import secrets
import time

from flask import Flask, request

from . import logs
from .metrics import HTTP_DURATION, HTTP_REQUESTS

REQUEST_ID = "chatlink.request_id"  # environ keys: the request id, the route group and rule, the account
ROUTE_GROUP = "chatlink.route_group"
ROUTE = "chatlink.route"
ACCOUNT_ID = "chatlink.account_id"
# What an X-Request-Id from a trusted proxy may be; anything else is replaced by a generated one.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

access_log = logging.getLogger("chatlink.access")


class Observed:
    """Request id (the trusted proxy's when sane, else generated) on the response and in every log line of the
    request; requests by route group and status, latency, and one access-log line without the client address."""

    def __init__(self, app, *, trust_request_id: bool, write_access_log: bool) -> None:
        self.app, self.trust_request_id, self.write_access_log = app, trust_request_id, write_access_log
        self._counters: dict[tuple[str, str], object] = {}
        self._histograms: dict[str, object] = {}

    def __call__(self, environ: dict, start_response):
        started = time.perf_counter()
        given = environ.get("HTTP_X_REQUEST_ID") if self.trust_request_id else None
        rid = given if given and SANE_REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
        environ[REQUEST_ID] = rid
        token = logs.request_id.set(rid)
        statuses: list[str] = []

        def start(status: str, headers: list, exc_info=None):
            statuses.append(status)
            headers.append(("X-Request-Id", rid))
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start)
        finally:
            self._record(environ, statuses[-1][:3] if statuses else "500", time.perf_counter() - started)
            logs.request_id.reset(token)

    def _record(self, environ: dict, status: str, seconds: float) -> None:
        group = environ.get(ROUTE_GROUP, "unmatched")
        counter = self._counters.get((group, status))
        if counter is None:  # labels() costs a lock and a lookup; a hot path pays it once per (group, status)
            counter = self._counters[(group, status)] = HTTP_REQUESTS.labels(group, status)
        histogram = self._histograms.get(group)
        if histogram is None:
            histogram = self._histograms[group] = HTTP_DURATION.labels(group)
        counter.inc()
        histogram.observe(seconds)
        if self.write_access_log:
            method, path = environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", "")
            access_log.info(
                "%s %s %s",
                method,
                path,
                status,
                extra={
                    "method": logs.escape(method),
                    "path": logs.escape(path),
                    "route": environ.get(ROUTE),
                    "status": int(status),
                    "duration_ms": round(seconds * 1000, 2),
                    "request_id": environ[REQUEST_ID],
                    "account_id": environ.get(ACCOUNT_ID),
                },
            )


def init_app(app: Flask) -> None:
    """Tell the WSGI layer which route (blueprint and rule) served a Flask request."""

    @app.before_request
    def _route() -> None:
        if request.url_rule is not None:
            request.environ[ROUTE_GROUP] = request.blueprint or "app"
            request.environ[ROUTE] = request.url_rule.rule
