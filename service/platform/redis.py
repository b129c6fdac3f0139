"""The Redis client that fails fast (short timeouts, a breaker with an on-recover hook) and ScriptBatcher."""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from flask import current_app
from redis.backoff import NoBackoff
from redis.retry import Retry

from .breaker import Breaker
from .metrics import REDIS_BREAKER_OPEN, REDIS_ERRORS

log = logging.getLogger(__name__)
T = TypeVar("T")


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


class RedisClient:
    """A Redis client that fails fast: short timeouts, no retries, and a breaker (see Breaker) that skips Redis once
    it fails repeatedly, not after one slow reply.

    Every key it writes starts with one prefix (`key()`), so that tests and tenants of a Redis stay apart."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout_ms: int,
        breaker_seconds: float,
        breaker_failures: int = 3,
        breaker_first_probe_ms: int = 200,
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
        self.prefix = prefix
        self.breaker = Breaker(
            "redis",
            failures=breaker_failures,
            first_delay=breaker_first_probe_ms / 1000,
            max_delay=breaker_seconds,
        )
        self._lock = threading.Lock()
        self._on_recover: list[Callable[[], None]] = []
        self._batchers: list[ScriptBatcher] = []

    @classmethod
    def from_settings(cls, settings, namespace: str = "") -> RedisClient:
        """The client as the settings describe it, its keys under KEY_PREFIX + namespace (the database's id)."""
        return cls(
            settings.redis_url,
            prefix=settings.key_prefix + (f"{namespace}:" if namespace else ""),
            timeout_ms=settings.redis_timeout_ms,
            breaker_seconds=settings.redis_breaker_seconds,
            breaker_failures=settings.breaker_failures,
            breaker_first_probe_ms=settings.breaker_first_probe_ms,
        )

    def key(self, name: str) -> str:
        """The full name of one of the service's keys."""
        return self.prefix + name

    def batcher(self, script: str) -> ScriptBatcher:
        """A ScriptBatcher for script on this client (closed with it)."""
        batcher = ScriptBatcher(self.client, script)
        self._batchers.append(batcher)
        return batcher

    # --- the breaker -------------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        """False while the breaker is open and no probe is due."""
        return self.breaker.available

    def call(self, operation: Callable[[redis.Redis], T]) -> T:
        """Run operation on the client; raise RedisDown at once while the breaker is open or when it fails."""
        if not self.breaker.allow():
            raise RedisDown("breaker open")
        try:
            result = operation(self.client)
        except redis.RedisError as exc:
            self._failed(exc)
            raise RedisDown(str(exc)) from exc
        self.breaker.success()
        if self._on_recover:
            self._recovered()
        return result

    def on_recover(self, hook: Callable[[], None]) -> None:
        """Run hook once, after the next call that succeeds (e.g. to repair what a failed write left stale)."""
        with self._lock:
            if hook not in self._on_recover:
                self._on_recover.append(hook)

    def _recovered(self) -> None:
        with self._lock:
            hooks, self._on_recover = self._on_recover, []
        for hook in hooks:
            hook()

    def _failed(self, exc: Exception) -> None:
        self.breaker.failure(exc)
        REDIS_ERRORS.labels("app").inc()
        if not self.breaker.available:
            REDIS_BREAKER_OPEN.set(1)
        if isinstance(exc, redis.TimeoutError | redis.ConnectionError):
            self.client.connection_pool.disconnect()  # close half-read connections of a hung server

    def sample_breaker(self) -> None:
        """Publish the breaker's state (a metrics probe)."""
        REDIS_BREAKER_OPEN.set(0 if self.available else 1)

    def ping(self) -> bool:
        """PING, bypassing the breaker (for health checks)."""
        return bool(self.client.ping())

    def close(self) -> None:
        """Close the batchers' connections and the pool."""
        for batcher in self._batchers:
            batcher.close()
        self.client.close()


def redis_client() -> RedisClient:
    """The request's app's Redis client."""
    return current_app.extensions["chatlink.redis"]
