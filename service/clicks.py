"""Click capture on the hot path (no raw IP kept) and the pipeline that moves clicks into PostgreSQL, losing none."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, date, datetime
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import psycopg
import redis
import ua_parser
import uuid6

from .cache import Cache
from .db import UNAVAILABLE_ERRORS, Database

log = logging.getLogger(__name__)

UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
# Crawlers, link-preview fetchers (WhatsApp, Facebook, Slack, Twitter, Telegram, …) and HTTP libraries.
BOT_PATTERN = re.compile(
    r"bot\b|bot/|crawl|spider|slurp|facebookexternalhit|facebookcatalog|meta-externalagent|whatsapp|"
    r"slack|twitterbot|telegrambot|discordbot|linkedinbot|skypeuripreview|embedly|quora link preview|"
    r"pinterest|vkshare|redditbot|applebot|bingpreview|google-inspectiontool|googleother|yandex|baiduspider|"
    r"headlesschrome|lighthouse|curl/|wget/|python-requests|python-urllib|go-http-client|okhttp|java/|"
    r"libwww|httpclient|axios/|node-fetch|preview",
    re.IGNORECASE,
)
COLUMNS = (
    "click_id",
    "clicked_at",
    "link_id",
    "account_id",
    "referrer",
    "referrer_host",
    "browser",
    "os",
    "device_type",
    "is_bot",
    "country",
    *UTM_FIELDS,
    "visitor_id",
)
# Run once on every new PostgreSQL connection (pool `configure`), so ingest() finds its staging table.
STAGING_DDL = """create temp table if not exists click_staging (
    click_id uuid, clicked_at timestamptz, link_id bigint, account_id bigint, referrer text, referrer_host text,
    browser text, os text, device_type text, is_bot boolean, country text, utm_source text, utm_medium text,
    utm_campaign text, utm_content text, utm_term text, visitor_id text) on commit delete rows"""
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@lru_cache(maxsize=4096)
def is_bot(user_agent: str) -> bool:
    """True for crawlers and link-preview fetchers: they get their 302 but are counted apart."""
    return bool(BOT_PATTERN.search(user_agent))


def _clean(value: str | None, limit: int) -> str | None:
    if not value:
        return None
    return _CONTROL.sub("", value)[:limit] or None


class VisitorKeys:
    """Today's HMAC key for visitor ids, from PostgreSQL (shared by every worker), rotated each UTC day."""

    RETRY_SECONDS = 30

    def __init__(self, db: Database) -> None:
        self.db = db
        self._day: date | None = None
        self._key = secrets.token_bytes(32)
        self._retry_at = 0.0

    def today(self) -> bytes:
        day = datetime.now(UTC).date()
        if day != self._day and time.monotonic() >= self._retry_at:
            try:
                row = self.db.fetch_one("service_secret", {"name": f"visitor:{day.isoformat()}"})
                self._key, self._day = bytes(row["secret"]), day
            except (psycopg.Error, *UNAVAILABLE_ERRORS):
                # Keep counting with a process-local key (unique counts may over-count) and do not ask again
                # for a while: redirects must not wait on a database that is away.
                log.warning("visitor key unavailable; using a process-local key for now")
                self._retry_at = time.monotonic() + self.RETRY_SECONDS
        return self._key


class Geo:
    """Country of an address from the offline database shipped with geoip2fast (loaded on first use)."""

    _lookup = None

    @classmethod
    def country(cls, address: str | None) -> str | None:
        if not address:
            return None
        if cls._lookup is None:
            from geoip2fast import GeoIP2Fast

            cls._lookup = GeoIP2Fast(verbose=False)
        try:
            code = cls._lookup.lookup(address).country_code
        except Exception:  # a malformed address is an unknown country, never a failed redirect
            return None
        return code if code and _COUNTRY.match(code) else None


