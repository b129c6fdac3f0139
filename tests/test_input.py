"""No input yields a 500: the inputs found to (trailing newlines, NUL, odd UUID spellings, upper-case schemes), and a
property-based test over every schema of the API."""

import json
import uuid
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

# Odd text anywhere: generated, and the spellings known to have reached PostgreSQL unchecked.
TRICKY = ["", "\n", "\x00", "\u212a", "\ud800", " ", "\u00a0", "=1+1", "1e999", "x" * 3000]
text = st.one_of(
    st.text(max_size=40), st.sampled_from(TRICKY), st.builds(str.__add__, st.text(max_size=8), st.sampled_from(TRICKY))
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(), text)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4), max_leaves=8
)
# Small changes to a valid value get past the checks that catch anything wilder: a character added before or
# after it (newline, NUL, the Kelvin sign, a space), or its upper-case spelling.
EDGES = ["", "\n", "\x00", "\u212a", " ", "\ud800"]


def near(valid: object):
    """Values close to a valid one, and sometimes anything at all."""
    if isinstance(valid, str):
        close = st.sampled_from([valid + edge for edge in EDGES] + [edge + valid for edge in EDGES] + [valid.upper()])
    elif isinstance(valid, list):
        close = st.lists(near(valid[0]), min_size=1, max_size=3)
    elif isinstance(valid, dict):
        close = body_near(valid)
    else:
        close = st.just(valid)
    return st.one_of(close, close, close, values)


def body_near(valid: dict):
    """A valid body with one or two of its fields changed (near() each), or an unknown field added."""
    one_change = st.sampled_from(sorted(valid)).flatmap(lambda name: near(valid[name]).map(lambda v: {name: v}))
    unknown = st.dictionaries(text, values, min_size=1, max_size=1)
    changes = st.lists(st.one_of(one_change, one_change, one_change, unknown), min_size=1, max_size=2)
    return changes.map(lambda parts: {**valid, **{k: v for part in parts for k, v in part.items()}})


# What a URL can carry: any text but lone surrogates, which the client cannot encode.
def url_safe(value: str) -> bool:
    return not any("\ud800" <= c <= "\udfff" for c in value)


def query_near(valid: dict):
    """A valid query string with one or two of its parameters changed."""
    one_change = st.sampled_from(sorted(valid)).flatmap(
        lambda name: near(valid[name]).filter(lambda v: isinstance(v, str) and url_safe(v)).map(lambda v: {name: v})
    )
    changes = st.lists(one_change, min_size=1, max_size=2)
    return changes.map(lambda parts: {**valid, **{k: v for part in parts for k, v in part.items()}})


LINK = {
    "phone": "+5511987654321",
    "default_region": "BR",
    "message": "Olá {name}",
    "title": "Summer ad",
    "tags": ["ads"],
    "expires_at": "2030-01-01T00:00:00+00:00",
    "lead_form": {"fields": ["name", "phone"], "required": ["name"], "heading": "Hi", "button": "Go", "consent": "Ok"},
    "max_clicks": 10,
}
QUERY = {
    "from": "2026-11-01",
    "to": "2026-11-30",
    "tz": "America/Sao_Paulo",
    "limit": "10",
    "q": "summer",
    "tag": "ads",
    "link": "prop-link",
    "interval": "day",
    "include_bots": "true",
    "top": "5",
    "cursor": "MjAyNi0xMS0wMVQwMDowMDowMCswMDowMHwx",
}
PROPERTY = hypothesis_settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def api(make_app, settings, new_api_key, database_url):
    """A client without rate limits, an account of its own, and one link in it; its webhooks are deleted after
    the test so that no later deliverer step calls the URLs generated here."""
    client = make_app(settings, rate_limits_enabled=False).test_client()
    key = new_api_key()
    auth = {"Authorization": f"Bearer {key}"}
    response = client.post("/api/v1/links", headers=auth, json={"phone": "+5511987654321", "slug": "prop-link"})
    slug = response.get_json()["slug"] if response.status_code == 201 else "prop-link"
    yield client, auth, slug
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "delete from webhooks where account_id = (select account_id from api_keys where public_id = %s)",
            [key.split("_")[1]],
        )


