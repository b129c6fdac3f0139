"""Dependencies failing: Redis stopped or hung, PostgreSQL unreachable — redirects degrade, never a 500."""

import pytest

from service.platform.localservices import with_database


def _dead_redis(port: int) -> str:
    return f"redis://127.0.0.1:{port}/0"


def test_redirect_works_from_postgresql_with_redis_stopped(make_app, settings, make_link, dead_port):
    link = make_link()
    client = make_app(settings, redis_url=_dead_redis(dead_port)).test_client()
    for _ in range(3):
        response = client.get(f"/{link['slug']}")
        assert response.status_code == 302 and response.headers["Location"] == link["target_url"]


def test_redirect_works_from_postgresql_with_redis_hung(make_app, settings, make_link, silent_server):
    link = make_link()
    app = make_app(settings, redis_url=_dead_redis(silent_server.port))
    client = app.test_client()
    for _ in range(settings.breaker_failures):
        assert client.get(f"/{link['slug']}").status_code == 302
    # BREAKER_FAILURES timeouts in a row opened the breaker: later requests skip Redis instead of waiting on it.
    assert not app.extensions["chatlink.redis"].available
    assert client.get(f"/{link['slug']}").status_code == 302


def test_api_keeps_working_with_redis_stopped(make_app, settings, auth, dead_port):
    client = make_app(settings, redis_url=_dead_redis(dead_port)).test_client()
    response = client.post("/api/v1/links", headers=auth, json={"phone": "+14155552671"})
    assert response.status_code == 201
    assert client.get(f"/{response.get_json()['slug']}").status_code == 302


def test_rate_limits_fall_back_to_memory_with_redis_stopped(make_app, settings, make_link, dead_port):
    link = make_link()
    client = make_app(settings, redis_url=_dead_redis(dead_port), rate_limit_fallback="3/minute").test_client()
    statuses = [client.get(f"/{link['slug']}").status_code for _ in range(5)]
    assert statuses == [302, 302, 302, 429, 429]


def test_cached_links_keep_redirecting_with_postgresql_down(make_app, settings, client, make_link, dead_port):
    link = make_link()
    assert client.get(f"/{link['slug']}").status_code == 302  # cached now
    dead_db = with_database(f"postgresql://postgres@127.0.0.1:{dead_port}/x", "x")
    down = make_app(settings, app_database_url=dead_db, db_timeout_ms=300).test_client()
    response = down.get(f"/{link['slug']}")
    assert response.status_code == 302 and response.headers["Location"] == link["target_url"]


def test_uncached_link_answers_503_with_postgresql_down(make_app, settings, dead_port):
    dead_db = f"postgresql://postgres@127.0.0.1:{dead_port}/x"
    down = make_app(settings, app_database_url=dead_db, db_timeout_ms=300).test_client()
    response = down.get("/not-cached-yet", headers={"Accept": "application/json"})
    assert response.status_code == 503
    assert response.mimetype == "application/problem+json" and response.headers["Retry-After"]


@pytest.mark.parametrize("method", ["get", "post"])
def test_api_answers_503_with_postgresql_down(make_app, settings, auth, dead_port, method):
    dead_db = f"postgresql://postgres@127.0.0.1:{dead_port}/x"
    client = make_app(settings, app_database_url=dead_db, db_timeout_ms=300).test_client()
    response = getattr(client, method)("/api/v1/links", headers=auth, json={"phone": "+14155552671"})
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert response.get_json()["type"] == "/problems/dependency-unavailable"
