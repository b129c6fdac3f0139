"""Migrations: every one up, down and up again on an empty database; a changed applied file is refused."""

import shutil
import uuid

import psycopg
import pytest

from service.platform import localservices, migrations
from tests.support import drop_database


@pytest.fixture
def empty_database(pg_server):
    name = f"chatlink_test_mig_{uuid.uuid4().hex[:8]}"
    localservices.create_database(pg_server, name)
    yield localservices.with_database(pg_server, name)
    drop_database(pg_server, name)


def _tables(url):
    with psycopg.connect(url) as conn:
        rows = conn.execute("select tablename from pg_tables where schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def test_every_migration_goes_up_down_and_up_again(empty_database):
    names = [f"{m.version:04d}_{m.name}" for m in migrations.discover()]
    assert migrations.migrate(empty_database) == names
    assert {"links", "accounts", "api_keys"} <= _tables(empty_database)
    for expected in reversed(names):
        assert migrations.rollback(empty_database) == expected
    assert _tables(empty_database) == {"schema_migrations"}
    assert migrations.rollback(empty_database) is None
    assert migrations.migrate(empty_database) == names
    assert migrations.migrate(empty_database) == []


def test_changing_an_applied_migration_is_refused(empty_database, tmp_path):
    copy = tmp_path / "migrations"
    shutil.copytree(migrations.MIGRATIONS_DIR, copy)
    migrations.migrate(empty_database, copy)
    first = sorted(copy.glob("*.up.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
        migrations.migrate(empty_database, copy)


def test_a_migration_without_its_down_file_is_refused(tmp_path):
    (tmp_path / "0001_x.up.sql").write_text("select 1")
    with pytest.raises(migrations.MigrationError, match="no 0001_x.down.sql"):
        migrations.discover(tmp_path)
