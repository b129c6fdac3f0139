"""Settings read once from the environment and validated; a bad value stops start-up naming the variable."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

import psycopg
from cryptography.fernet import Fernet
from flask import current_app
from limits import parse_many


class ConfigError(ValueError):
    """An environment variable holds a value the service cannot run with."""


def _int(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw and not re.match(rf"^({'|'.join(schemes)})://", raw):
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return raw

    return parse


def _rate(raw: str) -> str:
    parse_many(raw)  # raises ValueError on a malformed limit such as "ten per minute"
    return raw


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("must be one of 1/0, true/false, yes/no, on/off")


def _header_name(raw: str) -> str:
    if raw and not re.fullmatch(r"[A-Za-z0-9-]+", raw):
        raise ValueError("must be an HTTP header name such as CF-IPCountry")
    return raw


def _host(raw: str) -> str:
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        raise ValueError("must be an IP address such as 127.0.0.1, ::1 or 0.0.0.0") from None
    return raw


def _fernet_keys(raw: str) -> str:
    for key in (part.strip() for part in raw.split(",")):
        if key:
            try:
                Fernet(key)
            except ValueError:
                raise ValueError("must be comma-separated Fernet keys (urlsafe base64 of 32 bytes)") from None
    return raw


def _origins(raw: str) -> str:
    origins = [o.strip().lower() for o in raw.split(",") if o.strip()]
    for origin in origins:
        if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", origin):
            raise ValueError(f"{origin!r} is not an origin such as https://app.example.com (no path, no *)")
    return ",".join(origins)


def _text(raw: str) -> str:
    return raw


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return raw.lower()

    return parse


def _conninfo(raw: str) -> str:
    if raw:
        try:
            psycopg.conninfo.conninfo_to_dict(raw)
        except psycopg.Error as exc:
            raise ValueError(f"is not a PostgreSQL URL ({str(exc).splitlines()[0]})") from None
    return raw


def _networks(raw: str) -> str:
    """A comma-separated list of addresses or networks (CIDR), e.g. 127.0.0.0/8,::1."""
    for part in filter(None, (p.strip() for p in raw.split(","))):
        try:
            ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise ValueError(f"{part!r} is not an address or network such as 10.0.0.0/8") from None
    return raw


def env(default: str, parse: Callable[[str], object] = _text, doc: str = "", secret: bool = False):
    """Declare a setting: its default (as the environment would spell it), parser and README line; a secret one is
    left out of the settings' repr (tracebacks and test reports print it)."""
    return field(
        default=None, repr=not secret, metadata={"default": default, "parse": parse, "doc": doc, "secret": secret}
    )


