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
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import ua_parser
from flask import current_app

from ..platform.db import UNAVAILABLE_ERRORS, Database, ensure_setup, is_row_error
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


@lru_cache(maxsize=4096)
def referrer_host(referrer: str) -> str | None:
    """The host of a referrer URL (None when it has none); cached because a few referrers make most traffic."""
    try:
        return (urlsplit(referrer).hostname or "")[:255] or None
    except ValueError:
        return None


def to_row(click: dict, link_id: int, account_id: int) -> tuple:
    """One clicks row (COLUMNS order) from a captured click."""
    browser, os_family, device = describe_agent(click.get("ua") or "", bool(click.get("bot")))
    referrer = click.get("ref")
    row = {
        "click_id": click["id"],
        "clicked_at": datetime.fromtimestamp(click["ts"], UTC),
        "link_id": link_id,
        "account_id": account_id,
        "referrer": referrer,
        "referrer_host": referrer_host(referrer) if referrer else None,
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
    ensure_setup(conn, STAGING_DDL)
    with conn.transaction():
        with conn.cursor().copy(f"copy click_staging ({', '.join(COLUMNS)}) from stdin") as copy:
            for row in rows:
                copy.write_row(row)
        return conn.execute("select ingest_clicks() as added").fetchone()["added"]


def _frame(entry: dict) -> bytes:
    """One spool record: the CRC-32 of its JSON, the JSON, a newline — so a damaged record is recognised."""
    body = json.dumps(entry, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def unframe(line: bytes) -> dict | None:
    """The entry of one spool record, or None when the record is damaged (torn, merged, altered)."""
    crc, _, body = line.partition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
            return None
        entry = json.loads(body)
        int(entry["l"]), int(entry["a"]), entry["id"]  # noqa: B018 - what to_row needs
        return entry
    except (ValueError, KeyError, TypeError):
        return None


def _write_whole(fd: int, data: bytes) -> bool:
    """Append data to fd (locked, O_APPEND) whole and fsynced, or leave the file as it was and raise OSError;
    True when the file was empty before (a new file, whose directory entry needs an fsync too)."""
    start = os.fstat(fd).st_size
    if start and os.pread(fd, 1, start - 1) != b"\n":
        data = b"\n" + data  # a crash tore the last record: never merge this one into it
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]  # os.write may write less than asked (a full disk): go on
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)  # a record is written whole or not at all
        raise
    return start == 0


