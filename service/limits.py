"""Rate limits: flask-limiter for the API and the lead form; the redirect's own per-address limits, counted in
its Redis script."""

from __future__ import annotations

import hashlib
import hmac
import time

from flask import Flask, current_app, request
from flask_limiter import Limiter
from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter
from redis.backoff import NoBackoff
from redis.retry import Retry

from .auth import public_id_of
from .cache import ClientLimits, Keys
from .clicks import VisitorKeys
from .config import Settings


def keyed(secret: bytes, value: str) -> str:
    """Limit counters live in Redis under these names: a keyed hash, never the raw address or key."""
    return hmac.new(secret, value.encode(), hashlib.sha256).hexdigest()[:32]


def _keyed(value: str) -> str:
    return keyed(current_app.extensions["click_capture"].visitor_keys.today(), value)


def client_ip() -> str:
    """The client address (ProxyFix has picked the X-Forwarded-For hop TRUSTED_PROXIES allows), hashed."""
    return "ip:" + _keyed(request.remote_addr or "unknown")


def api_key_or_ip() -> str:
    """A well-formed key counts against a hash of the whole key — so a forged key with someone's public id
    cannot use up their limit — and anything else against the address."""
    header = request.headers.get("Authorization")
    return "key:" + _keyed(header) if public_id_of(header) else client_ip()


def storage_uri(redis_url: str) -> str:
    """The limits library's name for the same Redis: it spells a unix socket redis+unix://."""
    return "redis+" + redis_url if redis_url.startswith("unix://") else redis_url


def init_app(app: Flask, settings: Settings, redis_url: str, key_prefix: str) -> Limiter:
    """One limiter per app: Redis storage that fails fast and falls back to memory, limits per blueprint."""
    timeout = settings.redis_timeout_ms / 1000
    limiter = Limiter(
        key_func=client_ip,
        app=app,
        enabled=settings.rate_limits_enabled,
        strategy="fixed-window",
        storage_uri=storage_uri(redis_url),
        storage_options={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
        },
        in_memory_fallback_enabled=True,
        in_memory_fallback=[settings.rate_limit_fallback],
        key_prefix=key_prefix,
        headers_enabled=True,
        swallow_errors=True,
    )
    api_limit = limiter.shared_limit(settings.rate_limit_api, scope="api", key_func=api_key_or_ip)
    # Every call also counts against its address, so made-up keys (each its own bucket) are limited too.
    api_ip_limit = limiter.shared_limit(settings.rate_limit_api_per_ip, scope="api-ip")
    for name in ("links", "analytics", "leads_api", "webhooks"):
        api_limit(app.blueprints[name])
        api_ip_limit(app.blueprints[name])
    create = "links.create_link"
    app.view_functions[create] = limiter.limit(
        settings.rate_limit_create,
        key_func=api_key_or_ip,
        scope="create",
        override_defaults=False,
    )(app.view_functions[create])
    limiter.limit(settings.rate_limit_lead)(app.blueprints["leads"])
    limiter.exempt(app.blueprints["health"])
    limiter.exempt(app.blueprints["redirect"])  # RedirectLimits counts those, in the redirect's own script
    return limiter


class RedirectLimits:
    """GET /<slug>'s limits per client address: requests, and 404 answers (once over that, everything is refused).

    Not flask-limiter: the redirect counts them in the same Redis script that resolves the link, so a redirect
    stays one round trip. The same fixed windows, and the same in-process fallback while Redis is down.
    """

    def __init__(self, settings: Settings, keys: Keys, visitor_keys: VisitorKeys) -> None:
        self.enabled = settings.rate_limits_enabled
        self.prefix = keys.client_limits_prefix()
        self.visitor_keys = visitor_keys
        self.requests = _script_form(settings.rate_limit_redirect)
        self.not_found = _script_form(settings.rate_limit_not_found)
        self.fallback = parse_many(settings.rate_limit_fallback)
        self.memory = FixedWindowRateLimiter(MemoryStorage())

    def client(self, environ: dict) -> ClientLimits | None:
        """The counters of the client that sent this request (None when rate limits are off)."""
        if not self.enabled:
            return None
        client = keyed(self.visitor_keys.today(), environ.get("REMOTE_ADDR") or "unknown")
        return ClientLimits(f"{self.prefix}{client}:", f"{self.prefix}{client}:404:", self.requests, self.not_found)

    def allows_without_redis(self, client: ClientLimits | None) -> int:
        """0 when the in-process fallback limits let this request through, else the seconds to wait."""
        if client is None:
            return 0
        refused = [limit for limit in self.fallback if not self.memory.hit(limit, "redirect", client.requests_key)]
        if not refused:
            return 0
        resets = [self.memory.get_window_stats(limit, "redirect", client.requests_key).reset_time for limit in refused]
        return max(1, int(max(resets) - time.time()) + 1)


def _script_form(limits: str) -> str:
    """ "20/second;1200/minute" → "20 1 1200 60": every limit of the string, as the resolve script reads them."""
    return " ".join(f"{limit.amount} {limit.get_expiry()}" for limit in parse_many(limits))
