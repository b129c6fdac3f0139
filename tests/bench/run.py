"""`make bench`: wrk against gunicorn serving Chatlink and a bare Flask baseline, in a database of its own."""

# How it works (see also "## Benchmark" in README.md):
#
# * PostgreSQL and Redis are the local ones (or embedded, as for `make test`): the harness creates and
#   migrates database chatlink_bench_<random>, writes Redis keys only under chatlink-bench-<random>:, and
#   drops / deletes both at the end, also after a failure, Ctrl-C or SIGTERM.
# * Two servers: the baseline (tests/bench/baseline_app.py: Flask answering a fixed 302, no I/O) with exactly
#   the plain settings of gunicorn.conf.py (copied into a temporary config without its start-up hooks), and
#   Chatlink with gunicorn.conf.py itself. WEB_CONCURRENCY, WORKER_THREADS and GUNICORN_CMD_ARGS reach both
#   alike. Both are up for the whole run, but only one is loaded at a time (an idle gunicorn costs next to
#   nothing). Load starts only once every worker has booted (see Server.settle).
# * Scenarios, each wrk run BENCH_DURATION long with BENCH_CONNECTIONS connections over BENCH_THREADS threads:
#     (a) GET /<slug> on the baseline;
#     (b) GET /<slug> on Chatlink, cycling through BENCH_LINKS links created through the API and then requested
#         once each, so every request is a Redis cache hit. (a) and (b) alternate BENCH_ROUNDS times and the
#         median run of each is reported: this machine drifts by more than the gap being measured. Then (b)
#         paced to about half of its rate, for latency below saturation, and (a) paced the same way: the
#         latency this server and machine give a request that does nothing;
#     (c) GET /<slug> on Chatlink where every request is a cache miss: links inserted straight into PostgreSQL
#         (never cached, never requested) and walked through once each, in order, by all wrk threads together;
#         enough of them are inserted right before the run (from (b)'s rate, an upper bound for (c)'s) that
#         no slug is requested twice; the script counts any repeat and the harness counts the Redis entries
#         the run created for those slugs, which is how many slugs missed;
#     (d) POST /api/v1/links with an API key: a new link with a generated slug per request;
#     (e) PATCH /api/v1/links/<slug> (a new title) and (f) GET /api/v1/links/<slug>, cycling through BENCH_LINKS
#         links created through the API. (d), (e) and (f) are each run again paced to about half of their rate,
#         for latency below saturation (their target: p99 < 50 ms there, and >= 0.3 x (a) at saturation).
# * Rate limits are on, set too high for wrk to reach, so their cost is included; the access log is off.
# * CPU use of PostgreSQL + Redis and of unrelated processes is measured per run from /proc; a busy machine
#   is reported, since it understates every figure. CPU time per request (the loaded server + PostgreSQL + Redis,
#   wrk left out) is printed too: it drifts far less than requests/s here.
# * The exit status is non-zero only when the harness itself fails; missed targets are reported, not fatal.

from __future__ import annotations

import concurrent.futures
import contextlib
import json
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
import uuid6
from gunicorn.config import KNOWN_SETTINGS

