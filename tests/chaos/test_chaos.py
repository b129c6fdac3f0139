"""make chaos: each fault of issue 10's table injected under load through a real gunicorn (private PostgreSQL and
Redis, loopback only, bounded in time); after recovery every X-Click-Id a client got must be stored exactly once.
What /health said during each fault is recorded, and a summary table printed at the end."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest
import redis
import requests

from service.auth import issue_key
from service.platform import migrations
from tests.conftest import LiveServer
from tests.support import TcpProxy
from tests.test_ledger import PrivatePostgres, PrivateRedis, _background_process, _gunicorn_workers

pytestmark = [pytest.mark.live, pytest.mark.chaos]
VISITORS = 6  # client threads; a few hundred redirects/s on two cores
STALL_SECONDS = 10  # after recovery, every path drains within a second or two (RECLAIM_IDLE_MS, breakers: 1 s)
RESULTS: list[Row] = []


@dataclass
class Row:
    """One line of the summary table."""

    fault: str
    requests: int = 0
    redirects: int = 0
    others: Counter = field(default_factory=Counter)
    click_ids: int = 0
    stored: int = 0
    missing: int = 0
    duplicated: int = 0
    health: Counter = field(default_factory=Counter)

    def line(self) -> str:
        others = ", ".join(f"{k}×{v}" for k, v in sorted(self.others.items())) or "none"
        health = ", ".join(f"{k}×{v}" for k, v in sorted(self.health.items())) or "-"
        cells = (self.fault, self.requests, self.redirects, others, self.click_ids, self.stored, self.missing)
        return "| " + " | ".join(str(c) for c in (*cells, self.duplicated, health)) + " |"


class Stack:
    """A private PostgreSQL (pgserver, restartable) and a private Redis behind a proxy that can slow its replies."""

    def __init__(self, directory: Path) -> None:
        self.redis = PrivateRedis(directory / "redis")
        self.proxy = TcpProxy(self.redis.port)
        self.postgres = PrivatePostgres(directory / "pg")
        self.owner_url = self.postgres.url
        migrations.migrate(self.owner_url)
        with psycopg.connect(self.owner_url) as conn:
            self.api_key = issue_key(conn, "chaos")

    def stop_postgres(self) -> None:
        self.postgres.pg_ctl("-w", "-m", "fast", "stop")

    def start_postgres(self) -> None:
        socket_dir = psycopg.conninfo.conninfo_to_dict(self.owner_url)["host"]
        log = str(self.postgres.directory / "log")
        self.postgres.pg_ctl("-w", "-o", '-h ""', "-o", f"-k {socket_dir}", "-l", log, "start")

    def redis_client(self) -> redis.Redis:
        """A direct client of the private Redis (not through the proxy), for the test's own commands."""
        return redis.Redis(port=self.redis.port, decode_responses=True)

    def read_only(self, on: bool) -> None:
        with psycopg.connect(self.owner_url, autocommit=True) as conn:
            conn.execute("set default_transaction_read_only = off")
            conn.execute(f"alter system {'set default_transaction_read_only = on' if on else 'reset all'}")
            conn.execute("select pg_reload_conf()")

    def close(self) -> None:
        self.proxy.stop()
        if self.redis.process.poll() is None:
            self.redis.kill()
        self.postgres.stop()  # by the server's current pid, then its directory (see PrivatePostgres)


