"""Rate limits of the API and the lead form (flask-limiter, in Redis, falling back to memory while Redis is down).
The redirect's own per-address limits live in redirect/limits.py, counted inside its Redis script."""

from __future__ import annotations

from flask import Flask, request
from flask_limiter import Limiter
from redis.backoff import NoBackoff
from redis.retry import Retry

from .accounts.passwords import normalize_email
from .accounts.sessions import sessions
from .auth import presented_key
from .config import Settings
from .platform.redis import RedisClient
from .platform.secrets import keyed_hash, visitor_keys


def _keyed(value: str) -> str:
    """Limit counters live in Redis under these names: a keyed hash, never the raw address or key."""
    return keyed_hash(visitor_keys().today(), value)


def client_ip() -> str:
    """The client address (ProxyFix has picked the X-Forwarded-For hop TRUSTED_PROXIES allows), hashed."""
    return "ip:" + _keyed(request.remote_addr or "unknown")


def api_key_or_ip() -> str:
    """A well-formed key counts against a hash of the whole key as authentication reads it (not of the raw
    header, whose spaces would give each spelling a fresh bucket; not of the public id alone, so a forged key
    with someone's public id cannot use up their limit), a session cookie against a hash of its token, anything
    else against the address."""
    header = request.headers.get("Authorization")
    key = presented_key(header)
    if key:
        return "key:" + _keyed(key)
    cookie = request.cookies.get(sessions().cookie_name)
    return "session:" + _keyed(cookie) if cookie and not header else client_ip()


def login_email_and_ip() -> str:
    """Failed log-ins count per email *and* address: guessing one person's password is slowed, while nobody
    elsewhere can lock that person out by failing on purpose."""
    body = request.get_json(silent=True)
    email = body.get("email") if isinstance(body, dict) else None
    return "login:" + _keyed(f"{normalize_email(email) if isinstance(email, str) else ''}|{client_ip()}")


def storage_uri(redis_url: str) -> str:
    """The limits library's name for the same Redis: it spells a unix socket redis+unix://."""
    return "redis+" + redis_url if redis_url.startswith("unix://") else redis_url


def init_app(app: Flask, settings: Settings, redis: RedisClient) -> None:
    """One limiter per app: Redis storage that fails fast and falls back to memory, limits per blueprint."""
    timeout = settings.redis_timeout_ms / 1000
    limiter = Limiter(
        key_func=client_ip,
        app=app,
        enabled=settings.rate_limits_enabled,
        strategy="fixed-window",
        storage_uri=storage_uri(redis.url),
        storage_options={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            # The storage's own prefix leads every key (flask-limiter's key_prefix only follows "LIMITER/").
            "key_prefix": redis.key("limits"),
        },
        in_memory_fallback_enabled=True,
        in_memory_fallback=[settings.rate_limit_fallback],
        headers_enabled=True,
        swallow_errors=True,
    )
    api_limit = limiter.shared_limit(settings.rate_limit_api, scope="api", key_func=api_key_or_ip)
    # Every call also counts against its address, so made-up keys (each its own bucket) are limited too.
    api_ip_limit = limiter.shared_limit(settings.rate_limit_api_per_ip, scope="api-ip")
    for name in ("accounts", "links", "analytics", "leads_api", "webhooks"):
        api_limit(app.blueprints[name])
        api_ip_limit(app.blueprints[name])
    create = "links.create_link"
    app.view_functions[create] = limiter.limit(
        settings.rate_limit_create,
        key_func=api_key_or_ip,
        scope="create",
        override_defaults=False,
    )(app.view_functions[create])
    # Log-in, sign-up and invites: per address, and failed log-ins per email and address (only 401s count).
    for view in ("accounts.login", "accounts.accept_invite", "accounts.signup"):
        app.view_functions[view] = limiter.limit(settings.rate_limit_login, scope="login-ip", override_defaults=False)(
            app.view_functions[view]
        )
    app.view_functions["accounts.login"] = limiter.limit(
        settings.rate_limit_login_account,
        key_func=login_email_and_ip,
        scope="login-account",
        deduct_when=lambda response: response.status_code == 401,
        override_defaults=False,
    )(app.view_functions["accounts.login"])
    limiter.limit(settings.rate_limit_lead)(app.blueprints["leads"])
    limiter.limit(settings.rate_limit_login)(app.blueprints["accounts_pages"])
    limiter.exempt(app.blueprints["health"])
    limiter.exempt(app.blueprints["metrics"])
    limiter.exempt(app.blueprints["redirect"])  # RedirectLimits counts those, in the redirect's own script
    # Not dead: the limits it decorated views with hold only a weak reference to it, and a disabled limiter
    # (RATE_LIMITS_ENABLED=0) does not register itself in app.extensions["limiter"]; this keeps it alive.
    app.extensions["chatlink.limiter"] = limiter
