"""Operability over real gunicorn: /metrics summed over workers and the background process, JSON access lines
with request ids, and settings the service cannot run with refused in one line with exit status 2."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import ROOT
from tests.test_ledger import _gunicorn_workers
from tests.test_live import _create
from tests.test_monitoring import value

pytestmark = pytest.mark.live


def _scrape(server) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    response = requests.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def test_metrics_count_what_was_sent_across_workers_and_the_background_process(live_server, api_key, tmp_path):
    metrics_dir = tmp_path / "metrics"
    server = live_server(WEB_CONCURRENCY="3", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), DRAIN_GATHER_MS="50")
    link = _create(server, api_key)
    sent = 60
    for _ in range(sent):  # a new connection each: the workers share them out
        assert requests.get(link["short_url"], allow_redirects=False, timeout=10).status_code == 302
    deadline = time.monotonic() + 60
    while True:
        samples = _scrape(server)
        if value(samples, "chatlink_clicks_drained_total") >= sent or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert value(samples, "chatlink_redirects_total", outcome="redirect") == sent
    assert value(samples, "chatlink_http_requests_total", group="redirect", status="302") == sent
    assert value(samples, "chatlink_http_request_duration_seconds_count", group="redirect") == sent
    assert value(samples, "chatlink_clicks_drained_total") == sent
    assert value(samples, "chatlink_http_requests_total", group="links", status="201") == 1
    # Several processes wrote counters: the sums above are over workers and the background process.
    assert len({path.name.rsplit("_", 1)[1] for path in metrics_dir.glob("counter_*.db")}) >= 3


def test_access_lines_are_json_with_a_request_id_and_no_address(live_server, api_key):
    server = live_server(TRUSTED_PROXIES="1")
    link = _create(server, api_key)
    redirect = requests.get(
        link["short_url"],
        allow_redirects=False,
        timeout=10,
        headers={"X-Request-Id": "edge-42", "X-Forwarded-For": "198.51.100.77"},
    )
    assert redirect.status_code == 302 and redirect.headers["X-Request-Id"] == "edge-42"
    requests.get(f"{server.url}/zz%0D%0A2026-12-02%20forged%1B%5B31m", timeout=10)
    server.stop()
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert len(lines) == len(server.log().splitlines())  # every line is one JSON object
    access = [line for line in lines if line["logger"] == "chatlink.access"]
    [followed] = [line for line in access if line.get("request_id") == "edge-42"]
    assert followed["status"] == 302 and followed["route"] == "/<slug>" and followed["method"] == "GET"
    created = next(line for line in access if line["method"] == "POST")
    assert created["status"] == 201 and created["account_id"] and created["route"] == "/api/v1/links"
    forged = next(line for line in access if line["status"] == 404)
    assert "\\x0d\\x0a" in forged["path"] and "\\x1b" in forged["path"]
    assert "198.51.100.77" not in server.log() and "127.0.0.1" not in server.log() and api_key not in server.log()


def test_text_logs_keep_their_timestamps(live_server, api_key):
    server = live_server(LOG_FORMAT="text")
    link = _create(server, api_key)
    requests.get(link["short_url"], allow_redirects=False, timeout=10)
    server.stop()
    [line] = [line for line in server.log().splitlines() if f"GET /{link['slug']} 302" in line]
    assert "[address]" not in line and line[:4].isdigit() and line[13] == ":" and line[16] == ":"


def _start(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env={**os.environ, "PORT": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"LOG_LEVEL": "garbage"}, "LOG_LEVEL"),
        ({"REDIS_URL": "garbage"}, "REDIS_URL"),
        ({"DATABASE_URL": "garbage"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/chatlink_no_such_database"}, "DATABASE_URL"),
        ({"CHATLINK_ENV": "production", "BASE_URL": "http://chat.example"}, "BASE_URL"),
    ],
)
def test_a_bad_setting_stops_start_up_in_one_line_with_status_2(database_url, redis_url, env, named):
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, **env, "TRUSTED_PROXIES": "0"}
    result = _start(env)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(errors) == 1 and named in errors[0] and errors[0].startswith("chatlink: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_dead_workers_live_gauges_leave_the_sums(live_server, tmp_path):
    metrics_dir = tmp_path / "metrics"
    server = live_server(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir), DRAIN_CLICKS="0", DELIVER_EVENTS="0")
    [victim, *_] = _gunicorn_workers(server)
    deadline = time.monotonic() + 30
    while not (metrics_dir / f"gauge_livesum_{victim}.db").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # each worker publishes its pool gauges within a second of booting
    assert (metrics_dir / f"gauge_livesum_{victim}.db").exists()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (metrics_dir / f"gauge_livesum_{victim}.db").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not (metrics_dir / f"gauge_livesum_{victim}.db").exists()  # gunicorn's child_exit: mark_process_dead
    assert any(metrics_dir.glob(f"counter_{victim}.db"))  # its counters still count
    assert requests.get(f"{server.url}/metrics", timeout=10).status_code == 200