def _fsync_directory(path: str) -> None:
    """fsync the directory holding path, so a file just created (or renamed) survives a crash."""
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NodeCounter:
    """A count shared by every process of this node (gunicorn's workers): a fixed-size file, rewritten in place
    under a lock, so that counting needs no new disk space — it must work when the disk is full."""

    WIDTH = 20

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(OSError):  # created now, while there is room; increment() tries again
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"0".rjust(self.WIDTH))
            finally:
                os.close(fd)

    def increment(self) -> int:
        """Add one; return the new count."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            value = int(os.pread(fd, self.WIDTH, 0).strip() or 0) + 1
            os.pwrite(fd, str(value).encode().rjust(self.WIDTH), 0)
            return value
        finally:
            os.close(fd)

    def value(self) -> int:
        """The count (0 before the first)."""
        try:
            return int(self.path.read_bytes().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0


class Spool:
    """Clicks that neither Redis nor PostgreSQL could take, appended to a local file until they return. Each
    record is written whole or not at all (CRC-framed, the file cut back after a failed write) and fsynced; a
    damaged record is read past, counted and kept aside in dead/, never dropped silently."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.dead = directory / "dead"  # damaged records and those PostgreSQL refused, for a person to look at

    @property
    def path(self) -> Path:
        return self.directory / f"clicks-{socket.gethostname()}-{os.getpid()}.jsonl"

    def append(self, click: dict, link_id: int, account_id: int) -> None:
        """Add one click, whole and fsynced; raise OSError (nothing written) when the directory cannot take it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        record = _frame({**click, "l": link_id, "a": account_id})
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # A drainer may have renamed the file since we opened it: write to the new one instead.
                with contextlib.suppress(FileNotFoundError):
                    if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                        if _write_whole(fd, record):
                            _fsync_directory(str(self.path))
                        return
            finally:
                os.close(fd)

    def pending_bytes(self) -> int:
        """Size of the clicks waiting in the spool (0: empty)."""
        return sum(_size(path) for path in self.directory.glob("clicks-*"))

    def dead_records(self) -> int:
        """Records set aside in dead/ (damaged or refused by PostgreSQL)."""
        return sum(_size(path) and path.read_bytes().count(b"\n") for path in self.dead.glob("*"))

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

    def set_aside(self, kind: str, records: list[bytes]) -> None:
        """Keep records in dead/<kind>-<unique>.jsonl (written to a temporary name, fsynced, renamed into place)."""
        self.dead.mkdir(parents=True, exist_ok=True)
        final = self.dead / f"{kind}-{uuid.uuid4().hex}.jsonl"
        temporary = final.with_suffix(".tmp")
        try:
            with temporary.open("wb") as handle:
                handle.writelines(record.rstrip(b"\n") + b"\n" for record in records)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.rename(final)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(str(final))

    def _ingest_file(self, db: Database, claimed: Path) -> int:
        try:
            with claimed.open("rb") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # wait for a write that was in flight at the rename
                lines = [line for line in handle.read().split(b"\n") if line]
        except FileNotFoundError:
            return 0  # another drainer finished it
        entries, damaged = [], []
        for line in lines:
            entry = unframe(line)
            if entry is None:
                damaged.append(line)
            else:
                entries.append((line, entry))
        refused = []
        try:
            with db.connection() as conn:
                ingest(conn, (to_row(e, e["l"], e["a"]) for _, e in entries))
        except Exception as exc:
            if not is_row_error(exc):  # PostgreSQL unavailable or read-only: the file waits, claimed
                raise
            for line, entry in entries:  # one bad row must not hold up the rest
                try:
                    with db.connection() as conn:
                        ingest(conn, [to_row(entry, entry["l"], entry["a"])])
                except Exception as row_exc:
                    if not is_row_error(row_exc):
                        raise
                    refused.append(line)
        for kind, records in (("damaged", damaged), ("refused", refused)):
            if records:  # kept before the file goes: if this fails, the whole file is read again later
                self.set_aside(kind, records)
                log.error("spool %s: %d %s records kept in %s", claimed.name, len(records), kind, self.dead)
        claimed.unlink(missing_ok=True)
        return len(entries) - len(refused)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class ClickSink:
    """Where a redirect's click goes when Redis cannot take it: PostgreSQL directly, else the spool. A click none
    of them took is counted in a node-wide counter (`SPOOL_DIR/dropped`), and its redirect carries no click id."""

    def __init__(self, db: Database, spool: Spool) -> None:
        self.db, self.spool = db, spool
        self.dropped = NodeCounter(spool.directory / "dropped")

    STORED = frozenset({"postgresql", "spool"})

    def write(self, click: dict, link_id: int, account_id: int) -> str:
        """Store the click; where it went: postgresql | spool (both stored), refused (its data is bad: kept aside
        in the spool's dead/) or dropped (nothing could take it)."""
        try:
            with self.db.connection() as conn:
                ingest(conn, [to_row(click, link_id, account_id)])
            return "postgresql"
        except (psycopg.Error, *UNAVAILABLE_ERRORS) as exc:
            refused = is_row_error(exc)  # this click's data is bad: kept aside, as the drainers do, not stored
            try:
                if refused:
                    self.spool.set_aside("refused", [_frame({**click, "l": link_id, "a": account_id})])
                    return "refused"
                # Unreachable, read-only after a failover…: keep it locally until PostgreSQL takes it.
                self.spool.append(click, link_id, account_id)
                return "spool"
            except OSError:
                self._drop(click)
                return "dropped"

    def _drop(self, click: dict) -> None:
        CLICKS_DROPPED.inc()
        try:
            count = self.dropped.increment()
        except OSError:
            count = "?"
        log.error(
            "click %s dropped: PostgreSQL, Redis and the spool all failed (%s dropped on this node)", click["id"], count
        )


def click_sink() -> ClickSink:
    """The request's app's click sink."""
    return current_app.extensions["chatlink.click_sink"]
