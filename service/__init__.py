"""Chatlink: WhatsApp short links. create_app() wires settings → pool → cache → blueprints → limiter → errors."""

from __future__ import annotations

import logging
from pathlib import Path

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from . import background, clicks, errors, limits, webhooks
from .cache import Cache
from .clicks import STAGING_DDL
from .config import Settings, load_settings
from .db import Database, app_conninfo
from .jsonbody import MAX_BODY_BYTES
from .slugs import SlugConverter


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app from settings (default: the environment)."""
    settings = settings or load_settings()
    if not settings.database_url or not settings.redis_url:
        raise RuntimeError("DATABASE_URL and REDIS_URL must be set (make run finds or starts them)")
    app = Flask(__name__)
    app.url_map.converters["slug"] = SlugConverter
    app.config.update(
        SETTINGS=settings,
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        JSON_SORT_KEYS=False,
        APP_DATABASE_URL=app_conninfo(settings.database_url, settings.app_database_url),
    )
    logging.getLogger("service").setLevel(settings.log_level.upper())

    conninfo = app.config["APP_DATABASE_URL"]
    db = Database(conninfo, size=settings.db_pool_size, timeout_ms=settings.db_timeout_ms, setup_sql=STAGING_DDL)
    db.open()
    cache = Cache.from_settings(settings)
    # The drainer and deliverer run in the background process (service/background.py); the app holds them
    # too so that tests, and operators from a shell, can run one step at a time.
    drainer, deliverer = background.build(settings, cache, conninfo)
    app.extensions.update(
        db=db,
        cache=cache,
        drainer=drainer,
        deliverer=deliverer,
        click_sink=clicks.ClickSink(db, clicks.Spool(Path(settings.spool_dir))),
        click_capture=clicks.ClickCapture(clicks.VisitorKeys(db), settings.country_header, settings.honor_dnt),
    )

    from . import analytics, health, leads, links, redirect

    app.register_blueprint(health.bp)
    app.register_blueprint(links.bp)
    app.register_blueprint(analytics.bp)
    app.register_blueprint(leads.api)
    app.register_blueprint(webhooks.bp)
    app.register_blueprint(leads.bp)
    leads.init_app(app)
    app.register_blueprint(redirect.bp)  # last: /<slug> must not shadow the fixed paths
    errors.init_app(app)
    app.extensions["chatlink_limiter"] = limits.init_app(app, settings, settings.redis_url, cache.keys.limiter_prefix())
    app.extensions["redirector"] = redirect.Redirector(
        cache,
        db,
        app.extensions["click_capture"],
        app.extensions["click_sink"],
        limits.RedirectLimits(settings, cache.keys, app.extensions["click_capture"].visitor_keys),
    )
    app.wsgi_app = redirect.FastRedirects(app.wsgi_app, app.extensions["redirector"])
    if settings.trusted_proxies:  # outermost, so that everything inside sees the client's address
        app.wsgi_app = ProxyFix(
            app.wsgi_app,
            x_for=settings.trusted_proxies,
            x_proto=settings.trusted_proxies,
            x_host=0,
            x_port=0,
            x_prefix=0,
        )
    return app
