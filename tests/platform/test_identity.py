"""Redis state belongs to one database: every key lives under KEY_PREFIX + the database's id (migration 0006), so two
databases under one Redis never share a key and a recreated database never inherits the old one's counters."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from service.auth import issue_key
from service.platform import identity, localservices, migrations
from tests.support import drop_database


@pytest.fixture
def fresh_database(pg_server):
    """Factory: a new migrated database (dropped after the test), as a brand-new or restored-from-scratch one."""
    made = []

    def create(name: str | None = None) -> str:
        name = name or f"chatlink_test_identity_{uuid.uuid4().hex[:10]}"
        localservices.create_database(pg_server, name)
        made.append(name)
        url = localservices.with_database(pg_server, name)
        migrations.migrate(url)
        return url

    yield create
    for name in set(made):
        drop_database(pg_server, name)


@pytest.fixture(autouse=True)
def new_process(monkeypatch):
    """Each app built here reads the database's id as a process starting now would (no id remembered)."""
    monkeypatch.setattr(identity, "_known", {})


def _app_on(make_app, settings, url: str):
    app = make_app(settings, database_url=url, app_database_url="")
    with psycopg.connect(url) as conn:
        auth = {"Authorization": f"Bearer {issue_key(conn, 'identity')}"}
    return app, app.test_client(), auth


def _link_id(pg_server: str, dbname: str, slug: str) -> int:
    with psycopg.connect(localservices.with_database(pg_server, dbname)) as conn:
        return conn.execute("select id from links where slug = %s", [slug]).fetchone()[0]


def _link(client, auth, **fields) -> dict:
    response = client.post("/api/v1/links", headers=auth, json={"phone": "+14155552671", **fields})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def test_two_databases_under_one_redis_and_key_prefix_write_disjoint_keys(make_app, settings, fresh_database):
    apps = [_app_on(make_app, settings, fresh_database()) for _ in range(2)]
    prefixes = [app.extensions["chatlink.redis"].prefix for app, _, _ in apps]
    assert prefixes[0] != prefixes[1] and all(p.startswith(settings.key_prefix) for p in prefixes)
    for _, client, auth in apps:
        slug = _link(client, auth)["slug"]
        assert client.get(f"/{slug}").status_code == 302
    redis = apps[0][0].extensions["chatlink.redis"].client
    keys = [set(redis.scan_iter(match=f"{prefix}*")) for prefix in prefixes]
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    assert set(redis.scan_iter(match=f"{settings.key_prefix}*")) == keys[0] | keys[1]  # nothing outside either


def test_a_recreated_database_does_not_inherit_the_old_click_counter_of_a_reused_link_id(
    make_app, settings, fresh_database, pg_server, monkeypatch
):
    name = f"chatlink_test_identity_{uuid.uuid4().hex[:10]}"
    _, old_client, old_auth = _app_on(make_app, settings, fresh_database(name))
    old = _link(old_client, old_auth, max_clicks=2)
    assert [old_client.get(f"/{old['slug']}").status_code for _ in range(3)] == [302, 302, 410]
    old_id = _link_id(pg_server, name, old["slug"])

    drop_database(pg_server, name)  # dropped and created again under the same name, Redis untouched
    monkeypatch.setattr(identity, "_known", {})  # the service restarts with it
    app, client, auth = _app_on(make_app, settings, fresh_database(name))
    new = _link(client, auth, max_clicks=2)
    assert _link_id(pg_server, name, new["slug"]) == old_id  # the same id, whose old counter says 2
    assert [client.get(f"/{new['slug']}").status_code for _ in range(3)] == [302, 302, 410]