from service.auth import issue_key
from service.clicks.drainer import Drainer
from service.clicks.pipeline import STAGING_DDL, Spool
from service.config import load_settings
from service.platform import localservices, migrations
from service.platform.db import Database, app_conninfo
from service.platform.redis import RedisClient
from tests.support import drop_database, free_port

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
LUA = HERE / "counter.lua"
MISS_PREFIX = "bench-miss-"
CLICK_WAIT_SECONDS = 60
TARGET_RATIO_B = 0.8
UNREACHABLE_LIMIT = "1000000000/minute"
LIMIT_SETTINGS = (
    "RATE_LIMIT_REDIRECT",
    "RATE_LIMIT_NOT_FOUND",
    "RATE_LIMIT_API",
    "RATE_LIMIT_API_PER_IP",
    "RATE_LIMIT_CREATE",
    "RATE_LIMIT_FALLBACK",
)
TARGET_P99_B_MS = 10.0
TARGET_RATIO_API = 0.3  # (d), (e), (f): the API at a redirect's cost
TARGET_P99_API_MS = 50.0  # ... with p99 below this at half its saturated rate
API_SCENARIOS = "def"
AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
)


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
    rounds: int  # (a) and (b) alternate this many times; the medians are reported

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
        scenarios = (os.environ.get("BENCH_SCENARIOS", "").strip() or "abcdef").replace(",", "").lower()
        if not scenarios or set(scenarios) - set("abcdef"):
            raise BenchError(f"BENCH_SCENARIOS={scenarios!r}: letters from a, b, c, d, e, f")
        return cls(
            duration,
            connections,
            threads,
            integer("BENCH_LINKS", 1000),
            integer("BENCH_MISS_LINKS", 0, low=0),
            scenarios,
            integer("BENCH_ROUNDS", 3),
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
    cpu: CpuShare | None = None

    @property
    def cpu_per_request(self) -> float | None:
        """Seconds of CPU the loaded server, PostgreSQL and Redis spent per request (None off Linux)."""
        return self.cpu.serving_seconds / self.requests if self.cpu else None

    def status_text(self) -> str:
        return " ".join(f"{code}={n}" for code, n in sorted(self.statuses.items())) or "none"

    def error_text(self) -> str:
        errors = {k: v for k, v in self.errors.items() if v and k != "status"}  # status = 4xx/5xx, shown above
        return " ".join(f"{k}={v}" for k, v in errors.items())


# --- who used the CPUs during a run ----------------------------------------------------------------------------

SERVICE_COMMANDS = ("postgres", "redis-server")
OTHER_CPU_WARNING = 0.15  # CPUs used by unrelated processes during a run above which its figures are suspect


@dataclass(frozen=True)
class CpuShare:
    """CPUs (1.0 = one CPU busy for the whole run) used by the harness tree, PostgreSQL + Redis, and the rest."""

    ours: float
    services: float
    other: float
    serving_seconds: float  # CPU seconds of the loaded server (its gunicorn tree) + PostgreSQL + Redis


def _process_times() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, user + system clock ticks, command name) for every process, from /proc."""
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        name = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]), name)
    return found


def _reaped_children_seconds() -> float:
    times = os.times()
    return times.children_user + times.children_system


def _busy_ticks() -> int:
    """Ticks all processes ran (interrupt and steal time are charged to none, so they are left out)."""
    user, nice, system = map(int, Path("/proc/stat").read_text().split()[1:4])
    return user + nice + system


class CpuMeter:
    """Measures, on Linux, how much CPU unrelated processes took while wrk ran: they distort the figures."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid  # the gunicorn master under load: its tree is the server in cpu/req
        self.enabled = Path("/proc/stat").exists()
        if self.enabled:
            self.started = time.monotonic()
            self.busy = _busy_ticks()
            self.processes = _process_times()
            self.reaped = _reaped_children_seconds()

    def share(self) -> CpuShare | None:
        if not self.enabled:
            return None
        seconds = time.monotonic() - self.started
        busy = _busy_ticks() - self.busy
        now = _process_times()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in now.items():
            children.setdefault(ppid, []).append(pid)

        def tree(root: int) -> set[int]:
            found, todo = set(), [root]
            while todo:
                pid = todo.pop()
                found.add(pid)
                todo.extend(children.get(pid, []))
            return found

        ours = tree(os.getpid())  # this harness and both servers; wrk has exited and been reaped
        ticks = {pid: total - self.processes.get(pid, (0, 0, ""))[1] for pid, (_, total, _) in now.items()}
        ours_ticks = sum(ticks[pid] for pid in ours)
        ours_ticks += (_reaped_children_seconds() - self.reaped) * os.sysconf("SC_CLK_TCK")  # wrk, once it exited
        # Only the loaded server: the idle one (e.g. Chatlink's drainer between rounds) is not (a)'s cost.
        server = tree(self.server_pid) if self.server_pid in now else ours - {os.getpid()}
        server_ticks = sum(ticks[pid] for pid in server)
        service_ticks = sum(t for pid, t in ticks.items() if pid not in ours and now[pid][2] in SERVICE_COMMANDS)
        # Kernel threads (children of kthreadd, pid 2) mostly move this run's loopback packets (ksoftirqd).
        kernel_ticks = sum(t for pid, t in ticks.items() if pid == 2 or now[pid][0] == 2)
        hertz = os.sysconf("SC_CLK_TCK") * seconds
        other = max(0, busy - ours_ticks - service_ticks - kernel_ticks)
        serving = (server_ticks + service_ticks) / os.sysconf("SC_CLK_TCK")
        return CpuShare(ours_ticks / hertz, service_ticks / hertz, other / hertz, serving)


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


