"""CORS for listed front-end origins only (flask-cors), and the CSRF check on cookie-authenticated writes."""

from __future__ import annotations

import pytest

from tests.accounts.conftest import ORIGIN, PASSWORD, log_in

FRONT_END = "https://app.example.com"


@pytest.fixture
def cors_app(make_app, settings):
    return make_app(settings, cors_origins=f"{FRONT_END}, https://admin.example.com")


def _preflight(client, origin: str, path: str = "/api/v1/links"):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-csrf-token",
        },
    )


def test_a_listed_origin_gets_its_own_origin_credentials_and_a_cached_preflight(cors_app):
    response = _preflight(cors_app.test_client(), FRONT_END)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == FRONT_END  # never *
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Access-Control-Max-Age"] == "600"
    assert "x-csrf-token" in response.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Origin" in response.headers.get("Vary", "")


def test_an_actual_response_to_a_listed_origin_exposes_location_and_retry_after(cors_app, api_key):
    client = cors_app.test_client()
    response = client.post(
        "/api/v1/links",
        json={"phone": "+14155552671"},
        headers={"Origin": FRONT_END, "Authorization": f"Bearer {api_key}"},
    )
    assert response.status_code == 201
    assert response.headers["Access-Control-Allow-Origin"] == FRONT_END
    exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"location", "retry-after", "idempotency-key", "idempotent-replayed"} <= exposed
    assert "Origin" in response.headers["Vary"]


def test_an_origin_not_listed_gets_no_cors_headers(cors_app):
    client = cors_app.test_client()
    for origin in ("https://evil.example", "https://app.example.com.evil.example", "http://app.example.com"):
        response = _preflight(client, origin)
        assert not [h for h in response.headers if h[0].lower().startswith("access-control-")], origin
        assert "Origin" in response.headers["Vary"]  # a shared cache must not serve this answer to another origin


def test_by_default_no_origin_gets_cors_headers(client):
    response = _preflight(client, FRONT_END)
    assert not [h for h in response.headers if h[0].lower().startswith("access-control-")]


def test_the_redirect_and_the_lead_form_get_no_cors_headers(cors_app, api_key):
    client = cors_app.test_client()
    link = client.post(
        "/api/v1/links", json={"phone": "+14155552671"}, headers={"Authorization": f"Bearer {api_key}"}
    ).get_json()
    response = client.get(f"/{link['slug']}", headers={"Origin": FRONT_END})
    assert response.status_code == 302
    assert "Access-Control-Allow-Origin" not in response.headers


def test_a_bad_cors_origins_value_stops_start_up():
    from service.config import ConfigError, load_settings

    for bad in ("*", "https://app.example.com/path", "app.example.com"):
        with pytest.raises(ConfigError, match="CORS_ORIGINS"):
            load_settings({"CORS_ORIGINS": bad})


# --- CSRF --------------------------------------------------------------------------------------------------------
def _create(client, headers):
    return client.post("/api/v1/links", json={"phone": "+14155552671"}, headers=headers)


def test_a_cookie_write_needs_an_allowed_origin_and_the_csrf_token(cors_app, make_person):
    client = cors_app.test_client()
    session = log_in(client, make_person())
    token = session["csrf_token"]
    refused = [
        {},
        {"Origin": ORIGIN},
        {"X-CSRF-Token": token},
        {"Origin": "https://evil.example", "X-CSRF-Token": token},
        {"Origin": ORIGIN, "X-CSRF-Token": token[:-1] + ("A" if token[-1] != "A" else "B")},
        {"Referer": "https://evil.example/page", "X-CSRF-Token": token},
    ]
    for headers in refused:
        response = _create(client, headers)
        assert response.status_code == 403, headers
        assert response.get_json()["type"] == "/problems/csrf-failed"
    assert client.get("/api/v1/links").get_json()["items"] == []
    for headers in (
        {"Origin": ORIGIN, "X-CSRF-Token": token},
        {"Origin": FRONT_END, "X-CSRF-Token": token},
        {"Referer": f"{FRONT_END}/dashboard", "X-CSRF-Token": token},
    ):
        assert _create(client, headers).status_code == 201, headers


def test_reads_with_the_cookie_need_no_csrf_token(client, make_person):
    log_in(client, make_person())
    assert client.get("/api/v1/links").status_code == 200
    current = client.get("/api/v1/sessions/current").get_json()
    assert current["csrf_token"]


def test_the_csrf_token_of_one_session_does_not_pass_for_another(app, make_person):
    person = make_person()
    first, second = app.test_client(), app.test_client()
    first_session = log_in(first, person)
    log_in(second, person)
    assert _create(second, first_session["headers"]).status_code == 403


def test_bearer_key_requests_need_no_origin_or_token(client, auth):
    assert _create(client, {**auth, "Origin": "https://evil.example"}).status_code == 201


def test_a_foreign_page_cannot_log_a_browser_in(client, make_person):
    person = make_person()
    body = {"email": person["email"], "password": PASSWORD}
    assert client.post("/api/v1/sessions", json=body, headers={"Origin": "https://evil.example"}).status_code == 403
    assert client.post("/api/v1/sessions", json=body, headers={"Origin": ORIGIN}).status_code == 201