@pytest.fixture(scope="module")
def stack():
    # Not under pytest's temp root: another pytest run resets that to 0700, locking pgserver's user out of its data.
    directory = Path(tempfile.mkdtemp(prefix="chatlink-chaos-"))
    directory.chmod(0o755)
    stack = Stack(directory)
    yield stack
    stack.close()
    shutil.rmtree(directory, ignore_errors=True)
    print("\n\n| fault | requests | 302 | other statuses | X-Click-Ids | stored | missing | duplicated | health seen |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in RESULTS:
        print(row.line())


class Load:
    """Visitors following the links as fast as gunicorn answers, and a poller of /health; both until stop()."""

    def __init__(self, url: str, slugs: list[str]) -> None:
        self.url, self.slugs = url, slugs
        self.received: list[str] = []
        self.statuses: Counter = Counter()
        self.health: Counter = Counter()
        self.watching_health = threading.Event()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._visit, args=(i,)) for i in range(VISITORS)]
        self.threads.append(threading.Thread(target=self._poll_health))
        for thread in self.threads:
            thread.start()

    def _visit(self, n: int) -> None:
        with requests.Session() as session:
            for i in itertools.count(n, VISITORS):
                if self.stopping.is_set():
                    return
                self._follow(session, self.slugs[i % len(self.slugs)], f"chaos-visitor/{i}")

    def _follow(self, session: requests.Session, slug: str, agent: str) -> None:
        """One visit: its status (or error) counted, its click id kept."""
        try:
            headers = {"User-Agent": agent}
            response = session.get(f"{self.url}/{slug}", allow_redirects=False, timeout=15, headers=headers)
        except requests.RequestException as exc:
            self.statuses[type(exc).__name__] += 1
            return
        self.statuses[str(response.status_code)] += 1
        if "X-Click-Id" in response.headers:
            self.received.append(response.headers["X-Click-Id"])

    def _poll_health(self) -> None:
        with requests.Session() as session:
            while not self.stopping.wait(0.25):
                if not self.watching_health.is_set():
                    continue
                try:
                    response = session.get(f"{self.url}/health", timeout=2)
                    seen = f"{response.json().get('status')}/{response.status_code}"
                except (requests.RequestException, ValueError) as exc:
                    seen = type(exc).__name__
                self.health[seen] += 1

    def wait_for_clicks(self, count: int, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)


def _stored(owner_url: str, ids: list[str]) -> Counter:
    with psycopg.connect(owner_url) as conn:
        rows = conn.execute(
            "select click_id::text, count(*) from clicks where click_id = any(%s::uuid[]) group by 1", [ids]
        ).fetchall()
    return Counter(dict(rows))


def _log_excerpt(server_log) -> str:
    """The server log's end, after every line that says why a process exited (those come long before the end)."""
    text = server_log.read_text(errors="replace")
    exits = [line for line in text.splitlines() if "exited (" in line or "Traceback" in line]
    return "\n".join([*exits, "...", text[-3000:]])


def _run(
    stack: Stack,
    tmp_path: Path,
    fault: str,
    inject: Callable[[LiveServer], None],
    recover: Callable[[LiveServer], None] | None,
    hold: float,
    every_visit_redirects: bool = True,
    not_logged: str | None = None,
) -> Row:
    """Load → inject → hold (health watched) → recover → load → stop; then wait for every click id to be stored.
    every_visit_redirects: the fault must not cost a visitor their 302 (the links are cached and recently resolved).
    not_logged: a line gunicorn's log must not contain (what the fault must not trigger)."""
    server = LiveServer(
        {
            "DATABASE_URL": stack.owner_url,
            "REDIS_URL": stack.proxy.url("redis", "/0"),
            "KEY_PREFIX": f"chaos-{uuid.uuid4().hex[:8]}:",
            "WEB_CONCURRENCY": "2",
            "WORKER_THREADS": "4",
            "RATE_LIMITS_ENABLED": "0",
            "ACCESS_LOG": "0",
            "RECLAIM_IDLE_MS": "1000",
            "REDIS_BREAKER_SECONDS": "1",
            "DB_BREAKER_SECONDS": "1",
            "DB_TIMEOUT_MS": "1000",
            "SPOOL_DIR": str(tmp_path / "spool"),
        },
        tmp_path / "gunicorn.log",
    )
    row = Row(fault)
    RESULTS.append(row)
    load = None
    try:
        auth = {"Authorization": f"Bearer {stack.api_key}"}
        link = {"phone": "+14155552671"}
        slugs = [
            requests.post(f"{server.url}/api/v1/links", headers=auth, json=link, timeout=10).json()["slug"]
            for _ in range(5)
        ]
        load = Load(server.url, slugs)
        load.wait_for_clicks(300)
        load.watching_health.set()
        inject(server)
        time.sleep(hold)
        load.watching_health.clear()
        if recover:
            recover(server)
        load.wait_for_clicks(len(load.received) + 300)
    finally:
        if load:
            load.stop()
        server_log = server.log_path
        # Let the background process drain what the fault left (stream, pending entries, spool) before stopping.
        # Give up once nothing new was stored for STALL_SECONDS (a row that loses clicks stays short).
        expected = list(dict.fromkeys(load.received if load else []))
        stored, progress_at = Counter(), time.monotonic()
        while len(stored) < len(expected) and time.monotonic() - progress_at < STALL_SECONDS:
            time.sleep(0.5)
            now_stored = _stored(stack.owner_url, expected)
            if len(now_stored) > len(stored):
                stored, progress_at = now_stored, time.monotonic()
        server.stop()
    row.requests = sum(load.statuses.values())
    row.redirects = load.statuses.get("302", 0)
    row.others = Counter({k: v for k, v in load.statuses.items() if k != "302"})
    row.click_ids = len(load.received)
    row.stored = sum(1 for i in expected if stored.get(i))
    row.missing = len(expected) - row.stored
    row.duplicated = sum(1 for n in stored.values() if n > 1) + (len(load.received) - len(expected))
    row.health = load.health
    assert row.click_ids >= 300, f"too little load got through: {row.line()}\n{_log_excerpt(server_log)}"
    assert (row.missing, row.duplicated) == (0, 0), f"{row.line()}\n{_log_excerpt(server_log)}"
    if every_visit_redirects:
        assert not row.others, f"visitors got something other than a 302: {row.line()}"
    if not_logged:
        assert not_logged not in server_log.read_text(), f"{not_logged!r} in gunicorn's log: {row.line()}"
    return row


