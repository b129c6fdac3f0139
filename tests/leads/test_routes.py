"""Lead capture: the form page, valid/invalid/bot/replayed/forged submissions, escaping, the leads API and erasure."""

import base64
import csv
import hashlib
import io
import re

import pytest
from itsdangerous import URLSafeTimedSerializer

from tests.conftest import drain

FORM = {
    "fields": ["name", "phone", "email", "note"],
    "required": ["name", "phone"],
    "heading": "Talk to us",
    "button": "Open WhatsApp",
    "consent": "I agree to be contacted.",
}
XSS = "<script>alert(1)</script>"


@pytest.fixture
def lead_app(make_app, settings):
    """An app that accepts forms filled at once (the minimum fill time is tested on its own)."""
    return make_app(settings, lead_min_fill_seconds=0)


@pytest.fixture
def lead_client(lead_app):
    return lead_app.test_client()


@pytest.fixture
def lead_link(make_link):
    return make_link(message="Olá {name}! Quero saber mais", lead_form=FORM)


def _token(page: str) -> str:
    return re.search(r'name="token" value="([^"]+)"', page)[1]


def _open(client, slug, **kwargs):
    response = client.get(f"/{slug}", **kwargs)
    assert response.status_code == 200, response.status_code
    return response, _token(response.get_data(as_text=True))


def _submit(client, slug, token, **fields):
    body = {
        "token": token,
        "name": "Ana",
        "phone": "+55 11 98765-4321",
        "email": "ana@example.com",
        "note": "",
        "consent": "yes",
        "website": "",
        **fields,
    }
    return client.post(f"/{slug}/lead", data=body)


def _leads(owner_conn, slug):
    return owner_conn.execute(
        "select d.* from leads d join links l on l.id = d.link_id where l.slug = %s", [slug]
    ).fetchall()


def test_a_link_with_a_form_shows_the_page_and_records_the_click(lead_app, lead_client, lead_link):
    response, _ = _open(lead_client, lead_link["slug"])
    page = response.get_data(as_text=True)
    assert response.mimetype == "text/html" and "X-Click-Id" in response.headers
    assert "<h1>Talk to us</h1>" in page and 'for="name"' in page and 'id="name"' in page
    assert 'name="viewport"' in page and "<script" not in page and "http" not in page.split("</head>")[0]
    csp = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "script-src" not in csp and "default-src 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff" and response.headers["Referrer-Policy"]
    assert drain(lead_app) == 1


def test_a_valid_submission_stores_the_lead_and_303s_to_wa_me_with_the_greeting(lead_client, lead_link, owner_conn):
    response, token = _open(lead_client, lead_link["slug"])
    submitted = _submit(lead_client, lead_link["slug"], token, name="Ana Júlia & Co")
    assert submitted.status_code == 303
    assert submitted.headers["Location"] == (
        "https://wa.me/5511987654321?text=Ol%C3%A1%20Ana%20J%C3%BAlia%20%26%20Co%21%20Quero%20saber%20mais"
    )
    [lead] = _leads(owner_conn, lead_link["slug"])
    assert (lead[5], lead[6], lead[7], lead[9]) == ("Ana Júlia & Co", "+5511987654321", "ana@example.com", True)
    assert str(lead[3]) == response.headers["X-Click-Id"]


# (what the visitor changed in a valid submission, the field whose error the page shows)
INVALID_SUBMISSIONS = [
    ({"name": ""}, "name"),
    ({"phone": "12"}, "phone"),
    ({"email": "not-an-email"}, "email"),
    ({"consent": ""}, "consent"),
    ({"note": "x" * 1001}, "note"),
    ({"name": "a\x00b"}, "name"),
]


@pytest.mark.parametrize(("fields", "error_field"), INVALID_SUBMISSIONS)
def test_invalid_input_rerenders_the_form_with_errors_and_values_kept(
    lead_client, lead_link, owner_conn, fields, error_field
):
    _, token = _open(lead_client, lead_link["slug"])
    response = _submit(lead_client, lead_link["slug"], token, **{"name": "Keep Me", **fields})
    page = response.get_data(as_text=True)
    assert response.status_code == 422 and response.mimetype == "text/html"
    assert f'id="{error_field}-error"' in page
    if error_field != "name":
        assert 'value="Keep Me"' in page
    assert _leads(owner_conn, lead_link["slug"]) == []


def test_a_replayed_token_gets_403_and_stores_nothing_more(lead_client, lead_link, owner_conn):
    _, token = _open(lead_client, lead_link["slug"])
    assert _submit(lead_client, lead_link["slug"], token).status_code == 303
    assert _submit(lead_client, lead_link["slug"], token, name="Again").status_code == 403
    assert len(_leads(owner_conn, lead_link["slug"])) == 1


