"""Tenants: the API shows an account only its own links, and PostgreSQL's row-level security enforces it."""

import psycopg
import pytest

from service.platform.db import APP_ROLE, app_conninfo


@pytest.fixture
def two_accounts(client, new_api_key):
    alice = {"Authorization": f"Bearer {new_api_key()}"}
    bob = {"Authorization": f"Bearer {new_api_key()}"}
    link = client.post("/api/v1/links", headers=alice, json={"phone": "+14155552671", "title": "alice's"}).get_json()
    return alice, bob, link


def test_another_accounts_link_answers_404_to_every_verb(client, two_accounts):
    alice, bob, link = two_accounts
    path = f"/api/v1/links/{link['slug']}"
    assert client.get(path, headers=bob).status_code == 404
    assert client.patch(path, headers=bob, json={"disabled": True}).status_code == 404
    assert client.delete(path, headers=bob).status_code == 404
    assert client.get("/api/v1/links", headers=bob).get_json()["items"] == []
    assert client.get(path, headers=alice).get_json()["disabled"] is False


def test_the_public_redirect_still_resolves_every_accounts_links(client, two_accounts):
    assert client.get(f"/{two_accounts[2]['slug']}").status_code == 302


def test_app_role_owns_nothing_and_cannot_bypass_rls(owner_conn):
    role = owner_conn.execute("select rolsuper, rolbypassrls from pg_roles where rolname = %s", [APP_ROLE]).fetchone()
    assert role == (False, False)
    owned = owner_conn.execute(
        "select count(*) from pg_tables where schemaname = 'public' and tableowner = %s", [APP_ROLE]
    ).fetchone()
    assert owned == (0,)
    forced = owner_conn.execute(
        "select relname from pg_class where relname in ('links','api_keys','accounts','idempotency_keys')"
        " and not (relrowsecurity and relforcerowsecurity)"
    ).fetchall()
    assert forced == []


def test_a_query_without_where_sees_only_the_current_account(database_url, two_accounts, owner_conn):
    alice_account = owner_conn.execute(
        "select account_id from links where slug = %s", [two_accounts[2]["slug"]]
    ).fetchone()[0]
    with psycopg.connect(app_conninfo(database_url)) as conn:
        assert conn.execute("select current_user").fetchone() == (APP_ROLE,)
        assert conn.execute("select count(*) from links").fetchone() == (0,)  # no account set: nothing
        conn.execute("select set_config('chatlink.account_id', %s, true)", [str(alice_account + 1000)])
        assert conn.execute("select count(*) from links").fetchone() == (0,)
        conn.rollback()
        conn.execute("select set_config('chatlink.account_id', %s, true)", [str(alice_account)])
        slugs = [r[0] for r in conn.execute("select slug from links").fetchall()]
        assert slugs == [two_accounts[2]["slug"]]


def test_app_role_cannot_write_rows_for_another_account(database_url, owner_conn, two_accounts):
    bob_account = owner_conn.execute("insert into accounts (name) values ('rls-victim') returning id").fetchone()[0]
    with psycopg.connect(app_conninfo(database_url)) as conn:
        conn.execute("select set_config('chatlink.account_id', '1', true)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "insert into links (account_id, slug, phone) values (%s, 'forged-row', '+14155552671')", [bob_account]
            )
