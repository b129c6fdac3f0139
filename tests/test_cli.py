"""The operator's commands: api-key prints a usable key alone on its last line; revoke-key disables it."""

import os
import re
import subprocess
import sys

from tests.conftest import ROOT


def _cli(database_url, *args):
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_api_key_prints_a_key_alone_on_the_last_line_and_stores_only_its_hash(database_url, client, owner_conn):
    result = _cli(database_url, "api-key", "cli-demo")
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"clk_[a-z0-9]{8}_[A-Za-z0-9]{43}", key)
    assert client.get("/api/v1/links", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    stored = owner_conn.execute("select secret_hash from api_keys where public_id = %s", [key[4:12]]).fetchone()[0]
    assert key.encode() not in bytes(stored) and len(bytes(stored)) == 32


def test_revoke_key_makes_the_key_answer_401(database_url, client):
    key = _cli(database_url, "api-key", "cli-revoke").stdout.strip().splitlines()[-1]
    result = _cli(database_url, "revoke-key", key[:12])
    assert result.returncode == 0, result.stderr
    response = client.get("/api/v1/links", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401 and "revoked" in response.get_json()["detail"]


def test_revoking_an_unknown_key_fails_clearly(database_url):
    result = _cli(database_url, "revoke-key", "clk_zzzzzzzz")
    assert result.returncode == 1 and "no live key" in result.stderr
