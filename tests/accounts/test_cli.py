"""`make user`: the password from stdin (never argv), else a one-time set-password link that works once."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

from tests.accounts.conftest import log_in
from tests.conftest import ROOT


def _make_user(database_url: str, email: str, account: str, stdin: str | None, *extra: str):
    env = {**os.environ, "DATABASE_URL": database_url, "BASE_URL": "https://chat.example"}
    return subprocess.run(
        [shutil.which("make") or "make", "-s", "user", f"EMAIL={email}", f"ACCOUNT={account}", *extra],
        cwd=ROOT,
        env=env,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_user_takes_the_password_on_stdin(database_url, client):
    email, password = f"cli-{uuid.uuid4().hex[:8]}@example.com", "typed into a pipe, not argv"
    result = _make_user(database_url, email, f"cli-{uuid.uuid4().hex[:8]}", password + "\n")
    assert result.returncode == 0, result.stderr
    assert password not in result.stdout
    assert log_in(client, {"email": email, "password": password})["session"]["role"] == "owner"


def test_make_user_refuses_a_common_password(database_url):
    result = _make_user(database_url, f"cli-{uuid.uuid4().hex[:8]}@example.com", "cli-weak", "1qaz2wsx3edc\n")
    assert result.returncode != 0 and "common" in result.stderr


def test_make_user_without_a_password_prints_a_one_time_set_password_link(database_url, app):
    email = f"cli-{uuid.uuid4().hex[:8]}@example.com"
    result = _make_user(database_url, email, f"cli-{uuid.uuid4().hex[:8]}", None, "ROLE=member")
    assert result.returncode == 0, result.stderr
    link = result.stdout.strip().splitlines()[-1]
    assert link.startswith("https://chat.example/invite#token=")
    token, client = link.split("#token=")[1], app.test_client()
    body = {"token": token, "password": "chosen through the link"}
    assert client.post("/api/v1/invites/accept", json=body).status_code == 200
    assert client.post("/api/v1/invites/accept", json=body).status_code == 400  # once
    assert log_in(client, {"email": email, "password": body["password"]})["session"]["role"] == "member"
