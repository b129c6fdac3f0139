"""ApiError and the handlers that turn every error into an RFC 9457 application/problem+json response."""

from __future__ import annotations

import logging

import redis
from flask import Flask, Response, json, request
from flask_limiter.errors import RateLimitExceeded
from werkzeug.exceptions import HTTPException

from .db import UNAVAILABLE_ERRORS
from .metrics import POSTGRES_ERRORS, REDIS_ERRORS

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
RETRY_AFTER_UNAVAILABLE = "5"


class ApiError(Exception):
    """An error with a status, a stable kebab-case type, a human title/detail, and any headers it must carry."""

    def __init__(
        self,
        status: int,
        type: str,
        title: str,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: object,
    ) -> None:
        super().__init__(detail or title)
        self.status, self.type, self.title, self.detail, self.extra = status, type, title, detail, extra
        self.headers = headers or {}

    def response(self) -> Response:
        """This error as a problem+json response."""
        return problem(self.status, self.type, self.title, self.detail, headers=self.headers, **self.extra)


def invalid(errors: dict[str, list[str]], detail: str = "Some fields are invalid.") -> ApiError:
    """A 422 naming each invalid field."""
    return ApiError(422, "invalid-data", "Invalid data", detail, errors=errors)


def not_found(thing: str, detail: str) -> ApiError:
    """A 404 of type `<thing>-not-found` ("link", "lead", "webhook")."""
    return ApiError(404, f"{thing}-not-found", f"{thing.capitalize()} not found", detail)


def unavailable(detail: str, headers: dict[str, str] | None = None) -> ApiError:
    """A 503 for a dependency that does not answer, with Retry-After."""
    return ApiError(
        503,
        "dependency-unavailable",
        "Service temporarily unavailable",
        detail,
        headers={"Retry-After": RETRY_AFTER_UNAVAILABLE, **(headers or {})},
    )


def problem(
    status: int, type: str, title: str, detail: str | None = None, headers: dict | None = None, **extra: object
) -> Response:
    """A problem+json response."""
    body = {"type": f"/problems/{type}", "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body.update(extra)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    response.headers.update(headers or {})
    return response


def wants_json() -> bool:
    """True when the client asked for JSON (or problem+json) over HTML."""
    best = request.accept_mimetypes.best_match(["text/html", "application/json", PROBLEM_JSON])
    return request.path.startswith("/api/") or best in {"application/json", PROBLEM_JSON}


def _http_type(status: int) -> str:
    return {
        400: "bad-request",
        401: "unauthorized",
        403: "forbidden",
        404: "not-found",
        405: "method-not-allowed",
        413: "body-too-large",
        415: "unsupported-media-type",
    }.get(status, f"http-{status}")


def init_app(app: Flask) -> None:
    """Register the handlers that make every failure a problem+json answer."""

    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return exc.response()

    @app.errorhandler(RateLimitExceeded)
    def _rate_limited(exc: RateLimitExceeded) -> Response:
        # flask-limiter adds Retry-After (and the X-RateLimit-* headers) in its after_request hook.
        return problem(429, "rate-limited", "Too many requests", f"Rate limit exceeded: {exc.description}.")

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        response = problem(exc.code or 500, _http_type(exc.code or 500), exc.name, exc.description)
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    def _database_down(exc: Exception) -> Response:
        log.warning("database unavailable: %s", type(exc).__name__)
        POSTGRES_ERRORS.labels("api").inc()
        return unavailable("The database is not answering; retry shortly.").response()

    for error_class in UNAVAILABLE_ERRORS:
        app.register_error_handler(error_class, _database_down)

    @app.errorhandler(redis.RedisError)
    def _cache_down(exc: Exception) -> Response:
        log.warning("redis unavailable: %s", type(exc).__name__)
        REDIS_ERRORS.labels("api").inc()
        return unavailable("The cache is not answering; retry shortly.").response()

    @app.after_request
    def _retry_after_only_when_refused(response: Response) -> Response:
        # Registered before the limiter, so this runs after it has added its headers: Retry-After belongs
        # to refusals (429, 503), not to every answer.
        if response.status_code not in (429, 503):
            response.headers.pop("Retry-After", None)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem(500, "internal-error", "Internal server error", "The error was logged.")
