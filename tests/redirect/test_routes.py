"""GET /<slug>: 302 to wa.me from the stored digits and message, 404/410 answers, the Redis cache in front, and
the hot path: one Redis command per cached redirect, answered by the WSGI fast path in front of Flask."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis
import requests

from service.links import slugs
from service.links.model import Link
from tests.test_live import _create


def test_redirect_answers_302_to_wa_me_with_the_encoded_message(client, make_link):
    link = make_link(slug="hello-br", message="Olá! Quero saber mais 👋 & já")
    response = client.get("/HELLO-br")
    assert response.status_code == 302
    assert response.headers["Location"] == (
        "https://wa.me/5511987654321?text=Ol%C3%A1%21%20Quero%20saber%20mais%20%F0%9F%91%8B%20%26%20j%C3%A1"
    )
    assert response.headers["Location"] == link["target_url"]
    assert response.headers["Cache-Control"] == "private, no-store"


def test_redirect_without_message_has_no_text_parameter(client, make_link):
    link = make_link(message=None)
    assert client.get(f"/{link['slug']}").headers["Location"] == "https://wa.me/5511987654321"


def test_head_answers_the_same_without_a_body(client, make_link):
    link = make_link()
    response = client.head(f"/{link['slug']}")
    assert response.status_code == 302 and response.headers["Location"] == link["target_url"]
    assert response.get_data() == b""


def test_unknown_slug_answers_html_404_to_browsers(client):
    response = client.get("/no-such-link", headers={"Accept": "text/html"})
    assert response.status_code == 404 and response.mimetype == "text/html"
    assert "Link not found" in response.get_data(as_text=True)


def test_unknown_slug_answers_problem_json_to_api_clients(client):
    response = client.get("/no-such-link", headers={"Accept": "application/json"})
    assert response.status_code == 404 and response.mimetype == "application/problem+json"


@pytest.mark.parametrize("path", ["/a", "/" + "x" * 65, "/bad.slug", "/static", "/api"])
def test_impossible_and_reserved_slugs_answer_404(client, path):
    assert client.get(path).status_code == 404


def test_disabled_link_answers_410(client, auth, make_link):
    link = make_link()
    assert client.get(f"/{link['slug']}").status_code == 302
    client.patch(f"/api/v1/links/{link['slug']}", headers=auth, json={"disabled": True})
    assert client.get(f"/{link['slug']}").status_code == 410


def test_deleted_link_answers_410(client, auth, make_link):
    link = make_link()
    client.get(f"/{link['slug']}")
    client.delete(f"/api/v1/links/{link['slug']}", headers=auth)
    response = client.get(f"/{link['slug']}", headers={"Accept": "application/json"})
    assert response.status_code == 410 and response.get_json()["type"] == "/problems/link-gone"


def _link(**fields) -> Link:
    now = datetime.now(UTC)
    values = dict(
        id=1,
        account_id=1,
        slug="some-link",
        phone="+14155552671",
        message=None,
        title=None,
        tags=[],
        expires_at=None,
        max_clicks=None,
        disabled=False,
        lead_form=None,
        created_at=now,
        updated_at=now,
    )
    return Link(**{**values, **fields})


def test_expired_link_answers_410(client, make_link, owner_conn, link_cache):
    link = make_link(expires_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat())
    owner_conn.execute("update links set expires_at = now() - interval '1 second' where slug = %s", [link["slug"]])
    link_cache.redis.client.delete(link_cache.key(link["slug"]))
    assert client.get(f"/{link['slug']}").status_code == 410


def test_cached_link_expires_without_a_database_read():
    link = Link.from_cache(_link(expires_at=datetime.fromtimestamp(1000.0, UTC)).to_cache())
    assert link.gone_reason(now=999.0) is None
    assert link.gone_reason(now=1000.0) == "expired"


def test_resolved_link_is_cached_in_redis(client, make_link, link_cache):
    link = make_link()
    client.get(f"/{link['slug']}")
    cached = Link.from_cache(link_cache.redis.client.get(link_cache.key(link["slug"])))
    assert cached.phone == "+5511987654321" and cached.message == "Olá! 👋"


def test_location_is_rebuilt_from_cached_digits_never_a_cached_url(client, make_link, link_cache):
    link = make_link()
    planted = _link(slug=link["slug"], message="planted")
    link_cache.redis.client.set(link_cache.key(link["slug"]), planted.to_cache())
    assert client.get(f"/{link['slug']}").headers["Location"] == "https://wa.me/14155552671?text=planted"


def test_unknown_slug_is_cached_so_scans_skip_postgresql(client, link_cache):
    client.get("/never-made")
    assert link_cache.redis.client.get(link_cache.key("never-made")) == ""  # the cached "unknown"


def test_link_created_after_a_cached_404_redirects_at_once(client, make_link):
    assert client.get("/later-link").status_code == 404
    make_link(slug="later-link")
    assert client.get("/later-link").status_code == 302


def test_edit_is_visible_on_the_next_redirect_from_every_worker(make_app, settings, auth, make_link, client):
    link = make_link()
    other_worker = make_app(settings).test_client()  # its own pool and Redis client, same Redis
    assert other_worker.get(f"/{link['slug']}").headers["Location"] == link["target_url"]
    client.patch(f"/api/v1/links/{link['slug']}", headers=auth, json={"message": "changed"})
    assert other_worker.get(f"/{link['slug']}").headers["Location"] == "https://wa.me/5511987654321?text=changed"
    client.delete(f"/api/v1/links/{link['slug']}", headers=auth)
    assert other_worker.get(f"/{link['slug']}").status_code == 410


def test_an_older_edit_reaching_redis_late_does_not_replace_a_newer_one(client, auth, make_link, link_cache):
    link = make_link(message="first")
    older = Link.from_cache(link_cache.redis.client.get(link_cache.key(link["slug"])))
    client.patch(f"/api/v1/links/{link['slug']}", headers=auth, json={"message": "second"})
    link_cache.store(older)  # the first write-through arrives after the second
    assert client.get(f"/{link['slug']}").headers["Location"] == "https://wa.me/5511987654321?text=second"


def _commands_sent(redis_url: str, prefix: str, action) -> list[str]:
    """The commands clients sent to Redis naming a key under prefix while action ran (not those run by scripts)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    sent, marker = [], f"{prefix}end-of-action"
    with client.monitor() as monitor:
        listening = threading.Thread(target=lambda: _collect(monitor, sent, marker))
        listening.start()
        action()
        client.echo(marker)
        listening.join(10)
    client.close()
    return [command for command in sent if prefix in command]


