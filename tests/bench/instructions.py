"""`make bench-instructions`: instructions per cached redirect, counted by callgrind, for two revisions side by side."""

# Why instructions: on this 2-CPU virtual machine requests/s drift by more than the gap a change makes (the same
# commit measured twice differs by 10-20 %), so `make bench` cannot show whether a change made the redirect slower.
# callgrind counts the instructions a process executes: the same code, inputs and environment give the same count
# whatever else the machine is doing. It runs the code ~50 times slower, which is why this is a separate command.
#
# For each revision (BEFORE, default the last commit before issue 10's first merge, and the working tree):
#   * a database of its own on the local PostgreSQL, migrated, with an API key (the revision's own CLI) and
#     BENCH_LINKS links created through its API;
#   * a private redis-server under callgrind (so the Lua of the redirect is counted too) on a free loopback port;
#   * gunicorn.conf.py + wsgi:app of that revision under callgrind: one worker, one thread, the background process
#     off (draining clicks is not the redirect), rate limits on but unreachable, as in `make bench`;
#   * every link requested once (cache filled), then cached redirects one at a time on one keep-alive connection
#     (every answer must be a 302 with an X-Click-Id), then gunicorn and Redis stopped: each writes its count.
#   * That whole run twice, with BENCH_WARMUP and with BENCH_WARMUP + BENCH_REQUESTS redirects: the difference
#     over BENCH_REQUESTS is the cost of one redirect, start-up, link creation and shut-down cancelling out.
#     (callgrind_control cannot reach a forked gunicorn worker, so the counters cannot be zeroed in between.)
# Printed: instructions per redirect in the gunicorn worker and in Redis, Redis commands and PostgreSQL
# transactions per redirect, and the ratio of the working tree to BEFORE.
# Both revisions run with this tree's virtualenv (a revision needing packages it lacks fails loudly).

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis
import requests

from tests.bench.run import LIMIT_SETTINGS, UNREACHABLE_LIMIT
from tests.support import drop_database, free_port

