"""Webhooks and WhatsApp notifications: registration, signed deliveries, retries, erasure, and the Cloud API."""

import json
import time

import pytest

from service.webhooks.signing import sign
from tests.conftest import background_for
from tests.leads.test_routes import FORM, _open, _submit
from tests.receivers import FakeCloudApi, verify


@pytest.fixture
def deliver(events_app):
    def run() -> int:
        return background_for(events_app).deliverer.deliver_once()

    return run


def _register(client, auth, url, events=("lead.created",)):
    response = client.post("/api/v1/webhooks", headers=auth, json={"url": url, "events": list(events)})
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def _lead(events_app, make_link, name="Ana"):
    link = make_link(message="Olá {name}", lead_form=FORM)
    client = events_app.test_client()
    _, token = _open(client, link["slug"])
    assert _submit(client, link["slug"], token, name=name).status_code == 303
    return link


def _outbox(owner_conn, link, columns):
    return owner_conn.execute(
        f"select {columns} from outbox o join leads d on d.id = o.lead_id join links l on l.id = d.link_id"
        " where l.slug = %s",
        [link["slug"]],
    ).fetchone()


def _make_due(owner_conn):
    owner_conn.execute("update outbox set next_attempt_at = now() where status = 'pending'")


def test_a_webhook_secret_is_shown_once(client, auth, receiver):
    hook = _register(client, auth, receiver.url)
    assert hook["secret"].startswith("whsec_")
    listed = client.get("/api/v1/webhooks", headers=auth).get_json()["items"]
    assert listed == [{k: hook[k] for k in ("id", "url", "events", "created_at")}]


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://x.example"},
        {"url": "not a url"},
        {"url": "http://x.example", "events": ["lead.deleted"]},
        {"url": "http://x.example", "events": []},
        {},
    ],
)
def test_invalid_webhooks_answer_422(client, auth, body):
    assert client.post("/api/v1/webhooks", headers=auth, json=body).status_code == 422


def test_lead_created_is_delivered_signed_with_an_event_id(events_app, client, auth, make_link, receiver, deliver):
    hook = _register(client, auth, receiver.url)
    link = _lead(events_app, make_link)
    assert deliver() == 1
    [request] = receiver.received
    body, headers = request["body"], request["headers"]
    event = json.loads(body)
    assert event["type"] == "lead.created" and event["data"]["name"] == "Ana" and event["data"]["link"] == link["slug"]
    assert headers["X-Chatlink-Event-Id"] == event["id"]
    assert verify(hook["secret"], headers["X-Chatlink-Signature"], body)
    assert not verify("whsec_wrong", headers["X-Chatlink-Signature"], body)
    assert not verify(hook["secret"], headers["X-Chatlink-Signature"], body + b" ")
    assert deliver() == 0  # delivered once, not again
    log = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=auth).get_json()["items"]
    assert [(d["status"], d["attempts"], d["log"][0]["status_code"]) for d in log] == [("delivered", 1, 200)]


def test_signatures_refuse_stale_timestamps():
    body = b'{"id":"x"}'
    header = sign("whsec_s", 1_000_000, body)
    assert verify("whsec_s", header, body, now=1_000_100)
    assert not verify("whsec_s", header, body, now=1_000_000 + 301)


def test_a_receiver_that_is_down_gets_every_event_once_it_is_back(
    events_app, client, auth, make_link, receiver, deliver, owner_conn
):
    hook = _register(client, auth, receiver.url)
    receiver.stop()
    for name in ("Ana", "Bia", "Caio"):
        _lead(events_app, make_link, name=name)
    for _ in range(3):  # three rounds of failed attempts while it is down
        assert deliver() == 3
        _make_due(owner_conn)
    receiver.start()
    receiver.replies = [503]  # and it stumbles once more when it comes back
    deliver()
    _make_due(owner_conn)
    deliver()
    names = sorted(json.loads(r["body"])["data"]["name"] for r in receiver.received if r["status"] == 200)
    assert names == ["Ana", "Bia", "Caio"]
    ids = [r["headers"]["X-Chatlink-Event-Id"] for r in receiver.received if r["status"] == 200]
    assert len(ids) == len(set(ids)) == 3
    log = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=auth).get_json()["items"]
    assert {d["status"] for d in log} == {"delivered"} and max(d["attempts"] for d in log) >= 4


def test_retries_back_off_exponentially_and_give_up_after_the_limit(
    make_app, settings, client, auth, make_link, dead_port, owner_conn
):
    app = make_app(settings, lead_min_fill_seconds=0, webhook_retry_base_seconds=60, webhook_max_attempts=3)
    _register(client, auth, f"http://127.0.0.1:{dead_port}/hook")
    link = _lead(app, make_link)
    deliverer = background_for(app).deliverer
    delays = []
    for _ in range(3):
        deliverer.deliver_once()
        row = _outbox(owner_conn, link, "o.status, o.next_attempt_at - now()")
        delays.append(row)
        _make_due(owner_conn)
    assert [status for status, _ in delays] == ["pending", "pending", "failed"]
    first, second = delays[0][1].total_seconds(), delays[1][1].total_seconds()
    assert 40 < first < 80 and 90 < second < 150  # 60 s, then 120 s, each ±20 % jitter


