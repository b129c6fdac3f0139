"""The links API: create, validation errors as problem+json, idempotency, read, edit, delete, list."""

import io
import json
from datetime import UTC, datetime, timedelta

import pytest


def _problem(response, status):
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status and body["type"].startswith("/problems/") and body["title"]
    return body


def test_create_returns_201_with_the_link_and_location(client, auth):
    response = client.post(
        "/api/v1/links",
        headers=auth,
        json={
            "phone": "+55 11 98765-4321",
            "message": "Olá! Quero saber mais 👋",
            "title": "Summer ad",
            "tags": ["ads", "summer"],
            "max_clicks": 10,
        },
    )
    assert response.status_code == 201
    link = response.get_json()
    assert response.headers["Location"] == link["short_url"] == f"https://chat.example/{link['slug']}"
    assert link["phone"] == "+5511987654321"
    assert link["target_url"] == "https://wa.me/5511987654321?text=Ol%C3%A1%21%20Quero%20saber%20mais%20%F0%9F%91%8B"
    assert link["message"] == "Olá! Quero saber mais 👋"
    assert link["tags"] == ["ads", "summer"] and link["max_clicks"] == 10 and link["disabled"] is False
    assert len(link["slug"]) == 8
    assert set(link) == {
        "slug",
        "short_url",
        "target_url",
        "phone",
        "message",
        "title",
        "tags",
        "expires_at",
        "max_clicks",
        "lead_form",
        "disabled",
        "created_at",
        "updated_at",
    }


def test_national_number_with_default_region(client, auth):
    response = client.post("/api/v1/links", headers=auth, json={"phone": "(415) 555-2671", "default_region": "US"})
    assert response.get_json()["phone"] == "+14155552671"


def test_custom_slug_is_stored_lowercase(make_link):
    assert make_link(slug="My-Promo")["slug"] == "my-promo"


def test_taken_slug_answers_409_even_across_accounts(make_link, client, new_api_key):
    make_link(slug="taken-slug")
    other = {"Authorization": f"Bearer {new_api_key()}"}
    body = _problem(
        client.post("/api/v1/links", headers=other, json={"phone": "+14155552671", "slug": "TAKEN-slug"}), 409
    )
    assert body["type"] == "/problems/slug-taken"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "phone"),
        ({"phone": "+1 555"}, "phone"),
        ({"phone": "(415) 555-2671"}, "phone"),
        ({"phone": "+14155552671", "default_region": "XX"}, "default_region"),
        ({"phone": 14155552671}, "phone"),
        ({"phone": "+14155552671", "message": "x" * 2001}, "message"),
        ({"phone": "+14155552671", "message": "a\u0000b"}, "message"),
        ({"phone": "+14155552671", "message": "bell\u0007"}, "message"),
        ({"phone": "+14155552671", "slug": "api"}, "slug"),
        ({"phone": "+14155552671", "slug": "no spaces"}, "slug"),
        ({"phone": "+14155552671", "slug": "ab"}, "slug"),
        ({"phone": "+14155552671", "title": "t" * 201}, "title"),
        ({"phone": "+14155552671", "tags": ["t"] * 21}, "tags"),
        ({"phone": "+14155552671", "tags": "ads"}, "tags"),
        ({"phone": "+14155552671", "expires_at": "2020-01-01T00:00:00+00:00"}, "expires_at"),
        ({"phone": "+14155552671", "expires_at": "2999-01-01T00:00:00"}, "expires_at"),
        ({"phone": "+14155552671", "max_clicks": 0}, "max_clicks"),
        ({"phone": "+14155552671", "max_clicks": "5"}, "max_clicks"),
        ({"phone": "+14155552671", "colour": "red"}, "colour"),
    ],
)
def test_invalid_fields_answer_422_naming_the_field(client, auth, body, field):
    problem = _problem(client.post("/api/v1/links", headers=auth, json=body), 422)
    assert problem["type"] == "/problems/invalid-data"
    assert field in problem["errors"], problem


def test_lone_surrogate_in_message_answers_422(client, auth):
    raw = '{"phone": "+14155552671", "message": "bad \\ud800 text"}'
    problem = _problem(
        client.post("/api/v1/links", headers={**auth, "Content-Type": "application/json"}, data=raw), 422
    )
    assert "message" in problem["errors"]


