"""API keys checked inside the view's own transaction (require_auth_in_transaction, migration 0011): refused as
before, first among a request's errors, never counted as a PostgreSQL outage, and the account still logged."""

from __future__ import annotations

import logging

import psycopg
import pytest

from service.auth import KEY_REFUSED, AccountOfKey, hash_key, require_auth_in_transaction
from service.platform.db import UNAVAILABLE_ERRORS, is_row_error

BODY = {"phone": "+14155552671", "message": "hi"}


@pytest.fixture
def revoked_key(new_api_key, owner_conn) -> str:
    key = new_api_key()
    owner_conn.execute("update api_keys set revoked_at = now() where public_id = %s", [key[4:12]])
    return key


@pytest.fixture
def made_up_key(api_key) -> str:
    """A real public id with a wrong secret."""
    return api_key[:13] + ("B" if api_key[13] == "A" else "A") + api_key[14:]


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def refusal(response) -> str:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.content_type == "application/problem+json"
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    return response.get_json()["detail"]


CALLS = [
    ("get", "/api/v1/links/{slug}", None),
    ("patch", "/api/v1/links/{slug}", {"title": "taken over"}),
    ("delete", "/api/v1/links/{slug}", None),
    ("get", "/api/v1/links", None),
    ("post", "/api/v1/links", BODY),
    ("get", "/api/v1/links/{slug}/stats", None),
    ("get", "/api/v1/links/{slug}/clicks", None),
    ("get", "/api/v1/links/{slug}/clicks", "csv"),
    ("get", "/api/v1/stats", None),
]


@pytest.mark.parametrize(("method", "path", "body"), CALLS, ids=[f"{m} {p}" for m, p, _ in CALLS])
def test_a_revoked_or_made_up_key_is_refused_and_changes_nothing(
    client, make_link, owner_conn, revoked_key, made_up_key, method, path, body
):
    link = make_link()
    before = owner_conn.execute("select count(*), max(updated_at) from links").fetchone()
    url, send = path.format(slug=link["slug"]), getattr(client, method)
    accept = {"Accept": "text/csv"} if body == "csv" else {}
    body = None if body == "csv" else body
    assert refusal(send(url, json=body, headers={**bearer(revoked_key), **accept})) == "The API key was revoked."
    assert refusal(send(url, json=body, headers={**bearer(made_up_key), **accept})) == "The API key is not valid."
    assert owner_conn.execute("select count(*), max(updated_at) from links").fetchone() == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/v1/links", {"phone": "not a phone"}),
        ("patch", "/api/v1/links/{slug}", {"title": 5}),
        ("get", "/api/v1/links?limit=0", None),
        ("get", "/api/v1/links/{slug}/stats?tz=Nowhere/Special", None),
        ("get", "/api/v1/links/no-such-link", None),
    ],
    ids=["create 422", "patch 422", "list 422", "stats 422", "get 404"],
)
def test_a_bad_key_is_refused_before_the_request_is_judged(client, make_link, made_up_key, method, path, body):
    url = path.format(slug=make_link()["slug"])
    assert refusal(getattr(client, method)(url, json=body, headers=bearer(made_up_key))) == "The API key is not valid."


def test_made_up_keys_are_not_a_postgresql_outage(app, client, made_up_key, auth, make_link):
    # psycopg files class 28 (invalid authorization) under OperationalError, what an unreachable server raises; a
    # refused key has a code of its own so the breaker never opens for it.
    link = make_link()
    for _ in range(40):
        refusal(client.get(f"/api/v1/links/{link['slug']}", headers=bearer(made_up_key)))
    assert not app.extensions["chatlink.db"].breaker.is_open
    assert client.get(f"/api/v1/links/{link['slug']}", headers=auth).status_code == 200


def test_a_view_that_opens_no_transaction_still_has_the_key_checked(make_app, settings, auth, revoked_key):
    app = make_app(settings)
    seen = []

    @require_auth_in_transaction
    def no_transaction():
        seen.append(True)
        return {"ok": True}

    app.add_url_rule("/api/v1/test-no-transaction", "test_no_transaction", no_transaction)
    client = app.test_client()
    assert client.get("/api/v1/test-no-transaction", headers=auth).get_json() == {"ok": True}
    assert refusal(client.get("/api/v1/test-no-transaction", headers=bearer(revoked_key))) == "The API key was revoked."
    assert len(seen) == 2  # it ran, but its answer did not leave


def test_the_access_log_names_the_keys_account(app, client, auth, api_key, owner_conn, caplog):
    account_id = owner_conn.execute("select account_id from api_keys where public_id = %s", [api_key[4:12]]).fetchone()[
        0
    ]
    with caplog.at_level(logging.INFO, logger="chatlink.access"):
        assert client.post("/api/v1/links", json=BODY, headers=auth).status_code == 201
        assert client.get("/api/v1/links/nope", headers=auth).status_code == 404
    accounts = [record.account_id for record in caplog.records if record.name == "chatlink.access"]
    assert accounts == [account_id, account_id]


def test_every_transaction_given_the_key_checks_it(app, api_key, owner_conn):
    db = app.extensions["chatlink.db"]
    key = AccountOfKey(api_key[4:12], hash_key(api_key))
    with db.transaction(key, read_only=True) as conn:
        assert conn.execute("select current_account_id() as id").fetchone()["id"] is not None
    first = key.account_id
    owner_conn.execute("update api_keys set revoked_at = now() where public_id = %s", [api_key[4:12]])
    with pytest.raises(psycopg.DatabaseError) as refused, db.transaction(key) as conn:
        conn.execute("select 1").fetchone()
    assert refused.value.sqlstate == KEY_REFUSED and refused.value.diag.message_primary == "revoked"
    assert first is not None
    # Neither "PostgreSQL is unavailable" (the breaker) nor "this row is bad" (the dead letters).
    assert not isinstance(refused.value, UNAVAILABLE_ERRORS) and not is_row_error(refused.value)


def test_a_read_only_transaction_refuses_writes(app, owner_conn):
    db = app.extensions["chatlink.db"]
    account_id = owner_conn.execute("insert into accounts (name) values ('read-only-probe') returning id").fetchone()[0]
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction), db.transaction(account_id, read_only=True) as conn:
        conn.execute(
            "insert into links (account_id, slug, phone) values (current_account_id(), 'ro-probe', '+14155552671')"
        )
    with db.transaction(account_id, read_only=True) as conn:
        assert conn.execute("select current_account_id() as id").fetchone()["id"] == account_id
    assert owner_conn.execute("select count(*) from links where slug = 'ro-probe'").fetchone()[0] == 0
