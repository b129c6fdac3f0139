"""The PostgreSQL pool, transactions carrying the account for row-level security, named queries from sql/queries."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
from flask import current_app
from psycopg.rows import dict_row

QUERIES_DIR = Path(__file__).resolve().parents[2] / "sql" / "queries"
APP_ROLE = "chatlink_app"

# What a broken or unreachable database raises; the error handlers turn these into 503.
UNAVAILABLE_ERRORS = (psycopg.OperationalError, psycopg_pool.PoolTimeout, psycopg.errors.QueryCanceled)


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


class Database:
    """One connection pool per process, opened after gunicorn forks."""

    def __init__(
        self, conninfo: str, *, size: int, timeout_ms: int, setup_sql: str | None = None, min_size: int = 1
    ) -> None:
        self.conninfo = conninfo
        self.pool = psycopg_pool.ConnectionPool(
            conninfo,
            min_size=min_size,
            max_size=size,
            open=False,
            timeout=timeout_ms / 1000,
            check=psycopg_pool.ConnectionPool.check_connection,
            configure=(lambda conn: conn.execute(setup_sql)) if setup_sql else None,
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

    def connection(self):
        """A pooled autocommit connection acting for no account (for the SECURITY DEFINER narrow paths)."""
        return self.pool.connection()

    @contextmanager
    def transaction(self, account_id: int | None = None, user_id: int | None = None) -> Iterator[psycopg.Connection]:
        """A connection inside a transaction, acting for account_id (and the person user_id, when a person acts)
        under row-level security."""
        with self.pool.connection() as conn, conn.transaction():
            if account_id is not None or user_id is not None:
                conn.execute(
                    "select set_config('chatlink.account_id', %s, true), set_config('chatlink.user_id', %s, true)",
                    ["" if account_id is None else str(account_id), "" if user_id is None else str(user_id)],
                )
            yield conn

    def unscoped_one(self, name: str, params: Any = None) -> dict | None:
        """Run a named query as no account (the narrow SECURITY DEFINER paths only); return its first row."""
        with self.pool.connection() as conn:
            return conn.execute(QUERIES[name], params).fetchone()


def query(conn: psycopg.Connection, name: str, params: Any = None) -> psycopg.Cursor:
    """Execute the named query from sql/queries on conn."""
    return conn.execute(QUERIES[name], params)


def database() -> Database:
    """The request's app's pool."""
    return current_app.extensions["chatlink.db"]