def test_erasing_a_lead_cancels_its_undelivered_webhooks(events_app, client, auth, make_link, receiver, deliver):
    _register(client, auth, receiver.url)
    receiver.stop()
    _lead(events_app, make_link)
    [lead] = client.get("/api/v1/leads", headers=auth).get_json()["items"]
    assert client.delete(f"/api/v1/leads/{lead['id']}", headers=auth).status_code == 204
    receiver.start()
    assert deliver() == 0
    assert receiver.received == []


def test_link_created_goes_only_to_endpoints_subscribed_to_it(events_app, client, auth, make_link, receiver, deliver):
    _register(client, auth, receiver.url, events=["link.created"])
    link = make_link()
    _lead(events_app, make_link)
    deliver()
    bodies = [json.loads(r["body"]) for r in receiver.received]  # sent concurrently: in either order
    assert [body["type"] for body in bodies] == ["link.created", "link.created"]
    assert link["slug"] in {body["data"]["slug"] for body in bodies}


def test_webhooks_are_per_account(client, auth, new_api_key, receiver):
    hook = _register(client, auth, receiver.url)
    other = {"Authorization": f"Bearer {new_api_key()}"}
    assert client.get("/api/v1/webhooks", headers=other).get_json()["items"] == []
    assert client.delete(f"/api/v1/webhooks/{hook['id']}", headers=other).status_code == 404
    assert client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=other).status_code == 404
    assert client.delete(f"/api/v1/webhooks/{hook['id']}", headers=auth).status_code == 204


def _configure_whatsapp(client, auth, token=FakeCloudApi.TOKEN):
    return client.put(
        "/api/v1/whatsapp",
        headers=auth,
        json={
            "phone_number_id": "106540352242922",
            "access_token": token,
            "template": "new_lead",
            "language": "pt_BR",
            "notify_number": "+55 11 91234-5678",
        },
    )


def test_whatsapp_settings_never_return_the_token(client, auth):
    response = _configure_whatsapp(client, auth)
    assert response.status_code == 200
    assert FakeCloudApi.TOKEN not in response.get_data(as_text=True)
    shown = client.get("/api/v1/whatsapp", headers=auth)
    assert shown.get_json()["notify_number"] == "+5511912345678"
    assert FakeCloudApi.TOKEN not in shown.get_data(as_text=True)


def test_a_new_lead_sends_the_whatsapp_template(events_app, client, auth, make_link, cloud_api, deliver):
    _configure_whatsapp(client, auth)
    link = _lead(events_app, make_link)
    assert deliver() == 1
    [request] = cloud_api.received
    assert request["path"] == "/v21.0/106540352242922/messages" and request["status"] == 200
    message = json.loads(request["body"])
    assert message["to"] == "5511912345678" and message["template"]["name"] == "new_lead"
    assert message["template"]["language"] == {"code": "pt_BR"}
    params = [p["text"] for p in message["template"]["components"][0]["parameters"]]
    assert params == ["Ana", "+5511987654321", link["slug"]]


def test_whatsapp_rate_limit_answers_are_retried(events_app, client, auth, make_link, cloud_api, deliver, owner_conn):
    _configure_whatsapp(client, auth)
    cloud_api.errors = [(400, 130429, "Rate limit hit"), (500, 2, "Service temporarily unavailable")]
    link = _lead(events_app, make_link)
    deliver()
    _make_due(owner_conn)
    deliver()
    _make_due(owner_conn)
    deliver()
    assert [r["status"] for r in cloud_api.received] == [400, 500, 200]
    assert _outbox(owner_conn, link, "o.status, o.attempts") == ("delivered", 3)


def test_a_bad_token_fails_at_once_and_is_never_logged(
    events_app, client, auth, make_link, cloud_api, deliver, owner_conn, caplog
):
    _configure_whatsapp(client, auth, token="EAAG-expired-token-999")
    link = _lead(events_app, make_link)
    deliver()
    status, attempts, error = _outbox(owner_conn, link, "o.status, o.attempts, o.last_error")
    assert (status, attempts) == ("failed", 1) and "190" in error
    assert "EAAG-expired-token-999" not in caplog.text and "EAAG-expired-token-999" not in error


def test_delivery_happens_in_the_background_thread(make_app, settings, client, auth, make_link, receiver):
    app = make_app(settings, lead_min_fill_seconds=0)
    background_for(app).deliverer.start()  # what the background process does
    _register(client, auth, receiver.url)
    _lead(app, make_link)
    deadline = time.monotonic() + 15
    while not receiver.received and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(receiver.received) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "http://localhost/x",
    ],
)
def test_webhooks_to_internal_addresses_are_refused_by_default(make_app, settings, auth, url):
    client = make_app(settings, webhook_allow_private=False).test_client()
    response = client.post("/api/v1/webhooks", headers=auth, json={"url": url})
    assert response.status_code == 422 and "url" in response.get_json()["errors"]
