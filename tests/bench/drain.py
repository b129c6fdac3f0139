"""`python -m tests.bench.drain`: the click drain rate alone — `make bench`'s own measurement (Bench.measure_drain_rate:
a backlog on a Redis stream moved into PostgreSQL, clicks and every roll-up, by the service's Drainer), in a database
of its own, without the HTTP scenarios around it; BENCH_DRAIN_RUNS (3) runs, each rate printed, then the median."""

from __future__ import annotations

import contextlib
import re
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import psycopg
import redis

from service.auth import issue_key
from service.config import load_settings
from service.platform import localservices, migrations
from tests.bench.analytics import integer
from tests.bench.run import ROOT, Bench, BenchError, delete_keys
from tests.support import drop_database

TARGET = 20_000


def main() -> int:
    """Create a database with 200 links, measure the drain BENCH_DRAIN_RUNS times; clean up whatever happens."""
    runs = integer("BENCH_DRAIN_RUNS", 3)
    with contextlib.ExitStack() as cleanup:
        require = load_settings().require_services
        pg_server, _ = localservices.server_url(ROOT / ".data", require)
        redis_url, _ = localservices.redis_url(ROOT / ".data", require)
        run_id = secrets.token_hex(5)
        dbname, prefix = f"chatlink_bench_drain_{run_id}", f"chatlink-bench-drain-{run_id}:"
        localservices.create_database(pg_server, dbname)
        cleanup.callback(drop_database, pg_server, dbname)
        owner_url = localservices.with_database(pg_server, dbname)
        migrations.migrate(owner_url)
        cleanup.callback(delete_keys, redis.Redis.from_url(redis_url), prefix)
        workdir = Path(tempfile.mkdtemp(prefix="chatlink-bench-drain-"))
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
        with psycopg.connect(owner_url, autocommit=True) as conn:
            issue_key(conn, "bench-drain")
            conn.execute(
                "insert into links (account_id, slug, phone) select id, 'drain-' || i, '+14155552671'"
                " from accounts, generate_series(1, 200) as i where name = 'bench-drain'"
            )
        # What Bench.measure_drain_rate reads of the bench it belongs to.
        bench = SimpleNamespace(
            owner_url=owner_url, env={"REDIS_URL": redis_url}, prefix=prefix, workdir=workdir, cleanup=cleanup, notes=[]
        )
        rates = []
        for _ in range(runs):
            Bench.measure_drain_rate(bench)
            print(bench.notes[-1])
            rates.append(float(re.search(r"= ([\d,]+) clicks/s", bench.notes[-1]).group(1).replace(",", "")))
        median = statistics.median(rates)
        verdict = "met" if median >= TARGET else "MISSED"
        print(f"drain rate, median of {runs}: {median:,.0f} clicks/s   target >= {TARGET:,} clicks/s: {verdict}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"\nbench drain: FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
