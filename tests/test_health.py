"""Liveness and the load balancer's health check: fail only when this node cannot serve redirects, warn (200) for
every degraded state, each check named with what it observed."""

import os
import time

import redis

from service.clicks import pipeline
from tests.clicks.test_faults import _app_role_read_only
from tests.test_ledger import PrivateRedis


def test_livez_answers_200_touching_nothing(make_app, settings, dead_port):
    client = make_app(
        settings,
        redis_url=f"redis://127.0.0.1:{dead_port}/0",
        app_database_url=f"postgresql://postgres@127.0.0.1:{dead_port}/x",
    ).test_client()
    assert client.get("/livez").status_code == 200


def test_health_passes_with_both_dependencies_up(client):
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 200 and response.mimetype == "application/health+json"
    assert body["status"] == "pass"
    for name in ("postgresql:connection", "redis:connection"):
        check = body["checks"][name][0]
        assert check["status"] == "pass" and check["observedUnit"] == "ms" and check["observedValue"] >= 0
    assert body["checks"]["clicks:dropped"][0]["observedValue"] == 0


def test_health_warns_with_redis_down(make_app, settings, dead_port):
    client = make_app(settings, redis_url=f"redis://127.0.0.1:{dead_port}/0").test_client()
    response = client.get("/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "warn" and body["checks"]["redis:connection"][0]["status"] == "warn"


def test_health_warns_with_redis_hung(make_app, settings, silent_server):
    client = make_app(settings, redis_url=f"redis://127.0.0.1:{silent_server.port}/0").test_client()
    assert client.get("/health").get_json()["status"] == "warn"


def test_health_warns_with_postgresql_down_while_redis_serves_cached_redirects(make_app, settings, dead_port):
    client = make_app(settings, app_database_url=f"postgresql://postgres@127.0.0.1:{dead_port}/x").test_client()
    response = client.get("/health")
    assert response.status_code == 200  # a load balancer keeps this node: its cached links still redirect
    body = response.get_json()
    assert body["status"] == "warn"
    assert body["checks"]["postgresql:connection"][0]["status"] == "warn"
    assert body["checks"]["redis:connection"][0]["status"] == "pass"


def test_health_warns_within_its_bound_with_postgresql_hung(make_app, settings, silent_server):
    client = make_app(
        settings, app_database_url=f"postgresql://postgres@127.0.0.1:{silent_server.port}/x"
    ).test_client()
    body = client.get("/health").get_json()
    assert body["status"] == "warn"
    assert body["checks"]["postgresql:connection"][0]["output"] == "no answer within 500 ms"


def test_health_fails_only_with_both_postgresql_and_redis_down(make_app, settings, dead_port, silent_server):
    client = make_app(
        settings,
        app_database_url=f"postgresql://postgres@127.0.0.1:{dead_port}/x",
        redis_url=f"redis://127.0.0.1:{silent_server.port}/0",
    ).test_client()
    response = client.get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "fail"
    assert body["checks"]["postgresql:connection"][0]["status"] == "fail"
    assert body["checks"]["redis:connection"][0]["status"] == "fail"


def _warns(client, check: str) -> dict:
    """/health answered 200 warn because of check; return that check."""
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 200 and body["status"] == "warn", body
    assert body["checks"][check][0]["status"] == "warn", body["checks"][check]
    return body["checks"][check][0]


def test_health_warns_when_redis_refuses_writes(make_app, settings, tmp_path):
    private = PrivateRedis(tmp_path / "redis")
    try:
        admin = redis.Redis.from_url(private.url)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
        check = _warns(make_app(settings, redis_url=private.url).test_client(), "redis:writable")
        assert check["observedValue"] is False and "maxmemory" in check["output"]
        admin.close()
    finally:
        private.kill()


def test_health_warns_with_postgresql_read_only(make_app, settings, owner_conn):
    with _app_role_read_only(owner_conn):
        check = _warns(make_app(settings).test_client(), "postgresql:writable")
    assert check["observedValue"] is False and check["output"] == "read-only"


def test_health_warns_while_the_background_process_has_no_recent_heartbeat(make_app, settings, tmp_path):
    client = make_app(settings, drain_clicks=True, health_heartbeat_seconds=5).test_client()
    assert _warns(client, "background:heartbeat")["observedValue"] is None  # never started
    heartbeat = tmp_path / "spool" / "background.heartbeat"
    heartbeat.parent.mkdir(parents=True, exist_ok=True)
    heartbeat.touch()
    check = client.get("/health").get_json()["checks"]["background:heartbeat"][0]
    assert check["status"] == "pass" and check["observedValue"] < 5
    os.utime(heartbeat, (time.time() - 60, time.time() - 60))  # stopped beating a minute ago
    assert _warns(client, "background:heartbeat")["observedValue"] >= 60


def test_health_warns_when_the_oldest_undrained_click_is_older_than_the_threshold(app, make_app, settings):
    redis_client = app.extensions["chatlink.redis"]
    stream = pipeline.stream_key(redis_client)
    two_minutes_ago = int(time.time() * 1000) - 120_000
    redis_client.client.xadd(stream, {"d": "{}", "l": 1, "a": 1}, id=f"{two_minutes_ago}-0")
    check = _warns(make_app(settings, health_drain_lag_seconds=60).test_client(), "clicks:drain-lag")
    assert check["observedValue"] >= 120


def test_health_warns_while_the_spool_holds_clicks(app, client):
    app.extensions["chatlink.click_sink"].spool.append({"id": "x", "ts": 0, "vid": "v"}, 1, 1)
    assert _warns(client, "clicks:spool")["observedValue"] > 0


def test_health_warns_while_dead_letters_wait(app, client):
    redis_client = app.extensions["chatlink.redis"]
    redis_client.client.xadd(pipeline.stream_key(redis_client) + ":dead", {"d": "{}", "error": "refused"})
    app.extensions["chatlink.click_sink"].spool.set_aside("refused", [b"00000000 {}"])
    assert _warns(client, "clicks:dead-letters")["observedValue"] == 2


def test_health_warns_once_a_click_was_dropped_on_this_node(app, client):
    app.extensions["chatlink.click_sink"].dropped.increment()
    assert _warns(client, "clicks:dropped")["observedValue"] == 1


def test_health_endpoints_are_never_rate_limited(make_app, settings):
    client = make_app(settings, rate_limit_redirect="1/minute", rate_limit_not_found="1/minute").test_client()
    assert {client.get("/livez").status_code for _ in range(5)} == {200}
    assert {client.get("/health").status_code for _ in range(3)} == {200}
