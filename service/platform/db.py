"""The PostgreSQL pool, transactions carrying the account for row-level security, named queries from sql/queries."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import psycopg
import psycopg_pool
from flask import current_app
from psycopg.rows import dict_row, tuple_row

from .breaker import Breaker

QUERIES_DIR = Path(__file__).resolve().parents[2] / "sql" / "queries"
APP_ROLE = "chatlink_app"

log = logging.getLogger(__name__)


_OPEN_TRANSACTION = (psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR)


class DatabaseDown(psycopg.OperationalError):
    """The PostgreSQL breaker is open: refused at once, without waiting DB_TIMEOUT_MS for the pool."""


# What a broken or unreachable database raises; the error handlers turn these into 503.
UNAVAILABLE_ERRORS = (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg.errors.QueryCanceled)
# SQLSTATE classes that say "this row's data is bad": 22 data exception (a value out of range, bad encoding…),
# 23 integrity constraint violation (a foreign key to a deleted account, a check…). Only these condemn a row.
ROW_DATA_CLASSES = frozenset({"22", "23"})


def is_row_error(exc: BaseException) -> bool:
    """True when exc says the row it was given is bad (dead-letter that row); False when the dependency is
    unavailable, read-only, misconfigured, out of memory or asks for a retry (pause, retry with back-off, never
    acknowledge). The one place errors are classified: an unknown error is never blamed on the data."""
    sqlstate = getattr(exc, "sqlstate", None)
    return isinstance(exc, psycopg.Error) and sqlstate is not None and sqlstate[:2] in ROW_DATA_CLASSES


# A connection back in the pool for longer than this is checked (one round trip) before it is handed out again;
# one returned more recently was working a moment ago, and checking it would cost a request a round trip.
IDLE_CHECK_SECONDS = 1.0
# When each connection was last handed back by Database.connection (weak: a closed connection drops out on its own).
# Not the pool's reset= callback: with one set, psycopg_pool hands every returned connection to its worker thread
# (a queue put and a thread wake-up per checkout, and the connection unavailable until that thread has run).
_returned_at: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def check_if_idle(conn: psycopg.Connection) -> None:
    """The pool's check: a round trip only for a connection that sat idle (a restart or an idle timeout may have
    closed it meanwhile), so the pool replaces a dead one instead of handing it to a request."""
    if time.monotonic() - _returned_at.get(conn, 0.0) > IDLE_CHECK_SECONDS:
        psycopg_pool.ConnectionPool.check_connection(conn)


# Connections whose setup SQL ran (weak: a closed connection drops out on its own).
_prepared: weakref.WeakSet = weakref.WeakSet()


def ensure_setup(conn: psycopg.Connection, setup_sql: str) -> None:
    """Run setup_sql on conn unless it already ran there (a connection opened while the server was read-only)."""
    if conn not in _prepared:
        conn.execute(setup_sql)
        _prepared.add(conn)


def _configure(setup_sql: str):
    def configure(conn: psycopg.Connection) -> None:
        try:
            ensure_setup(conn, setup_sql)
        except psycopg.errors.ReadOnlySqlTransaction:
            # A read-only server (a standby, default_transaction_read_only) still serves reads: keep the
            # connection; whoever needs the setup calls ensure_setup() again once the server takes writes.
            log.warning("PostgreSQL is read-only: connection opened without its setup")

    return configure


def load_queries(directory: Path = QUERIES_DIR) -> dict[str, str]:
    """Every `-- name: <name>` query in directory's .sql files, keyed by name."""
    queries: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        for block in re.split(r"^-- name: ", path.read_text(), flags=re.M)[1:]:
            name, _, body = block.partition("\n")
            name = name.strip()
            if name in queries:
                raise ValueError(f"query {name} is defined twice")
            queries[name] = body.strip().rstrip(";")
    return queries


QUERIES = load_queries()


def app_conninfo(owner_url: str, app_url: str = "") -> str:
    """The connection string the service runs with: app_url, else owner_url with the app role as user."""
    if app_url:
        return app_url
    info = psycopg.conninfo.conninfo_to_dict(owner_url)
    info["user"] = APP_ROLE
    info.pop("password", None)
    return psycopg.conninfo.make_conninfo(**info)


class DeferredAccount(Protocol):
    """An account a transaction learns from its own first statement (an API key it checks, say): statement() is that
    SQL and its parameters, which sets chatlink.account_id and returns the account id as its one column; the
    transaction records the id in account_id. A statement that refuses fails the transaction with it."""

    account_id: int | None

    def statement(self, read_only: bool) -> tuple[str, Sequence[Any]]: ...


