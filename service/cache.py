"""The Redis client (short timeouts, circuit breaker), every key builder, the link cache (read, fill, write-through)."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

log = logging.getLogger(__name__)
T = TypeVar("T")

NEGATIVE = ""  # cached answer for a slug PostgreSQL does not know


# One round trip for the redirect: check the client's limits, read the cached link, decide whether it may still
# redirect, count the click against max_clicks and queue it on the stream. On a miss the caller reads PostgreSQL
# and calls again with the row as the fill (and its click count as the seed), limits not checked twice.
# KEYS: link, click stream, click-counter prefix, the client's request counters, the client's 404 counters
#       (the last two are key prefixes, '' when rate limits are off).
# ARGV: [1] now (epoch s), [2] fill ('' none, 'link', 'unknown'), [3] fill entry, [4] fill ttl, [5] seed ('' none),
#       [6] record 1/0, [7] bot 1/0, [8] click JSON, [9] check limits 1/0, [10] request limits, [11] 404 limits
#       (each "amount window amount window …", windows in seconds: "1200 60" is 1200/minute).
# Returns nil (miss), {'', 'unknown'}, {'', 'rate', seconds to wait}, or {link JSON, ok | gone | limit | seed}.
RESOLVE_AND_RECORD = """
local function count(key, window)
    local n = redis.call('INCR', key)
    if n == 1 then redis.call('EXPIRE', key, window) end
    return n
end
if ARGV[9] == '1' and KEYS[4] ~= '' then
    -- A client over a 404 limit is refused everything; otherwise every request counts against every limit.
    for amount, window in string.gmatch(ARGV[11], '(%d+) (%d+)') do
        local key = KEYS[5] .. amount .. '/' .. window
        if tonumber(redis.call('GET', key) or '0') >= tonumber(amount) then
            return {'', 'rate', redis.call('TTL', key)}
        end
    end
    local wait = 0
    for amount, window in string.gmatch(ARGV[10], '(%d+) (%d+)') do
        local key = KEYS[4] .. amount .. '/' .. window
        if count(key, window) > tonumber(amount) then wait = math.max(wait, redis.call('TTL', key)) end
    end
    if wait > 0 then return {'', 'rate', wait} end
end
local raw = redis.call('GET', KEYS[1])
if not raw then
    if ARGV[2] == '' then return nil end
    redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4], 'NX')
    raw = redis.call('GET', KEYS[1]) or ARGV[3]
end
if raw == '' then
    if KEYS[5] ~= '' then
        for amount, window in string.gmatch(ARGV[11], '(%d+) (%d+)') do
            count(KEYS[5] .. amount .. '/' .. window, window)
        end
    end
    return {'', 'unknown'}
end
local link = cjson.decode(raw)
local expires = link[7]
if link[5] or link[6] or (expires ~= cjson.null and tonumber(expires) <= tonumber(ARGV[1])) then
    return {raw, 'gone'}
end
if ARGV[6] ~= '1' then return {raw, 'ok'} end
if ARGV[7] ~= '1' then
    -- Every human click is counted, limit or not, so a max_clicks set later starts from the true count.
    local counter = KEYS[3] .. link[1]
    if ARGV[5] ~= '' then
        redis.call('SET', counter, ARGV[5], 'NX')
    elseif redis.call('EXISTS', counter) == 0 then
        return {raw, 'seed'}  -- the count was lost (or never read): ask PostgreSQL for it first
    end
    local limit = link[8]
    if redis.call('INCR', counter) > tonumber(limit == cjson.null and math.huge or limit) then
        redis.call('DECR', counter)
        return {raw, 'limit'}
    end