def run_wrk(
    wrk: str, options: Options, name: str, url: str, *script_args: str, pace_ms: float = 0, server_pid: int = 0
) -> Result:
    """One wrk run against url with counter.lua in the given mode; pace_ms: mean wait before each request;
    server_pid: the gunicorn master serving url, whose tree's CPU time is the run's cpu/req."""
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
    meter = CpuMeter(server_pid)
    env = {**os.environ, "CHATLINK_BENCH_PACE_MS": f"{pace_ms:.1f}" if pace_ms else ""}
    done = subprocess.run(command, capture_output=True, text=True, timeout=options.duration_s + 60, env=env)
    if done.returncode != 0:
        raise BenchError(f"wrk failed for {name} (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    result = parse_wrk(name, done.stdout)
    result.cpu = meter.share()
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
    lines += [f"{name} = {value!r}" for name, value in sorted(settings.items()) if name != "bind"]
    # bind follows PORT as in gunicorn.conf.py: each server gets its own free port.
    host = str(settings.get("bind", "0.0.0.0:8000")).rpartition(":")[0]
    lines += ["import os", f'bind = "{host}:" + os.environ["PORT"]']
    path.write_text("\n".join(lines) + "\n")


class Server:
    """One gunicorn master (and its workers) on a free port, logging to a file; stopped by stop()."""

    def __init__(self, label: str, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.label = label
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log_file = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *args],
            cwd=ROOT,
            env={**os.environ, **env, "PORT": str(self.port)},
            stdout=self.log_file,
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
        self.settle()

    def settle(self, timeout: float = 30) -> None:
        """Wait until every worker has booted: the first one answering does not mean the others accept yet.

        Keep-alive connections stay with the worker that accepted them, so load started while only one worker is
        up runs on one process (one CPU) for the whole run: the figures come out about halved, or not, by chance.
        Booted means: the set of workers has not changed and they have used (almost) no CPU for a second.
        """
        if not Path("/proc/stat").exists():
            time.sleep(3)
            return
        deadline = time.monotonic() + timeout
        previous, quiet = None, 0
        while time.monotonic() < deadline and quiet < 4:
            time.sleep(0.25)
            workers = {pid: t for pid, (ppid, t, _) in _process_times().items() if ppid == self.process.pid}
            if previous is not None and workers.keys() == previous.keys() and workers:
                busy = sum(workers.values()) - sum(previous.values())
                quiet = quiet + 1 if busy <= 2 else 0  # clock ticks (1/100 s) in 0.25 s over all workers
            else:
                quiet = 0
            previous = workers

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
        self.log_file.close()


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
    "b2": "(b) at half its rate (paced)",
    "a2": "(a) at the same paced load",
    "c": "(c) GET /<slug>, cache miss",
    "d": "(d) POST /api/v1/links",
    "d2": "(d) at half its rate (paced)",
    "e": "(e) PATCH /api/v1/links/<slug>",
    "e2": "(e) at half its rate (paced)",
    "f": "(f) GET /api/v1/links/<slug>",
    "f2": "(f) at half its rate (paced)",
}


