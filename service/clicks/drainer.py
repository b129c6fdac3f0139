"""The drainer: moves clicks from the Redis stream into PostgreSQL in batches, acknowledging only after commit."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import psycopg
import redis

from ..platform.db import UNAVAILABLE_ERRORS, Database, is_row_error
from ..platform.loop import Loop
from ..platform.metrics import POSTGRES_ERRORS, REDIS_ERRORS, Counter, gauge
from ..platform.redis import RedisClient
from .pipeline import Spool, ingest, stream_key, to_row, unframe

log = logging.getLogger(__name__)

CLICKS_DRAINED = Counter("chatlink_clicks_drained_total", "Click entries moved from the Redis stream to PostgreSQL.")
# Read by the background process about once a second; the most recent value wins across processes.
STREAM_LENGTH = gauge("chatlink_click_stream_length", "Clicks in the Redis stream.")
STREAM_PENDING = gauge("chatlink_click_stream_pending", "Clicks read by a drainer but not acknowledged.")
DRAIN_LAG = gauge("chatlink_click_drain_lag_seconds", "Age of the oldest click not yet drained.")
SPOOL_BYTES = gauge("chatlink_click_spool_bytes", "Bytes of clicks waiting in the local spool.")


class Drainer(Loop):
    """Moves clicks from the Redis stream into PostgreSQL in batches: XREADGROUP → COPY/INSERT → XACK."""

    GROUP = "drainers"
    thread_name = "click-drainer"

    def __init__(
        self,
        redis_client: RedisClient,
        db: Database,
        spool: Spool,
        *,
        batch: int,
        reclaim_idle_ms: int,
        gather_ms: int = 250,
        months_ahead: int = 2,
    ) -> None:
        self.gather_seconds = gather_ms / 1000
        self.stream = stream_key(redis_client)
        self.dead_letters = f"{self.stream}:dead"
        self.block_ms = 1000
        super().__init__(join_seconds=self.block_ms / 1000 + 3)
        # Its own client: XREADGROUP blocks longer than the hot path's short socket timeout allows.
        self.redis = redis.Redis(
            connection_pool=redis.ConnectionPool.from_url(
                redis_client.url,
                socket_timeout=self.block_ms / 1000 + 2,
                socket_connect_timeout=1,
                decode_responses=True,
            )
        )
        self.db, self.spool = db, spool
        self.batch, self.reclaim_idle_ms, self.months_ahead = batch, reclaim_idle_ms, months_ahead
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"
        # Another consumer that has not read for this long (and holds nothing) belongs to a process that is gone.
        self.consumer_expiry_ms = max(10 * reclaim_idle_ms, 5000)
        self._group_ready = False
        self._retry_own = False  # a move failed: this consumer's pending entries come first
        self._failures = 0  # consecutive failed steps, for the back-off

    # --- one step each; tests call these directly ---------------------------------------------------------
    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) once: at start, and again only after Redis answered NOGROUP.
        XGROUP CREATE needs memory Redis refuses when full, so an ordinary error must never lead here, and a process
        started while Redis is full (a restart during the fault) must find the group without creating it."""
        if self._group_ready:
            return
        if not self._group_exists():
            try:
                self.redis.xgroup_create(self.stream, self.GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._group_ready = True

    def _group_exists(self) -> bool:
        """Whether the stream has the group (XINFO GROUPS: a read, which Redis answers even when full)."""
        try:
            return any(group["name"] == self.GROUP for group in self.redis.xinfo_groups(self.stream))
        except redis.ResponseError as exc:
            if "no such key" in str(exc).lower():  # no stream yet, so no group
                return False
            raise

    def maintain(self) -> None:
        """Partitions for the coming months; forget old visitor keys and visitor sets."""
        with self.db.connection() as conn:
            conn.execute("select maintain_clicks(%s)", [self.months_ahead])

    def drain_once(self, block_ms: int | None = None) -> int:
        """Read one batch for this consumer and move it into PostgreSQL; return how many entries were handled.
        After a failed move it first re-reads its own pending entries (id 0), so they wait for no reclaim."""
        self.ensure_group()
        start = "0" if self._retry_own else ">"
        try:
            reply = self.redis.xreadgroup(
                self.GROUP,
                self.consumer,
                {self.stream: start},
                count=self.batch,
                block=None if start == "0" else block_ms,
            )
        except redis.ResponseError as exc:
            self._forget_group_if_gone(exc)
            raise
        entries = reply[0][1] if reply else []
        if start == "0" and not entries:
            self._retry_own = False
            return self.drain_once(block_ms)
        try:
            return self._move(entries)
        except BaseException:
            self._retry_own = True
            raise

    def reclaim(self) -> int:
        """Take over entries a dead consumer read but never acknowledged, move them, then forget dead consumers."""
        self.ensure_group()
        moved, cursor = 0, "0-0"
        while True:
            try:
                cursor, entries, *_ = self.redis.xautoclaim(
                    self.stream,
                    self.GROUP,
                    self.consumer,
                    min_idle_time=self.reclaim_idle_ms,
                    start_id=cursor,
                    count=self.batch,
                )
            except redis.ResponseError as exc:
                self._forget_group_if_gone(exc)
                raise
            try:
                moved += self._move(entries)
            except BaseException:
                self._retry_own = True  # claimed: they are this consumer's pending entries now
                raise
            if cursor == "0-0" or not entries:
                break
        self.forget_stale_consumers()
        return moved

    def forget_stale_consumers(self) -> list[str]:
        """XGROUP DELCONSUMER every other consumer that holds no pending entry (reclaim took them) and has not
        read for a long while: each background process that ever ran added one, and the group would only grow.
        A live drainer reads every second; should one be removed after all, its next read adds it again."""
        stale = [
            consumer["name"]
            for consumer in self.redis.xinfo_consumers(self.stream, self.GROUP)
            if consumer["name"] != self.consumer
            and consumer["pending"] == 0
            and consumer["idle"] > self.consumer_expiry_ms
        ]
        for name in stale:
            self.redis.xgroup_delconsumer(self.stream, self.GROUP, name)
        if stale:
            log.info("forgot %d stale click consumers: %s", len(stale), ", ".join(stale))
        return stale

    def _forget_group_if_gone(self, exc: redis.ResponseError) -> None:
        if "NOGROUP" in str(exc):  # Redis restarted without its data: the group is gone with the stream
            self._group_ready = False

    def _move(self, entries: list) -> int:
        if not entries:
            return 0
        rows, ids, dead = [], [], []
        for entry_id, fields in entries:
            ids.append(entry_id)
            if not fields:  # an entry deleted after it was read has no fields
                continue
            try:
                rows.append((entry_id, fields, to_row(json.loads(fields["d"]), int(fields["l"]), int(fields["a"]))))
            except (ValueError, KeyError, TypeError) as exc:
                dead.append((fields, f"undecodable: {exc!r}"))
        try:
            with self.db.connection() as conn:
                ingest(conn, [row for _, _, row in rows])
        except Exception as exc:
            if not is_row_error(exc):  # unavailable, read-only, misconfigured…: nothing is acknowledged
                raise
            # One row PostgreSQL refuses must not hold up the rest: retry them one by one.
            for _, fields, row in rows:
                try:
                    with self.db.connection() as conn:
                        ingest(conn, [row])
                except Exception as row_exc:
                    if not is_row_error(row_exc):
                        raise
                    dead.append((fields, f"refused: {type(row_exc).__name__} ({row_exc.sqlstate})"))
        # Only after the commit: a crash before this line re-delivers the batch, and the insert ignores repeats.
        if dead:  # kept for a person to look at (make replay-dead), never silently dropped; written before the ack
            with self.redis.pipeline(transaction=False) as pipe:
                for fields, reason in dead:
                    pipe.xadd(self.dead_letters, {**fields, "error": reason})
                pipe.execute()
            log.error("%d click entries could not be stored; kept in %s", len(dead), self.dead_letters)
        # XACK and XDEL free memory and need none: they work while Redis refuses writes (maxmemory, noeviction).
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(self.stream, self.GROUP, *ids)
            pipe.xdel(self.stream, *ids)
            pipe.execute()
        CLICKS_DRAINED.inc(len(ids))
        return len(ids)

    def observe(self) -> None:
        """The stream's length, its pending entries, the oldest click's age and the spool's size, for /metrics."""
        self.ensure_group()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.xlen(self.stream)
            pipe.xpending(self.stream, self.GROUP)
            pipe.xrange(self.stream, count=1)
            length, pending, oldest = pipe.execute()
        STREAM_LENGTH.set(length)
        STREAM_PENDING.set(pending["pending"])
        # A stream entry's id starts with the millisecond it was added at: the oldest one's age is the drain lag.
        DRAIN_LAG.set(max(0.0, time.time() - int(oldest[0][0].split("-")[0]) / 1000) if oldest else 0.0)
        SPOOL_BYTES.set(self.spool.pending_bytes())

    def replay_dead(self) -> int:
        """Move every dead letter back onto the click stream (after a fix): the stream's and the spool's refused
        records; return how many. Each is added to the stream before it leaves the dead letters, and the insert
        ignores repeats, so running it twice, or again after a crash in between, stores nothing twice."""
        self.ensure_group()
        replayed, cursor = 0, "-"
        while entries := self.redis.xrange(self.dead_letters, min=cursor, count=self.batch):
            for entry_id, fields in entries:
                self.redis.xadd(self.stream, {k: v for k, v in fields.items() if k != "error"})
                self.redis.xdel(self.dead_letters, entry_id)
                replayed += 1
            cursor = "(" + entries[-1][0]
        for path in sorted(self.spool.dead.glob("refused-*.jsonl")):
            for line in path.read_bytes().splitlines():
                entry = unframe(line)
                if entry is not None:
                    link_id, account_id = entry.pop("l"), entry.pop("a")
                    self.redis.xadd(self.stream, {"d": json.dumps(entry), "l": link_id, "a": account_id})
                    replayed += 1
            path.unlink()
        return replayed

    def pending(self) -> int:
        """Entries in the stream not yet moved (read or not)."""
        return int(self.redis.xlen(self.stream))

    # --- the background thread ----------------------------------------------------------------------------
    def run(self) -> None:
        """Until stopped: one step after another, waiting when there is nothing to do, backing off while a
        dependency is unavailable (nothing is acknowledged meanwhile)."""
        last_maintenance = last_reclaim = last_observed = 0.0
        while not self.stopping.is_set():
            now = time.monotonic()
            if now - last_observed >= 1.0:
                self._guarded(self.observe)
                last_observed = now
            # Each step on its own: a failing one (a dead PostgreSQL for the spool) must not stop the others.
            if now - last_maintenance > 3600 and self._guarded(self.maintain):
                last_maintenance = now
            if now - last_reclaim > max(1.0, self.reclaim_idle_ms / 2000):
                self._guarded(self.reclaim)
                self._guarded(lambda: self.spool.drain(self.db))
                last_reclaim = now
            moved = self._guarded_count(lambda: self.drain_once(block_ms=self.block_ms))
            if moved is None:
                self._failures += 1
                self.backoff(self._failures)
            else:
                self._failures = 0
                if moved < self.batch:
                    # Not a full batch: let clicks gather before the next transaction. A PostgreSQL transaction per
                    # handful of clicks costs more CPU than the redirects that made them (measured with make bench).
                    self.stopping.wait(self.gather_seconds)

    def _guarded(self, step) -> bool:
        return self._guarded_count(step) is not None

    def _guarded_count(self, step) -> int | None:
        try:
            return step() or 0
        except (redis.RedisError, psycopg.Error, *UNAVAILABLE_ERRORS) as exc:
            log.warning("click drainer waiting for its dependencies: %s", type(exc).__name__)
            (REDIS_ERRORS if isinstance(exc, redis.RedisError) else POSTGRES_ERRORS).labels("drainer").inc()
        except Exception:
            log.exception("click drainer step failed; retrying")
        return None
