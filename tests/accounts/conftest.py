"""People fixtures: a person with a password in an account (made as `make user` makes them), and logging in."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from service.accounts import passwords, store

PASSWORD = "correct horse battery staple ✓"
ORIGIN = "https://chat.example"  # the test settings' BASE_URL: the service's own origin


@pytest.fixture
def make_person(database_url):
    """Factory: a person (unique email) with PASSWORD, in a new or given account, with a role."""

    def create(account: str | None = None, role: str = "owner", password: str = PASSWORD) -> dict:
        email = f"person-{uuid.uuid4().hex[:10]}@Example.com"
        account = account or f"acct-{uuid.uuid4().hex[:12]}"
        with psycopg.connect(database_url) as conn:
            account_id, user_id = store.admin_user(conn, account, passwords.normalize_email(email), role)
            store.admin_set_password(conn, user_id, passwords.hash_password(password))
        return {"email": email, "password": password, "account": account, "account_id": account_id, "user_id": user_id}

    return create


def log_in(client, person: dict, **extra) -> dict:
    """Log person in on client (its cookie jar keeps the session); the answer's JSON, with the CSRF headers."""
    response = client.post("/api/v1/sessions", json={"email": person["email"], "password": person["password"], **extra})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    body["headers"] = {"Origin": ORIGIN, "X-CSRF-Token": body["csrf_token"]}
    return body
