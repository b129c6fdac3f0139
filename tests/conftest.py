"""Real PostgreSQL and Redis fixtures (a database and a key prefix of our own), app, client, api_key, make_link, and
the background workers (drainer, deliverer) the tests run a step at a time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psycopg
import pytest
import redis
from cryptography.fernet import Fernet

from service import close_app, create_app
from service.auth import issue_key
from service.background import BackgroundWork
from service.config import load_settings
from service.platform import localservices, migrations
from tests.receivers import FakeCloudApi, WebhookReceiver
from tests.support import drop_database, free_port, wait_until_serving

ROOT = Path(__file__).resolve().parent.parent
RUN_ID = uuid.uuid4().hex[:10]
# One Fernet key per run: the apps, the background work and the live servers must all read what the others wrote.
SECRETS_KEY = Fernet.generate_key().decode()


@pytest.fixture(scope="session")
def pg_server() -> str:
    """URL of a PostgreSQL server's maintenance database: 127.0.0.1:5432 or an embedded one."""
    url, _ = localservices.server_url(ROOT / ".data", load_settings().require_services)
    return url


@pytest.fixture(scope="session")
def database_url(pg_server: str):
    """A migrated database created for this test run and dropped after it."""
    name = f"chatlink_test_{RUN_ID}"
    localservices.create_database(pg_server, name)
    url = localservices.with_database(pg_server, name)
    migrations.migrate(url)
    yield url
    drop_database(pg_server, name)


@pytest.fixture(scope="session")
def redis_url():
    """A Redis server; every key this run writes starts with its own prefix and is deleted after it."""
    url, _ = localservices.redis_url(ROOT / ".data", load_settings().require_services)
    yield url
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"chatlink-test-{RUN_ID}:*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture
def key_prefix() -> str:
    """A fresh Redis namespace per test, so cache entries and rate-limit counters never leak between tests."""
    return f"chatlink-test-{RUN_ID}:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def settings(database_url: str, redis_url: str, key_prefix: str, tmp_path):
    """Settings for a test app: the test database and Redis namespace; clicks are drained by the test itself."""
    return load_settings(
        {},
        database_url=database_url,
        redis_url=redis_url,
        key_prefix=key_prefix,
        base_url="https://chat.example",
        drain_clicks=False,
        deliver_events=False,
        webhook_allow_private=True,  # the test receivers listen on 127.0.0.1
        webhook_retry_base_seconds=0,
        spool_dir=str(tmp_path / "spool"),
        secrets_key=SECRETS_KEY,
        # Tests step through retries one at a time; the breaker's own test sets a low threshold.
        webhook_breaker_failures=100,
    )


@pytest.fixture
def make_app():
    """Build apps with setting overrides; their pools and Redis clients are closed after the test."""
    apps = []

    def build(settings, **overrides):
        app = create_app(settings.__class__(**{**settings.__dict__, **overrides}))
        app.config["TESTING"] = True
        apps.append(app)
        return app

    yield build
    for app in apps:
        if "tests.background" in app.extensions:
            app.extensions["tests.background"].stop()
        close_app(app)


def background_for(app) -> BackgroundWork:
    """The background process's drainer and deliverer for app's settings, built once per app and not started:
    tests run one step at a time (or start them, as the background process does)."""
    if "tests.background" not in app.extensions:
        app.extensions["tests.background"] = BackgroundWork.build(app.config["SETTINGS"])
    return app.extensions["tests.background"]


@pytest.fixture
def app(make_app, settings):
    return make_app(settings)


@pytest.fixture
def drainer(app):
    return background_for(app).drainer


@pytest.fixture
def deliverer(app):
    return background_for(app).deliverer


@pytest.fixture
def redis_client(app):
    """app's Redis client (with its key prefix and breaker)."""
    return app.extensions["chatlink.redis"]


@pytest.fixture
def link_cache(app):
    return app.extensions["chatlink.link_cache"]


@pytest.fixture
def db(app):
    return app.extensions["chatlink.db"]


def drain(app) -> int:
    """Move every queued click of app's stream into PostgreSQL; return how many entries moved."""
    drainer, moved = background_for(app).drainer, 0
    while True:
        step = drainer.drain_once()
        moved += step
        if not step:
            return moved


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def owner_conn(database_url: str):
    """An owner (migrating role) connection for arranging data and inspecting what the service wrote."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def new_api_key(database_url: str):
    """Factory: a new account (unique name) and its API key."""

    def issue(account: str | None = None) -> str:
        with psycopg.connect(database_url) as conn:
            return issue_key(conn, account or f"acct-{uuid.uuid4().hex[:12]}")

    return issue


@pytest.fixture
def api_key(new_api_key) -> str:
    return new_api_key()


@pytest.fixture
def auth(api_key: str) -> dict:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
def make_link(client, auth):
    """Factory: create a link through the API and return its JSON."""

    def create(headers: dict | None = None, **fields):
        body = {"phone": "+5511987654321", "message": "Olá! 👋", **fields}
        response = client.post("/api/v1/links", json=body, headers=headers or auth)
        assert response.status_code == 201, response.get_json()
        return response.get_json()

    return create


class SilentServer:
    """A TCP server that accepts connections and never answers: a hung Redis or PostgreSQL."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", free_port(23000, 24000)))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.running = False
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture
def dead_port() -> int:
    """A port nothing listens on: a stopped service."""
    return free_port(24000, 25000)


class LiveServer:
    """gunicorn with the production config, serving the app over real HTTP on a free port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port(25000, 27000)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        full_env = {**os.environ, **env, "PORT": str(self.port)}
        self.spool_dir, self.key_prefix = full_env.get("SPOOL_DIR"), full_env.get("KEY_PREFIX")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
            cwd=ROOT,
            env=full_env,
            stdout=log_path.open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:  # generous: the machine is shared, and a loaded one boots workers slowly
            wait_until_serving(self.url, self.process, 60, log_path, "gunicorn")
        except RuntimeError:
            self.stop()  # a server left running would keep serving (and delivering) for later tests
            raise

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
def live_server(database_url, redis_url, key_prefix, tmp_path):
    """Factory: start gunicorn with environment overrides; every server started is stopped after the test."""
    servers = []

    def start(**env: str) -> LiveServer:
        base = {
            "SPOOL_DIR": str(tmp_path / "spool"),
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "KEY_PREFIX": key_prefix,
            "WEB_CONCURRENCY": "2",
            "WORKER_THREADS": "2",
            "SECRETS_KEY": SECRETS_KEY,
        }
        server = LiveServer({**base, **env}, tmp_path / f"gunicorn-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# --- local peers for the webhook and WhatsApp tests (tests/webhooks/, test_monitoring.py) -------------------------
def _running(server):
    server.start()
    yield server
    server.stop()


@pytest.fixture
def receiver():
    """A webhook receiver on loopback, started for one test."""
    yield from _running(WebhookReceiver())


@pytest.fixture
def cloud_api():
    """A WhatsApp Cloud API stand-in on loopback, started for one test."""
    yield from _running(FakeCloudApi())


@pytest.fixture
def events_app(make_app, settings, cloud_api):
    """An app whose WhatsApp calls go to the stand-in, and whose lead forms may be sent at once."""
    return make_app(settings, lead_min_fill_seconds=0, whatsapp_api_base=f"{cloud_api.url}/v21.0")
