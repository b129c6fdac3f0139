"""Webhooks that cannot be turned inward (DNS rebinding, embedded IPv4), fair delivery, attempts that always end
in a recorded result, and secrets encrypted at rest."""

import socket
import time

import psycopg
import pytest
from cryptography.fernet import Fernet

from service import cli
from service.platform.secrets import SecretBox
from tests.conftest import SECRETS_KEY, background_for
from tests.receivers import FakeCloudApi
from tests.webhooks.test_routes import _configure_whatsapp, _lead, _outbox, _register

PUBLIC = "1.1.1.1"  # globally routable: passes the check; the connect guard below keeps any packet from leaving


@pytest.fixture
def resolver(monkeypatch):
    """A DNS we control for names under .rebind.test (answers[i] is the i-th look-up's answer, the last one
    repeats), and a guard that refuses every TCP connection outside loopback (and records where each went)."""
    state = {"answers": [], "lookups": 0, "connects": []}
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, port, *args, **kwargs):
        if not str(host).endswith(".rebind.test"):
            return real_getaddrinfo(host, port, *args, **kwargs)
        answer = state["answers"][min(state["lookups"], len(state["answers"]) - 1)]
        state["lookups"] += 1
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0)) for a in answer
        ]

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            state["connects"].append(address[0])
            if address[0] not in ("127.0.0.1", "::1"):
                raise ConnectionRefusedError("tests connect to loopback only")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return state


@pytest.fixture
def forget(database_url):
    """Endpoints registered with this fixture's register() are deleted after the test, so that no later test's
    deliverer step retries them (the test database is shared by the whole run)."""
    ids = []

    def register(client, auth, url, events=("link.created",)):
        hook = _register(client, auth, url, events=events)
        ids.append(hook["id"])
        return hook

    yield register
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("delete from webhooks where id = any(%s::uuid[])", [ids])


@pytest.fixture
def strict_app(make_app, settings):
    """An app with the production default: no webhook to private addresses."""
    return make_app(settings, webhook_allow_private=False)


def _delivery(owner_conn, hook: dict, columns: str) -> tuple:
    return owner_conn.execute(f"select {columns} from outbox where webhook_id = %s", [hook["id"]]).fetchone()


def _deliver(app) -> int:
    return background_for(app).deliverer.deliver_once()


def test_a_name_that_rebinds_to_loopback_after_the_check_never_reaches_it(
    strict_app, auth, make_link, receiver, resolver, owner_conn, forget
):
    # Public for the registration and for the deliverer's check, loopback for any look-up after that.
    resolver["answers"] = [[PUBLIC], [PUBLIC], ["127.0.0.1"]]
    client = strict_app.test_client()
    hook = forget(client, auth, f"http://hook.rebind.test:{receiver.port}/in")
    make_link()
    assert _deliver(strict_app) >= 1
    assert receiver.received == []
    assert PUBLIC in resolver["connects"]  # the checked address, and (receiver.received) never the loopback one
    assert resolver["lookups"] == 2  # once at registration, once per attempt: never again to connect
    status, attempts = _delivery(owner_conn, hook, "status, attempts")
    assert attempts == 1  # the attempt to the checked address failed, and was recorded


def test_a_name_answering_public_then_loopback_is_refused_and_recorded(
    strict_app, auth, make_link, receiver, resolver, owner_conn, forget
):
    resolver["answers"] = [[PUBLIC], [PUBLIC, "127.0.0.1"]]
    client = strict_app.test_client()
    hook = forget(client, auth, f"http://hook.rebind.test:{receiver.port}/in")
    make_link()
    assert _deliver(strict_app) >= 1
    assert receiver.received == [] and PUBLIC not in resolver["connects"]
    status, attempts, error = _delivery(owner_conn, hook, "status, attempts, last_error")
    assert (status, attempts) == ("failed", 1) and error.startswith("refused")


def test_webhook_allow_private_still_reaches_loopback(make_app, settings, auth, make_link, receiver, resolver):
    app = make_app(settings, webhook_allow_private=True)
    resolver["answers"] = [["127.0.0.1"]]
    _register(app.test_client(), auth, f"http://hook.rebind.test:{receiver.port}/in", events=["link.created"])
    make_link()
    assert _deliver(app) >= 1
    [request] = receiver.received
    assert request["headers"]["Host"] == f"hook.rebind.test:{receiver.port}"  # the name, not the address


