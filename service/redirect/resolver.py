"""THE one home of the redirect's rules: what GET /<slug> answers for a request (Outcome), decided in one Redis
round trip by resolve.lua, or from PostgreSQL by the same rules when Redis cannot answer."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from flask import current_app

from ..clicks.capture import ClickCapture
from ..clicks.pipeline import ClickSink, stream_key
from ..links import slugs
from ..links.model import Link
from ..links.store import LinkCache, find_for_redirect
from ..platform.db import UNAVAILABLE_ERRORS, Database
from ..platform.metrics import POSTGRES_ERRORS, Counter
from ..platform.redis import RedisClient, RedisDown
from .limits import ClientLimits, RedirectLimits

log = logging.getLogger(__name__)
SCRIPT = (Path(__file__).parent / "resolve.lua").read_text()

REDIRECTS = Counter("chatlink_redirects_total", "GET /<slug> answers by outcome.", ["outcome"])
LINK_CACHE = Counter("chatlink_link_cache_requests_total", "Redirect look-ups in Redis by result.", ["result"])
# Bound once: labels() costs a lock and a dictionary look-up the redirect need not pay per request.
_BY_STATUS = {status: REDIRECTS.labels(name) for status, name in ((302, "redirect"), (200, "form"))} | {
    status: REDIRECTS.labels(str(status)) for status in (404, 410, 429, 503)
}
_CACHE_HIT, _CACHE_MISS = LINK_CACHE.labels("hit"), LINK_CACHE.labels("miss")
_POSTGRES_ERRORS = POSTGRES_ERRORS.labels("redirect")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a GET /<slug> answers: 302 (or the lead form, 200), 404, 410, 429 or 503."""

    status: int
    link: Link | None = None
    click_id: str | None = None
    gone_reason: str | None = None
    retry_after: int = 0