def test_a_forged_token_gets_403(lead_client, lead_link, owner_conn):
    forged = URLSafeTimedSerializer(b"not-our-secret", salt="lead-form").dumps({"s": lead_link["slug"], "n": "x"})
    assert _submit(lead_client, lead_link["slug"], forged).status_code == 403
    assert _submit(lead_client, lead_link["slug"], "garbage").status_code == 403
    assert _leads(owner_conn, lead_link["slug"]) == []


def test_a_token_for_another_slug_gets_403(lead_client, make_link, lead_link, owner_conn):
    other = make_link(lead_form=FORM)
    _, token = _open(lead_client, other["slug"])
    assert _submit(lead_client, lead_link["slug"], token).status_code == 403
    assert _leads(owner_conn, lead_link["slug"]) == []


def test_the_honeypot_gets_403(lead_client, lead_link, owner_conn):
    _, token = _open(lead_client, lead_link["slug"])
    assert _submit(lead_client, lead_link["slug"], token, website="http://spam.example").status_code == 403
    assert _leads(owner_conn, lead_link["slug"]) == []


def test_a_form_sent_faster_than_a_person_types_gets_403(make_app, settings, lead_link, owner_conn):
    client = make_app(settings, lead_min_fill_seconds=30).test_client()
    _, token = _open(client, lead_link["slug"])
    assert _submit(client, lead_link["slug"], token).status_code == 403
    assert _leads(owner_conn, lead_link["slug"]) == []


def test_submissions_are_rate_limited_per_ip(make_app, settings, lead_link):
    client = make_app(settings, lead_min_fill_seconds=0, rate_limit_lead="2/minute").test_client()
    _, token = _open(client, lead_link["slug"])
    statuses = [_submit(client, lead_link["slug"], token, name="").status_code for _ in range(3)]
    assert statuses == [422, 422, 429]


def test_script_in_every_user_field_is_escaped(lead_client, make_link):
    link = make_link(lead_form={**FORM, "heading": XSS, "button": XSS, "consent": XSS})
    response, token = _open(lead_client, link["slug"])
    assert "<script>" not in response.get_data(as_text=True)
    rerender = _submit(lead_client, link["slug"], token, name=XSS, email=XSS, note=XSS, phone="12")
    page = rerender.get_data(as_text=True)
    assert rerender.status_code == 422 and "<script>" not in page and "&lt;script&gt;" in page


@pytest.mark.parametrize(
    "form",
    [
        {"fields": []},
        {"fields": ["age"]},
        {"fields": ["name"], "required": ["email"]},
        {"fields": ["name", "name"]},
        {"fields": ["name"], "colour": "red"},
        {"fields": ["name"], "heading": "x" * 201},
    ],
)
def test_invalid_lead_forms_answer_422(client, auth, form):
    response = client.post("/api/v1/links", headers=auth, json={"phone": "+14155552671", "lead_form": form})
    assert response.status_code == 422 and "lead_form" in response.get_json()["errors"]


def test_leads_api_lists_newest_first_with_the_clicks_attribution(lead_app, lead_client, client, auth, lead_link):
    for name in ("First", "Second"):
        _, token = _open(
            lead_client,
            f"{lead_link['slug']}?utm_source=ig&utm_campaign=bf",
            headers={"Referer": "https://l.instagram.com/"},
        )
        _submit(lead_client, lead_link["slug"], token, name=name)
    drain(lead_app)
    items = client.get("/api/v1/leads", headers=auth).get_json()["items"]
    assert [i["name"] for i in items] == ["Second", "First"]
    assert (items[0]["utm_source"], items[0]["utm_campaign"], items[0]["referrer_host"]) == (
        "ig",
        "bf",
        "l.instagram.com",
    )
    by_link = client.get(f"/api/v1/links/{lead_link['slug']}/leads", headers=auth).get_json()["items"]
    assert [i["id"] for i in by_link] == [i["id"] for i in items]
    assert client.get("/api/v1/leads?link=no-such-link", headers=auth).status_code == 404


def test_leads_csv_is_formula_safe(lead_client, client, auth, lead_link):
    _, token = _open(lead_client, lead_link["slug"])
    _submit(lead_client, lead_link["slug"], token, name='=HYPERLINK("http://evil")', note=" =1+1")
    response = client.get("/api/v1/leads", headers={**auth, "Accept": "text/csv"})
    [row] = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert row["name"] == '\'=HYPERLINK("http://evil")' and row["note"] == "'=1+1"  # the form strips the space
    assert row["consent"] == "true"


