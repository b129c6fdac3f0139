"""The ledger: every X-Click-Id a client received is in PostgreSQL exactly once, through Redis and PostgreSQL
restarts and a killed worker. Run alone with `make ledger`; it prints the counts."""

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import psycopg
import pytest
import requests

from service.auth import issue_key
from service.platform import localservices, migrations
from tests.conftest import LiveServer
from tests.support import free_port

pytestmark = pytest.mark.live


class PrivateRedis:
    """A redis-server of this test's own, with every write fsynced to its append-only file before the reply."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port(27000, 28000)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.directory = directory
        self.binary = shutil.which("redis-server") or localservices._wheel_redis_server()
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not localservices.redis_answers(self.url):
            assert time.monotonic() < deadline, "private redis did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


class PrivatePostgres:
    """An embedded PostgreSQL of this test's own, which the test may restart; stopped by its current pid and only
    then deleted (pgserver's own "delete" clean-up removed the directory of a server restarted under it)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.url, _ = localservices.embedded_postgres(directory, stop_at_exit=False)

    def pg_ctl(self, *args: str) -> None:
        """Run pg_ctl on this server (as pgserver's own system user when we are root, as pgserver runs it)."""
        from pgserver import pg_ctl

        pg_ctl(list(args), pgdata=self.directory, user="pgserver" if os.geteuid() == 0 else None, timeout=60)

    def restart(self) -> None:
        self.pg_ctl("-w", "-m", "fast", "-l", str(self.directory / "log"), "restart")

    def stop(self) -> None:
        localservices.stop_postgres(self.directory)
        localservices.remove_data_directory(self.directory)


def _children(server: LiveServer) -> list[psutil.Process]:
    return psutil.Process(server.process.pid).children()


def _gunicorn_workers(server: LiveServer) -> list[int]:
    return [c.pid for c in _children(server) if "service.background" not in " ".join(c.cmdline())]


def _background_process(server: LiveServer) -> int:
    [pid] = [c.pid for c in _children(server) if "service.background" in " ".join(c.cmdline())]
    return pid


def test_every_click_id_a_client_received_is_stored_exactly_once(tmp_path, key_prefix):
    redis_server = PrivateRedis(tmp_path / "redis")
    postgres = PrivatePostgres(tmp_path / "pg")
    server = None
    try:
        migrations.migrate(postgres.url)
        with psycopg.connect(postgres.url) as conn:
            key = issue_key(conn, "ledger")
        server = LiveServer(
            {
                "DATABASE_URL": postgres.url,
                "REDIS_URL": redis_server.url,
                "KEY_PREFIX": key_prefix,
                "WEB_CONCURRENCY": "2",
                "WORKER_THREADS": "2",
                "RATE_LIMITS_ENABLED": "0",
                "ACCESS_LOG": "0",
                "RECLAIM_IDLE_MS": "1000",
                "REDIS_BREAKER_SECONDS": "1",
                "DB_TIMEOUT_MS": "1000",
                "SPOOL_DIR": str(tmp_path / "spool"),
            },
            tmp_path / "gunicorn.log",
        )
        auth = {"Authorization": f"Bearer {key}"}
        slugs = [
            requests.post(
                f"{server.url}/api/v1/links", headers=auth, json={"phone": "+14155552671"}, timeout=10
            ).json()["slug"]
            for _ in range(5)
        ]

        received: list[str] = []
        failures: dict[str, int] = {}
        stop = threading.Event()

        def visitor() -> None:
            with requests.Session() as session:
                i = 0
                while not stop.is_set():
                    try:
                        response = session.get(
                            f"{server.url}/{slugs[i % len(slugs)]}?utm_source=ledger",
                            allow_redirects=False,
                            timeout=10,
                            headers={"User-Agent": f"ledger-visitor/{i}"},
                        )
                        if response.status_code == 302:
                            received.append(response.headers["X-Click-Id"])
                        else:
                            failures[str(response.status_code)] = failures.get(str(response.status_code), 0) + 1
                    except requests.RequestException as exc:
                        failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                    i += 1

        clients = [threading.Thread(target=visitor) for _ in range(4)]
        for thread in clients:
            thread.start()

        def wait_for(count: int) -> None:
            deadline = time.monotonic() + 60
            while len(received) < count and time.monotonic() < deadline:
                time.sleep(0.02)

        wait_for(300)
        redis_server.kill()  # Redis dies: clicks go straight to PostgreSQL
        wait_for(len(received) + 300)
        redis_server.start()  # it comes back from its append-only file
        wait_for(len(received) + 300)
        postgres.restart()  # PostgreSQL restarts: clicks wait in the Redis stream
        wait_for(len(received) + 300)
        workers = _gunicorn_workers(server)
        os.kill(workers[0], signal.SIGKILL)  # a request worker dies mid-request
        wait_for(len(received) + 300)
        # The background process dies too, perhaps between XREADGROUP and XACK; gunicorn starts a new one,
        # which reclaims what the dead one had read.
        os.kill(_background_process(server), signal.SIGKILL)
        wait_for(len(received) + 300)
        stop.set()
        for thread in clients:
            thread.join(30)

        expected = set(received)
        deadline = time.monotonic() + 90
        while True:
            with psycopg.connect(postgres.url) as conn:
                stored = [str(r[0]) for r in conn.execute("select click_id from clicks").fetchall()]
                rollup = conn.execute("select coalesce(sum(clicks + bot_clicks), 0) from click_rollups").fetchone()[0]
            if expected <= set(stored) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        missing = expected - set(stored)
        duplicated = len(stored) - len(set(stored))
        print(
            f"\nledger: {len(received)} click ids received by the client, {len(stored)} clicks stored, "
            f"{len(missing)} missing, {duplicated} duplicated, roll-ups count {rollup}; "
            f"client-side failures during the outages: {failures}"
        )
        assert len(received) >= 1500
        assert len(expected) == len(received)  # ids are unique
        assert missing == set()
        assert duplicated == 0
        assert rollup == len(stored)  # the roll-ups were updated with the raw rows, once each
    finally:
        if server:
            server.stop()
        redis_server.kill() if redis_server.process.poll() is None else None
        postgres.stop()
