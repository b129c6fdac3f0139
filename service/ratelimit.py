"""Rate limits: the API's, every limit of a call counted in one Redis script call (ApiLimits); log-in, sign-up and
the lead form's with flask-limiter; both in Redis, falling back to process memory while Redis is down.
The redirect's own per-address limits live in redirect/limits.py, counted inside its Redis script."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, g, request
from flask_limiter import Limiter
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter
from redis.backoff import NoBackoff
from redis.retry import Retry

from .accounts.passwords import normalize_email
from .accounts.sessions import sessions
from .auth import presented_key
from .config import Settings
from .platform.errors import ApiError
from .platform.redis import RedisClient, RedisDown
from .platform.secrets import keyed_hash, visitor_keys

API_BLUEPRINTS = ("accounts", "links", "analytics", "leads_api", "webhooks")
# The blueprints with flask-limiter limits (log-in, sign-up and invites; the lead form; the account pages).
LIMITER_BLUEPRINTS = ("accounts", "leads", "accounts_pages")
CREATE_LINK = "links.create_link"


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


@dataclass(frozen=True, slots=True)
class Count:
    """One limit's counter after this request: how many requests its window has seen, and when it ends."""

    limit: RateLimitItem
    count: int
    resets_in: int  # seconds

    @property
    def remaining(self) -> int:
        return max(0, self.limit.amount - self.count)


class ApiLimits:
    """The API's limits: per key (or session, or address) on every call, per address on every call, and per key on
    link creation. Not flask-limiter, which costs a Redis round trip per limit and two more for its headers (five
    for a create): here one script call counts the request against all of them and answers what the headers need.
    The same fixed windows, key names made of keyed hashes under KEY_PREFIX, and the same in-process fallback."""

    SCRIPT = (Path(__file__).parent / "ratelimit.lua").read_text()

    def __init__(self, settings: Settings, redis: RedisClient) -> None:
        self.enabled = settings.rate_limits_enabled
        self.redis = redis
        self.prefix = redis.key("limits:api:")  # + scope:who:amount/window, who being a keyed hash
        self.scopes = {
            "api": parse_many(settings.rate_limit_api),
            "api-ip": parse_many(settings.rate_limit_api_per_ip),
            "create": parse_many(settings.rate_limit_create),
        }
        self.fallback = parse_many(settings.rate_limit_fallback)
        self.memory = FixedWindowRateLimiter(MemoryStorage())
        # A ScriptBatcher: concurrent API calls of a worker share a round trip, on a connection of its own.
        self._script = redis.batcher(self.SCRIPT)

    def counters(self, endpoint: str | None) -> list[tuple[str, str]]:
        """(scope, who) of every counter this request counts against."""
        key_or_ip, ip = api_key_or_ip(), client_ip()
        counters = [("api", key_or_ip), ("api-ip", ip)]
        if endpoint == CREATE_LINK:
            counters.append(("create", key_or_ip))
        return counters

    def check(self, endpoint: str | None) -> None:
        """Count the request; raise a 429 problem (with Retry-After) when it is over any limit. The tightest
        limit is kept in g for the X-RateLimit-* headers."""
        if not self.enabled or request.method == "OPTIONS":  # a CORS preflight carries no credentials
            return
        counters = self.counters(endpoint)
        try:
            counts = self._count_in_redis(counters)
        except RedisDown:
            counts = self._count_in_memory(counters)
        over = [c for c in counts if c.count > c.limit.amount]
        if over:
            worst = max(over, key=lambda c: c.resets_in)
            raise ApiError(
                429,
                "rate-limited",
                "Too many requests",
                f"Rate limit exceeded: {worst.limit}.",
                headers={"Retry-After": str(max(1, worst.resets_in)), **_headers(worst)},
            )
        g.rate_limit = min(counts, key=lambda c: (c.remaining, -c.resets_in)) if counts else None

    def _count_in_redis(self, counters: list[tuple[str, str]]) -> list[Count]:
        keys, args, limits_ = [], [], []
        for scope, who in counters:
            for limit in self.scopes[scope]:
                window = limit.get_expiry()
                keys.append(f"{self.prefix}{scope}:{who}:{limit.amount}/{window}")
                args += [limit.amount, window]
                limits_.append(limit)
        replies = self.redis.call(lambda _: self._script(keys, args))
        return [Count(limit, int(n), int(ttl)) for limit, (n, ttl) in zip(limits_, replies, strict=True)]

    def _count_in_memory(self, counters: list[tuple[str, str]]) -> list[Count]:
        """While Redis is down: RATE_LIMIT_FALLBACK for each counter, in this process."""
        counts = []
        for scope, who in counters:
            for limit in self.fallback:
                allowed = self.memory.hit(limit, scope, who)
                stats = self.memory.get_window_stats(limit, scope, who)
                count = limit.amount - stats.remaining + (0 if allowed else 1)
                counts.append(Count(limit, count, max(1, int(stats.reset_time - time.time()) + 1)))
        return counts


def _headers(count: Count) -> dict[str, str]:
    return {
        "X-RateLimit-Limit": str(count.limit.amount),
        "X-RateLimit-Remaining": str(count.remaining),
        "X-RateLimit-Reset": str(int(time.time()) + count.resets_in),
    }


def _init_api_limits(app: Flask, settings: Settings, redis: RedisClient) -> None:
    api_limits = ApiLimits(settings, redis)
    app.extensions["chatlink.api_limits"] = api_limits

    def count_request() -> None:
        g.rate_limit = None
        api_limits.check(request.endpoint)

    def add_headers(response):
        counted = g.get("rate_limit")
        if counted is not None:
            response.headers.update(_headers(counted))
        return response

    for name in API_BLUEPRINTS:
        app.before_request_funcs.setdefault(name, []).append(count_request)
        app.after_request_funcs.setdefault(name, []).append(add_headers)


def init_app(app: Flask, settings: Settings, redis: RedisClient) -> None:
    """The API's limits (ApiLimits), and one flask-limiter per app for the rest: Redis storage that fails fast and
    falls back to memory."""
    _init_api_limits(app, settings, redis)
    timeout = settings.redis_timeout_ms / 1000
    hooks = (app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs)
    app_wide = [list(registry.get(None, ())) for registry in hooks]
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
    # flask-limiter hooks itself into every request of the app; only LIMITER_BLUEPRINTS carry its limits, so its
    # hooks move to them. Elsewhere they found nothing to count, at 7 % of an API call's worker CPU: ApiLimits
    # counts the API, RedirectLimits the redirect (in its own script), and health and metrics have no limits.
    for registry, earlier in zip(hooks, app_wide, strict=True):
        added = [hook for hook in registry.get(None, ()) if hook not in earlier]
        registry[None] = earlier
        for name in LIMITER_BLUEPRINTS:
            registry.setdefault(name, []).extend(added)
    # Not dead: the limits it decorated views with hold only a weak reference to it, and a disabled limiter
    # (RATE_LIMITS_ENABLED=0) does not register itself in app.extensions["limiter"]; this keeps it alive.
    app.extensions["chatlink.limiter"] = limiter
