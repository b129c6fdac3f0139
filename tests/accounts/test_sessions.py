"""Log-in sessions: the cookie, one answer for unknown emails and wrong passwords, listing and revoking,
password changes, idle and absolute expiry on the service's clock, and Redis or PostgreSQL down."""

from __future__ import annotations

from datetime import timedelta
from http.cookies import SimpleCookie

import pytest

from service.accounts import passwords
from tests.accounts.conftest import ORIGIN, PASSWORD, log_in


class Clock:
    """The clock the app's sessions read, moved by the test instead of sleeping."""

    def __init__(self, app) -> None:
        self.sessions = app.extensions["chatlink.sessions"]
        self.now = self.sessions.clock()
        self.sessions.clock = lambda: self.now

    def advance(self, **delta) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock(app):
    return Clock(app)


def test_log_in_sets_a_host_only_httponly_lax_secure_cookie_and_returns_the_csrf_token(client, make_person):
    person = make_person()
    response = client.post("/api/v1/sessions", json={"email": person["email"], "password": PASSWORD})
    assert response.status_code == 201
    (header,) = response.headers.getlist("Set-Cookie")
    cookie = SimpleCookie(header)["__Host-chatlink_session"]  # BASE_URL is https: the __Host- prefix
    assert cookie["httponly"] and cookie["secure"] and cookie["path"] == "/" and cookie["samesite"] == "Lax"
    assert not cookie["domain"]
    assert len(cookie.value) >= 43  # 256 random bits
    body = response.get_json()
    assert body["csrf_token"] and body["session"]["role"] == "owner"
    assert body["user"]["email"] == person["email"].lower()
    assert client.get("/api/v1/links").status_code == 200


def test_the_cookie_has_no_secure_flag_or_prefix_on_plain_http(make_app, settings, make_person):
    client = make_app(settings, base_url="http://127.0.0.1:8000").test_client()
    person = make_person()
    header = client.post("/api/v1/sessions", json={"email": person["email"], "password": PASSWORD}).headers[
        "Set-Cookie"
    ]
    assert header.startswith("chatlink_session=") and "Secure" not in header and "HttpOnly" in header


def test_email_is_case_insensitive_and_nfkc_normalised(client, make_person):
    person = make_person()
    fullwidth = person["email"].upper().replace("@", "＠")  # NFKC folds the fullwidth at sign
    assert client.post("/api/v1/sessions", json={"email": fullwidth, "password": PASSWORD}).status_code == 201


