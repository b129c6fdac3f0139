"""`make bench-analytics`: analytics at scale — 10 million clicks over 12 months for 10,000 links of one account,
then link stats, account stats, the link list and a 1-million-row CSV export measured through gunicorn."""

# How it works:
#
# * Its own database chatlink_bench_analytics_<random> (dropped at the end, also after a failure or Ctrl-C) and
#   Redis key prefix. One account, BENCH_ANALYTICS_LINKS links, BENCH_ANALYTICS_CLICKS clicks COPYed straight into
#   `clicks` (the drainer's path is measured by `make bench`), spread over the last 365 days: one link gets
#   BENCH_ANALYTICS_BIG_LINK clicks (the CSV export's subject), the others a Zipf-like share (a few links get most
#   clicks), with a mix of countries, referrers, devices, UTM values and about 5 % bots. The roll-ups (hourly,
#   daily, daily by dimension) are then built from the clicks in SQL, as ingest_clicks() would have built them.
# * gunicorn with gunicorn.conf.py; each measured request is sent BENCH_ANALYTICS_REQUESTS times, one at a time
#   (latency, not throughput), after two warm-up requests; p50 and p99 are reported with their target.
# * The CSV export streams every click of the big link in the last 365 days; rows/s and the peak RSS of the
#   gunicorn workers during the export (sampled every 50 ms) are reported.

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg
import redis
import requests

from service.auth import issue_key
from service.config import load_settings
from service.platform import localservices, migrations
from tests.bench.run import ROOT, BenchError, Server, delete_keys
from tests.support import drop_database

COUNTRIES = ["BR"] * 30 + ["US"] * 15 + ["IN"] * 12 + ["MX"] * 8 + ["DE", "GB", "FR", "ES", "PT", "AR", "CO", ""] * 4
REFERRERS = ["", "", "l.instagram.com", "m.facebook.com", "t.co", "www.google.com", "lnkd.in", "web.whatsapp.com"]
AGENTS = [  # (browser, os, device type, is bot)
    ("Mobile Safari", "iOS", "phone", False),
    ("Chrome Mobile", "Android", "phone", False),
    ("Samsung Internet", "Android", "phone", False),
    ("Chrome", "Windows", "desktop", False),
    ("Safari", "Mac OS X", "desktop", False),
    ("Mobile Safari", "iOS", "tablet", False),
    ("Firefox", "Linux", "desktop", False),
]
BOTS = [("WhatsApp", "", "bot", True), ("FacebookBot", "", "bot", True)]
UTM_SOURCES = ["", "", "ig", "fb", "google", "newsletter", "tiktok"]
UTM_MEDIUMS = ["", "", "social", "cpc", "email"]
UTM_CAMPAIGNS = ["", "", "black-friday", "xmas", "summer", "launch", "retarget"]
NULL = "\\N"  # COPY's text format for SQL NULL
TARGETS_MS = {"link stats": 50, "account stats": 200, "link list": 50}


def integer(name: str, default: int) -> int:
    """A positive whole number from the environment."""
    raw = os.environ.get(name, str(default)).replace("_", "")
    if not raw.isdigit() or int(raw) < 1:
        raise BenchError(f"{name} must be a positive whole number, not {raw!r}")
    return int(raw)


def generate_clicks(conn: psycopg.Connection, account_id: int, link_ids: list[int], clicks: int, big: int) -> None:
    """COPY the clicks into `clicks`: big of them on link_ids[0], the rest Zipf-like over the others."""
    rng = random.Random(2026)
    others = link_ids[1:]
    weights = [1 / (rank**1.1) for rank in range(1, len(others) + 1)]
    rng.shuffle(others)
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=d)).isoformat() for d in range(1, 366)]
    agents = AGENTS * 19 + BOTS  # about 5 % bots
    columns = (
        "click_id, clicked_at, link_id, account_id, referrer, referrer_host, browser, os, device_type, is_bot,"
        " country, utm_source, utm_medium, utm_campaign, utm_content, utm_term, visitor_id"
    )
    chunk = 100_000
    with conn.cursor().copy(f"copy clicks ({columns}) from stdin") as copy:
        for start in range(0, clicks, chunk):
            n = min(chunk, clicks - start)
            big_here = max(0, min(n, big - start))  # the first `big` clicks belong to the big link
            targets = [link_ids[0]] * big_here + rng.choices(others, weights, k=n - big_here)
            lines = []
            for i, link_id in enumerate(targets, start):
                browser, os_family, device, bot = rng.choice(agents)
                host = rng.choice(REFERRERS)
                second = rng.randrange(86400)
                lines.append(
                    f"00000000-0000-4000-8000-{i:012x}\t{rng.choice(days)} {second // 3600:02d}:{second // 60 % 60:02d}"
                    f":{second % 60:02d}+00\t{link_id}\t{account_id}\t{'https://' + host + '/' if host else NULL}\t"
                    f"{host or NULL}\t{browser}\t{os_family or NULL}\t{device}\t{'t' if bot else 'f'}\t"
                    f"{rng.choice(COUNTRIES) or NULL}\t{rng.choice(UTM_SOURCES) or NULL}\t"
                    f"{rng.choice(UTM_MEDIUMS) or NULL}\t{rng.choice(UTM_CAMPAIGNS) or NULL}\t{NULL}\t{NULL}\t"
                    f"{rng.randrange(3_000_000):032x}\n"
                )
            copy.write("".join(lines))


