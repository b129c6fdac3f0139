"""`make bench`: wrk against gunicorn serving Chatlink and a bare Flask baseline, in a database of its own."""

# How it works (see also "## Benchmark" in README.md):
#
# * PostgreSQL and Redis are the local ones (or embedded, as for `make test`): the harness creates and
#   migrates database chatlink_bench_<random>, writes Redis keys only under chatlink-bench-<random>:, and
#   drops / deletes both at the end, also after a failure or Ctrl-C.
# * Servers run one at a time so that only one of them competes with wrk for the CPUs: first the baseline
#   (tests/bench/baseline_app.py: Flask answering a fixed 302, no I/O) with exactly the plain settings of
#   gunicorn.conf.py (copied into a temporary config without its start-up hooks), then Chatlink with
#   gunicorn.conf.py itself. WEB_CONCURRENCY, WORKER_THREADS and GUNICORN_CMD_ARGS reach both alike.
# * Scenarios, each one wrk run of BENCH_DURATION with BENCH_CONNECTIONS connections over BENCH_THREADS threads:
#     (a) GET /<slug> on the baseline;
#     (b) GET /<slug> on Chatlink, cycling through BENCH_LINKS links created through the API and then requested
#         once each, so every request is a Redis cache hit;
#     (c) GET /<slug> on Chatlink where every request is a cache miss: links inserted straight into PostgreSQL
#         (never cached, never requested) and walked through once each, in order, by all wrk threads together;
#         enough of them are inserted right before the run (from (b)'s rate, an upper bound for (c)'s) that
#         no slug is requested twice; the script counts any repeat and the harness checks how many link
#         entries the run left in Redis, which is how many slugs missed;
#     (d) POST /api/v1/links with an API key: a new link with a generated slug per request.
# * Rate limits are off (RATE_LIMITS_ENABLED=0) and so is the access log (ACCESS_LOG=0).
# * The exit status is non-zero only when the harness itself fails; missed targets are reported, not fatal.

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import re
import runpy
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import redis
import requests
from gunicorn.config import KNOWN_SETTINGS

from service import localservices, migrations
from service.auth import issue_key

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LUA = HERE / "counter.lua"
MISS_PREFIX = "bench-miss-"
CLICK_WAIT_SECONDS = 60
TARGET_RATIO_B = 0.8
TARGET_P99_B_MS = 10.0


class BenchError(RuntimeError):
    """The harness could not do its job (as opposed to the service missing a target)."""


@dataclass(frozen=True)
class Options:
    """What the environment asks for."""

    duration_s: int
    connections: int
    threads: int
    links: int
    miss_links: int  # 0: size from (b)'s rate
    scenarios: str

    @classmethod
    def from_env(cls) -> Options:
        def integer(name: str, default: int, low: int = 1) -> int:
            raw = os.environ.get(name, "").strip() or str(default)
            try:
                value = int(raw)
            except ValueError:
                raise BenchError(f"{name}={raw!r} is not an integer") from None
            if value < low:
                raise BenchError(f"{name} must be at least {low}")
            return value

        raw = os.environ.get("BENCH_DURATION", "").strip() or "10s"
        match = re.fullmatch(r"(\d+)\s*(s|m)?", raw)
        if not match or int(match[1]) < 1:
            raise BenchError(f"BENCH_DURATION={raw!r}: use seconds such as 10, 10s or 1m")
        duration = int(match[1]) * (60 if match[2] == "m" else 1)
        threads = integer("BENCH_THREADS", 2)
        connections = integer("BENCH_CONNECTIONS", 32)
        if connections < threads:
            raise BenchError("BENCH_CONNECTIONS must be at least BENCH_THREADS")
        scenarios = (os.environ.get("BENCH_SCENARIOS", "").strip() or "abcd").replace(",", "").lower()
        if not scenarios or set(scenarios) - set("abcd"):
            raise BenchError(f"BENCH_SCENARIOS={scenarios!r}: letters from a, b, c, d")
        return cls(
            duration,
            connections,
            threads,
            integer("BENCH_LINKS", 1000),
            integer("BENCH_MISS_LINKS", 0, low=0),
            scenarios,
        )