def _no_500(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    if response.status_code >= 400 and response.status_code != 404:
        assert response.mimetype == "application/problem+json"


@PROPERTY
@given(body=body_near({**LINK, "slug": "promo-1"}))
def test_no_link_creation_body_yields_a_500(api, body):
    client, auth, _ = api
    _no_500(client.post("/api/v1/links", headers=auth, json=body))


@PROPERTY
@given(body=body_near({**LINK, "disabled": False}))
def test_no_link_edit_body_yields_a_500(api, body):
    client, auth, slug = api
    _no_500(client.patch(f"/api/v1/links/{slug}", headers=auth, json=body))


@PROPERTY
@given(body=body_near({"url": "http://127.0.0.1:9/hook", "events": ["lead.created"]}))
def test_no_webhook_body_yields_a_500(api, body):
    client, auth, _ = api
    _no_500(client.post("/api/v1/webhooks", headers=auth, json=body))


@PROPERTY
@given(
    body=body_near(
        {
            "phone_number_id": "106540352242922",
            "access_token": "EAAG-test-token-123456",
            "template": "new_lead",
            "language": "pt_BR",
            "notify_number": "+5511912345678",
        }
    )
)
def test_no_whatsapp_body_yields_a_500(api, body):
    client, auth, _ = api
    _no_500(client.put("/api/v1/whatsapp", headers=auth, json=body))


@PROPERTY
@given(
    path=st.sampled_from(
        [
            "/api/v1/links",
            "/api/v1/links/{slug}/stats",
            "/api/v1/stats",
            "/api/v1/links/{slug}/clicks",
            "/api/v1/leads",
            "/api/v1/links/{slug}/leads",
        ]
    ),
    args=query_near(QUERY),
)
def test_no_query_string_yields_a_500(api, path, args):
    client, auth, slug = api
    _no_500(client.get(path.format(slug=slug), headers=auth, query_string=args))


@PROPERTY
@given(
    segment=st.one_of(near(str(uuid.UUID(int=1))), near("prop-link")).filter(
        lambda v: isinstance(v, str) and url_safe(v)
    )
)
def test_no_path_segment_yields_a_500(api, segment):
    client, auth, _ = api
    for path in ("/api/v1/webhooks/{}/deliveries", "/api/v1/leads/{}", "/api/v1/links/{}"):
        _no_500(client.get(path.format(quote(segment, safe="")), headers=auth))


# --- the inputs found to answer 500 -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        {"slug": "promo\n"},
        {"slug": "\u212aelvin"},
        {"title": "Summer\n"},
        {"tags": ["ads\n"]},
        {"lead_form": {"fields": ["name"], "heading": "Hi\n"}},
        {"lead_form": {"fields": ["name"], "button": "Go\n"}},
        {"message": "a\x00b"},
        {"title": "a\x00b"},
    ],
)
def test_trailing_newlines_nul_and_non_ascii_slugs_answer_422(client, auth, body):
    response = client.post("/api/v1/links", headers=auth, json={"phone": "+5511987654321", **body})
    assert response.status_code == 422 and set(body) <= set(response.get_json()["errors"]), response.get_json()


@pytest.mark.parametrize("args", [{"q": "x\n"}, {"tag": "ads\n"}, {"q": "a\x00"}])
def test_query_values_with_a_trailing_newline_or_nul_answer_422(client, auth, args):
    response = client.get("/api/v1/links", headers=auth, query_string=args)
    assert response.status_code == 422 and set(args) <= set(response.get_json()["errors"])


def test_a_leads_link_filter_with_a_trailing_newline_answers_422(client, auth):
    response = client.get("/api/v1/leads", headers=auth, query_string={"link": "promo\n"})
    assert response.status_code == 422 and "link" in response.get_json()["errors"]


def test_an_upper_case_webhook_scheme_is_stored_lower_case(client, auth):
    response = client.post("/api/v1/webhooks", headers=auth, json={"url": "HTTP://127.0.0.1:9/x"})
    assert response.status_code == 201 and response.get_json()["url"] == "http://127.0.0.1:9/x"


def test_nul_in_a_webhook_url_answers_422(client, auth):
    response = client.post("/api/v1/webhooks", headers=auth, json={"url": "http://127.0.0.1:9/a\x00b"})
    assert response.status_code == 422 and "url" in response.get_json()["errors"]


@pytest.mark.parametrize(
    "field, value",
    [
        ("access_token", "EAAG-token\x00-123456"),
        ("template", "new_lead\n"),
        ("phone_number_id", "106540352242922\n"),
        ("language", "pt_BR\n"),
    ],
)
def test_whatsapp_ids_with_nul_or_a_trailing_newline_answer_422(client, auth, field, value):
    body = {
        "phone_number_id": "106540352242922",
        "access_token": "EAAG-test-token-123456",
        "template": "new_lead",
        "notify_number": "+5511912345678",
        field: value,
    }
    response = client.put("/api/v1/whatsapp", headers=auth, json=body)
    assert response.status_code == 422 and field in response.get_json()["errors"]


@pytest.mark.parametrize("spell", [lambda u: f"urn:uuid:{u}", lambda u: f"{{{u}}}", lambda u: u.hex])
def test_other_uuid_spellings_in_paths_are_404(client, auth, spell):
    spelled = spell(uuid.uuid4())
    for path in (f"/api/v1/webhooks/{spelled}/deliveries", f"/api/v1/leads/{spelled}"):
        method = client.get if "deliveries" in path else client.delete
        response = method(path, headers=auth)
        assert response.status_code == 404 and response.mimetype == "application/problem+json", path


def test_nul_anywhere_in_a_json_body_names_the_field(client, auth):
    response = client.post(
        "/api/v1/links",
        headers={**auth, "Content-Type": "application/json"},
        data=json.dumps({"phone": "+5511987654321", "lead_form": {"fields": ["name"], "consent": "ok\u0000"}}),
    )
    assert response.status_code == 422 and "lead_form" in response.get_json()["errors"]