class Database:
    """One connection pool per process, opened after gunicorn forks, behind a breaker: once PostgreSQL has failed
    repeatedly, callers get DatabaseDown in microseconds instead of each waiting DB_TIMEOUT_MS for the pool."""

    def __init__(
        self,
        conninfo: str,
        *,
        size: int,
        timeout_ms: int,
        setup_sql: str | None = None,
        min_size: int = 1,
        breaker: Breaker | None = None,
    ) -> None:
        self.conninfo = conninfo
        self.breaker = breaker or Breaker("postgresql")
        self.pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=size,
            open=False,
            timeout=timeout_ms / 1000,
            check=check_if_idle,
            configure=_configure(setup_sql) if setup_sql else None,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "connect_timeout": max(2, timeout_ms // 1000),
                "options": f"-c statement_timeout={timeout_ms} -c lock_timeout={timeout_ms}",
            },
        )

    def open(self) -> None:
        """Start the pool without waiting: the service must start even while PostgreSQL is down."""
        self.pool.open(wait=False)

    def close(self) -> None:
        """Close every connection of the pool."""
        self.pool.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection acting for no account (for the SECURITY DEFINER narrow paths); raises
        DatabaseDown at once while the breaker is open."""
        if not self.breaker.allow():
            raise DatabaseDown("PostgreSQL breaker open")
        try:
            with self.pool.connection() as conn:
                try:
                    yield conn
                finally:
                    _returned_at[conn] = time.monotonic()
        except UNAVAILABLE_ERRORS as exc:
            self.breaker.failure(exc)
            raise
        except psycopg.Error:  # PostgreSQL answered (a constraint, a refused statement): it is up
            self.breaker.success()
            raise
        self.breaker.success()

    @contextmanager
    def transaction(
        self,
        account: int | DeferredAccount | None = None,
        user_id: int | None = None,
        *,
        pipelined: bool = True,
        read_only: bool = False,
    ) -> Iterator[psycopg.Connection]:
        """A connection inside a transaction, acting for an account (by id, or a DeferredAccount its first statement
        establishes) and the person user_id, when a person acts, under row-level security.

        Pipelined: statements go out without waiting for each other's replies; a round trip is paid only where the
        caller reads a result (fetchone/fetchall) and once at the end. BEGIN, the account's set_config and the
        first query share one round trip; writes whose results nobody reads share the COMMIT's. (BEGIN and COMMIT
        are sent as statements: psycopg's conn.transaction() waits for each on its own.) An error a statement
        raises surfaces at the next read or at the end, and the transaction is rolled back whole, as before.
        pipelined=False for a COPY, which pipeline mode cannot carry (one statement, nothing to overlap).

        read_only (pipelined only): no BEGIN or COMMIT statement at all. PostgreSQL runs everything a pipeline sends
        before its Sync (at the block's end) as one implicit transaction, made read-only by its first statement, so
        a write fails instead of being committed by that Sync, which ends the block on an exception too.
        """
        explicit = not (read_only and pipelined)
        with self.connection() as conn:
            try:
                with conn.pipeline() if pipelined else contextlib.nullcontext():
                    if explicit:
                        conn.execute("begin read only" if read_only else "begin")
                    deferred = self._act_for(conn, account, user_id, read_only and not explicit)
                    yield conn
                    if explicit:
                        conn.execute("commit")
                if deferred is not None:
                    account.account_id = deferred.fetchone()[0]
            except BaseException:
                # Best effort: a broken connection (status UNKNOWN) is discarded by the pool anyway, and the error
                # that brought us here is the one to raise.
                if conn.info.transaction_status in _OPEN_TRANSACTION:
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("rollback")
                raise

    def read(self, account: int | DeferredAccount | None, name: str, params: Any = None) -> psycopg.Cursor:
        """Run one named query in a read-only transaction of its own, acting for account, in one round trip: the
        account's statement, the query and the Sync go out together. The cursor comes back with its rows."""
        with self.transaction(account, read_only=True) as conn:
            cursor = query(conn, name, params)
        return cursor

    @staticmethod
    def _act_for(
        conn: psycopg.Connection, account: int | DeferredAccount | None, user_id: int | None, read_only: bool
    ) -> psycopg.Cursor | None:
        """Send the statement that makes the transaction act for account and user_id (and read-only); for a
        DeferredAccount, the cursor whose row will carry the account's id, else None."""
        if account is not None and not isinstance(account, int):
            return conn.cursor(row_factory=tuple_row).execute(*account.statement(read_only))
        calls, params = [], []
        if account is not None or user_id is not None:
            calls += ["set_config('chatlink.account_id', %s, true)", "set_config('chatlink.user_id', %s, true)"]
            params += ["" if account is None else str(account), "" if user_id is None else str(user_id)]
        if read_only:  # only ever to "on": a server in read-only mode refuses a switch to read-write
            calls.append("set_config('transaction_read_only', 'on', true)")
        if calls:
            conn.execute(f"select {', '.join(calls)}", params)
        return None

    def unscoped_one(self, name: str, params: Any = None) -> dict | None:
        """Run a named query as no account (the narrow SECURITY DEFINER paths only); return its first row."""
        with self.connection() as conn:
            return conn.execute(QUERIES[name], params).fetchone()


def query(conn: psycopg.Connection, name: str, params: Any = None, row_factory=None) -> psycopg.Cursor:
    """Execute the named query from sql/queries on conn (rows as dicts, or as row_factory makes them)."""
    if row_factory is None:
        return conn.execute(QUERIES[name], params)
    return conn.cursor(row_factory=row_factory).execute(QUERIES[name], params)


def copy_out(conn: psycopg.Connection, name: str, params: Any = None, chunk_bytes: int = 1 << 16) -> Iterator[bytes]:
    """Run the named `copy (...) to stdout` query on conn and yield its output in chunks of about chunk_bytes
    (COPY hands over a row at a time: a chunk per row would mean a write to the client per row)."""
    buffer = bytearray()
    with conn.cursor().copy(QUERIES[name], params) as copy:
        for data in copy:
            buffer += data
            if len(buffer) >= chunk_bytes:
                yield bytes(buffer)
                buffer.clear()
    if buffer:
        yield bytes(buffer)


def database() -> Database:
    """The request's app's pool."""
    return current_app.extensions["chatlink.db"]