@dataclass(frozen=True)
class Settings:
    """Every knob of the service; the names are the environment variables, lowercased."""

    port: int = env("8000", _int(1, 65535), "Port gunicorn listens on.")
    database_url: str = env("", _conninfo, "PostgreSQL URL of the migrating/owner role; empty = local or embedded.")
    app_database_url: str = env(
        "",
        _conninfo,
        "URL the service runs with (no tables, no BYPASSRLS); empty = DATABASE_URL as user chatlink_app.",
    )
    redis_url: str = env("", _url("redis", "rediss", "unix"), "Redis URL; empty = local or embedded.")
    base_url: str = env("", _url("http", "https"), "Public origin for short URLs; empty = http://127.0.0.1:$PORT.")
    trusted_proxies: int = env("0", _int(0, 10), "How many proxies in front append to X-Forwarded-For.")
    key_prefix: str = env("chatlink:", _text, "Prefix of every Redis key the service writes.")
    redis_timeout_ms: int = env("100", _int(5, 5000), "Redis connect and read timeout.")
    redis_breaker_seconds: int = env("5", _int(1, 300), "Longest wait between probes while Redis stays down.")
    db_timeout_ms: int = env("2000", _int(50, 60000), "PostgreSQL connect and statement timeout.")
    db_pool_size: int = env("4", _int(1, 100), "Connections per worker process.")
    cache_ttl_seconds: int = env("3600", _int(1, 86400 * 30), "How long a resolved link stays cached.")
    not_found_ttl_seconds: int = env("30", _int(1, 3600), "How long an unknown slug is remembered as unknown.")
    rate_limit_api: str = env("600/minute", _rate, "Per API key, every API call.")
    rate_limit_api_per_ip: str = env("3000/minute", _rate, "Per client IP, every API call (whatever the key).")
    rate_limit_create: str = env("60/minute", _rate, "Per API key, POST /api/v1/links.")
    rate_limit_redirect: str = env("1200/minute", _rate, "Per client IP, GET /<slug>.")
    rate_limit_not_found: str = env("30/minute", _rate, "Per client IP, redirects answering 404.")
    rate_limit_fallback: str = env("1200/minute", _rate, "Per client IP, in-process, while Redis is down.")
    rate_limits_enabled: bool = env("1", _bool, "Turn rate limiting off (benchmarks) with 0.")
    country_header: str = env(
        "", _header_name, "Header a trusted CDN sets to the visitor's country (e.g. CF-IPCountry)."
    )
    honor_dnt: bool = env("0", _bool, "1: do not record clicks that send DNT: 1 or Sec-GPC: 1.")
    drain_clicks: bool = env("1", _bool, "Run the click drainer in the background process gunicorn starts.")
    drain_batch: int = env("2000", _int(1, 100000), "Clicks moved to PostgreSQL per batch.")
    drain_gather_ms: int = env("250", _int(0, 10000), "Wait between partial batches so clicks gather.")
    reclaim_idle_ms: int = env(
        "30000", _int(100, 3600000), "Idle time before another worker takes over unacked clicks."
    )
    spool_dir: str = env(".data/spool", _text, "Where clicks wait when Redis and PostgreSQL are both down.")
    rate_limit_lead: str = env("10/minute", _rate, "Per client IP, lead form submissions.")
    lead_min_fill_seconds: int = env("2", _int(0, 60), "Lead forms sent sooner than this after display are refused.")
    deliver_events: bool = env("1", _bool, "Run the webhook/WhatsApp outbox deliverer in the background process.")
    webhook_timeout_seconds: int = env("5", _int(1, 60), "Timeout of one webhook or WhatsApp API call.")
    webhook_max_attempts: int = env("20", _int(1, 100), "Attempts before a delivery is marked failed.")
    webhook_retry_base_seconds: int = env("10", _int(0, 3600), "First retry delay; doubles per attempt, capped at 1 h.")
    webhook_allow_private: bool = env("0", _bool, "1: allow webhook URLs on private/loopback addresses.")
    whatsapp_api_base: str = env(
        "https://graph.facebook.com/v21.0", _url("http", "https"), "WhatsApp Cloud API base URL."
    )
    web_concurrency: int = env("4", _int(1, 64), "gunicorn worker processes.")
    worker_threads: int = env("8", _int(1, 64), "Threads per gunicorn worker (gthread).")
    gunicorn_timeout: int = env("30", _int(1, 3600), "Seconds before gunicorn restarts a stuck worker.")
    access_log: bool = env("1", _bool, "Write gunicorn's access log (without client addresses).")
    log_level: str = env("info", _choice("debug", "info", "warning", "error", "critical"), "gunicorn/app log level.")
    # --- issue 13: environment profiles, JSON logs, metrics ---
    chatlink_env: str = env(
        "development",
        _choice("development", "test", "production"),
        "Profile: production refuses unsafe settings and requires the services (REQUIRE_SERVICES=1).",
    )
    log_format: str = env("json", _choice("json", "text"), "json: one JSON object per line; text: for a terminal.")
    metrics_allow: str = env(
        "127.0.0.0/8,::1", _networks, "Addresses/networks (CIDR, comma-separated) GET /metrics answers."
    )
    metrics_token: str = env(
        "", _text, "Bearer token that opens GET /metrics from any address; empty = none.", secret=True
    )
    prometheus_multiproc_dir: str = env(
        "", _text, "Where gunicorn's processes keep their metrics; empty = a fresh temporary folder per start."
    )
    # issue 10 part 2: breakers, the last-resort link cache, the bind address.
    bind: str = env("127.0.0.1", _host, "Address gunicorn listens on (with PORT); keep it behind deploy/nginx.")
    breaker_failures: int = env("3", _int(1, 1000), "Consecutive failures that open a breaker (Redis, PostgreSQL).")
    breaker_first_probe_ms: int = env("200", _int(10, 60000), "First wait before a breaker probes; doubles per miss.")
    db_breaker_seconds: int = env("5", _int(1, 300), "Longest wait between probes while PostgreSQL stays down.")
    last_resort_links: int = env("1000", _int(0, 1000000), "Links a worker keeps for Redis and PostgreSQL both down.")
    last_resort_ttl_seconds: int = env("60", _int(1, 3600), "How long a remembered link may be served with both down.")
    # Issue 11 (security hardening).
    secrets_key: str = env(
        "",
        _fernet_keys,
        "Comma-separated Fernet keys encrypting webhook secrets and WhatsApp tokens at rest; the first encrypts.",
        secret=True,
    )
    webhook_concurrency: int = env("8", _int(1, 64), "Webhook/WhatsApp deliveries in flight at once.")
    webhook_account_concurrency: int = env("2", _int(1, 64), "Deliveries one account may have in flight at once.")
    webhook_max_endpoints: int = env("10", _int(1, 1000), "Webhook endpoints one account may register.")
    webhook_breaker_failures: int = env("3", _int(1, 100), "Failed attempts in a row that open an endpoint's breaker.")
    webhook_breaker_seconds: int = env("60", _int(1, 3600), "How long an endpoint's open breaker skips it.")
    # issue 10 (part 1): health thresholds
    health_heartbeat_seconds: int = env(
        "10", _int(2, 3600), "/health warns when the background process's heartbeat (every 1 s) is older than this."
    )
    health_drain_lag_seconds: int = env(
        "60", _int(1, 86400), "/health warns when the oldest click not yet drained from Redis is older than this."
    )
    # issue 12: people, sessions, CORS and CSRF.
    session_idle_minutes: int = env("30", _int(1, 1440), "A login session unused this long ends (server-side).")
    session_max_hours: int = env("8", _int(1, 720), "A login session ends this long after login, used or not.")
    signup_enabled: bool = env("0", _bool, "1: anyone may create an account and its owner (POST /api/v1/signup).")
    cors_origins: str = env("", _origins, "Comma-separated exact origins of browser front ends that may call the API.")
    cors_max_age_seconds: int = env("600", _int(0, 86400), "How long browsers may cache a CORS preflight answer.")
    rate_limit_login: str = env("30/minute", _rate, "Per client IP, log-in, sign-up and invite attempts.")
    rate_limit_login_account: str = env(
        "5/minute;50/day", _rate, "Per email and client IP, failed log-ins (no lock-out others can trigger)."
    )
    require_services: bool = env(
        "0", _bool, "1: never start embedded PostgreSQL/Redis; fail when the local ones do not answer (CI)."
    )

    @property
    def cors_origin_list(self) -> list[str]:
        """CORS_ORIGINS as a list of exact origins."""
        return [o for o in self.cors_origins.split(",") if o]

    @property
    def public_base_url(self) -> str:
        """The origin short URLs are built on."""
        return (self.base_url or f"http://127.0.0.1:{self.port}").rstrip("/")

    @property
    def metrics_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """METRICS_ALLOW parsed."""
        return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in self.metrics_allow.split(",") if p.strip())


