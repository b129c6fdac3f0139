"""Owners and members: invites (72 h, one use, no takeover of an existing login), roles, the API-keys API,
self sign-up, and row-level security for session users."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from service.accounts import store
from tests.accounts.conftest import PASSWORD, log_in

NEW_PASSWORD = "my own long passphrase"


def _token(invite_url: str) -> str:
    assert "#token=" in invite_url  # in the fragment: browsers never send it to a server
    return invite_url.split("#token=")[1]


@pytest.fixture
def owner(app, make_person):
    client = app.test_client()
    person = make_person()
    return client, log_in(client, person), person


def test_an_owner_invites_a_person_who_sets_a_password_and_logs_in_as_member(app, owner):
    client, session, person = owner
    response = client.post("/api/v1/members", json={"email": "New.Hire@Example.com"}, headers=session["headers"])
    assert response.status_code == 201
    invite = response.get_json()
    assert invite["role"] == "member" and invite["email"] == "new.hire@example.com"
    assert invite["invite_url"].startswith("https://chat.example/invite#token=")
    newcomer = app.test_client()
    accepted = newcomer.post(
        "/api/v1/invites/accept", json={"token": _token(invite["invite_url"]), "password": NEW_PASSWORD}
    )
    assert accepted.status_code == 200, accepted.get_json()
    assert accepted.get_json() == {
        "account_id": person["account_id"],
        "role": "member",
        "email": "new.hire@example.com",
    }
    member = log_in(newcomer, {"email": "new.hire@example.com", "password": NEW_PASSWORD})
    assert member["session"]["role"] == "member"
    emails = {m["email"]: m["role"] for m in client.get("/api/v1/members").get_json()["items"]}
    assert emails == {person["email"].lower(): "owner", "new.hire@example.com": "member"}
    again = newcomer.post(
        "/api/v1/invites/accept", json={"token": _token(invite["invite_url"]), "password": NEW_PASSWORD}
    )
    assert again.status_code == 400 and again.get_json()["type"] == "/problems/invite-invalid"


def test_an_invite_expires_after_72_hours(app, owner):
    client, session, _ = owner
    invite = client.post("/api/v1/members", json={"email": "late@example.com"}, headers=session["headers"]).get_json()
    sessions = app.extensions["chatlink.sessions"]
    later = sessions.now() + timedelta(hours=72, seconds=1)
    sessions.clock = lambda: later
    response = client.post(
        "/api/v1/invites/accept", json={"token": _token(invite["invite_url"]), "password": NEW_PASSWORD}
    )
    assert response.status_code == 400


def test_an_invite_cannot_take_over_an_existing_login(app, owner, make_person):
    client, session, person = owner
    victim = make_person()
    invite = client.post("/api/v1/members", json={"email": victim["email"]}, headers=session["headers"]).get_json()
    attempt = {"token": _token(invite["invite_url"]), "password": "owner chose this one"}
    assert client.post("/api/v1/invites/accept", json=attempt).status_code == 401
    assert log_in(app.test_client(), victim)  # the victim's password still works
    proof = {"token": _token(invite["invite_url"]), "password": PASSWORD}
    assert app.test_client().post("/api/v1/invites/accept", json=proof).status_code == 200
    both = log_in(app.test_client(), victim)["accounts"]
    assert {a["account_id"] for a in both} == {victim["account_id"], person["account_id"]}


def test_a_person_of_several_accounts_chooses_one_at_log_in(app, make_person):
    first = make_person()
    second = make_person(account=None)
    other_account = second["account_id"]
    with psycopg.connect(app.config["SETTINGS"].database_url) as conn:
        store.admin_user(conn, second["account"], first["email"].lower(), "member")
    client = app.test_client()
    session = log_in(client, first, account_id=other_account)
    assert session["session"]["account_id"] == other_account and session["session"]["role"] == "member"
    refused = client.post(
        "/api/v1/sessions", json={"email": first["email"], "password": PASSWORD, "account_id": 999999}
    )
    assert refused.status_code == 403


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/api/v1/members", {"email": "x@example.com"}),
        ("get", "/api/v1/members", None),
        ("delete", "/api/v1/members/1", None),
        ("post", "/api/v1/api-keys", None),
        ("get", "/api/v1/api-keys", None),
        ("delete", "/api/v1/api-keys/abcdefgh", None),
    ],
)
def test_a_member_is_refused_owner_actions_with_a_403_problem(app, make_person, method, path, body):
    member = make_person(role="member")
    client = app.test_client()
    session = log_in(client, member)
    response = getattr(client, method)(path, json=body, headers=session["headers"])
    assert response.status_code == 403
    assert response.mimetype == "application/problem+json" and response.get_json()["type"] == "/problems/forbidden"


def test_a_member_works_with_links(app, make_person):
    client = app.test_client()
    session = log_in(client, make_person(role="member"))
    assert client.post("/api/v1/links", json={"phone": "+14155552671"}, headers=session["headers"]).status_code == 201


def test_removing_a_member_ends_their_sessions_in_the_account(app, owner, make_person):
    client, session, person = owner
    member = make_person(account=person["account"], role="member")
    member_client = app.test_client()
    log_in(member_client, member)
    assert client.delete(f"/api/v1/members/{member['user_id']}", headers=session["headers"]).status_code == 204
    assert member_client.get("/api/v1/links").status_code == 401
    assert client.delete(f"/api/v1/members/{member['user_id']}", headers=session["headers"]).status_code == 404


def test_an_owner_manages_api_keys_and_the_secret_is_shown_once(client, owner):
    client, session, _ = owner
    created = client.post("/api/v1/api-keys", headers=session["headers"])
    assert created.status_code == 201
    key = created.get_json()["key"]
    bearer = {"Authorization": f"Bearer {key}"}
    assert client.get("/api/v1/links", headers=bearer).status_code == 200
    listed = client.get("/api/v1/api-keys").get_json()["items"]
    assert [k["id"] for k in listed] == [created.get_json()["id"]] and key not in str(listed)
    assert client.delete(f"/api/v1/api-keys/{listed[0]['id']}", headers=session["headers"]).status_code == 204
    assert client.get("/api/v1/links", headers=bearer).status_code == 401


def test_an_api_key_manages_keys_and_members_as_an_owner(client, auth):
    assert client.post("/api/v1/api-keys", headers=auth).status_code == 201
    assert client.post("/api/v1/members", json={"email": "a@example.com"}, headers=auth).status_code == 201


def test_keys_of_another_account_cannot_be_revoked(client, owner, new_api_key):
    client, session, _ = owner
    other = new_api_key()
    public_id = other.split("_")[1]
    assert client.delete(f"/api/v1/api-keys/{public_id}", headers=session["headers"]).status_code == 404
    assert client.get("/api/v1/links", headers={"Authorization": f"Bearer {other}"}).status_code == 200


def test_session_users_see_only_their_accounts_rows_by_slug_id_or_cursor(app, make_person, new_api_key):
    bob = {"Authorization": f"Bearer {new_api_key()}"}
    client = app.test_client()
    for i in range(3):
        client.post("/api/v1/links", json={"phone": "+14155552671", "title": f"bob {i}"}, headers=bob)
    bobs_page = client.get("/api/v1/links?limit=1", headers=bob).get_json()
    bobs_slug, bobs_cursor = bobs_page["items"][0]["slug"], bobs_page["next_cursor"]
    hook = client.post("/api/v1/webhooks", json={"url": "http://127.0.0.1:9/h"}, headers=bob).get_json()
    alice = app.test_client()
    session = log_in(alice, make_person())
    assert alice.get(f"/api/v1/links/{bobs_slug}").status_code == 404
    assert (
        alice.patch(f"/api/v1/links/{bobs_slug}", json={"disabled": True}, headers=session["headers"]).status_code
        == 404
    )
    assert alice.get(f"/api/v1/links?cursor={bobs_cursor}").get_json()["items"] == []
    assert alice.get("/api/v1/links").get_json()["items"] == []
    assert alice.get(f"/api/v1/webhooks/{hook['id']}/deliveries").status_code == 404
    assert alice.delete(f"/api/v1/webhooks/{hook['id']}", headers=session["headers"]).status_code == 404
    assert client.get(f"/api/v1/links/{bobs_slug}", headers=bob).get_json()["disabled"] is False


def test_sign_up_is_off_by_default(client):
    body = {"email": "me@example.com", "password": NEW_PASSWORD, "account": "mine"}
    assert client.post("/api/v1/signup", json=body).status_code == 404


def test_sign_up_when_enabled_creates_an_account_and_its_owner(make_app, settings):
    client = make_app(settings, signup_enabled=True).test_client()
    body = {"email": "founder@example.com", "password": NEW_PASSWORD, "account": "founder-co"}
    assert client.post("/api/v1/signup", json=body).status_code == 201
    assert log_in(client, body)["session"]["role"] == "owner"
    assert client.post("/api/v1/signup", json=body).status_code == 409
    taken = client.post("/api/v1/signup", json={**body, "email": "other@example.com"})
    assert taken.status_code == 409
    weak = client.post("/api/v1/signup", json={**body, "password": "short"})
    assert weak.status_code == 422 and "password" in weak.get_json()["errors"]


def test_the_invite_page_runs_only_its_own_script_and_keeps_no_referrer(client):
    response = client.get("/invite")
    assert response.status_code == 200 and response.mimetype == "text/html"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'sha256-" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert 'id="password"' in response.get_data(as_text=True)


def test_invite_cannot_be_taken_as_a_custom_slug(client, auth):
    response = client.post("/api/v1/links", json={"phone": "+14155552671", "slug": "invite"}, headers=auth)
    assert response.status_code == 422 and "slug" in response.get_json()["errors"]
