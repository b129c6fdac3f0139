"""GET /<slug>'s per-address limits: counted inside resolve.lua (one round trip), in process memory without Redis."""

from __future__ import annotations

import time
from dataclasses import dataclass

from limits import parse_many
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from ..config import Settings
from ..platform.redis import RedisClient
from ..platform.secrets import VisitorKeys, keyed_hash


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """One client's counters for the resolve script: its requests, and its 404 answers (a slug scanner's sign)."""

    requests_key: str  # key prefixes: each limit's "amount/window" is appended
    not_found_key: str
    requests: str  # the limits, "amount window amount window …"
    not_found: str


class RedirectLimits:
    """Requests per client address, and 404 answers per address (once over that, everything is refused).

    Not flask-limiter: the redirect counts them in the same Redis script that resolves the link, so a redirect
    stays one round trip. The same fixed windows, and the same in-process fallback while Redis is down.
    """

    def __init__(self, settings: Settings, redis: RedisClient, visitor_keys: VisitorKeys) -> None:
        self.enabled = settings.rate_limits_enabled
        self.prefix = redis.key("limits:redirect:")  # followed by a keyed hash of a client address
        self.visitor_keys = visitor_keys
        self.requests = _script_form(settings.rate_limit_redirect)
        self.not_found = _script_form(settings.rate_limit_not_found)
        self.fallback = parse_many(settings.rate_limit_fallback)
        self.memory = FixedWindowRateLimiter(MemoryStorage())

    def client(self, environ: dict) -> ClientLimits | None:
        """The counters of the client that sent this request (None when rate limits are off)."""
        if not self.enabled:
            return None
        client = keyed_hash(self.visitor_keys.today(), environ.get("REMOTE_ADDR") or "unknown")
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