def test_unknown_email_and_wrong_password_get_the_same_answer_after_the_same_work(client, make_person, monkeypatch):
    person = make_person()
    verified = []
    real_verify = passwords._hasher.verify

    class CountingHasher:
        def verify(self, stored, password):
            verified.append(stored)
            return real_verify(stored, password)

        def __getattr__(self, name):
            return getattr(passwords.PasswordHasher(), name)

    monkeypatch.setattr(passwords, "_hasher", CountingHasher())
    wrong = client.post("/api/v1/sessions", json={"email": person["email"], "password": "wrong password here"})
    unknown = client.post("/api/v1/sessions", json={"email": "nobody@example.com", "password": "wrong password here"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.get_json() == unknown.get_json()
    assert wrong.mimetype == unknown.mimetype == "application/problem+json"
    assert "Set-Cookie" not in wrong.headers and "Set-Cookie" not in unknown.headers
    assert len(verified) == 2 and all(stored.startswith("$argon2id$") for stored in verified)


def test_every_log_in_issues_a_new_token_whatever_cookie_the_client_brought(client, make_person):
    person = make_person()
    client.set_cookie("__Host-chatlink_session", "fixated-by-an-attacker")
    first = client.post("/api/v1/sessions", json={"email": person["email"], "password": PASSWORD})
    second = client.post("/api/v1/sessions", json={"email": person["email"], "password": PASSWORD})
    tokens = [SimpleCookie(r.headers["Set-Cookie"])["__Host-chatlink_session"].value for r in (first, second)]
    assert len({*tokens, "fixated-by-an-attacker"}) == 3
    assert first.get_json()["csrf_token"] != second.get_json()["csrf_token"]


def test_an_old_hash_is_rehashed_with_todays_parameters_at_log_in(client, make_person, owner_conn):
    person = make_person()
    weak = passwords.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(PASSWORD)
    owner_conn.execute("update users set password_hash = %s where id = %s", [weak, person["user_id"]])
    log_in(client, person)
    stored = owner_conn.execute("select password_hash from users where id = %s", [person["user_id"]]).fetchone()[0]
    assert stored != weak and not passwords.needs_rehash(stored)


def test_log_out_ends_the_session(client, make_person):
    session = log_in(client, make_person())
    assert client.delete("/api/v1/sessions/current", headers=session["headers"]).status_code == 204
    response = client.get("/api/v1/links")
    assert response.status_code == 401 and response.mimetype == "application/problem+json"


def test_a_person_lists_their_sessions_without_addresses_and_revokes_one(app, make_person):
    person = make_person()
    phone, laptop = app.test_client(), app.test_client()
    chrome = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36"
    on_phone = log_in(phone, person)
    laptop.post(
        "/api/v1/sessions", json={"email": person["email"], "password": PASSWORD}, headers={"User-Agent": chrome}
    )
    items = laptop.get("/api/v1/sessions").get_json()["items"]
    assert len(items) == 2
    assert {"id", "created_at", "last_seen_at", "user_agent", "current"} <= set(items[0])
    assert next(i for i in items if i["current"])["user_agent"] == "Chrome on Linux"
    assert "127.0.0.1" not in str(items)
    other = next(i["id"] for i in items if not i["current"])
    assert laptop.delete(f"/api/v1/sessions/{other}", headers={"Origin": ORIGIN}).status_code == 403  # no token
    laptop_session = laptop.get("/api/v1/sessions/current").get_json()
    csrf = {"Origin": ORIGIN, "X-CSRF-Token": laptop_session["csrf_token"]}
    assert laptop.delete(f"/api/v1/sessions/{other}", headers=csrf).status_code == 204
    assert phone.get("/api/v1/links").status_code == 401
    assert laptop.get("/api/v1/links").status_code == 200
    assert on_phone["session"]["id"] == other
    assert laptop.delete(f"/api/v1/sessions/{other}", headers=csrf).status_code == 404


def test_a_person_cannot_revoke_someone_elses_session(app, make_person):
    alice, bob = app.test_client(), app.test_client()
    bob_session = log_in(bob, make_person())
    alice_session = log_in(alice, make_person())
    path = f"/api/v1/sessions/{bob_session['session']['id']}"
    assert alice.delete(path, headers=alice_session["headers"]).status_code == 404
    assert bob.get("/api/v1/links").status_code == 200


def test_changing_the_password_ends_every_other_session(app, make_person):
    person = make_person()
    here, elsewhere = app.test_client(), app.test_client()
    log_in(elsewhere, person)
    session = log_in(here, person)
    new = "a brand new passphrase 🔑"
    wrong = here.put(
        "/api/v1/me/password",
        json={"current_password": "not it at all", "new_password": new},
        headers=session["headers"],
    )
    assert wrong.status_code == 422 and "current_password" in wrong.get_json()["errors"]
    response = here.put(
        "/api/v1/me/password", json={"current_password": PASSWORD, "new_password": new}, headers=session["headers"]
    )
    assert response.status_code == 204
    assert elsewhere.get("/api/v1/links").status_code == 401
    assert here.get("/api/v1/links").status_code == 200
    assert here.post("/api/v1/sessions", json={"email": person["email"], "password": PASSWORD}).status_code == 401
    assert here.post("/api/v1/sessions", json={"email": person["email"], "password": new}).status_code == 201


def test_a_session_ends_after_the_idle_timeout(client, make_person, clock):
    log_in(client, make_person())
    clock.advance(minutes=29)
    assert client.get("/api/v1/links").status_code == 200  # used: the idle clock starts again
    clock.advance(minutes=29)
    assert client.get("/api/v1/links").status_code == 200
    clock.advance(minutes=30)
    assert client.get("/api/v1/links").status_code == 401


def test_a_session_ends_after_the_absolute_timeout_however_busy(client, make_person, clock):
    log_in(client, make_person())
    for _ in range(7 * 4 + 3):  # every 15 minutes for 7 h 45 min
        clock.advance(minutes=15)
        assert client.get("/api/v1/links").status_code == 200
    clock.advance(minutes=15)  # 8 h after log-in
    assert client.get("/api/v1/links").status_code == 401


def test_timeouts_follow_the_settings(make_app, settings, make_person):
    app = make_app(settings, session_idle_minutes=5)
    client, clock = app.test_client(), Clock(app)
    log_in(client, make_person())
    clock.advance(minutes=5)
    assert client.get("/api/v1/links").status_code == 401


def test_with_redis_down_sessions_are_checked_in_postgresql(make_app, settings, make_person, dead_port, clock):
    app = make_app(settings, redis_url=f"redis://127.0.0.1:{dead_port}/0")
    client = app.test_client()
    session = log_in(client, make_person())
    assert client.get("/api/v1/links").status_code == 200
    assert client.post("/api/v1/links", json={"phone": "+14155552671"}, headers=session["headers"]).status_code == 201
    assert client.delete("/api/v1/sessions/current", headers=session["headers"]).status_code == 204
    assert client.get("/api/v1/links").status_code == 401


def test_with_postgresql_down_a_session_request_answers_503(make_app, settings, dead_port):
    app = make_app(settings, app_database_url=f"postgresql://chatlink_app@127.0.0.1:{dead_port}/x", db_timeout_ms=200)
    client = app.test_client()
    client.set_cookie("__Host-chatlink_session", "a" * 43)
    response = client.get("/api/v1/links")
    assert response.status_code == 503 and response.mimetype == "application/problem+json"


def test_a_revoked_session_is_refused_from_the_cache_at_once(app, make_person):
    """The check reads Redis first: revocation must replace the cached entry, not wait for it to expire."""
    person = make_person()
    one, two = app.test_client(), app.test_client()
    log_in(one, person)
    session = log_in(two, person)
    assert one.get("/api/v1/links").status_code == 200  # now cached
    items = two.get("/api/v1/sessions").get_json()["items"]
    other = next(i["id"] for i in items if not i["current"])
    assert two.delete(f"/api/v1/sessions/{other}", headers=session["headers"]).status_code == 204
    assert one.get("/api/v1/links").status_code == 401


def test_session_endpoints_need_a_session_not_a_key(client, auth):
    response = client.get("/api/v1/sessions", headers=auth)
    assert response.status_code == 403 and response.get_json()["type"] == "/problems/session-required"


def test_failed_log_ins_are_limited_per_email_and_address_without_locking_out_others(make_app, settings, make_person):
    client = make_app(settings, rate_limit_login_account="3/minute").test_client()
    person = make_person()
    attacker = {"REMOTE_ADDR": "198.51.100.7"}
    for _ in range(3):
        bad = {"email": person["email"], "password": "guess guess guess"}
        assert client.post("/api/v1/sessions", json=bad, environ_base=attacker).status_code == 401
    refused = client.post("/api/v1/sessions", json=bad, environ_base=attacker)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    right = {"email": person["email"], "password": PASSWORD}
    assert client.post("/api/v1/sessions", json=right, environ_base=attacker).status_code == 429
    # The owner, from their own address, still gets in: the attacker cannot lock them out.
    assert client.post("/api/v1/sessions", json=right, environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 201


def test_log_in_attempts_are_limited_per_address(make_app, settings):
    client = make_app(settings, rate_limit_login="2/minute").test_client()
    for i in range(2):
        body = {"email": f"someone{i}@example.com", "password": "whatever password"}
        assert client.post("/api/v1/sessions", json=body).status_code == 401
    refused = client.post("/api/v1/sessions", json={"email": "x@example.com", "password": "whatever password"})
    assert refused.status_code == 429 and "Retry-After" in refused.headers


def test_bad_log_in_input_is_a_422_naming_the_field(client):
    response = client.post("/api/v1/sessions", json={"email": "a@example.com"})
    assert response.status_code == 422 and "password" in response.get_json()["errors"]
    response = client.post("/api/v1/sessions", json={"email": "a@example.com", "password": "x" * 20, "extra": 1})
    assert response.status_code == 422 and "extra" in response.get_json()["errors"]
