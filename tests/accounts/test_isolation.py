"""Row-level security on people's tables: the service role sees a person's or an account's rows only when the
transaction acts for them."""

from __future__ import annotations

import psycopg

from service.platform.db import app_conninfo
from tests.accounts.conftest import log_in

TABLES = ("users", "memberships", "invites", "sessions")


def test_peoples_tables_force_row_level_security(owner_conn):
    forced = owner_conn.execute(
        "select relname from pg_class where relname = any(%s) and relrowsecurity and relforcerowsecurity",
        [list(TABLES)],
    ).fetchall()
    assert sorted(r[0] for r in forced) == sorted(TABLES)


def _count(conn, table: str, account_id=None, user_id=None) -> int:
    with conn.transaction():
        conn.execute(
            "select set_config('chatlink.account_id', %s, true), set_config('chatlink.user_id', %s, true)",
            ["" if account_id is None else str(account_id), "" if user_id is None else str(user_id)],
        )
        return conn.execute(f"select count(*) from {table}").fetchone()[0]  # noqa: S608 (a fixed table name)


def test_the_service_role_sees_only_the_acting_person_and_account(app, make_person, database_url):
    alice, bob = make_person(), make_person()
    for person in (alice, bob):
        client = app.test_client()
        session = log_in(client, person)
        client.post("/api/v1/members", json={"email": "guest@example.com"}, headers=session["headers"])
    with psycopg.connect(app_conninfo(database_url), autocommit=True) as conn:
        for table in TABLES:
            assert _count(conn, table) == 0, table  # nobody acting: nothing
        assert _count(conn, "sessions", user_id=alice["user_id"]) == 1
        assert _count(conn, "users", user_id=alice["user_id"]) == 1
        assert _count(conn, "invites", account_id=alice["account_id"]) == 1
        assert _count(conn, "memberships", account_id=alice["account_id"]) == 1
        assert _count(conn, "users", account_id=alice["account_id"]) == 1  # the account's people only
        with conn.transaction():
            conn.execute("select set_config('chatlink.user_id', %s, true)", [str(alice["user_id"])])
            changed = conn.execute("update users set password_hash = 'x' where id = %s", [bob["user_id"]]).rowcount
        assert changed == 0