def test_malformed_json_answers_400(client, auth):
    response = client.post("/api/v1/links", headers={**auth, "Content-Type": "application/json"}, data="{nope")
    assert _problem(response, 400)["type"] == "/problems/malformed-json"


def test_deeply_nested_json_answers_400(client, auth):
    raw = '{"phone": ' + "[" * 5000 + "]" * 5000 + "}"
    response = client.post("/api/v1/links", headers={**auth, "Content-Type": "application/json"}, data=raw)
    _problem(response, 400)


def test_json_that_is_not_an_object_answers_400(client, auth):
    _problem(client.post("/api/v1/links", headers=auth, json=["+14155552671"]), 400)


def test_body_over_16_kib_answers_413(client, auth):
    body = json.dumps({"phone": "+14155552671", "message": "x" * 17000})
    response = client.post("/api/v1/links", headers={**auth, "Content-Type": "application/json"}, data=body)
    _problem(response, 413)


def test_non_json_body_answers_415(client, auth):
    response = client.post("/api/v1/links", headers={**auth, "Content-Type": "text/plain"}, data="phone=1")
    _problem(response, 415)


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Basic abc", "Bearer clk_short_x", "Bearer clk_abcdefgh_" + "A" * 43]
)
def test_missing_malformed_or_unknown_key_answers_401(client, header):
    headers = {"Authorization": header} if header else {}
    _problem(client.post("/api/v1/links", headers=headers, json={"phone": "+14155552671"}), 401)


def test_wrong_secret_for_a_real_public_id_answers_401(client, api_key):
    forged = api_key[:13] + ("B" if api_key[13] == "A" else "A") + api_key[14:]
    _problem(client.get("/api/v1/links", headers={"Authorization": f"Bearer {forged}"}), 401)


def test_idempotent_repeat_returns_the_first_response(client, auth):
    headers = {**auth, "Idempotency-Key": "order-123"}
    body = {"phone": "+14155552671", "message": "hi"}
    first = client.post("/api/v1/links", headers=headers, json=body)
    second = client.post("/api/v1/links", headers=headers, json=body)
    assert first.status_code == second.status_code == 201
    assert first.get_json() == second.get_json()
    assert second.headers["Location"] == first.headers["Location"]
    listed = client.get("/api/v1/links", headers=auth).get_json()["items"]
    assert [link["slug"] for link in listed] == [first.get_json()["slug"]]


def test_idempotency_key_with_a_different_body_answers_422(client, auth):
    headers = {**auth, "Idempotency-Key": "order-124"}
    client.post("/api/v1/links", headers=headers, json={"phone": "+14155552671", "message": "hi"})
    response = client.post("/api/v1/links", headers=headers, json={"phone": "+14155552671", "message": "other"})
    assert _problem(response, 422)["type"] == "/problems/idempotency-key-reused"


def test_idempotency_keys_are_per_account(client, auth, new_api_key):
    body = {"phone": "+14155552671"}
    mine = client.post("/api/v1/links", headers={**auth, "Idempotency-Key": "k1"}, json=body).get_json()
    other = {"Authorization": f"Bearer {new_api_key()}", "Idempotency-Key": "k1"}
    theirs = client.post("/api/v1/links", headers=other, json=body).get_json()
    assert mine["slug"] != theirs["slug"]


def test_get_link_is_case_insensitive(client, auth, make_link):
    make_link(slug="read-me")
    assert client.get("/api/v1/links/READ-ME", headers=auth).get_json()["slug"] == "read-me"


def test_unknown_link_answers_404(client, auth):
    assert _problem(client.get("/api/v1/links/nothing-here", headers=auth), 404)["type"] == "/problems/link-not-found"


def test_patch_changes_fields_and_keeps_the_rest(client, auth, make_link):
    link = make_link(title="Old", tags=["a"])
    response = client.patch(
        f"/api/v1/links/{link['slug']}",
        headers=auth,
        json={"phone": "020 7946 0958", "default_region": "GB", "message": "New text", "disabled": True},
    )
    assert response.status_code == 200
    edited = response.get_json()
    assert edited["phone"] == "+442079460958" and edited["message"] == "New text" and edited["disabled"] is True
    assert edited["title"] == "Old" and edited["tags"] == ["a"]
    assert edited["updated_at"] > link["updated_at"]