ROOT = Path(__file__).resolve().parents[2]
PG_SERVER = os.environ.get("BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
GIT = shutil.which("git") or "git"
DEFAULT_BEFORE = "489d0b3"  # main before b908f7f, the first merge of issue 10 (issues 10, 11, 13 came after it)
START_TIMEOUT_SECONDS = 600  # gunicorn's imports and the first requests take minutes under callgrind


class BenchError(Exception):
    pass


@dataclass
class Count:
    label: str
    worker_instructions: int
    redis_instructions: int
    redis_commands: int
    pg_transactions: int
    requests: int

    def per_request(self, total: int) -> float:
        return total / self.requests


def callgrind(out_file: Path) -> list[str]:
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", "--dump-instr=no", "--quiet"]


def total_instructions(dump: Path) -> int:
    """The Ir total of one complete callgrind dump (its closing totals: line)."""
    match = re.search(r"^totals:\s+(\d+)", dump.read_text(errors="replace"), re.MULTILINE)
    if not match:  # the process was killed before callgrind finished writing
        raise BenchError(f"no instruction total in {dump}")
    return int(match.group(1))


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def wait_until(check, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = check()
            if value:
                return value
        if process is not None and process.poll() is not None:
            raise BenchError(f"{what}: the process exited ({process.returncode})")
        time.sleep(0.5)
    raise BenchError(f"{what}: not within {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(START_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def pg_transactions(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(1.5)  # other backends' counters reach the shared statistics at most ~1 s after their transaction
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
        return int(row[0])


def redis_commands(client: redis.Redis) -> int:
    return sum(int(stats["calls"]) for stats in client.info("commandstats").values())


def measure(label: str, tree: Path, links: int, warmup: int, count: int, work: Path) -> Count:
    """Instructions for count cached redirects of the revision checked out at tree (see the top of this file)."""
    run_id = secrets.token_hex(4)
    dbname = f"chatlink_instr_{run_id}"
    out_dir = work / f"{label}-{count}".replace(" ", "-")
    out_dir.mkdir()
    # Bytecode compiled now, not by whichever run imports a module first (it would count in that run only).
    subprocess.run([sys.executable, "-m", "compileall", "-q", "service", "wsgi.py", "gunicorn.conf.py"], cwd=tree)
    with contextlib.ExitStack() as cleanup:
        with psycopg.connect(PG_SERVER, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        cleanup.callback(drop_database, PG_SERVER, dbname)
        database_url = PG_SERVER.rsplit("/", 1)[0] + f"/{dbname}"

        redis_port = free_port()
        redis_server = subprocess.Popen(
            callgrind(out_dir / "redis.%p")
            + ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            # Its timer work grows with the run's length, not with the requests: at 1 Hz it is next to nothing.
            + ["--hz", "1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        cleanup.callback(stop, redis_server)
        client = redis.Redis(port=redis_port)
        wait_until(client.ping, 120, "redis-server under callgrind", redis_server)

        port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "APP_DATABASE_URL": "",
            "REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "KEY_PREFIX": "chatlink:",
            "BASE_URL": "",
            "PORT": str(port),
            "BIND": "127.0.0.1",
            "WEB_CONCURRENCY": "1",
            "WORKER_THREADS": "1",
            "GUNICORN_TIMEOUT": str(START_TIMEOUT_SECONDS),
            # Timeouts far above what callgrind's slowness needs: a timed-out call would take another path.
            "REDIS_TIMEOUT_MS": "5000",
            "DB_TIMEOUT_MS": "60000",
            "DRAIN_CLICKS": "0",
            "DELIVER_EVENTS": "0",
            "RATE_LIMITS_ENABLED": "1",
            **{name: UNREACHABLE_LIMIT for name in LIMIT_SETTINGS},
            "ACCESS_LOG": "0",
            "LOG_LEVEL": "warning",
            "PYTHONHASHSEED": "0",
        }
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        cli = subprocess.run(
            [sys.executable, "-m", "service.cli", "api-key", "instructions"],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if cli.returncode != 0:
            raise BenchError(f"{label}: service.cli api-key failed: {cli.stderr}")
        key = cli.stdout.strip().splitlines()[-1]

        log = (out_dir / "gunicorn.log").open("wb")
        cleanup.callback(log.close)
        gunicorn = subprocess.Popen(
            callgrind(out_dir / "gunicorn.%p")
            + [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
            # A worker killed at the end of the grace period would leave its count unwritten.
            + ["--graceful-timeout", str(START_TIMEOUT_SECONDS), "wsgi:app"],
            cwd=tree,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        cleanup.callback(stop, gunicorn)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{base}/livez", timeout=60).ok, START_TIMEOUT_SECONDS, "gunicorn", gunicorn)
        (worker,) = wait_until(lambda: children(gunicorn.pid), 60, "gunicorn's worker")

        session = requests.Session()
        slugs = []
        for i in range(links):
            body = {"phone": "+55 11 98765-4321", "message": f"Olá! Bench link {i} 👋", "tags": ["bench"]}
            created = session.post(
                f"{base}/api/v1/links", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
            )
            if created.status_code != 201:
                raise BenchError(f"{label}: POST /api/v1/links answered {created.status_code}: {created.text[:300]}")
            slugs.append(created.json()["slug"])

        def redirect(i: int) -> None:
            response = session.get(f"{base}/{slugs[i % len(slugs)]}", allow_redirects=False, timeout=120)
            if response.status_code != 302 or "X-Click-Id" not in response.headers:
                raise BenchError(f"{label}: GET /{slugs[i % len(slugs)]} answered {response.status_code}")

        for i in range(links + warmup + count):  # the first len(slugs) fill the cache
            redirect(i)
        session.close()
        commands, transactions = redis_commands(client), pg_transactions(database_url)
        stop(gunicorn)
        client.close()
        stop(redis_server)  # both write their counts when they exit
        warnings = (out_dir / "gunicorn.log").read_text(errors="replace").strip()
        if warnings:  # LOG_LEVEL=warning: anything logged means a path other than the plain redirect ran
            raise BenchError(f"{label}: gunicorn logged during the run:\n{warnings}")
        return Count(
            label,
            total_instructions(out_dir / f"gunicorn.{worker}"),
            total_instructions(out_dir / f"redis.{redis_server.pid}"),
            commands,
            transactions,
            count,
        )


def per_redirect(label: str, tree: Path, links: int, warmup: int, count: int, work: Path) -> Count:
    """The difference between a run of warmup + count redirects and one of warmup: count redirects' worth."""
    short = measure(label, tree, links, warmup, 0, work)
    long = measure(label, tree, links, warmup, count, work)
    return Count(
        label,
        long.worker_instructions - short.worker_instructions,
        long.redis_instructions - short.redis_instructions,
        long.redis_commands - short.redis_commands,
        long.pg_transactions - short.pg_transactions,
        count,
    )


def report(counts: list[Count]) -> list[str]:
    lines = [
        f"{'revision':<24} {'worker instr/redirect':>22} {'Redis instr/redirect':>21} "
        f"{'Redis cmds':>10} {'PG xacts':>9}"
    ]
    for c in counts:
        lines.append(
            f"{c.label:<24} {c.per_request(c.worker_instructions):>22,.0f} "
            f"{c.per_request(c.redis_instructions):>21,.0f} "
            f"{c.redis_commands / c.requests:>10.2f} {c.pg_transactions / c.requests:>9.3f}"
        )
    if len(counts) == 2:
        before, after = counts

        def ratio(field: str) -> float:
            return getattr(after, field) / getattr(before, field)

        total_before = before.worker_instructions + before.redis_instructions
        total_after = after.worker_instructions + after.redis_instructions
        lines.append(
            f"after / before: worker {ratio('worker_instructions'):.3f}, Redis {ratio('redis_instructions'):.3f}, "
            f"both {total_after / total_before:.3f}"
        )
    return lines


def main() -> int:
    before = os.environ.get("BEFORE", DEFAULT_BEFORE)
    links = int(os.environ.get("BENCH_LINKS", "20"))
    warmup = int(os.environ.get("BENCH_WARMUP", "200"))
    count = int(os.environ.get("BENCH_REQUESTS", "1000"))
    if not shutil.which("valgrind"):
        print("bench-instructions: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="chatlink-instructions-"))
    old_tree = work / "before"
    try:
        revision = subprocess.run(
            [GIT, "rev-parse", "--short", before], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        subprocess.run([GIT, "worktree", "add", "--detach", "-q", str(old_tree), revision], cwd=ROOT, check=True)
        head = subprocess.run(
            [GIT, "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        print(f"{count} cached redirects, one at a time, after {links} links and {links + warmup} warm-up redirects")
        counts = [
            per_redirect(f"before {revision}", old_tree, links, warmup, count, work),
            per_redirect(f"after {head}", ROOT, links, warmup, count, work),
        ]
        print("\n".join(report(counts)))
        return 0
    except BenchError as exc:
        print(f"bench-instructions: {exc}", file=sys.stderr)
        return 1
    finally:
        subprocess.run([GIT, "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, capture_output=True)
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"callgrind files kept in {work}")


if __name__ == "__main__":
    sys.exit(main())
