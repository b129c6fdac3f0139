"""Plain-SQL migrations: apply pending ones, roll back the latest, refuse an applied file that changed."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "sql" / "migrations"
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.up\.sql\Z")
# Any fixed number works; it only has to be the same for every process that migrates this database.
_LOCK_ID = 7_368_912_104


class MigrationError(RuntimeError):
    """The database and the migration files disagree in a way a person has to resolve."""


@dataclass(frozen=True)
class Migration:
    """One numbered pair of up/down SQL files."""

    version: int
    name: str
    up_sql: str
    down_sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.up_sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration in directory, in version order."""
    found = []
    for up in sorted(directory.glob("*.up.sql")):
        match = _NAME.match(up.name)
        if not match:
            raise MigrationError(f"{up.name}: migration files are named NNNN_<what>.up.sql")
        down = up.with_name(up.name.replace(".up.sql", ".down.sql"))
        if not down.exists():
            raise MigrationError(f"{up.name} has no {down.name}")
        found.append(Migration(int(match[1]), match[2], up.read_text(), down.read_text()))
    return found


def _applied(conn: psycopg.Connection) -> dict[int, tuple[str, str]]:
    conn.execute(
        """create table if not exists schema_migrations (
               version    integer primary key,
               name       text not null,
               checksum   text not null,
               applied_at timestamptz not null default now())"""
    )
    rows = conn.execute("select version, name, checksum from schema_migrations").fetchall()
    return {version: (name, checksum) for version, name, checksum in rows}


def migrate(url: str, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every pending migration, each in its own transaction; return the names applied."""
    migrations = discover(directory)
    done = []
    with psycopg.connect(url, autocommit=True) as conn:
        # Concurrent starts (several machines, a test and a server) wait here instead of racing.
        conn.execute("select pg_advisory_lock(%s)", [_LOCK_ID])
        applied = _applied(conn)
        for m in migrations:
            if m.version in applied:
                name, checksum = applied[m.version]
                if checksum != m.checksum:
                    raise MigrationError(
                        f"migration {m.version:04d}_{m.name} was changed after it was applied "
                        f"(checksum {checksum[:12]} in the database, {m.checksum[:12]} on disk); "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            with conn.transaction():
                conn.execute(m.up_sql)
                conn.execute(
                    "insert into schema_migrations (version, name, checksum) values (%s, %s, %s)",
                    [m.version, m.name, m.checksum],
                )
            done.append(f"{m.version:04d}_{m.name}")
        conn.execute("select pg_advisory_unlock(%s)", [_LOCK_ID])
    return done


def rollback(url: str, directory: Path = MIGRATIONS_DIR) -> str | None:
    """Revert the latest applied migration; return its name, or None when nothing is applied."""
    by_version = {m.version: m for m in discover(directory)}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select pg_advisory_lock(%s)", [_LOCK_ID])
        applied = _applied(conn)
        if not applied:
            return None
        latest = max(applied)
        m = by_version.get(latest)
        if m is None:
            raise MigrationError(f"migration {latest:04d} is applied but its files are gone")
        with conn.transaction():
            conn.execute(m.down_sql)
            conn.execute("delete from schema_migrations where version = %s", [latest])
        conn.execute("select pg_advisory_unlock(%s)", [_LOCK_ID])
        return f"{m.version:04d}_{m.name}"