def test_patch_can_clear_expiry_and_limit(client, auth, make_link):
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    link = make_link(expires_at=future, max_clicks=3)
    edited = client.patch(
        f"/api/v1/links/{link['slug']}", headers=auth, json={"expires_at": None, "max_clicks": None}
    ).get_json()
    assert edited["expires_at"] is None and edited["max_clicks"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"disabled": "yes"}, "disabled"),
        ({"slug": "new"}, "slug"),
        ({"phone": "nope"}, "phone"),
        ({"default_region": "US"}, "default_region"),
    ],
)
def test_patch_rejects_invalid_fields(client, auth, make_link, body, field):
    link = make_link()
    assert field in _problem(client.patch(f"/api/v1/links/{link['slug']}", headers=auth, json=body), 422)["errors"]


def test_delete_answers_204_then_404(client, auth, make_link):
    link = make_link()
    assert client.delete(f"/api/v1/links/{link['slug']}", headers=auth).status_code == 204
    _problem(client.get(f"/api/v1/links/{link['slug']}", headers=auth), 404)
    _problem(client.delete(f"/api/v1/links/{link['slug']}", headers=auth), 404)


def test_list_pages_newest_first_with_a_cursor(client, auth, make_link):
    created = [make_link(title=f"n{i}")["slug"] for i in range(5)]
    first = client.get("/api/v1/links?limit=2", headers=auth).get_json()
    second = client.get(f"/api/v1/links?limit=2&cursor={first['next_cursor']}", headers=auth).get_json()
    third = client.get(f"/api/v1/links?limit=2&cursor={second['next_cursor']}", headers=auth).get_json()
    slugs = [item["slug"] for page in (first, second, third) for item in page["items"]]
    assert slugs == list(reversed(created))
    assert third["next_cursor"] is None


def test_list_filters_by_tag_and_text(client, auth, make_link):
    make_link(title="Summer 100% sale", tags=["ads"])
    make_link(title="Winter", tags=["posters"])
    make_link(title="Summer poster", tags=["posters"])
    by_tag = client.get("/api/v1/links?tag=posters", headers=auth).get_json()["items"]
    assert sorted(i["title"] for i in by_tag) == ["Summer poster", "Winter"]
    by_text = client.get("/api/v1/links?q=summer", headers=auth).get_json()["items"]
    assert sorted(i["title"] for i in by_text) == ["Summer 100% sale", "Summer poster"]
    literal = client.get("/api/v1/links?q=100%25", headers=auth).get_json()["items"]
    assert [i["title"] for i in literal] == ["Summer 100% sale"]


@pytest.mark.parametrize("query", ["limit=0", "limit=101", "limit=x", "cursor=!!!", "unknown=1"])
def test_list_rejects_bad_query_parameters(client, auth, query):
    _problem(client.get(f"/api/v1/links?{query}", headers=auth), 422)


@pytest.mark.parametrize(
    "path", ["/api/v1/links/abc%00", "/api/v1/links/abc%00/stats", "/api/v1/links/" + "x" * 65, "/api/v1/links/a.b"]
)
def test_impossible_slugs_in_api_paths_answer_404(client, auth, path):
    assert client.get(path, headers=auth).status_code == 404
    assert client.delete(path, headers=auth).status_code in (404, 405)


@pytest.mark.parametrize(
    "query", ["tag=%00", "q=%00", "cursor=" + "MjAyNi0wMS0wMVQwMDowMDowMHw5OTk5OTk5OTk5OTk5OTk5OTk5OTk="]
)
def test_hostile_list_parameters_answer_422(client, auth, query):
    assert client.get(f"/api/v1/links?{query}", headers=auth).status_code == 422


def test_expiry_past_the_year_9999_in_utc_answers_422(client, auth):
    body = {"phone": "+14155552671", "expires_at": "9999-12-31T23:59:59-23:59"}
    response = client.post("/api/v1/links", headers=auth, json=body)
    assert response.status_code == 422 and "expires_at" in response.get_json()["errors"]


@pytest.mark.parametrize("message_length, status", [(17000, 413), (1900, 201)])
def test_a_chunked_body_is_read_whole_and_over_16_kib_answers_413(client, auth, message_length, status):
    body = json.dumps({"phone": "+14155552671", "message": "x" * message_length}).encode()
    response = client.post(
        "/api/v1/links",
        headers={**auth, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        input_stream=io.BytesIO(body),
        environ_overrides={"wsgi.input_terminated": True},  # what gunicorn sets for a chunked body
    )
    assert response.status_code == status
    if status == 413:
        _problem(response, 413)