ROLL_UPS = (
    # What ingest_clicks() maintains, built at once from the clicks (unique visitors as distinct ids per hour),
    # then the daily ones by the function migration 0009 uses, and the monthly and per-account ones by 0010's.
    """insert into click_rollups (link_id, account_id, hour, clicks, bot_clicks, unique_visitors)
       select link_id, account_id, date_trunc('hour', clicked_at), count(*) filter (where not is_bot),
              count(*) filter (where is_bot), count(distinct visitor_id) filter (where not is_bot)
         from clicks group by 1, 2, 3""",
    "select rebuild_daily_rollups()",
    "select rebuild_long_rollups()",
    "vacuum analyze",  # as autovacuum would have: the account stats read the roll-ups' indexes alone
)


def timed(session: requests.Session, url: str, headers: dict, times: int) -> list[float]:
    """Milliseconds of `times` sequential GETs of url (after two warm-ups); each must answer 200."""
    samples = []
    for n in range(times + 2):
        started = time.perf_counter()
        response = session.get(url, headers=headers, timeout=60)
        elapsed = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise BenchError(f"GET {url} answered {response.status_code}: {response.text[:300]}")
        if n >= 2:
            samples.append(elapsed)
    return samples


def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile (nearest rank)."""
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


class PeakRss:
    """Samples the summed RSS of a gunicorn master's workers every 50 ms; the peak is kept."""

    def __init__(self, master_pid: int) -> None:
        self.master, self.peak, self.baseline = psutil.Process(master_pid), 0, 0
        self._stop = threading.Event()
        self.baseline = self._worker_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _worker_rss(self) -> int:
        return max((child.memory_info().rss for child in self.master.children()), default=0)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._worker_rss())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def generate(owner_url: str, clicks: int, links: int, big: int) -> str:
    """Create the account, its links and clicks and the roll-ups; return the account's API key."""
    print(f"Chatlink analytics benchmark: {clicks:,} clicks over 365 days, {links:,} links, one account")
    generation = time.monotonic()
    with psycopg.connect(owner_url, autocommit=True) as conn:
        key = issue_key(conn, "bench-analytics")
        account_id = conn.execute("select id from accounts where name = 'bench-analytics'").fetchone()[0]
        link_ids = [
            row[0]
            for row in conn.execute(
                "insert into links (account_id, slug, phone, title, created_at, updated_at)"
                " select %s, 'bench-' || i, '+14155552671', 'Link ' || i, now() - make_interval(mins => i),"
                " now() from generate_series(1, %s) as i returning id",
                [account_id, links],
            )
        ]
        with conn.transaction():
            generate_clicks(conn, account_id, sorted(link_ids), clicks, big)
        copied = time.monotonic()
        for statement in ROLL_UPS:
            conn.execute(statement)
        size = conn.execute("select pg_size_pretty(pg_database_size(current_database()))").fetchone()[0]
    print(
        f"generated in {time.monotonic() - generation:.0f}s (COPY {copied - generation:.0f}s, roll-ups and "
        f"ANALYZE {time.monotonic() - copied:.0f}s); database size {size}"
    )

    return key