# What a profile changes of the defaults (the environment still wins); `make config` shows the source.
PROFILE_DEFAULTS: dict[str, dict[str, str]] = {"production": {"REQUIRE_SERVICES": "1"}}
SECRET_SETTINGS = tuple(f.name.upper() for f in fields(Settings) if f.metadata["secret"])
URL_SETTINGS = ("DATABASE_URL", "APP_DATABASE_URL", "REDIS_URL")


def _defaults(environ: Mapping[str, str]) -> dict[str, str]:
    profile = environ.get("CHATLINK_ENV", "development").strip().lower()
    return {f.name.upper(): f.metadata["default"] for f in fields(Settings)} | PROFILE_DEFAULTS.get(profile, {})


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Read and validate every setting; raise ConfigError naming the first bad variable (or profile rule)."""
    environ = os.environ if environ is None else environ
    defaults = _defaults(environ)
    values: dict[str, object] = {}
    for f in fields(Settings):
        name = f.name.upper()
        if f.name in overrides:
            values[f.name] = overrides[f.name]
            continue
        raw = environ.get(name, defaults[name]).strip()
        try:
            values[f.name] = f.metadata["parse"](raw)
        except ValueError as exc:
            shown = "(hidden)" if name in SECRET_SETTINGS else repr(mask_url(raw) if name in URL_SETTINGS else raw)
            raise ConfigError(f"invalid {name}={shown}: {exc}") from None
    settings = Settings(**values)
    problem = profile_problem(settings, set(environ) | {name.upper() for name in overrides})
    if problem:
        raise ConfigError(f"CHATLINK_ENV=production refuses to start: {problem}")
    return settings


def profile_problem(settings: Settings, given: set[str]) -> str | None:
    """What makes settings unfit for their profile (only production has rules), or None."""
    if settings.chatlink_env != "production":
        return None
    if not settings.database_url or not settings.redis_url:
        missing = "DATABASE_URL" if not settings.database_url else "REDIS_URL"
        return f"{missing} is empty, so a local or embedded server would be used; set it"
    if not settings.base_url.startswith("https://"):
        return f"BASE_URL={settings.base_url!r} must be an https:// origin"
    if "TRUSTED_PROXIES" not in given:
        return "TRUSTED_PROXIES is unset; say how many proxies are in front (0 when none)"
    if settings.webhook_allow_private:
        return "WEBHOOK_ALLOW_PRIVATE=1 lets webhooks reach private addresses"
    if any(network.prefixlen == 0 for network in settings.metrics_networks):
        return f"METRICS_ALLOW={settings.metrics_allow!r} opens /metrics to every address; use METRICS_TOKEN"
    return None


def mask_url(url: str) -> str:
    """url with its password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def describe(environ: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(variable, effective value with secrets masked, source: default / profile / environment) for `make config`."""
    environ = os.environ if environ is None else environ
    settings, defaults = load_settings(environ), _defaults(environ)
    base = {f.name.upper(): f.metadata["default"] for f in fields(Settings)}
    rows = []
    for f in fields(Settings):
        name, value = f.name.upper(), getattr(settings, f.name)
        shown = ("1" if value else "0") if isinstance(value, bool) else str(value)
        if name in SECRET_SETTINGS and shown:
            shown = "***"
        elif name in URL_SETTINGS:
            shown = mask_url(shown)
        source = "environment" if name in environ else ("profile" if defaults[name] != base[name] else "default")
        rows.append((name, shown, source))
    return rows


def child_environ(settings: Settings) -> dict[str, str]:
    """The environment a child process is started with: this one, with every setting spelled as its variable."""
    spelled = dict(os.environ)
    for f in fields(Settings):
        value = getattr(settings, f.name)
        spelled[f.name.upper()] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    return spelled


_installed: Settings | None = None


def install(settings: Settings) -> None:
    """Make settings the process's own (the gunicorn master, after resolving services, before its workers fork)."""
    global _installed
    _installed = settings


def current() -> Settings:
    """The settings installed in this process (inherited by forked workers), else those of the environment."""
    return _installed or load_settings()


def settings() -> Settings:
    """The request's app's settings."""
    return current_app.config["SETTINGS"]


def documented_settings() -> list[tuple[str, str, str]]:
    """(variable, default, description) for the README's configuration table."""
    return [(f.name.upper(), f.metadata["default"], f.metadata["doc"]) for f in fields(Settings)]