def _collect(monitor, sent: list[str], marker: str) -> None:
    for event in monitor.listen():
        if marker in event["command"]:
            return
        if event.get("client_type") != "lua":
            sent.append(event["command"])


def test_a_cached_redirect_with_rate_limits_on_is_one_redis_command(app, client, make_link, redis_url, key_prefix):
    assert app.config["SETTINGS"].rate_limits_enabled
    link = make_link()
    assert client.get(f"/{link['slug']}").status_code == 302  # fills the cache
    responses = []
    sent = _commands_sent(redis_url, key_prefix, lambda: responses.append(client.get(f"/{link['slug']}")))
    assert responses[0].status_code == 302 and responses[0].headers["X-Click-Id"]
    assert len(sent) == 1 and sent[0].startswith("EVALSHA"), sent


def test_the_fast_path_never_takes_a_fixed_path(app):
    fixed = {rule.rule[1:] for rule in app.url_map.iter_rules() if rule.rule.count("/") == 1 and "<" not in rule.rule}
    assert {"livez", "health"} <= fixed
    assert not any(slugs.could_exist(path.lower()) for path in fixed)


def test_an_error_inside_the_fast_path_is_a_logged_problem_not_a_bare_500(app, client, monkeypatch, caplog):
    def broken(slug, environ):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.extensions["chatlink.redirector"], "resolve", broken)
    response = client.get("/some-link")
    assert response.status_code == 500 and response.mimetype == "application/problem+json"
    assert "a bug" in caplog.text


@pytest.mark.live
def test_gunicorn_answers_the_fast_path_redirect_with_complete_headers(live_server, api_key):
    server = live_server()
    link = _create(server, api_key)
    with requests.Session() as session:  # one keep-alive connection for both
        first = session.get(link["short_url"], allow_redirects=False, timeout=10)
        second = session.get(link["short_url"], allow_redirects=False, timeout=10)
    for response in (first, second):
        assert response.status_code == 302 and response.headers["Location"] == link["target_url"]
        assert response.headers["Cache-Control"] == "private, no-store"
        assert response.headers["Content-Length"] == "0" and response.content == b""
    assert first.headers["X-Click-Id"] != second.headers["X-Click-Id"]