def main() -> int:
    """Generate, measure, report; clean up whatever happens."""
    clicks = integer("BENCH_ANALYTICS_CLICKS", 10_000_000)
    links = integer("BENCH_ANALYTICS_LINKS", 10_000)
    big = min(clicks, integer("BENCH_ANALYTICS_BIG_LINK", 1_000_000))
    times = integer("BENCH_ANALYTICS_REQUESTS", 100)
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup:
        require = load_settings().require_services
        pg_server, _ = localservices.server_url(ROOT / ".data", require)
        redis_url, _ = localservices.redis_url(ROOT / ".data", require)
        run_id = secrets.token_hex(5)
        reuse = os.environ.get("BENCH_ANALYTICS_REUSE", "")  # a database a BENCH_ANALYTICS_KEEP=1 run left behind
        dbname, prefix = reuse or f"chatlink_bench_analytics_{run_id}", f"chatlink-bench-analytics-{run_id}:"
        if not reuse:
            localservices.create_database(pg_server, dbname)
            if os.environ.get("BENCH_ANALYTICS_KEEP") == "1":
                print(f"keeping the database {dbname} (BENCH_ANALYTICS_REUSE={dbname} measures it again)")
            else:
                cleanup.callback(drop_database, pg_server, dbname)
        owner_url = localservices.with_database(pg_server, dbname)
        migrations.migrate(owner_url)
        client = redis.Redis.from_url(redis_url)
        cleanup.callback(delete_keys, client, prefix)
        workdir = Path(tempfile.mkdtemp(prefix="chatlink-bench-analytics-"))
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)

        if reuse:
            with psycopg.connect(owner_url, autocommit=True) as conn:
                key = issue_key(conn, "bench-analytics")
                links = conn.execute("select count(*) from links").fetchone()[0]
                clicks = conn.execute("select count(*) from clicks").fetchone()[0]
            print(f"Chatlink analytics benchmark: the database {dbname} again, {clicks:,} clicks, {links:,} links")
        else:
            key = generate(owner_url, clicks, links, big)

        env = {
            "DATABASE_URL": owner_url,
            "APP_DATABASE_URL": "",
            "REDIS_URL": redis_url,
            "KEY_PREFIX": prefix,
            "RATE_LIMITS_ENABLED": "0",
            "ACCESS_LOG": "0",
            "DRAIN_CLICKS": "0",
            "DELIVER_EVENTS": "0",
            "SPOOL_DIR": str(workdir / "spool"),
            "LOG_LEVEL": "warning",
        }
        server = Server("chatlink", ["-c", "gunicorn.conf.py", "wsgi:app"], env, workdir / "gunicorn.log")
        cleanup.callback(server.stop)
        session = requests.Session()
        auth = {"Authorization": f"Bearer {key}"}
        year_ago = (datetime.now(UTC) - timedelta(days=365)).date().isoformat()
        month_ago = (datetime.now(UTC) - timedelta(days=30)).date().isoformat()
        rng = random.Random(7)
        typical = f"bench-{rng.randrange(2, links + 1)}"
        stats = "/api/v1/links/{}/stats?from={}&top=100"
        measured = [
            ("link stats", "big link, 30 days, all breakdowns", stats.format("bench-1", month_ago)),
            ("link stats", "big link, 365 days, all breakdowns", stats.format("bench-1", year_ago)),
            ("link stats", "a typical link, 365 days", stats.format(typical, year_ago)),
            ("link stats", "big link, 365 days, Asia/Kolkata", stats.format("bench-1", year_ago) + "&tz=Asia/Kolkata"),
            ("account stats", "30 days (the default)", "/api/v1/stats"),
            ("account stats", "365 days", f"/api/v1/stats?from={year_ago}"),
            ("link list", "first page of 20", "/api/v1/links?limit=20"),
            ("link list", "100 per page, text search", "/api/v1/links?limit=100&q=99"),
        ]
        print(f"\n{'request':<55} {'p50 ms':>8} {'p99 ms':>8}  target")
        for kind, label, path in measured:
            samples = timed(session, server.url + path, auth, times)
            p50, p99 = statistics.median(samples), percentile(samples, 99)
            target = TARGETS_MS[kind]
            verdict = "met" if p99 < target else "MISSED"
            print(f"{kind + ': ' + label:<55} {p50:8.1f} {p99:8.1f}  p99 < {target} ms: {verdict}")

        rss = PeakRss(server.process.pid)
        export_started = time.perf_counter()
        rows = -1  # the header line
        with session.get(
            f"{server.url}/api/v1/links/bench-1/clicks?from={year_ago}",
            headers={**auth, "Accept": "text/csv"},
            stream=True,
            timeout=600,
        ) as response:
            if response.status_code != 200:
                raise BenchError(f"CSV export answered {response.status_code}")
            for chunk in response.iter_content(chunk_size=1 << 16):
                rows += chunk.count(b"\n")
        seconds = time.perf_counter() - export_started
        peak = rss.stop()
        rate = rows / seconds
        print(
            f"\nCSV export of the big link: {rows:,} rows in {seconds:.1f}s = {rate:,.0f} rows/s   target >= 100,000 "
            f"rows/s: {'met' if rate >= 100_000 else 'MISSED'}"
        )
        print(f"worker RSS: {rss.baseline / 2**20:.0f} MiB before the export, peak {peak / 2**20:.0f} MiB during it")
    print(f"\nbench-analytics: done in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"\nbench-analytics: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