def report(results: dict[str, Result], rounds: dict[str, list[Result]]) -> list[str]:
    lines = [
        f"{'scenario':<38} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'cpu/req':>8} {'pg+redis':>8} {'other':>6}"
        "  status codes"
    ]
    disturbed = []
    for key, result in results.items():
        errors = result.error_text()
        services = f"{result.cpu.services:.2f}" if result.cpu else "n/a"
        other = f"{result.cpu.other:.2f}" if result.cpu else "n/a"
        per_request = f"{1e6 * result.cpu_per_request:.0f}us" if result.cpu else "n/a"
        if result.cpu and result.cpu.other > OTHER_CPU_WARNING:
            disturbed.append(f"({key})")
        lines.append(
            f"{TITLES[key]:<38} {result.rps:>9.1f} {result.p50_ms:>8.2f} {result.p99_ms:>8.2f} {per_request:>8} "
            f"{services:>8} {other:>6}  {result.status_text()}{'  socket errors: ' + errors if errors else ''}"
        )
    lines.append(
        "cpu/req: CPU time per request of the loaded server (gunicorn workers, background process) + PostgreSQL + "
        "Redis, wrk not included; steadier than req/s on a machine whose speed drifts"
    )
    lines.append(
        "pg+redis, other: CPUs (1.00 = one CPU for the whole run) used by PostgreSQL + Redis, and by processes "
        "other than those, this harness, its gunicorn, wrk and kernel threads"
    )
    if disturbed:
        lines.append(
            f"WARNING: other processes took over {OTHER_CPU_WARNING} CPU during {', '.join(disturbed)}: "
            "those figures are understated; rerun on an idle machine"
        )
    lines.append("")
    if max(len(runs) for runs in rounds.values()) > 1:
        for key, runs in rounds.items():
            if runs:
                figures = ", ".join(f"{run.rps:.0f}" for run in runs)
                lines.append(f"({key}) req/s in the {len(runs)} alternating rounds: {figures} (above: the median)")
        if rounds["a"] and rounds["b"]:
            ratios = ", ".join(f"{b.rps / a.rps:.2f}" for a, b in zip(rounds["a"], rounds["b"], strict=True))
            lines.append(f"b / a round by round: {ratios}")
            if all(run.cpu for run in rounds["a"] + rounds["b"]):
                costs = ", ".join(
                    f"{b.cpu_per_request / a.cpu_per_request:.2f}"
                    for a, b in zip(rounds["a"], rounds["b"], strict=True)
                )
                lines.append(f"cpu/req of (b) / cpu/req of (a) round by round: {costs}")
        lines.append("")
    base = results.get("a")
    if base:
        for key in "bc":
            if key in results:
                ratio = results[key].rps / base.rps
                target = ""
                if key == "b":
                    verdict = "met" if ratio >= TARGET_RATIO_B else "MISSED"
                    target = f"   target (b) >= {TARGET_RATIO_B} x (a): {verdict}"
                lines.append(f"{key} / a = {ratio:.2f} x{target}")
    for key, load in (("b", "at saturation"), ("b2", f"at {results['b2'].rps:.0f} req/s" if "b2" in results else "")):
        if key in results:
            p99 = results[key].p99_ms
            verdict = "met" if p99 < TARGET_P99_B_MS else "MISSED"
            lines.append(f"p99 of (b) {load} = {p99:.2f} ms   target p99 of (b) < {TARGET_P99_B_MS:g} ms: {verdict}")
    if "a2" in results:
        a2 = results["a2"]
        lines.append(f"p99 of (a) at {a2.rps:.0f} req/s = {a2.p99_ms:.2f} ms   (the bare baseline under the same load)")
    return lines + api_report(results)


def api_report(results: dict[str, Result]) -> list[str]:
    """(d), (e), (f) against their targets: >= TARGET_RATIO_API x (a), p99 < TARGET_P99_API_MS at half rate."""
    lines = []
    base = results.get("a")
    for key in API_SCENARIOS:
        if key not in results:
            continue
        result = results[key]
        if result.cpu:
            lines.append(f"cpu per request of ({key}) = {1e6 * result.cpu_per_request:.0f} us")
        if base:
            ratio = result.rps / base.rps
            verdict = "met" if ratio >= TARGET_RATIO_API else "MISSED"
            lines.append(f"{key} / a = {ratio:.2f} x   target ({key}) >= {TARGET_RATIO_API} x (a): {verdict}")
        paced = results.get(f"{key}2")
        if paced:
            verdict = "met" if paced.p99_ms < TARGET_P99_API_MS else "MISSED"
            lines.append(
                f"p99 of ({key}) at {paced.rps:.0f} req/s = {paced.p99_ms:.2f} ms   "
                f"target p99 of ({key}) at half its rate < {TARGET_P99_API_MS:g} ms: {verdict}"
            )
    return lines


