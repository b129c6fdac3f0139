"""Chatlink: WhatsApp short links. create_app() wires settings → platform (pool, Redis) → domains → errors, limits."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask, request
from flask_cors import CORS
from werkzeug.middleware.proxy_fix import ProxyFix

from . import config, health, monitoring, openapi, ratelimit
from .accounts import routes as accounts
from .accounts.sessions import Sessions
from .analytics import routes as analytics
from .clicks.capture import ClickCapture
from .clicks.pipeline import STAGING_DDL, ClickSink, Spool
from .config import Settings
from .leads import routes as leads
from .links import routes as links
from .links.slugs import SlugConverter
from .links.store import LinkCache
from .platform import errors, identity, metrics, observe
from .platform.breaker import Breaker
from .platform.db import Database, app_conninfo
from .platform.http import MAX_BODY_BYTES
from .platform.redis import RedisClient
from .platform.secrets import SecretBox, Signer, VisitorKeys
from .redirect import routes as redirect
from .redirect.fastpath import FastRedirects
from .redirect.limits import RedirectLimits
from .redirect.resolver import LastResort, Redirector
from .webhooks import routes as webhooks


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app from settings (default: those installed in this process, else the environment)."""
    settings = settings or config.current()
    if not settings.database_url or not settings.redis_url:
        raise RuntimeError("DATABASE_URL and REDIS_URL must be set (make run finds or starts them)")
    app = Flask(__name__)
    app.url_map.converters["slug"] = SlugConverter
    app.config.update(SETTINGS=settings, MAX_CONTENT_LENGTH=MAX_BODY_BYTES, JSON_SORT_KEYS=False)
    logging.getLogger("service").setLevel(settings.log_level.upper())
    logging.getLogger("chatlink").setLevel(settings.log_level.upper())

    # The platform: one pool and one Redis client per process, opened lazily so the app starts without them.
    db = Database(
        app_conninfo(settings.database_url, settings.app_database_url),
        size=settings.db_pool_size,
        timeout_ms=settings.db_timeout_ms,
        setup_sql=STAGING_DDL,
        breaker=Breaker(
            "postgresql",
            failures=settings.breaker_failures,
            first_delay=settings.breaker_first_probe_ms / 1000,
            max_delay=settings.db_breaker_seconds,
        ),
    )
    db.open()
    redis = RedisClient.from_settings(settings, identity.namespace(settings.database_url))
    visitor_keys = VisitorKeys(db)

    # The domains' long-lived parts.
    link_cache = LinkCache(redis, ttl=settings.cache_ttl_seconds, not_found_ttl=settings.not_found_ttl_seconds)
    capture = ClickCapture(visitor_keys, settings.country_header, settings.honor_dnt)
    sink = ClickSink(db, Spool(Path(settings.spool_dir)))
    redirector = Redirector(
        redis,
        link_cache,
        db,
        capture,
        sink,
        RedirectLimits(settings, redis, visitor_keys),
        LastResort(settings.last_resort_links, settings.last_resort_ttl_seconds),
    )
    app.extensions.update(
        {
            "chatlink.db": db,
            "chatlink.redis": redis,
            "chatlink.visitor_keys": visitor_keys,
            "chatlink.form_tokens": Signer(db, "form-tokens", salt="lead-form"),
            "chatlink.link_cache": link_cache,
            "chatlink.click_capture": capture,
            "chatlink.click_sink": sink,
            "chatlink.redirector": redirector,
            "chatlink.secret_box": SecretBox(settings.secrets_key),
            "chatlink.sessions": Sessions(db, redis, settings),
        }
    )

    for blueprint in (
        health.bp,
        monitoring.bp,
        accounts.bp,
        accounts.pages,
        links.bp,
        analytics.bp,
        leads.api,
        webhooks.bp,
        leads.bp,
    ):
        app.register_blueprint(blueprint)
    openapi.init_app(app)
    app.register_blueprint(redirect.bp)  # last: /<slug> must not shadow the fixed paths
    observe.init_app(app)  # before the limiter, so that a refused request is counted under its route too
    errors.init_app(app)
    ratelimit.init_app(app, settings, redis)
    metrics.sampler.add("pool", metrics.pool_probe(db.pool))
    metrics.sampler.add("redis-breaker", redis.sample_breaker)
    if settings.prometheus_multiproc_dir:  # under gunicorn: every worker publishes its gauges each second
        metrics.sampler.start()
    init_cors(app, settings)

    app.wsgi_app = FastRedirects(app.wsgi_app, redirector)
    if settings.trusted_proxies:  # outermost, so that everything inside sees the client's address
        app.wsgi_app = ProxyFix(
            app.wsgi_app,
            x_for=settings.trusted_proxies,
            x_proto=settings.trusted_proxies,
            x_host=0,
            x_port=0,
            x_prefix=0,
        )
    # Outermost: the fast path's 302s get a request id, metrics and an access-log line too.
    app.wsgi_app = observe.Observed(
        app.wsgi_app, trust_request_id=settings.trusted_proxies > 0, write_access_log=settings.access_log
    )
    return app


def init_cors(app: Flask, settings: Settings) -> None:
    """CORS for the API only, for the exact origins of CORS_ORIGINS (none by default): the origin echoed, never
    `*`, credentials allowed, preflights cached; the redirect and the lead form get no CORS headers."""
    CORS(
        app,
        resources={r"/api/v1/*": {"origins": settings.cors_origin_list}},
        supports_credentials=True,
        max_age=settings.cors_max_age_seconds,
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-CSRF-Token"],
        expose_headers=["Location", "Retry-After", "Idempotency-Key", "Idempotent-Replayed"],
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
        vary_header=True,
    )

    @app.after_request
    def _vary_on_origin(response):
        # Answers differ by Origin (CORS headers or none, CSRF refusals): caches must key on it, also for the
        # origins flask-cors leaves unanswered.
        if request.path.startswith("/api/v1/"):
            response.vary.add("Origin")
        return response


def close_app(app: Flask) -> None:
    """Close what create_app opened: the pool and the Redis connections."""
    app.extensions["chatlink.db"].close()
    app.extensions["chatlink.redis"].close()