def test_redis_killed(stack, tmp_path):
    _run(stack, tmp_path, "Redis killed", lambda s: stack.redis.kill(), lambda s: stack.redis.start(), hold=4)


def test_postgresql_restarted(stack, tmp_path):
    _run(stack, tmp_path, "PostgreSQL restarted", lambda s: stack.postgres.restart(), None, hold=3)


def test_redis_and_postgresql_down_at_once(stack, tmp_path):
    def inject(server):
        stack.redis.kill()
        stack.stop_postgres()

    def recover(server):
        stack.start_postgres()
        stack.redis.start()

    _run(stack, tmp_path, "Redis and PostgreSQL down at once", inject, recover, hold=5)


def test_postgresql_down_with_redis_up_and_click_counters_lost(stack, tmp_path):
    def inject(server):
        client = stack.redis_client()
        counters = list(client.scan_iter(match="*clickcount:*"))
        client.delete(*counters)  # evicted or lost: the script answers 'seed' and PostgreSQL cannot say
        stack.stop_postgres()

    fault = "PostgreSQL down, Redis up, click counters lost"
    _run(stack, tmp_path, fault, inject, lambda s: stack.start_postgres(), hold=5)


def test_redis_out_of_memory_while_postgresql_is_down(stack, tmp_path):
    client = stack.redis_client()

    def inject(server):
        stack.stop_postgres()
        time.sleep(3)  # clicks queue in the stream meanwhile, until Redis is full
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)  # far below what it holds: every write that needs memory is refused

    try:
        # PostgreSQL returns while Redis is still full: only the drainer (read, ack, delete) can free its memory.
        fault = "Redis at maxmemory (noeviction), PostgreSQL down"
        _run(stack, tmp_path, fault, inject, lambda s: stack.start_postgres(), hold=5)
    finally:
        client.config_set("maxmemory", 0)


def test_postgresql_read_only_for_10_seconds(stack, tmp_path):
    try:
        _run(
            stack,
            tmp_path,
            "PostgreSQL read-only 10 s",
            lambda s: stack.read_only(True),
            lambda s: stack.read_only(False),
            hold=10,
        )
    finally:
        stack.read_only(False)


def test_one_slow_redis_reply(stack, tmp_path):
    def inject(server):
        for _ in range(5):  # five fsync-like stalls a second apart, each past REDIS_TIMEOUT_MS
            stack.proxy.delay_replies(1, 0.18)
            time.sleep(1)

    # No worker may open its Redis breaker over a reply that was merely slow (each breaker logs when it opens).
    _run(stack, tmp_path, "one slow Redis reply (×5, 180 ms)", inject, None, hold=0, not_logged="redis failed")


def test_background_process_killed(stack, tmp_path):
    _run(
        stack,
        tmp_path,
        "background process SIGKILLed",
        lambda s: os.kill(_background_process(s), signal.SIGKILL),
        None,
        hold=4,
    )


def test_worker_killed(stack, tmp_path):
    _run(
        stack,
        tmp_path,
        "a worker SIGKILLed",
        lambda s: os.kill(_gunicorn_workers(s)[0], signal.SIGKILL),
        None,
        hold=3,
        every_visit_redirects=False,  # the requests in flight on the killed worker are cut off
    )
