"""The pipeline that moves clicks into PostgreSQL, losing none: the one Click definition (from which the row, the
COPY columns and the staging table are derived), ingest, the spool and the sink of the fallback paths."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import ua_parser
from flask import current_app

from ..platform.db import UNAVAILABLE_ERRORS, Database
from ..platform.metrics import Counter
from ..platform.redis import RedisClient

log = logging.getLogger(__name__)
CLICKS_DROPPED = Counter("chatlink_clicks_dropped_total", "Clicks no store could take (Redis, PostgreSQL, spool).")

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
# A stored click: the columns of `clicks`, in table order, with their SQL types. Everything else is derived.
CLICK_COLUMNS = (
    ("click_id", "uuid"),
    ("clicked_at", "timestamptz"),
    ("link_id", "bigint"),
    ("account_id", "bigint"),
    ("referrer", "text"),
    ("referrer_host", "text"),
    ("browser", "text"),
    ("os", "text"),
    ("device_type", "text"),
    ("is_bot", "boolean"),
    ("country", "text"),
    *((utm, "text") for utm in UTM_FIELDS),
    ("visitor_id", "text"),
)
COLUMNS = tuple(name for name, _ in CLICK_COLUMNS)
# What the API shows of a click: every column but the internal ids and the visitor hash.
API_FIELDS = tuple(name for name in COLUMNS if name not in {"link_id", "account_id", "visitor_id"})
# Run once on every new PostgreSQL connection (pool `configure`), so ingest() finds its staging table.
STAGING_DDL = (
    "create temp table if not exists click_staging ("
    + ", ".join(f"{name} {sql_type}" for name, sql_type in CLICK_COLUMNS)
    + ") on commit delete rows"
)


def stream_key(redis: RedisClient) -> str:
    """The Redis stream clicks wait in between the redirect and the drainer."""
    return redis.key("clicks")


@lru_cache(maxsize=4096)
def describe_agent(user_agent: str, bot: bool) -> tuple[str | None, str | None, str]:
    """(browser, os, device type) of a user agent; cached because a few agents make most traffic."""
    if bot:
        parsed = ua_parser.parse(user_agent) if user_agent else None
        return (parsed.user_agent.family if parsed and parsed.user_agent else None), None, "bot"
    if not user_agent:
        return None, None, "other"
    parsed = ua_parser.parse(user_agent)
    browser = parsed.user_agent.family if parsed.user_agent else None
    os_family = parsed.os.family if parsed.os else None
    device = parsed.device
    brand = (device.brand or "") if device else ""
    family = (device.family or "") if device else ""
    lowered = user_agent.lower()
    if family == "Spider":
        kind = "bot"
    elif family == "iPad" or "tablet" in brand.lower() or "tablet" in lowered or "ipad" in lowered:
        kind = "tablet"
    elif os_family in {"iOS", "Android"} or "mobile" in lowered:
        kind = "phone"
    elif os_family in {"Windows", "Mac OS X", "Linux", "Ubuntu", "Chrome OS", "Fedora", "FreeBSD"}:
        kind = "desktop"
    else:
        kind = "other"
    return browser, os_family, kind


def to_row(click: dict, link_id: int, account_id: int) -> tuple:
    """One clicks row (COLUMNS order) from a captured click."""
    browser, os_family, device = describe_agent(click.get("ua") or "", bool(click.get("bot")))
    referrer = click.get("ref")
    host = None
    if referrer:
        with contextlib.suppress(ValueError):
            host = (urlsplit(referrer).hostname or "")[:255] or None
    row = {
        "click_id": click["id"],
        "clicked_at": datetime.fromtimestamp(click["ts"], UTC),
        "link_id": link_id,
        "account_id": account_id,
        "referrer": referrer,
        "referrer_host": host,
        "browser": browser,
        "os": os_family,
        "device_type": "bot" if click.get("bot") else device,
        "is_bot": bool(click.get("bot")),
        "country": click.get("cc"),
        **{utm: click.get(utm) for utm in UTM_FIELDS},
        "visitor_id": click["vid"],
    }
    return tuple(row[name] for name in COLUMNS)


def ingest(conn, rows: Iterable[tuple]) -> int:
    """COPY rows into the session's staging table and move them into clicks and the roll-ups; return new ones."""
    with conn.transaction():
        with conn.cursor().copy(f"copy click_staging ({', '.join(COLUMNS)}) from stdin") as copy:
            for row in rows:
                copy.write_row(row)
        return conn.execute("select ingest_clicks() as added").fetchone()["added"]