class ClickCapture:
    """Build a click from a request's WSGI environ: everything the stats need, and no raw IP."""

    def __init__(self, visitor_keys: VisitorKeys, country_header: str, honor_dnt: bool) -> None:
        self.visitor_keys = visitor_keys
        # The CDN's country header as the WSGI environ names it (CF-IPCountry → HTTP_CF_IPCOUNTRY).
        self.country_environ_key = "HTTP_" + country_header.upper().replace("-", "_") if country_header else ""
        self.honor_dnt = honor_dnt

    def should_record(self, environ: dict) -> bool:
        """HEAD is not a click; neither is a visit that opted out when the operator honours DNT/GPC."""
        if environ["REQUEST_METHOD"] == "HEAD":
            return False
        return not (self.honor_dnt and (environ.get("HTTP_DNT") == "1" or environ.get("HTTP_SEC_GPC") == "1"))

    def capture(self, environ: dict) -> dict:
        """The click's fields (JSON-ready) for the stream; link and account are added by whoever resolves it.

        It reads the WSGI environ, not a Flask request, because the redirect's fast path answers without one.
        """
        address = environ.get("REMOTE_ADDR") or ""
        user_agent = environ.get("HTTP_USER_AGENT", "")[:512]
        country = None
        if self.country_environ_key:
            header = environ.get(self.country_environ_key, "").upper()
            country = header if _COUNTRY.match(header) and header not in {"XX", "T1"} else None
        if country is None:
            country = Geo.country(address)
        digest = hmac.new(self.visitor_keys.today(), f"{address}|{user_agent}".encode(), hashlib.sha256)
        click = {
            "id": str(uuid6.uuid7()),
            "ts": time.time(),
            "ref": _clean(environ.get("HTTP_REFERER"), 1024),
            "ua": user_agent,
            "bot": is_bot(user_agent),
            "cc": country,
            "vid": digest.hexdigest()[:32],
        }
        query = environ.get("QUERY_STRING", "")
        if "utm" in query:  # utm_ or utm%5F
            # WSGI hands the raw bytes over as latin-1; they are UTF-8, as werkzeug reads them.
            for field, value in parse_qsl(query.encode("latin-1", "replace").decode("utf-8", "replace")):
                value = _clean(value, 200)
                if field in UTM_FIELDS and value and field not in click:
                    click[field] = value
        return click


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
    return (
        click["id"],
        datetime.fromtimestamp(click["ts"], UTC),
        link_id,
        account_id,
        referrer,
        host,
        browser,
        os_family,
        "bot" if click.get("bot") else device,
        bool(click.get("bot")),
        click.get("cc"),
        *(click.get(field) for field in UTM_FIELDS),
        click["vid"],
    )


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
        with db.pool.connection() as conn:
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
            with self.db.pool.connection() as conn:
                ingest(conn, [to_row(click, link_id, account_id)])
            return "postgresql"
        except (psycopg.Error, *UNAVAILABLE_ERRORS):  # unreachable, read-only after a failover…: keep it locally
            try:
                self.spool.append(click, link_id, account_id)
                return "spool"
            except OSError:
                self.dropped += 1
                log.error("click %s dropped: PostgreSQL, Redis and the spool directory all failed", click["id"])
                return "dropped"