NOT_FOUND = Outcome(404)
UNAVAILABLE = Outcome(503)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The verdict on a link for one request: miss | unknown | rate | ok | ok-unrecorded (no store took the click) |
    gone | limit | seed, the link when known."""

    verdict: str
    link: Link | None = None
    retry_after: int = 0  # seconds, for "rate"


class LastResort:
    """Links this worker resolved recently (bounded, short TTL): served only while Redis AND PostgreSQL are both
    unavailable, so that a node whose dependencies are both down still redirects the links people are clicking."""

    def __init__(self, size: int, ttl_seconds: int) -> None:
        self.size, self.ttl = size, ttl_seconds
        self._links: dict[str, tuple[Link, float]] = {}  # insertion order = age: the oldest goes first

    def remember(self, slug: str, link: Link) -> None:
        """Note that slug resolved to link now (refreshed at most once per half TTL: one dict read per redirect)."""
        now = time.monotonic()
        known = self._links.get(slug)
        if not self.size or (known is not None and known[1] - now > self.ttl / 2):
            return
        self._links.pop(slug, None)
        self._links[slug] = (link, now + self.ttl)
        while len(self._links) > self.size:
            try:
                del self._links[next(iter(self._links))]
            except (KeyError, StopIteration, RuntimeError):  # another thread evicted it first
                break

    def get(self, slug: str) -> Link | None:
        """The link slug resolved to within the TTL, else None."""
        known = self._links.get(slug)
        return known[0] if known is not None and known[1] > time.monotonic() else None


class Redirector:
    """Decides what GET /<slug> answers and records its click; needs no Flask request, so the fast path can use it."""

    def __init__(
        self,
        redis: RedisClient,
        links: LinkCache,
        db: Database,
        capture: ClickCapture,
        sink: ClickSink,
        limits: RedirectLimits,
        last_resort: LastResort | None = None,
    ) -> None:
        self.redis, self.links, self.db, self.capture, self.sink, self.limits = redis, links, db, capture, sink, limits
        self.last_resort = last_resort or LastResort(0, 1)
        self._script = redis.batcher(SCRIPT)
        self._stream = stream_key(redis)
        # Followed by a link id: the human clicks a link has had (max_clicks is checked against it).
        self._click_counter_prefix = redis.key("clickcount:")

    def resolve(self, slug: str, environ: dict) -> Outcome:
        """The outcome of GET /<slug> for this request, with its click recorded when it is one (and counted)."""
        outcome = self._decide(slug, environ)
        _BY_STATUS[outcome.status].inc()
        return outcome

    def _decide(self, slug: str, environ: dict) -> Outcome:
        # 1. Refuse what cannot be a slug before any I/O.
        slug = slugs.normalize(slug)
        if not slugs.could_exist(slug):
            return NOT_FOUND

        # 2. Capture the click (no I/O; no raw IP kept) unless this request is not one (HEAD, opted out).
        click = self.capture.capture(environ) if self.capture.should_record(environ) else None
        click_json = json.dumps(click, separators=(",", ":")) if click else None
        bot = bool(click and click["bot"])
        client = self.limits.client(environ)

        # 3. One Redis round trip checks the client's limits, resolves the link and queues the click.
        try:
            resolution = self._run_script(slug, click_json, bot, client)
        except RedisDown:
            return self._without_redis(slug, click, bot, client)

        # 4. On a miss, one PostgreSQL read; then the same script fills the cache and queues the click.
        if resolution.verdict in ("miss", "seed"):
            _CACHE_MISS.inc()
            try:
                link, clicks = find_for_redirect(self.db, slug)
            except (psycopg.Error, *UNAVAILABLE_ERRORS) as exc:  # down, or refusing (e.g. mid-failover)
                _POSTGRES_ERRORS.inc()
                if resolution.verdict == "miss":
                    log.warning("redirect of an uncached link while PostgreSQL is down: %s", type(exc).__name__)
                    return UNAVAILABLE
                # Cached, but its click count was lost: redirect with the click queued uncounted (max_clicks is
                # enforced again once PostgreSQL answers; the README states the bound).
                try:
                    resolution = self._run_script(slug, click_json, bot, client, uncounted=True)
                except RedisDown:
                    return self._without_redis(slug, click, bot, None)
            else:
                try:
                    resolution = self._run_script(slug, click_json, bot, client, fill=(link, clicks))
                except RedisDown:
                    resolution = Resolution(self._verdict_from_postgres(link, clicks, click, bot), link)
        elif resolution.verdict != "rate":
            _CACHE_HIT.inc()
        return self._remembered(slug, _outcome(resolution, click))

    def _remembered(self, slug: str, outcome: Outcome) -> Outcome:
        """outcome, its link noted for the last-resort cache when it redirects."""
        if outcome.link is not None and outcome.status in (200, 302):
            self.last_resort.remember(slug, outcome.link)
        return outcome

    def _run_script(
        self,
        slug: str,
        click_json: str | None,
        bot: bool,
        client: ClientLimits | None,
        fill: tuple[Link | None, int] | None = None,
        uncounted: bool = False,
    ) -> Resolution:
        """resolve.lua for this request. The first call checks the client's limits; on a miss the second passes the
        link read from PostgreSQL (None: unknown there) and its click count as the fill, limits not checked again.
        uncounted: the count is unknowable (PostgreSQL down), queue the click without counting it."""
        if fill is not None:
            link, clicks = fill
            mode, seed = ("link", clicks) if link else ("unknown", "")
            value, ttl = self.links.entry(link)
        else:
            mode, value, ttl, seed = "", "", 0, "?" if uncounted else ""
        keys = [self.links.key(slug), self._stream, self._click_counter_prefix]
        args = [f"{time.time():.3f}", mode, value, ttl, seed, "1" if click_json else "0", "1" if bot else "0"]
        args.append(click_json or "")
        if client is None:
            keys += ["", ""]
            args += ["0", "", ""]
        else:
            keys += [client.requests_key, client.not_found_key]
            args += ["1" if fill is None and not uncounted else "0", client.requests, client.not_found]
        reply = self.redis.call(lambda r: self._script(keys, args))
        if reply is None:
            return Resolution("miss")
        if reply[1] == "unknown":
            return Resolution("unknown")
        if reply[1] == "rate":
            return Resolution("rate", retry_after=max(1, int(reply[2])))
        return Resolution(reply[1], Link.from_cache(reply[0]))

    def _without_redis(self, slug: str, click: dict | None, bot: bool, client: ClientLimits | None) -> Outcome:
        """Redis is down: the in-process limit, the link from PostgreSQL, the click straight into PostgreSQL."""
        wait = self.limits.allows_without_redis(client)
        if wait:
            return Outcome(429, retry_after=wait)
        try:
            link, clicks = find_for_redirect(self.db, slug)
        except UNAVAILABLE_ERRORS as exc:
            _POSTGRES_ERRORS.inc()
            return self._last_resort(slug, click, exc)
        except psycopg.Error as exc:  # PostgreSQL answered, with an error: not a state for the last resort
            _POSTGRES_ERRORS.inc()
            log.warning("redirect with Redis down and PostgreSQL refusing: %s", type(exc).__name__)
            return UNAVAILABLE
        return self._remembered(
            slug, _outcome(Resolution(self._verdict_from_postgres(link, clicks, click, bot), link), click)
        )

    def _last_resort(self, slug: str, click: dict | None, exc: Exception) -> Outcome:
        """Redis and PostgreSQL both down: a link this worker resolved recently still redirects, its click spooled
        (the count is unknown, so max_clicks is not checked); anything else is 503."""
        link = self.last_resort.get(slug)
        if link is None:
            log.warning("redirect with Redis and PostgreSQL both down: %s", type(exc).__name__)
            return UNAVAILABLE
        if link.gone_reason():
            return Outcome(410, link, gone_reason=link.gone_reason())
        recorded = click is not None and self.sink.write(click, link.id, link.account_id) in self.sink.STORED
        return Outcome(200 if link.lead_form else 302, link, click["id"] if recorded else None)

    def _verdict_from_postgres(self, link: Link | None, clicks: int, click: dict | None, bot: bool) -> str:
        """resolve.lua's decision made from PostgreSQL's row, with the click written straight to PostgreSQL."""
        if link is None:
            return "unknown"
        if link.gone_reason():
            return "gone"
        if link.max_clicks is not None and clicks >= link.max_clicks:  # gone for everyone, bots and HEAD included
            return "limit"
        if click and self.sink.write(click, link.id, link.account_id) not in self.sink.STORED:
            return "ok-unrecorded"  # no store took the click: the visitor gets the 302 without a click id
        return "ok"


def _outcome(resolution: Resolution, click: dict | None) -> Outcome:
    link, verdict = resolution.link, resolution.verdict
    if verdict == "rate":
        return Outcome(429, retry_after=resolution.retry_after)
    if link is None or verdict == "unknown":
        return NOT_FOUND
    if verdict in ("gone", "limit"):
        return Outcome(410, link, gone_reason=link.gone_reason() or "out of clicks")
    recorded = click is not None and verdict != "ok-unrecorded"
    return Outcome(200 if link.lead_form else 302, link, click["id"] if recorded else None)


def redirector() -> Redirector:
    """The request's app's redirector."""
    return current_app.extensions["chatlink.redirector"]