class Spool:
    """Clicks that neither Redis nor PostgreSQL could take, appended to a local file until they return."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def path(self) -> Path:
        return self.directory / f"clicks-{socket.gethostname()}-{os.getpid()}.jsonl"

    def append(self, click: dict, link_id: int, account_id: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        line = json.dumps({**click, "l": link_id, "a": account_id}, separators=(",", ":")) + "\n"
        while True:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # A drainer may have renamed the file since we opened it: write to the new one instead.
                with contextlib.suppress(FileNotFoundError):
                    if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                        os.write(fd, line.encode())
                        os.fsync(fd)
                        return
            finally:
                os.close(fd)

    def size(self) -> int:
        """Bytes of clicks waiting in the spool (files not yet drained or being drained)."""
        if not self.directory.exists():
            return 0
        total = 0
        for path in self.directory.glob("clicks-*"):
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_size
        return total

    def drain(self, db: Database) -> int:
        """Move every spooled click into PostgreSQL; a file is removed only after its rows are committed."""
        if not self.directory.exists():
            return 0
        for path in sorted(self.directory.glob("clicks-*.jsonl")):
            # A unique name: a claimed file whose ingest failed must never be replaced by a later claim.
            with contextlib.suppress(FileNotFoundError):  # another worker claimed it first
                path.rename(path.with_name(f"{path.name}.draining-{uuid.uuid4().hex}"))
        # Every claimed file, including those of a worker that died mid-drain; two drainers ingesting the same
        # file is harmless because the insert ignores repeats.
        return sum(self._ingest_file(db, claimed) for claimed in sorted(self.directory.glob("clicks-*.draining-*")))

    @staticmethod
    def _ingest_file(db: Database, claimed: Path) -> int:
        try:
            with claimed.open("rb") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # wait for a write that was in flight at the rename
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return 0  # another drainer finished it
        entries = []
        for line in lines:
            try:
                entries.append(json.loads(line))
            except ValueError:
                log.error("spool %s: skipped a line that is not JSON (a write cut short by a crash)", claimed)
        with db.connection() as conn:
            ingest(conn, (to_row(e, e["l"], e["a"]) for e in entries))
        claimed.unlink(missing_ok=True)
        return len(entries)


class ClickSink:
    """Where a redirect's click goes when Redis cannot take it: PostgreSQL directly, else the spool."""

    def __init__(self, db: Database, spool: Spool) -> None:
        self.db, self.spool = db, spool
        self.dropped = 0  # stays 0: every path ends in Redis, PostgreSQL or the spool file

    def write(self, click: dict, link_id: int, account_id: int) -> str:
        try:
            with self.db.connection() as conn:
                ingest(conn, [to_row(click, link_id, account_id)])
            return "postgresql"
        except (psycopg.Error, *UNAVAILABLE_ERRORS):  # unreachable, read-only after a failover…: keep it locally
            try:
                self.spool.append(click, link_id, account_id)
                return "spool"
            except OSError:
                self.dropped += 1
                CLICKS_DROPPED.inc()
                log.error("click %s dropped: PostgreSQL, Redis and the spool directory all failed", click["id"])
                return "dropped"


def click_sink() -> ClickSink:
    """The request's app's click sink."""
    return current_app.extensions["chatlink.click_sink"]
