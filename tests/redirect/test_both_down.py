"""Redis and PostgreSQL failing together or in part, behind proxies the tests stop: fail fast, redirect the links
this worker resolved recently (clicks spooled), and never 503 a cached link only because its count is unknown."""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from service.clicks.pipeline import Spool
from tests.conftest import drain
from tests.platform.test_breaker import through
from tests.support import TcpProxy


@pytest.fixture
def redis_proxy(redis_url):
    proxy = TcpProxy(urlsplit(redis_url).port or 6379)
    yield proxy
    proxy.stop()


@pytest.fixture
def postgres_proxy():
    proxy = TcpProxy(5432)
    yield proxy
    proxy.stop()


@pytest.fixture
def fragile_app(make_app, settings, redis_proxy, postgres_proxy, database_url):
    """An app whose Redis and PostgreSQL are both behind proxies the test can stop."""
    return make_app(
        settings,
        redis_url=redis_proxy.url("redis", "/0"),
        app_database_url=through(postgres_proxy, database_url),
        db_timeout_ms=300,
    )


def _clicks(owner_conn, slug: str) -> list[str]:
    rows = owner_conn.execute(
        "select c.click_id from clicks c join links l on l.id = c.link_id where l.slug = %s", [slug]
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def test_with_both_down_a_link_this_worker_resolved_recently_redirects_and_its_clicks_are_spooled(
    app, fragile_app, settings, make_link, redis_proxy, postgres_proxy, owner_conn
):
    link = make_link()
    client = fragile_app.test_client()
    assert client.get(f"/{link['slug']}").status_code == 302  # resolved with everything up: remembered
    drain(app)
    redis_proxy.stop()
    postgres_proxy.stop()
    responses = [client.get(f"/{link['slug']}") for _ in range(settings.breaker_failures + 5)]
    assert [r.status_code for r in responses] == [302] * len(responses)
    assert {r.headers["Location"] for r in responses} == {link["target_url"]}
    assert fragile_app.extensions["chatlink.redis"].breaker.is_open
    assert fragile_app.extensions["chatlink.db"].breaker.is_open  # later requests did not wait for the pool
    ids = sorted(r.headers["X-Click-Id"] for r in responses)
    assert Spool(Path(settings.spool_dir)).drain(app.extensions["chatlink.db"]) == len(ids)
    assert set(ids) <= set(_clicks(owner_conn, link["slug"]))
    assert len(_clicks(owner_conn, link["slug"])) == len(ids) + 1


def test_with_both_down_a_link_this_worker_never_resolved_answers_503(
    fragile_app, settings, make_link, redis_proxy, postgres_proxy
):
    remembered, other = make_link(), make_link()
    client = fragile_app.test_client()
    assert client.get(f"/{remembered['slug']}").status_code == 302
    redis_proxy.stop()
    postgres_proxy.stop()
    assert client.get(f"/{other['slug']}", headers={"Accept": "application/json"}).status_code == 503


def test_with_both_down_a_remembered_link_is_served_only_for_its_ttl(
    make_app, settings, make_link, redis_proxy, postgres_proxy, database_url
):
    link = make_link()
    app = make_app(
        settings,
        redis_url=redis_proxy.url("redis", "/0"),
        app_database_url=through(postgres_proxy, database_url),
        db_timeout_ms=300,
        last_resort_ttl_seconds=1,
    )
    client = app.test_client()
    assert client.get(f"/{link['slug']}").status_code == 302
    redis_proxy.stop()
    postgres_proxy.stop()
    assert client.get(f"/{link['slug']}").status_code == 302
    time.sleep(1.2)
    assert client.get(f"/{link['slug']}", headers={"Accept": "application/json"}).status_code == 503


def test_the_last_resort_is_never_used_while_redis_answers(fragile_app, make_link, postgres_proxy, link_cache):
    link = make_link()
    client = fragile_app.test_client()
    assert client.get(f"/{link['slug']}").status_code == 302  # remembered by this worker
    link_cache.redis.client.delete(link_cache.key(link["slug"]))  # Redis answers: not cached
    postgres_proxy.stop()
    response = client.get(f"/{link['slug']}", headers={"Accept": "application/json"})
    assert response.status_code == 503  # Redis answered a miss and PostgreSQL cannot: not a both-down state


def test_a_cached_link_whose_click_count_was_lost_redirects_with_postgresql_down_and_its_limit_holds_after(
    app, client, fragile_app, make_link, postgres_proxy, owner_conn, redis_client
):
    link = make_link(max_clicks=2)
    link_id = owner_conn.execute("select id from links where slug = %s", [link["slug"]]).fetchone()[0]
    counter = redis_client.key(f"clickcount:{link_id}")
    assert client.get(f"/{link['slug']}").status_code == 302  # cached; one click counted
    drain(app)
    redis_client.client.delete(counter)  # the count is lost (evicted, or Redis restarted without it)
    postgres_proxy.stop()
    down = fragile_app.test_client()
    outage = [down.get(f"/{link['slug']}") for _ in range(2)]
    assert [r.status_code for r in outage] == [302, 302]  # the count is unknown: allowed, not 503
    assert all(r.headers.get("X-Click-Id") for r in outage)
    assert not redis_client.client.exists(counter)  # left unseeded: PostgreSQL seeds it when it returns
    assert drain(app) == 2
    assert len(_clicks(owner_conn, link["slug"])) == 3  # over max_clicks by the outage's clicks: the stated bound
    assert client.get(f"/{link['slug']}").status_code == 410  # seeded from PostgreSQL: the limit holds again
