"""The production gunicorn config over real HTTP: redirects, access log without addresses, hung Redis, bad config."""

import os
import socket
import subprocess
import sys
import time

import psycopg
import pytest
import requests

from tests.conftest import ROOT

pytestmark = pytest.mark.live


def _create(server, key, **fields):
    response = requests.post(
        f"{server.url}/api/v1/links",
        headers={"Authorization": f"Bearer {key}"},
        json={"phone": "+5511987654321", "message": "Olá 👋", **fields},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_gunicorn_serves_the_redirect_and_logs_no_client_address(live_server, api_key):
    server = live_server()
    link = _create(server, api_key)
    assert link["short_url"] == f"http://127.0.0.1:{server.port}/{link['slug']}"
    response = requests.get(
        link["short_url"], allow_redirects=False, timeout=10, headers={"X-Forwarded-For": "198.51.100.77"}
    )
    assert response.status_code == 302 and response.headers["Location"] == link["target_url"]
    server.stop()
    log = server.log()
    assert f"GET /{link['slug']}" in log
    assert "127.0.0.1" not in log and "198.51.100.77" not in log


def test_malformed_requests_are_logged_without_the_address(live_server):
    server = live_server()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"GARBAGE\x01 / HTTP/9.9\r\n\r\n")
        raw.recv(1000)
    server.stop()
    log = server.log()
    assert "Invalid request" in log or "[address]" in log
    assert "127.0.0.1" not in log


def test_hung_redis_never_makes_a_worker_hit_the_gunicorn_timeout(live_server, api_key, silent_server):
    healthy = live_server()
    link = _create(healthy, api_key)
    server = live_server(REDIS_URL=f"redis://127.0.0.1:{silent_server.port}/0", GUNICORN_TIMEOUT="5")
    with requests.Session() as session:
        statuses = [
            session.get(f"{server.url}/{link['slug']}", allow_redirects=False, timeout=4).status_code for _ in range(20)
        ]
    assert statuses == [302] * 20
    assert requests.get(f"{server.url}/health", timeout=4).json()["status"] == "warn"
    server.stop()
    assert "WORKER TIMEOUT" not in server.log()


def test_an_invalid_setting_stops_start_up_naming_the_variable(database_url, redis_url):
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url, "TRUSTED_PROXIES": "lots"}
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "TRUSTED_PROXIES" in result.stderr and "Traceback" not in result.stderr


def test_a_chunked_body_over_16_kib_answers_413_through_gunicorn(live_server, api_key):
    server = live_server()

    def chunks():
        yield b'{"phone": "+14155552671", "message": "'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"}'

    response = requests.post(
        f"{server.url}/api/v1/links",
        headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
        data=chunks(),
        timeout=10,
    )
    assert response.status_code == 413 and response.headers["Content-Type"] == "application/problem+json"


def test_a_non_ascii_referer_is_stored_as_sent_through_gunicorn(live_server, api_key, database_url):
    server = live_server(DRAIN_CLICKS="1")
    link = _create(server, api_key)
    referer = "https://exemplo.com.br/promoção"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(f"GET /{link['slug']} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode())
        raw.sendall(b"Referer: " + referer.encode() + b"\r\n\r\n")
        assert b" 302 " in raw.recv(1000)
    deadline = time.monotonic() + 20
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "select c.referrer from clicks c join links l on l.id = c.link_id where l.slug = %s", [link["slug"]]
            ).fetchone()
            if row:
                break
            time.sleep(0.2)
    assert row and row[0] == referer