def test_erasing_a_lead_removes_it_from_the_api_and_exports(lead_client, client, auth, lead_link, owner_conn):
    _, token = _open(lead_client, lead_link["slug"])
    _submit(lead_client, lead_link["slug"], token)
    [item] = client.get("/api/v1/leads", headers=auth).get_json()["items"]
    assert client.delete(f"/api/v1/leads/{item['id']}", headers=auth).status_code == 204
    assert client.get("/api/v1/leads", headers=auth).get_json()["items"] == []
    assert "Ana" not in client.get("/api/v1/leads", headers={**auth, "Accept": "text/csv"}).get_data(as_text=True)
    assert _leads(owner_conn, lead_link["slug"]) == []
    assert client.delete(f"/api/v1/leads/{item['id']}", headers=auth).status_code == 404
    assert client.delete("/api/v1/leads/not-a-uuid", headers=auth).status_code == 404


def test_one_account_never_sees_or_erases_anothers_leads(lead_client, client, auth, new_api_key, lead_link):
    _, token = _open(lead_client, lead_link["slug"])
    _submit(lead_client, lead_link["slug"], token)
    [item] = client.get("/api/v1/leads", headers=auth).get_json()["items"]
    other = {"Authorization": f"Bearer {new_api_key()}"}
    assert client.get("/api/v1/leads", headers=other).get_json()["items"] == []
    assert client.get(f"/api/v1/links/{lead_link['slug']}/leads", headers=other).status_code == 404
    assert client.delete(f"/api/v1/leads/{item['id']}", headers=other).status_code == 404
    assert len(client.get("/api/v1/leads", headers=auth).get_json()["items"]) == 1


def test_link_stats_gain_leads_and_conversion_rate(lead_app, lead_client, client, auth, lead_link):
    for _ in range(4):
        _open(lead_client, lead_link["slug"])
    _, token = _open(lead_client, lead_link["slug"])
    _submit(lead_client, lead_link["slug"], token)
    drain(lead_app)
    stats = client.get(f"/api/v1/links/{lead_link['slug']}/stats", headers=auth).get_json()
    assert (stats["clicks"], stats["leads"], stats["conversion_rate"]) == (5, 1, 0.2)


def test_removing_the_form_makes_the_link_redirect_again(lead_client, client, auth, lead_link):
    client.patch(f"/api/v1/links/{lead_link['slug']}", headers=auth, json={"lead_form": None})
    response = lead_client.get(f"/{lead_link['slug']}")
    assert response.status_code == 302


@pytest.mark.parametrize("query", ["link=%00", "link=a.b", "cursor=%00", "from=%00"])
def test_hostile_leads_parameters_answer_422(client, auth, query):
    assert client.get(f"/api/v1/leads?{query}", headers=auth).status_code == 422


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "https://evil.example"}],
)
def test_a_cross_site_submission_gets_403_and_stores_nothing(lead_client, lead_link, owner_conn, headers):
    _, token = _open(lead_client, lead_link["slug"])
    body = {"token": token, "name": "Ana", "consent": "yes", "website": ""}
    response = lead_client.post(f"/{lead_link['slug']}/lead", data=body, headers=headers)
    assert response.status_code == 403 and _leads(owner_conn, lead_link["slug"]) == []


def test_a_same_origin_submission_with_origin_null_is_accepted(lead_client, lead_link):
    # The page's Referrer-Policy: no-referrer makes browsers send Origin: null with the form.
    _, token = _open(lead_client, lead_link["slug"])
    body = {"token": token, "name": "Ana", "phone": "+55 11 98765-4321", "email": "a@example.com", "consent": "yes"}
    headers = {"Origin": "null", "Sec-Fetch-Site": "same-origin"}
    assert lead_client.post(f"/{lead_link['slug']}/lead", data=body, headers=headers).status_code == 303


def test_the_403_pages_inline_style_is_allowed_by_its_csp(lead_client, lead_link):
    response = _submit(lead_client, lead_link["slug"], "garbage")
    assert response.status_code == 403
    [style] = re.findall(r"<style>(.*?)</style>", response.get_data(as_text=True), re.DOTALL)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in response.headers["Content-Security-Policy"]


def test_the_forms_phone_error_speaks_to_a_visitor(lead_client, lead_link):
    _, token = _open(lead_client, lead_link["slug"])
    page = _submit(lead_client, lead_link["slug"], token, phone="98765-4321").get_data(as_text=True)
    assert "country code" in page and "default_region" not in page