def test_the_deliverer_ignores_proxy_settings_from_the_environment(
    make_app, settings, auth, make_link, receiver, monkeypatch
):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy that does not exist
    monkeypatch.setenv("NO_PROXY", "")
    app = make_app(settings)
    _register(app.test_client(), auth, receiver.url, events=["link.created"])
    make_link()
    _deliver(app)
    assert len(receiver.received) == 1
    assert background_for(app).deliverer.http.trust_env is False


@pytest.mark.parametrize(
    "host",
    [
        "[::7f00:1]",  # IPv4-compatible 127.0.0.1
        "[::ffff:7f00:1]",  # IPv4-mapped
        "[::ffff:0:7f00:1]",  # IPv4-translated (SIIT)
        "[64:ff9b::7f00:1]",  # NAT64
        "[64:ff9b::a00:1]",  # NAT64 of 10.0.0.1
        "[2002:7f00:1::]",  # 6to4
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]",  # Teredo
        "224.0.0.1",  # multicast
        "100.64.0.1",  # shared address space (CGNAT)
        "192.0.2.1",  # documentation
        "0.0.0.0",
        "[::]",
        "240.0.0.1",  # reserved
        "[ff02::1]",
    ],
)
def test_addresses_that_embed_or_are_internal_ones_are_refused(strict_app, auth, host):
    response = strict_app.test_client().post("/api/v1/webhooks", headers=auth, json={"url": f"http://{host}/x"})
    assert response.status_code == 422 and "url" in response.get_json()["errors"], host


def test_a_hostile_tenants_hanging_endpoints_do_not_delay_another_tenants_event(
    make_app, settings, new_api_key, silent_server, receiver, forget
):
    app = make_app(settings, webhook_timeout_seconds=10)
    client = app.test_client()
    hostile = {"Authorization": f"Bearer {new_api_key()}"}
    polite = {"Authorization": f"Bearer {new_api_key()}"}
    body = {"phone": "+5511987654321"}

    def time_to_deliver(expected: int) -> float:
        assert client.post("/api/v1/links", json=body, headers=polite).status_code == 201
        started = time.monotonic()
        deadline = started + 60
        while len(receiver.received) < expected and time.monotonic() < deadline:
            time.sleep(0.02)
        return time.monotonic() - started

    _register(client, polite, receiver.url, events=["link.created"])
    deliverer = background_for(app).deliverer
    deliverer.start()
    alone = time_to_deliver(1)
    for n in range(10):
        forget(client, hostile, f"http://127.0.0.1:{silent_server.port}/hang{n}")
    assert client.post("/api/v1/links", json=body, headers=hostile).status_code == 201
    time.sleep(0.5)  # the hostile events are leased first
    loaded = time_to_deliver(2)
    with psycopg.connect(settings.database_url) as conn:
        hostile_attempts = conn.execute(
            "select count(*), sum(o.attempts) from outbox o join webhooks w on w.id = o.webhook_id where w.url like %s",
            [f"%:{silent_server.port}/hang%"],
        ).fetchone()
    print(
        f"\nfairness: the polite tenant's event delivered in {alone:.2f}s alone, {loaded:.2f}s while the hostile"
        f" tenant's 10 endpoints hang ({len(silent_server.held)} connections held)"
    )
    assert len(receiver.received) == 2, f"not delivered within 60 s (alone: {alone:.2f}s)"
    # Delivered while the hostile ones are still pending: none of their attempts (10 s each) has ended yet.
    assert hostile_attempts == (10, 0)
    assert len(silent_server.held) <= settings.webhook_account_concurrency  # the hostile account's share


def test_an_account_may_register_at_most_the_endpoint_cap(make_app, settings, auth, receiver):
    client = make_app(settings, webhook_max_endpoints=3).test_client()
    for _ in range(3):
        _register(client, auth, receiver.url)
    response = client.post("/api/v1/webhooks", headers=auth, json={"url": receiver.url})
    assert response.status_code == 422 and "url" in response.get_json()["errors"]


def test_an_endpoint_that_keeps_failing_is_skipped_while_its_breaker_is_open(
    make_app, settings, auth, make_link, dead_port, owner_conn, forget
):
    app = make_app(settings, webhook_breaker_failures=2)
    hook = forget(app.test_client(), auth, f"http://127.0.0.1:{dead_port}/x")
    make_link()
    for _ in range(4):
        _deliver(app)
        owner_conn.execute("update outbox set next_attempt_at = now() where webhook_id = %s", [hook["id"]])
    status, attempts = _delivery(owner_conn, hook, "status, attempts")
    assert (status, attempts) == ("pending", 2)