end
redis.call('XADD', KEYS[2], '*', 'l', link[1], 'a', link[2], 'd', ARGV[8])
return {raw, 'ok'}
"""


# Write-through of a committed edit. KEYS: link key. ARGV: entry, ttl, version. Keeps a newer entry.
STORE_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current and current ~= '' then
    local ok, link = pcall(cjson.decode, current)
    if ok and type(link) == 'table' and tonumber(link[10]) and tonumber(link[10]) > tonumber(ARGV[3]) then
        return 0
    end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""


_BATCHERS: weakref.WeakSet[ScriptBatcher] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [batcher._start() for batcher in list(_BATCHERS)])


class ScriptBatcher:
    """Runs one Lua script for many threads with group commit: calls that arrive while a batch is on the wire go
    together in the next pipeline. A busy worker pays one round trip (and Redis one read and one write) for
    several redirects; a lone call goes at once, waiting for nobody."""

    IDLE_CHECK_SECONDS = 1.0  # a connection unused for longer is checked before a batch goes out on it

    class _Call:
        __slots__ = ("args", "keys", "lead", "reply", "woken")

        def __init__(self, keys: list, args: list) -> None:
            self.keys, self.args, self.lead, self.reply = keys, args, False, None
            self.woken = threading.Lock()
            self.woken.acquire()  # released by the leader once the reply is in, or to make this call the leader

    def __init__(self, client: redis.Redis, script: str) -> None:
        self.client = client
        self.script = client.register_script(script)
        self._start()
        _BATCHERS.add(self)

    def _start(self) -> None:
        """Fresh state (also in a forked child, which must not share its parent's socket or locks)."""
        self._lock = threading.Lock()
        self._queue: list[ScriptBatcher._Call] = []
        self._leading = False  # one thread at a time sends a batch and hands out the replies
        # Only the leader talks to Redis, so it needs no pool: a connection of its own skips the client's
        # per-command work (pool checkout, fork check, health poll), which here cost about as much CPU as the
        # round trip itself (PING through the client ~90 µs, on this connection ~45 µs).
        self._connection: redis.connection.AbstractConnection | None = None
        self._used_at = 0.0  # monotonic time of the last round trip on it

    def __call__(self, keys: list, args: list) -> Any:
        """The script's reply for these keys and args; raises what Redis raised for this call or its batch."""
        call = self._Call(keys, args)
        with self._lock:
            self._queue.append(call)
            follower, self._leading = self._leading, True
        if follower:
            call.woken.acquire()
            if not call.lead:
                return self._result(call)
        with self._lock:
            batch, self._queue = self._queue, []
        replies = None
        try:
            replies = self._run(batch)
        except Exception as exc:  # every call of the batch fails with it
            replies = [exc] * len(batch)
        finally:
            # Even when this thread is interrupted (KeyboardInterrupt, SystemExit) nobody may be left waiting:
            # hand out what there is, then pass the lead on or give it up.
            if replies is None:
                replies = [redis.ConnectionError("the round trip for this call was interrupted")] * len(batch)
            for other, reply in zip(batch, replies, strict=True):
                other.reply = reply
                if other is not call:
                    other.woken.release()
            with self._lock:  # the next leader is the oldest call that queued during this batch
                if self._queue:
                    self._queue[0].lead = True
                    self._queue[0].woken.release()
                else:
                    self._leading = False
        return self._result(call)

    def _run(self, batch: list[_Call]) -> list:
        replies = self._send([("EVALSHA", self.script.sha, len(call.keys), *call.keys, *call.args) for call in batch])
        if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
            self.script.sha = self.client.script_load(self.script.script)  # Redis restarted: load it again
            for i, call in enumerate(batch):
                if isinstance(replies[i], redis.exceptions.NoScriptError):
                    try:
                        replies[i] = self.script(keys=call.keys, args=call.args)
                    except redis.RedisError as exc:  # this call only: the others' clicks are already queued
                        replies[i] = exc
        return replies

    def _send(self, commands: list[tuple]) -> list:
        """One pipelined round trip on the leader's connection: a reply, or the error Redis answered, per command."""
        connection = self._connection
        if connection is None:
            # Made here, not by the pool's make_connection(): the pool counts those against max_connections
            # and would never see this one come back, so each reconnect would use up one of its slots.
            pool = self.client.connection_pool
            connection = self._connection = pool.connection_class(**pool.connection_kwargs)
        elif time.monotonic() - self._used_at > self.IDLE_CHECK_SECONDS:
            self._check_idle(connection)
        try:
            connection.send_packed_command(connection.pack_commands(commands), check_health=False)
            replies = []
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except redis.ResponseError as exc:  # that command's own error: the connection is still in step
                    replies.append(exc)
            self._used_at = time.monotonic()
            return replies
        except BaseException:  # half-read, timed out or gone: the next batch starts on a new connection
            self._connection = None
            connection.disconnect()
            raise

    @staticmethod
    def _check_idle(connection: redis.connection.AbstractConnection) -> None:
        """Drop a connection the server closed while it sat idle (a restart, an idle timeout), so that the batch
        about to go out opens a new one instead of failing; one poll, and only after a quiet spell."""
        try:
            if connection.can_read(0):
                raise redis.ConnectionError("data on an idle connection")
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            connection.disconnect()

    def close(self) -> None:
        """Close the leader's connection (the next call opens a new one). For shutdown: not while calls run."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.disconnect()

    @staticmethod
    def _result(call: _Call) -> Any:
        if isinstance(call.reply, Exception):
            raise call.reply
        return call.reply


class RedisDown(Exception):
    """Redis is unreachable or the breaker is open; callers fall back to PostgreSQL or in-process state."""


@dataclass(frozen=True)
class CachedLink:
    """What a redirect needs to know about a link; the Location is always rebuilt from phone and message."""

    id: int
    account_id: int
    phone: str
    message: str | None
    disabled: bool
    deleted: bool
    expires_at: float | None  # epoch seconds
    max_clicks: int | None
    lead_form: dict | None = None
    version: float = 0.0  # the row's updated_at (epoch s); 0 when read through the redirect's narrow path

    LAYOUT: ClassVar[int] = 3  # bump when the fields above change

    @classmethod
    def from_row(cls, row: dict[str, Any], deleted: bool | None = None) -> CachedLink:
        expires = row["expires_at"]
        return cls(
            row["id"],
            row["account_id"],
            row["phone"],
            row["message"],
            row["disabled"],
            row["deleted"] if deleted is None else deleted,
            expires.timestamp() if expires else None,
            row["max_clicks"],
            row.get("lead_form"),
            row["updated_at"].timestamp() if row.get("updated_at") else 0.0,
        )

    def dumps(self) -> str:
        return json.dumps(
            [
                self.id,
                self.account_id,
                self.phone,
                self.message,
                self.disabled,
                self.deleted,
                self.expires_at,
                self.max_clicks,
                self.lead_form,
                self.version,
            ],
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, raw: str) -> CachedLink:
        return cls(*json.loads(raw))

    def gone_reason(self, now: float | None = None) -> str | None:
        """Why the link no longer redirects (410), or None while it is live."""
        if self.deleted:
            return "deleted"
        if self.disabled:
            return "disabled"
        if self.expires_at is not None and self.expires_at <= (now or time.time()):
            return "expired"
        return None


@dataclass(frozen=True, slots=True)
class Resolution:
    """The resolve script's answer: miss | unknown | rate | ok | gone | limit | seed, the link when known."""

    verdict: str
    link: CachedLink | None = None
    retry_after: int = 0  # seconds, for "rate"


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """One client's counters for the resolve script: its requests, and its 404 answers (a slug scanner's sign)."""

    requests_key: str  # key prefixes: each limit's "amount/window" is appended
    not_found_key: str
    requests: str  # the limits, "amount window amount window …"
    not_found: str


class Keys:
    """Every Redis key the service writes, under one prefix so that tests and tenants of a Redis stay apart."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def link(self, slug: str) -> str:
        # The version changes with CachedLink's layout, so old and new workers of a deploy never misread.
        return f"{self.prefix}link:v{CachedLink.LAYOUT}:{slug}"

    def limiter_prefix(self) -> str:
        return f"{self.prefix}limits"

    def click_stream(self) -> str:
        return f"{self.prefix}clicks"

    def client_limits_prefix(self) -> str:
        """Followed by a keyed hash of a client address: the redirect's rate-limit counters."""
        return f"{self.prefix}limits:redirect:"

    def click_counter_prefix(self) -> str:
        """Followed by a link id: the human clicks a link with max_clicks has had."""
        return f"{self.prefix}clickcount:"


class Cache:
    """A Redis client that fails fast: short timeouts, no retries, and a breaker that skips Redis after a failure."""

    def __init__(
        self, url: str, *, prefix: str, timeout_ms: int, breaker_seconds: float, link_ttl: int, not_found_ttl: int
    ) -> None:
        timeout = timeout_ms / 1000
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
            decode_responses=True,
        )
        self.url = url
        self.keys = Keys(prefix)
        self._resolve = ScriptBatcher(self.client, RESOLVE_AND_RECORD)
        self._store_script = self.client.register_script(STORE_IF_NEWER)
        self.breaker_seconds = breaker_seconds
        self.link_ttl, self.not_found_ttl = link_ttl, not_found_ttl
        self._open_until = 0.0
        self._lock = threading.Lock()
        self._pending_invalidations: set[str] = set()

    @classmethod
    def from_settings(cls, settings) -> Cache:
        """The cache as the settings describe it."""
        return cls(
            settings.redis_url,
            prefix=settings.key_prefix,
            timeout_ms=settings.redis_timeout_ms,
            breaker_seconds=settings.redis_breaker_seconds,
            link_ttl=settings.cache_ttl_seconds,
            not_found_ttl=settings.not_found_ttl_seconds,
        )

    # --- the breaker -------------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False while the breaker is open (Redis failed within the last breaker_seconds)."""
        return time.monotonic() >= self._open_until

    def call(self, operation: Callable[[redis.Redis], T]) -> T:
        """Run operation on the client; raise RedisDown at once while the breaker is open or when it fails."""
        if not self.available:
            raise RedisDown("breaker open")
        try:
            result = operation(self.client)
        except redis.RedisError as exc:
            self._trip(exc)
            raise RedisDown(str(exc)) from exc
        if self._pending_invalidations:
            self._replay_invalidations()
        return result

    def _trip(self, exc: Exception) -> None:
        if self.available:
            log.warning("redis failed (%s); skipping it for %ss", type(exc).__name__, self.breaker_seconds)
        self._open_until = time.monotonic() + self.breaker_seconds
        self.client.connection_pool.disconnect()  # close half-read connections of a hung server

    # --- the link cache ----------------------------------------------------------------------------------
    def _entry(self, link: CachedLink | None) -> tuple[str, int]:
        if link is None:
            return NEGATIVE, self.not_found_ttl
        ttl = self.link_ttl
        if link.expires_at is not None:
            ttl = max(1, min(ttl, int(link.expires_at - time.time()) + 1))
        return link.dumps(), ttl

    def store_link(self, slug: str, link: CachedLink) -> None:
        """Write-through after a committed create, edit or delete: every worker's next redirect sees it."""
        value, ttl = self._entry(link)
        try:
            # Compare-and-set on the version: of two edits committed close together, the later one's entry
            # stays even when its write-through reaches Redis first.
            self.call(
                lambda r: self._store_script(keys=[self.keys.link(slug)], args=[value, ttl, link.version], client=r)
            )
        except RedisDown:
            # Redis may come back holding the old entry: retry when it answers again.
            with self._lock:
                self._pending_invalidations.add(slug)

    def _replay_invalidations(self) -> None:
        with self._lock:
            slugs, self._pending_invalidations = self._pending_invalidations, set()
        try:
            self.client.delete(*[self.keys.link(s) for s in slugs])
        except redis.RedisError:
            with self._lock:
                self._pending_invalidations |= slugs

    def resolve_and_record(
        self,
        slug: str,
        click: str | None,
        bot: bool,
        *,
        limits: ClientLimits | None = None,
        check_limits: bool = True,
        fill: CachedLink | None = None,
        fill_unknown: bool = False,
        seed: int | None = None,
    ) -> Resolution:
        """What the redirect answers, in one round trip; the click (JSON) is queued only when the link may redirect.

        The first call of a request checks the client's limits; on a miss the second passes the PostgreSQL row as
        fill (or fill_unknown for a slug PostgreSQL does not know) with check_limits=False.
        """
        if fill is not None or fill_unknown:
            mode = "unknown" if fill_unknown else "link"
            value, ttl = self._entry(fill)
        else:
            mode, value, ttl = "", "", 0
        keys = [self.keys.link(slug), self.keys.click_stream(), self.keys.click_counter_prefix()]
        args = [
            f"{time.time():.3f}",
            mode,
            value,
            ttl,
            "" if seed is None else seed,
            "1" if click else "0",
            "1" if bot else "0",
            click or "",
        ]
        if limits is None:
            keys += ["", ""]
            args += ["0", "", ""]
        else:
            keys += [limits.requests_key, limits.not_found_key]
            args += ["1" if check_limits else "0", limits.requests, limits.not_found]
        reply = self.call(lambda r: self._resolve(keys, args))
        if reply is None:
            return Resolution("miss")
        if reply[1] == "unknown":
            return Resolution("unknown")
        if reply[1] == "rate":
            return Resolution("rate", retry_after=max(1, int(reply[2])))
        return Resolution(reply[1], CachedLink.loads(reply[0]))

    def ping(self) -> bool:
        """PING, bypassing the breaker (for health checks)."""
        return bool(self.client.ping())

    def close(self) -> None:
        self._resolve.close()
        self.client.close()
