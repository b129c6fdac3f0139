"""People over real HTTP under gunicorn: a revocation is seen by every worker at once, and no password,
session, CSRF, invite token or API key ends up in the logs, the database or an error body."""

from __future__ import annotations

import psycopg
import pytest
import requests

from tests.accounts.conftest import PASSWORD

pytestmark = pytest.mark.live
TIMEOUT = 20


def _log_in(server, person: dict, password: str = PASSWORD) -> tuple[requests.Session, dict]:
    browser = requests.Session()
    response = browser.post(
        f"{server.url}/api/v1/sessions", json={"email": person["email"], "password": password}, timeout=TIMEOUT
    )
    assert response.status_code == 201, response.text
    body = response.json()
    browser.headers.update({"Origin": server.url, "X-CSRF-Token": body["csrf_token"]})
    return browser, body


def _fresh_get(server, cookies, path="/api/v1/links") -> int:
    """A request on a new connection, so that gunicorn hands it to any of its workers."""
    return requests.get(
        f"{server.url}{path}", cookies=cookies, timeout=TIMEOUT, headers={"Connection": "close"}
    ).status_code


def test_a_revoked_session_is_refused_by_every_worker_at_once(live_server, make_person):
    server = live_server(WEB_CONCURRENCY="3", WORKER_THREADS="2")
    person = make_person()
    victim, _ = _log_in(server, person)
    admin, _ = _log_in(server, person)
    cookies = victim.cookies.get_dict()
    assert all(_fresh_get(server, cookies) == 200 for _ in range(30))  # every worker has checked (and cached) it
    items = admin.get(f"{server.url}/api/v1/sessions", timeout=TIMEOUT).json()["items"]
    victim_id = next(i["id"] for i in items if not i["current"])
    assert admin.delete(f"{server.url}/api/v1/sessions/{victim_id}", timeout=TIMEOUT).status_code == 204
    answers = [_fresh_get(server, cookies) for _ in range(30)]
    assert answers == [401] * 30


def test_no_secret_reaches_the_logs_the_database_or_an_error_body(live_server, make_person, database_url):
    server = live_server(LOG_LEVEL="debug")
    owner = make_person()
    secrets_seen: list[str] = [PASSWORD]
    errors: list[str] = []
    browser, login = _log_in(server, owner)
    secrets_seen += [login["csrf_token"], *browser.cookies.get_dict().values()]
    base = f"{server.url}/api/v1"
    invite = browser.post(f"{base}/members", json={"email": "secretive@example.com"}, timeout=TIMEOUT).json()
    invite_token = invite["invite_url"].split("#token=")[1]
    secrets_seen.append(invite_token)
    key = browser.post(f"{base}/api-keys", timeout=TIMEOUT).json()["key"]
    secrets_seen.append(key)
    member_password = "the newcomer's own passphrase"
    secrets_seen.append(member_password)
    # Failures that carry a secret in the request: their answers must not echo it.
    for body in (
        {"token": invite_token, "password": "short"},
        {"token": invite_token + "x", "password": member_password},
    ):
        errors.append(requests.post(f"{base}/invites/accept", json=body, timeout=TIMEOUT).text)
    accepted = requests.post(
        f"{base}/invites/accept", json={"token": invite_token, "password": member_password}, timeout=TIMEOUT
    )
    assert accepted.status_code == 200
    errors.append(
        requests.post(
            f"{base}/invites/accept", json={"token": invite_token, "password": member_password}, timeout=TIMEOUT
        ).text
    )
    wrong = requests.post(
        f"{base}/sessions", json={"email": owner["email"], "password": member_password}, timeout=TIMEOUT
    )
    errors.append(wrong.text)
    member, member_login = _log_in(server, {"email": "secretive@example.com"}, member_password)
    secrets_seen += [member_login["csrf_token"], *member.cookies.get_dict().values()]
    new_password = "changed to something else entirely"
    secrets_seen.append(new_password)
    change = member.put(
        f"{base}/me/password",
        json={"current_password": member_password, "new_password": new_password},
        timeout=TIMEOUT,
    )
    assert change.status_code == 204
    errors.append(
        member.put(
            f"{base}/me/password",
            json={"current_password": "wrong" * 4, "new_password": "1qaz2wsx3edc"},
            timeout=TIMEOUT,
        ).text
    )
    errors.append(
        requests.get(f"{base}/links", cookies={"chatlink_session": "x" + login["csrf_token"]}, timeout=TIMEOUT).text
    )
    server.stop()
    log = server.log()
    assert "POST /api/v1/sessions" in log  # the access log was written
    with psycopg.connect(database_url) as conn:
        tables = [r[0] for r in conn.execute("select tablename from pg_tables where schemaname = 'public'")]
        dump = "\n".join(
            str(row) for table in tables for row in conn.execute(f'select t::text from "{table}" t').fetchall()
        )
    assert "$argon2id$" in dump  # only hashes were stored
    for secret in secrets_seen:
        assert secret not in log, "a secret is in the gunicorn log"
        assert secret not in dump, "a secret is in the database"
        assert not any(secret in body for body in errors), "a secret is in an error body"