# --- every attempt ends in a recorded result ----------------------------------------------------------------------
@pytest.mark.parametrize("token", ["EAAG-test-€-token-123", "EAAG-test token-123", "EAAG-test-\x00-token"])
def test_whatsapp_tokens_must_be_printable_ascii(client, auth, token):
    response = _configure_whatsapp(client, auth, token=token)
    assert response.status_code == 422 and "access_token" in response.get_json()["errors"]


def test_a_token_that_cannot_be_sent_ends_in_a_recorded_failure(events_app, client, auth, make_link, owner_conn):
    _configure_whatsapp(client, auth)
    link = _lead(events_app, make_link)
    owner_conn.execute(  # a token stored before tokens were checked
        "update whatsapp_settings set access_token = 'EAAG-test-€-token-123'"
        " where account_id = (select account_id from links where slug = %s)",
        [link["slug"]],
    )
    assert _deliver(events_app) >= 1
    status, attempts, error = _outbox(owner_conn, link, "o.status, o.attempts, o.last_error")
    assert (status, attempts) == ("failed", 1) and "UnicodeEncodeError" in error


def test_an_error_reply_of_the_wrong_shape_ends_in_a_recorded_failure(
    events_app, client, auth, make_link, cloud_api, owner_conn
):
    _configure_whatsapp(client, auth)
    cloud_api.raw = [(400, {"error": []})]
    link = _lead(events_app, make_link)
    assert _deliver(events_app) >= 1
    status, attempts, error = _outbox(owner_conn, link, "o.status, o.attempts, o.last_error")
    assert (status, attempts) == ("failed", 1) and "unreadable" in error


# --- secrets at rest ----------------------------------------------------------------------------------------------
def _dump(database_url: str) -> str:
    """Every row of every table, as text: what a database dump would hold."""
    with psycopg.connect(database_url) as conn:
        tables = conn.execute("select tablename from pg_tables where schemaname = 'public'").fetchall()
        return "\n".join(str(row) for (table,) in tables for row in conn.execute(f'select * from "{table}"').fetchall())


def test_a_database_dump_holds_no_webhook_secret_nor_whatsapp_token(client, auth, receiver, settings):
    secret = _register(client, auth, receiver.url)["secret"]
    assert _configure_whatsapp(client, auth).status_code == 200
    dump = _dump(settings.database_url)
    assert secret not in dump and FakeCloudApi.TOKEN not in dump
    assert secret[6:] not in dump  # not even without its whsec_ prefix


def test_secrets_cannot_be_stored_without_secrets_key(make_app, settings, auth, receiver):
    client = make_app(settings, secrets_key="").test_client()
    response = client.post("/api/v1/webhooks", headers=auth, json={"url": receiver.url})
    assert response.status_code == 503 and "SECRETS_KEY" in response.get_json()["detail"]
    assert _configure_whatsapp(client, auth).status_code == 503


def test_rotate_secrets_re_encrypts_with_the_new_key_and_encrypts_plain_rows(
    client, auth, receiver, settings, owner_conn, monkeypatch
):
    hook = _register(client, auth, receiver.url)
    _configure_whatsapp(client, auth, token="EAAG-rotated-token-42")
    other = _register(client, auth, receiver.url)
    owner_conn.execute("update webhooks set secret = %s where id = %s", [other["secret"], other["id"]])  # legacy
    new_key = Fernet.generate_key().decode()
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("SECRETS_KEY", f"{new_key},{SECRETS_KEY}")
    assert cli.main(["rotate-secrets"]) == 0
    only_new = SecretBox(new_key)
    secrets = dict(owner_conn.execute("select id::text, secret from webhooks").fetchall())
    assert only_new.open(secrets[hook["id"]]) == hook["secret"]
    assert only_new.open(secrets[other["id"]]) == other["secret"] and secrets[other["id"]].startswith("fernet:")
    [token] = owner_conn.execute(
        "select access_token from whatsapp_settings s join webhooks w using (account_id) where w.id = %s", [hook["id"]]
    ).fetchone()
    assert only_new.open(token) == "EAAG-rotated-token-42"


def test_times_of_whatsapp_settings_and_deliveries_are_iso_8601(events_app, client, auth, make_link, receiver, forget):
    assert "T" in _configure_whatsapp(client, auth).get_json()["updated_at"]
    assert "T" in client.get("/api/v1/whatsapp", headers=auth).get_json()["updated_at"]
    hook = forget(client, auth, receiver.url)
    make_link()
    _deliver(events_app)
    [delivery] = client.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=auth).get_json()["items"]
    times = [delivery["created_at"], delivery["delivered_at"], *(attempt["at"] for attempt in delivery["log"])]
    assert len(times) == 3 and all("T" in t and " " not in t for t in times), times