@dataclass
class Result:
    """One wrk run, parsed."""

    name: str
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    statuses: dict[int, int]
    repeats: int
    errors: dict[str, int]
    output: str = field(repr=False)

    def status_text(self) -> str:
        return " ".join(f"{code}={n}" for code, n in sorted(self.statuses.items())) or "none"

    def error_text(self) -> str:
        errors = {k: v for k, v in self.errors.items() if v and k != "status"}  # status = 4xx/5xx, shown above
        return " ".join(f"{k}={v}" for k, v in errors.items())


# --- wrk ------------------------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """The wrk binary, installed from Debian packages when missing."""
    found = shutil.which("wrk")
    if found:
        return found
    print("wrk not found: installing it with apt-get", flush=True)
    command = "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk"
    if os.geteuid() != 0 and shutil.which("sudo"):
        command = f"sudo sh -c '{command}'"
    done = subprocess.run(command, shell=True, capture_output=True, text=True)  # noqa: S602 - fixed command
    found = shutil.which("wrk")
    if done.returncode != 0 or not found:
        raise BenchError(f"could not install wrk (apt-get install wrk):\n{done.stdout}{done.stderr}")
    return found


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def parse_wrk(name: str, output: str) -> Result:
    """Requests/s and latency percentiles from wrk --latency's report; status counts from counter.lua's done()."""
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.M)
    percentiles = {
        int(p): float(value) * _UNITS_MS[unit]
        for p, value, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
    }
    total = re.search(r"^\s+(\d+) requests in ", output, re.M)
    errors = re.search(r"^bench-errors (.*)$", output, re.M)
    repeats = re.search(r"^bench-repeats (\d+)$", output, re.M)
    if not (rps and total and errors and repeats) or set(percentiles) != {50, 99}:
        raise BenchError(f"could not parse wrk's output for {name}:\n{output}")
    return Result(
        name=name,
        rps=float(rps[1]),
        p50_ms=percentiles[50],
        p99_ms=percentiles[99],
        requests=int(total[1]),
        statuses={int(c): int(n) for c, n in re.findall(r"^bench-status (\d+) (\d+)$", output, re.M)},
        repeats=int(repeats[1]),
        errors={k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", errors[1])},
        output=output,
    )


def run_wrk(wrk: str, options: Options, name: str, url: str, *script_args: str) -> Result:
    """One wrk run against url with counter.lua in the given mode."""
    command = [
        wrk,
        f"-t{options.threads}",
        f"-c{options.connections}",
        f"-d{options.duration_s}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(LUA),
        url,
        "--",
        *script_args,
    ]
    print(f"  running {name} for {options.duration_s}s ...", flush=True)
    done = subprocess.run(command, capture_output=True, text=True, timeout=options.duration_s + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk failed for {name} (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    result = parse_wrk(name, done.stdout)
    if result.requests == 0:
        raise BenchError(f"wrk completed no request for {name}:\n{done.stdout}{done.stderr}")
    return result


# --- gunicorn -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def environment(env: dict[str, str]):
    """os.environ with env applied, restored afterwards."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def production_settings(env: dict[str, str]) -> dict[str, object]:
    """The plain (non-hook) gunicorn settings gunicorn.conf.py gives under env."""
    names = {setting.name for setting in KNOWN_SETTINGS}
    try:
        with environment(env):
            namespace = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    except SystemExit as exc:
        raise BenchError(f"gunicorn.conf.py refused the settings: {exc}") from None
    return {k: v for k, v in namespace.items() if k in names and not callable(v) and not k.startswith("_")}


def write_baseline_config(settings: dict[str, object], path: Path) -> None:
    """A gunicorn config with the production settings and none of its hooks (the baseline needs no services)."""
    lines = ['"""gunicorn settings copied from gunicorn.conf.py for the benchmark baseline."""', ""]
    lines += [f"{name} = {value!r}" for name, value in sorted(settings.items())]
    path.write_text("\n".join(lines) + "\n")


class Server:
    """One gunicorn master (and its workers) on a free port, logging to a file; stopped by stop()."""

    def __init__(self, label: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.label = label
        self.port = localservices.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *args],
            cwd=ROOT,
            env={**os.environ, **env, "PORT": str(self.port)},
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the harness, which stops the server itself
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{self.url}/livez", timeout=1, allow_redirects=False)
                break
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"{label}: gunicorn did not start; its log:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- data -----------------------------------------------------------------------------------------------------


def create_links(base_url: str, key: str, count: int) -> list[str]:
    """count links created through POST /api/v1/links; their slugs."""
    session_headers = {"Authorization": f"Bearer {key}"}

    def create(i: int) -> str:
        body = {"phone": "+55 11 98765-4321", "message": f"Olá! Bench link {i} 👋", "tags": ["bench"]}
        response = requests.post(f"{base_url}/api/v1/links", json=body, headers=session_headers, timeout=30)
        if response.status_code != 201:
            raise BenchError(f"POST /api/v1/links answered {response.status_code}: {response.text[:500]}")
        return response.json()["slug"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(create, range(count)))


def warm_cache(base_url: str, slugs: list[str]) -> int:
    """Request every slug once so that it is cached; the number of 302s served."""

    def follow(slug: str) -> int:
        response = requests.get(f"{base_url}/{slug}", allow_redirects=False, timeout=30)
        if response.status_code != 302:
            raise BenchError(f"GET /{slug} answered {response.status_code} during the warm-up: {response.text[:300]}")
        return 1

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return sum(pool.map(follow, slugs))


def insert_miss_links(owner_url: str, key: str, count: int) -> None:
    """count links <MISS_PREFIX>0000001… straight into PostgreSQL: never cached, never requested."""
    public_id = key.split("_")[1]
    with psycopg.connect(owner_url, autocommit=True) as conn:
        conn.execute(
            """insert into links (account_id, slug, phone, message)
               select k.account_id, %(prefix)s || lpad(g::text, 7, '0'), '+5511987654321', 'Olá! Bench link ' || g
                 from api_keys k, generate_series(1, %(count)s) g
                where k.public_id = %(public_id)s""",
            {"prefix": MISS_PREFIX, "count": count, "public_id": public_id},
        )
        conn.execute("analyze links")


def count_keys(client: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(match=pattern, count=5000))


def check_clicks_recorded(owner_url: str, expected_302s: int, in_flight: int = 0) -> str:
    """Compare the clicks table with the 302s served: wait up to a minute for them to be written; a summary line.

    wrk stops with up to `in_flight` requests sent but unanswered; the server may still redirect (and count)
    those, so up to expected_302s + in_flight clicks are correct.
    """
    with psycopg.connect(owner_url, autocommit=True) as conn:
        if conn.execute("select to_regclass('public.clicks')").fetchone()[0] is None:
            return "clicks table not present yet: skipped"
        deadline = time.monotonic() + CLICK_WAIT_SECONDS
        started = time.monotonic()
        while True:
            found = conn.execute("select count(*) from clicks").fetchone()[0]
            if found >= expected_302s or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        waited = time.monotonic() - started
    if found < expected_302s:
        return f"clicks: found {found} of {expected_302s} expected, MISSING {expected_302s - found} after {waited:.0f}s"
    extra = found - expected_302s
    if extra > in_flight:
        return f"clicks: found {found}, {extra} MORE than the {expected_302s} redirects served (tolerance {in_flight})"
    note = f" (+{extra}: requests in flight when wrk stopped)" if extra else ""
    return f"clicks: found {found} of {expected_302s} expected{note}, all recorded within {waited:.1f}s"


# --- the report -----------------------------------------------------------------------------------------------

TITLES = {
    "a": "(a) baseline: bare Flask, fixed 302",
    "b": "(b) GET /<slug>, cached link",
    "c": "(c) GET /<slug>, cache miss",
    "d": "(d) POST /api/v1/links",
}


def report(results: dict[str, Result]) -> list[str]:
    lines = [f"{'scenario':<38} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}  status codes"]
    for key, result in results.items():
        errors = result.error_text()
        lines.append(
            f"{TITLES[key]:<38} {result.rps:>9.1f} {result.p50_ms:>8.2f} {result.p99_ms:>8.2f}  "
            f"{result.status_text()}{'  socket errors: ' + errors if errors else ''}"
        )
    lines.append("")
    base = results.get("a")
    if base:
        for key in "bcd":
            if key in results:
                ratio = results[key].rps / base.rps
                target = ""
                if key == "b":
                    verdict = "met" if ratio >= TARGET_RATIO_B else "MISSED"
                    target = f"   target (b) >= {TARGET_RATIO_B} x (a): {verdict}"
                lines.append(f"{key} / a = {ratio:.2f} x{target}")
    if "b" in results:
        p99 = results["b"].p99_ms
        verdict = "met" if p99 < TARGET_P99_B_MS else "MISSED"
        lines.append(f"p99 of (b) = {p99:.2f} ms   target p99 of (b) < {TARGET_P99_B_MS:g} ms: {verdict}")
    return lines


# --- the run --------------------------------------------------------------------------------------------------


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on `kill` as on Ctrl-C
    started = time.monotonic()
    try:
        options = Options.from_env()
        wrk = ensure_wrk()
        with contextlib.ExitStack() as cleanup:
            run(options, wrk, cleanup)
    except BenchError as exc:
        print(f"\nbench: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"\nbench: done in {time.monotonic() - started:.0f}s")
    return 0


def run(options: Options, wrk: str, cleanup: contextlib.ExitStack) -> None:
    run_id = secrets.token_hex(5)
    workdir = Path(tempfile.mkdtemp(prefix="chatlink-bench-"))
    cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)

    # Our own database and Redis namespace, dropped / deleted however the run ends.
    pg_server, pg_how = localservices.server_url(ROOT / ".data")
    redis_url, redis_how = localservices.redis_url(ROOT / ".data")
    dbname, prefix = f"chatlink_bench_{run_id}", f"chatlink-bench-{run_id}:"
    localservices.create_database(pg_server, dbname)
    cleanup.callback(localservices.drop_database, pg_server, dbname)
    owner_url = localservices.with_database(pg_server, dbname)
    applied = migrations.migrate(owner_url)
    redis_client = redis.Redis.from_url(redis_url)
    cleanup.callback(redis_client.close)
    cleanup.callback(delete_keys, redis_client, prefix)

    env = {
        "DATABASE_URL": owner_url,
        "APP_DATABASE_URL": "",
        "REDIS_URL": redis_url,
        "KEY_PREFIX": prefix,
        "BASE_URL": "",
        "RATE_LIMITS_ENABLED": "0",
        "ACCESS_LOG": "0",
        "LOG_LEVEL": os.environ.get("LOG_LEVEL", "warning"),
    }
    settings = production_settings(env)
    baseline_conf = workdir / "baseline.conf.py"
    write_baseline_config(settings, baseline_conf)

    version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split(" [")[0]
    print(f"Chatlink benchmark: {os.cpu_count()} CPUs, {version}")
    print(f"  PostgreSQL: {pg_how}, database {dbname} (migrations: {', '.join(applied)})")
    print(f"  Redis: {redis_how}, key prefix {prefix}")
    print(
        f"  gunicorn (both servers): worker_class={settings.get('worker_class')} workers={settings.get('workers')} "
        f"threads={settings.get('threads')} keepalive={settings.get('keepalive')}"
        + (f" GUNICORN_CMD_ARGS={os.environ['GUNICORN_CMD_ARGS']!r}" if os.environ.get("GUNICORN_CMD_ARGS") else "")
    )
    print(
        f"  wrk: {options.threads} threads, {options.connections} connections, {options.duration_s}s per scenario; "
        f"scenarios {', '.join(options.scenarios)}",
        flush=True,
    )

    results: dict[str, Result] = {}
    notes: list[str] = []

    def server(label: str, args: list[str]) -> Server:
        started = Server(label, args, env, workdir / f"{label}.log")
        cleanup.callback(started.stop)
        return started

    # (a) the baseline, alone.
    if "a" in options.scenarios:
        print("\nbaseline (tests/bench/baseline_app.py):", flush=True)
        baseline = server("baseline", ["-c", str(baseline_conf), "tests.bench.baseline_app:app"])
        slugs_file = workdir / "baseline-slugs.txt"
        slugs_file.write_text("\n".join(f"base{i:05d}" for i in range(options.links)) + "\n")
        results["a"] = run_wrk(wrk, options, "(a)", baseline.url, "list", str(slugs_file))
        baseline.stop()

    if not set(options.scenarios) & set("bcd"):
        print_report(results, notes)
        return

    # Chatlink itself: seed, warm, measure.
    print("\nChatlink (gunicorn.conf.py, wsgi:app):", flush=True)
    chatlink = server("chatlink", ["-c", "gunicorn.conf.py", "wsgi:app"])
    with psycopg.connect(owner_url) as conn:
        key = issue_key(conn, f"bench-{run_id}")
    served_302 = warmed = 0
    if "b" in options.scenarios:
        t0 = time.monotonic()
        slugs = create_links(chatlink.url, key, options.links)
        t1 = time.monotonic()
        warmed = warm_cache(chatlink.url, slugs)
        served_302 += warmed
        print(
            f"  seeded {len(slugs)} links through the API in {t1 - t0:.1f}s, warmed the cache with {warmed} "
            f"redirects in {time.monotonic() - t1:.1f}s",
            flush=True,
        )
        slugs_file = workdir / "slugs.txt"
        slugs_file.write_text("\n".join(slugs) + "\n")
        results["b"] = run_wrk(wrk, options, "(b)", chatlink.url, "list", str(slugs_file))
        served_302 += results["b"].statuses.get(302, 0)

    if "c" in options.scenarios:
        # Each request a first-time miss: more never-requested links than (b)'s rate could get through.
        ceiling = results["b"].rps if "b" in results else 5000
        count = options.miss_links or max(20_000, int(ceiling * options.duration_s * 1.25))
        t0 = time.monotonic()
        insert_miss_links(owner_url, key, count)
        print(f"  inserted {count} never-requested links into PostgreSQL in {time.monotonic() - t0:.1f}s", flush=True)
        before = count_keys(redis_client, f"{prefix}link:{MISS_PREFIX}*")
        results["c"] = run_wrk(wrk, options, "(c)", chatlink.url, "seq", MISS_PREFIX, str(count), str(options.threads))
        served_302 += results["c"].statuses.get(302, 0)
        missed = count_keys(redis_client, f"{prefix}link:{MISS_PREFIX}*") - before
        notes.append(
            f"(c) cache misses: {missed} slugs were read from PostgreSQL for {results['c'].requests} answered "
            f"requests ({results['c'].repeats} requests repeated a slug)"
        )
        if results["c"].repeats:
            notes.append("    WARNING: (c) ran out of never-requested slugs; raise BENCH_MISS_LINKS")

    if served_302:
        in_flight = options.connections * sum(1 for k in "bc" if k in results)
        notes.append(
            f"302 responses in (b)+(c): {served_302 - warmed}"
            + (f" (+{warmed} from the cache warm-up = {served_302} redirects in all)" if warmed else "")
        )
        notes.append(check_clicks_recorded(owner_url, served_302, in_flight))

    if "d" in options.scenarios:
        results["d"] = run_wrk(wrk, options, "(d)", chatlink.url, "post", key)

    chatlink.stop()
    print_report(dict(sorted(results.items())), notes)
    errors = [line for line in chatlink.log().splitlines() if "Traceback" in line or "[ERROR]" in line]
    if errors:
        print(f"\nnote: the Chatlink server logged {len(errors)} error lines; first: {errors[0]}")


def print_report(results: dict[str, Result], notes: list[str]) -> None:
    print()
    for line in report(results) + notes:
        print(line)


def delete_keys(client: redis.Redis, prefix: str) -> None:
    """Delete every key under prefix."""
    batch = []
    for key in client.scan_iter(match=f"{prefix}*", count=5000):
        batch.append(key)
        if len(batch) >= 1000:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


if __name__ == "__main__":
    sys.exit(main())