# --- the run --------------------------------------------------------------------------------------------------


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up on `kill` as on Ctrl-C
    started = time.monotonic()
    try:
        options = Options.from_env()
        wrk = ensure_wrk()
        with contextlib.ExitStack() as cleanup:
            Bench(options, wrk, cleanup).run()
    except BenchError as exc:
        print(f"\nbench: FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"\nbench: done in {time.monotonic() - started:.0f}s")
    return 0


class Bench:
    """One benchmark run: its database, Redis prefix, servers and results; everything it made goes on cleanup."""

    def __init__(self, options: Options, wrk: str, cleanup: contextlib.ExitStack) -> None:
        self.options, self.wrk, self.cleanup = options, wrk, cleanup
        self.run_id = secrets.token_hex(5)
        self.workdir = Path(tempfile.mkdtemp(prefix="chatlink-bench-"))
        cleanup.callback(shutil.rmtree, self.workdir, ignore_errors=True)
        self.results: dict[str, Result] = {}
        self.rounds: dict[str, list[Result]] = {"a": [], "b": []}  # every run of the alternating scenarios
        self.notes: list[str] = []
        self.server_pids: dict[str, int] = {}  # base URL -> its gunicorn master's pid

        # Our own database and Redis namespace, dropped / deleted however the run ends.
        pg_server, self.pg_how = localservices.server_url(ROOT / ".data", load_settings().require_services)
        redis_url, self.redis_how = localservices.redis_url(ROOT / ".data", load_settings().require_services)
        self.dbname, self.prefix = f"chatlink_bench_{self.run_id}", f"chatlink-bench-{self.run_id}:"
        localservices.create_database(pg_server, self.dbname)
        cleanup.callback(drop_database, pg_server, self.dbname)
        self.owner_url = localservices.with_database(pg_server, self.dbname)
        self.applied = migrations.migrate(self.owner_url)
        self.redis = redis.Redis.from_url(redis_url)
        cleanup.callback(self.redis.close)
        cleanup.callback(delete_keys, self.redis, self.prefix)

        self.env = {
            "DATABASE_URL": self.owner_url,
            "APP_DATABASE_URL": "",
            "REDIS_URL": redis_url,
            "KEY_PREFIX": self.prefix,
            "BASE_URL": "",
            # Rate limits on, as in production, but too high for wrk's one address to reach: their cost is measured.
            "RATE_LIMITS_ENABLED": "1",
            **{name: UNREACHABLE_LIMIT for name in LIMIT_SETTINGS},
            "ACCESS_LOG": "0",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "warning"),
        }
        self.settings = production_settings(self.env)

    def run(self) -> None:
        self.print_header()
        baseline = self.start_baseline() if "a" in self.options.scenarios else None
        chatlink = self.start_chatlink() if set(self.options.scenarios) & set("bc" + API_SCENARIOS) else None
        try:
            self.chatlink_scenarios(baseline, chatlink)
        except BenchError as exc:
            tail = "\n".join(chatlink.log().splitlines()[-40:]) if chatlink else ""
            raise BenchError(f"{exc}\n--- the last lines of the Chatlink server's log ---\n{tail}") from None
        for server in (baseline, chatlink):
            if server:
                server.stop()
        if chatlink:
            errors = [line for line in chatlink.log().splitlines() if "Traceback" in line or "[ERROR]" in line]
            if errors:
                self.notes.append(f"note: the Chatlink server logged {len(errors)} error lines; first: {errors[0]}")
        if set(self.options.scenarios) & set("bc"):
            self.measure_drain_rate()
        print()
        for line in report(dict(sorted(self.results.items())), self.rounds) + self.notes:
            print(line)

    def print_header(self) -> None:
        version = subprocess.run([self.wrk, "-v"], capture_output=True, text=True).stdout.split(" [")[0]
        settings, options = self.settings, self.options
        cmd_args = os.environ.get("GUNICORN_CMD_ARGS")
        print(f"Chatlink benchmark: {os.cpu_count()} CPUs, {version}")
        print(f"  PostgreSQL: {self.pg_how}, database {self.dbname} (migrations: {', '.join(self.applied)})")
        print(f"  Redis: {self.redis_how}, key prefix {self.prefix}")
        print(
            f"  gunicorn (both servers): worker_class={settings.get('worker_class')} workers={settings.get('workers')}"
            f" threads={settings.get('threads')} keepalive={settings.get('keepalive')}"
            + (f", GUNICORN_CMD_ARGS={cmd_args!r}" if cmd_args else "")
        )
        print(
            f"  wrk: {options.threads} threads, {options.connections} connections, {options.duration_s}s per "
            f"scenario; scenarios {', '.join(options.scenarios)}",
            flush=True,
        )

    def server(self, label: str, args: list[str]) -> Server:
        started = Server(label, args, self.env, self.workdir / f"{label}.log")
        self.cleanup.callback(started.stop)
        self.server_pids[started.url] = started.process.pid
        return started

    def wrk_run(self, name: str, url: str, *script_args: str, pace_ms: float = 0) -> Result:
        pid = self.server_pids.get(url, 0)
        return run_wrk(self.wrk, self.options, name, url, *script_args, pace_ms=pace_ms, server_pid=pid)

    def start_baseline(self) -> Server:
        """(a)'s server: the bare app under the same gunicorn settings (gunicorn.conf.py without its hooks)."""
        conf = self.workdir / "baseline.conf.py"
        write_baseline_config(self.settings, conf)
        self.baseline_slugs = self.workdir / "baseline-slugs.txt"
        self.baseline_slugs.write_text("\n".join(f"base{i:05d}" for i in range(self.options.links)) + "\n")
        return self.server("baseline", ["-c", str(conf), "tests.bench.baseline_app:app"])

    def start_chatlink(self) -> Server:
        """(b) to (f)'s server: gunicorn.conf.py serving wsgi:app."""
        return self.server("chatlink", ["-c", "gunicorn.conf.py", "wsgi:app"])

    def alternate(self, baseline: Server | None, url: str | None, slugs_file: Path | None) -> None:
        """(a) and (b) in turns, BENCH_ROUNDS times: both servers are up, one idle while the other is loaded.

        This machine's speed drifts by more than the gap being measured (one (a) run alone varied from 5,300 to
        9,200 req/s); alternating the two and taking medians compares them under the same conditions.
        """
        for round_number in range(1, self.options.rounds + 1):
            if baseline:
                slugs = str(self.baseline_slugs)
                self.rounds["a"].append(self.wrk_run(f"(a) round {round_number}", baseline.url, "list", slugs))
            if url:
                self.rounds["b"].append(self.wrk_run(f"(b) round {round_number}", url, "list", str(slugs_file)))
        for key, runs in self.rounds.items():
            if runs:
                self.results[key] = sorted(runs, key=lambda result: result.rps)[len(runs) // 2]

    def chatlink_scenarios(self, baseline: Server | None, chatlink: Server | None) -> None:
        options, results = self.options, self.results
        if chatlink is None:
            self.alternate(baseline, None, None)
            return
        url = chatlink.url
        with psycopg.connect(self.owner_url) as conn:
            key = issue_key(conn, f"bench-{self.run_id}")
        served_302 = warmed = 0
        created: list[str] = []  # slugs of links made through the API, for (e) and (f) as well
        if "b" not in options.scenarios:
            self.alternate(baseline, None, None)
        else:
            t0 = time.monotonic()
            slugs = created = create_links(url, key, options.links)
            t1 = time.monotonic()
            warmed = warm_cache(url, slugs)
            served_302 += warmed
            print(
                f"  seeded {len(slugs)} links through the API in {t1 - t0:.1f}s, warmed the cache with {warmed} "
                f"redirects in {time.monotonic() - t1:.1f}s",
                flush=True,
            )
            slugs_file = self.workdir / "slugs.txt"
            slugs_file.write_text("\n".join(slugs) + "\n")
            self.alternate(baseline, url, slugs_file)
            served_302 += sum(run.statuses.get(302, 0) for run in self.rounds["b"])
            # Latency below saturation: the same requests with each connection waiting so that together they
            # offer about half of (b)'s throughput (under saturation, latency is mostly queueing: connections/rate).
            pace_ms = 1000 * options.connections / (results["b"].rps / 2)
            results["b2"] = self.wrk_run("(b) at half rate", url, "list", str(slugs_file), pace_ms=pace_ms)
            served_302 += results["b2"].statuses.get(302, 0)
            if baseline:  # the same offered load on the bare baseline: the latency floor of this server and machine
                slugs = str(self.baseline_slugs)
                results["a2"] = self.wrk_run("(a) at (b)'s half rate", baseline.url, "list", slugs, pace_ms=pace_ms)

        if "c" in options.scenarios:
            # Each request a first-time miss: more never-requested links than (b)'s rate could get through.
            ceiling = results["b"].rps if "b" in results else 5000
            count = options.miss_links or max(20_000, int(ceiling * options.duration_s * 1.25))
            count = min(count, 9_999_999)  # slugs carry 7 digits
            t0 = time.monotonic()
            insert_miss_links(self.owner_url, key, count)
            print(f"  inserted {count} never-requested links into PostgreSQL in {time.monotonic() - t0:.1f}s")
            pattern = f"{self.prefix}*{MISS_PREFIX}*"  # the cache entries those slugs get when first requested
            before = count_keys(self.redis, pattern)
            results["c"] = self.wrk_run("(c)", url, "seq", MISS_PREFIX, str(count), str(options.threads))
            served_302 += results["c"].statuses.get(302, 0)
            missed = count_keys(self.redis, pattern) - before
            self.notes.append(
                f"(c) cache misses: {missed} slugs got a Redis entry (read from PostgreSQL) during the run, for "
                f"{results['c'].requests} answered requests; {results['c'].repeats} requests repeated a slug"
            )
            if results["c"].repeats:
                self.notes.append("    WARNING: (c) ran out of never-requested slugs; raise BENCH_MISS_LINKS")

        if served_302:
            runs = len(self.rounds["b"]) + sum(1 for k in ("b2", "c") if k in results)
            in_flight = options.connections * runs
            self.notes.append(
                f"302 responses in (b)+(c) (with (b) at half rate): {served_302 - warmed}"
                + (f" (+{warmed} from the cache warm-up = {served_302} redirects in all)" if warmed else "")
            )
            self.notes.append(check_clicks_recorded(self.owner_url, served_302, in_flight))

        api_slugs_file = self.workdir / "api-slugs.txt"
        if set(options.scenarios) & set("ef"):
            api_slugs_file.write_text("\n".join(created or create_links(url, key, options.links)) + "\n")
        modes = {"d": ("post", key), "e": ("api", "PATCH", key, str(api_slugs_file))}
        modes["f"] = ("api", "GET", key, str(api_slugs_file))
        for letter in API_SCENARIOS:
            if letter in options.scenarios:
                results[letter] = self.wrk_run(f"({letter})", url, *modes[letter])
                # Below saturation: each connection waits so that together they offer about half that rate.
                pace_ms = 1000 * options.connections / (results[letter].rps / 2)
                paced = self.wrk_run(f"({letter}) at half rate", url, *modes[letter], pace_ms=pace_ms)
                results[f"{letter}2"] = paced

    def measure_drain_rate(self, clicks: int = 60_000, batch: int = 5000) -> None:
        """How fast the service's own Drainer moves a backlog of clicks from the Redis stream into PostgreSQL."""
        print(f"\ndrain rate: {clicks} clicks queued on a stream of their own, then drained", flush=True)
        with psycopg.connect(self.owner_url) as conn:
            links = conn.execute("select id, account_id from links order by id limit 200").fetchall()
            before = conn.execute("select count(*) from clicks").fetchone()[0]
        if not links:
            raise BenchError("the drain-rate measurement needs links: run it with scenario b or c")
        cache = RedisClient(self.env["REDIS_URL"], prefix=f"{self.prefix}drain:", timeout_ms=2000, breaker_seconds=1)
        db = Database(app_conninfo(self.owner_url), size=2, timeout_ms=30_000, setup_sql=STAGING_DDL)
        db.open()
        self.cleanup.callback(db.close)
        drainer = Drainer(cache, db, Spool(self.workdir / "spool"), batch=batch, reclaim_idle_ms=60_000)
        drainer.ensure_group()
        with drainer.redis.pipeline(transaction=False) as pipe:
            for i in range(clicks):
                link_id, account_id = links[i % len(links)]
                click = {
                    "id": str(uuid6.uuid7()),
                    "ts": time.time(),
                    "ref": "https://l.instagram.com/",
                    "ua": AGENTS[i % len(AGENTS)],
                    "bot": False,
                    "cc": "BR",
                    "vid": f"{i % 5000:032x}",
                    "utm_source": "ig",
                    "utm_campaign": "bench",
                }
                pipe.xadd(drainer.stream, {"l": link_id, "a": account_id, "d": json.dumps(click)})
                if i % 5000 == 4999:
                    pipe.execute()
            pipe.execute()
        started = time.monotonic()
        moved = 0
        while moved < clicks:
            step = drainer.drain_once()
            if not step:
                break
            moved += step
        elapsed = time.monotonic() - started
        with psycopg.connect(self.owner_url) as conn:
            stored = conn.execute("select count(*) from clicks").fetchone()[0] - before
        rate = stored / elapsed if elapsed else 0.0
        self.notes.append(
            f"drain rate: {stored} of {clicks} queued clicks moved into PostgreSQL in {elapsed:.2f}s = "
            f"{rate:,.0f} clicks/s (batches of {batch})   target >= 20,000 clicks/s: "
            f"{'met' if rate >= 20_000 else 'MISSED'}"
        )


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