class Drainer:
    """Moves clicks from the Redis stream into PostgreSQL in batches: XREADGROUP → COPY/INSERT → XACK."""

    GROUP = "drainers"

    def __init__(
        self,
        cache: Cache,
        db: Database,
        spool: Spool,
        *,
        batch: int,
        reclaim_idle_ms: int,
        gather_ms: int = 250,
        months_ahead: int = 2,
    ) -> None:
        self.gather_seconds = gather_ms / 1000
        self.stream = cache.keys.click_stream()
        self.dead_letters = f"{self.stream}:dead"
        self.block_ms = 1000
        # Its own client: XREADGROUP blocks longer than the hot path's short socket timeout allows.
        self.redis = redis.Redis(
            connection_pool=redis.ConnectionPool.from_url(
                cache.url, socket_timeout=self.block_ms / 1000 + 2, socket_connect_timeout=1, decode_responses=True
            )
        )
        self.db, self.spool = db, spool
        self.batch, self.reclaim_idle_ms, self.months_ahead = batch, reclaim_idle_ms, months_ahead
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"
        self._group_ready = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- one step each; tests call these directly ---------------------------------------------------------
    def ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.redis.xgroup_create(self.stream, self.GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def maintain(self) -> None:
        """Partitions for the coming months; forget old visitor keys and visitor sets."""
        with self.db.pool.connection() as conn:
            conn.execute("select maintain_clicks(%s)", [self.months_ahead])

    def drain_once(self, block_ms: int | None = None) -> int:
        """Read one batch for this consumer and move it into PostgreSQL; return how many entries were handled."""
        self.ensure_group()
        try:
            reply = self.redis.xreadgroup(
                self.GROUP, self.consumer, {self.stream: ">"}, count=self.batch, block=block_ms
            )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # Redis restarted without its data: the group is gone with the stream
                self._group_ready = False
                return 0
            raise
        entries = reply[0][1] if reply else []
        return self._move(entries)

    def reclaim(self) -> int:
        """Take over entries a dead consumer read but never acknowledged, and move them."""
        self.ensure_group()
        moved, cursor = 0, "0-0"
        while True:
            cursor, entries, *_ = self.redis.xautoclaim(
                self.stream,
                self.GROUP,
                self.consumer,
                min_idle_time=self.reclaim_idle_ms,
                start_id=cursor,
                count=self.batch,
            )
            moved += self._move(entries)
            if cursor == "0-0" or not entries:
                return moved

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
            with self.db.pool.connection() as conn:
                ingest(conn, [row for _, _, row in rows])
        except UNAVAILABLE_ERRORS:
            raise
        except psycopg.Error:
            # One row PostgreSQL refuses must not hold up the rest: retry them one by one.
            for _, fields, row in rows:
                try:
                    with self.db.pool.connection() as conn:
                        ingest(conn, [row])
                except UNAVAILABLE_ERRORS:
                    raise
                except psycopg.Error as exc:
                    dead.append((fields, f"refused: {type(exc).__name__}"))
        # Only after the commit: a crash before this line re-delivers the batch, and the insert ignores repeats.
        with self.redis.pipeline(transaction=False) as pipe:
            for fields, reason in dead:  # kept for a person to look at, never silently dropped
                pipe.xadd(self.dead_letters, {**fields, "error": reason})
            pipe.xack(self.stream, self.GROUP, *ids)
            pipe.xdel(self.stream, *ids)
            pipe.execute()
        if dead:
            log.error("%d click entries could not be stored; kept in %s", len(dead), self.dead_letters)
        return len(ids)

    def pending(self) -> int:
        """Entries in the stream not yet moved (read or not)."""
        return int(self.redis.xlen(self.stream))

    # --- the background thread ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="click-drainer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=self.block_ms / 1000 + 3)

    def _run(self) -> None:
        last_maintenance = last_reclaim = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            # Each step on its own: a failing one (a dead PostgreSQL for the spool) must not stop the others.
            if now - last_maintenance > 3600 and self._guarded(self.maintain):
                last_maintenance = now
            if now - last_reclaim > max(1.0, self.reclaim_idle_ms / 2000):
                self._guarded(self.reclaim)
                self._guarded(lambda: self.spool.drain(self.db))
                last_reclaim = now
            moved = self._guarded_count(lambda: self.drain_once(block_ms=self.block_ms))
            if moved is None:
                self._stop.wait(1)
            elif moved < self.batch:
                # Not a full batch: let clicks gather before the next transaction. A PostgreSQL transaction per
                # handful of clicks costs more CPU than the redirects that made them (measured with make bench).
                self._stop.wait(self.gather_seconds)

    def _guarded(self, step) -> bool:
        return self._guarded_count(step) is not None

    def _guarded_count(self, step) -> int | None:
        try:
            return step() or 0
        except (redis.RedisError, *UNAVAILABLE_ERRORS) as exc:
            log.warning("click drainer waiting for its dependencies: %s", type(exc).__name__)
            self._group_ready = False
        except Exception:
            log.exception("click drainer step failed; retrying")
        return None
