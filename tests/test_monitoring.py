"""GET /metrics (who may read it, what it counts), request ids on every answer, and the JSON/text log lines."""

import json
import logging
import runpy

import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.platform import logs
from tests.conftest import ROOT, background_for, drain
from tests.leads.test_routes import FORM, _open, _submit
from tests.webhooks.test_routes import _make_due, _register


def scrape(client, **kwargs) -> dict[tuple, float]:
    """Every sample of GET /metrics as {(name, sorted labels): value}."""
    response = client.get("/metrics", **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_answer_loopback_and_refuse_other_addresses(client):
    assert client.get("/metrics").status_code == 200
    refused = client.get("/metrics", environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert refused.status_code == 403 and refused.mimetype == "application/problem+json"


def test_metrics_token_opens_metrics_from_any_address(make_app, settings):
    client = make_app(settings, metrics_token="s3cret-token", metrics_allow="10.0.0.0/8").test_client()
    away = {"REMOTE_ADDR": "203.0.113.9"}
    assert client.get("/metrics", environ_base=away).status_code == 403
    assert client.get("/metrics", environ_base=away, headers={"Authorization": "Bearer wrong"}).status_code == 403
    ok = client.get("/metrics", environ_base=away, headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200


def test_metrics_are_never_rate_limited(make_app, settings):
    client = make_app(settings, rate_limit_api_per_ip="2/minute", rate_limit_fallback="2/minute").test_client()
    assert [client.get("/metrics").status_code for _ in range(5)] == [200] * 5


def test_redirects_are_counted_by_outcome_with_cache_hits_and_misses(app, client, auth, make_link):
    link = make_link()
    gone = make_link()
    client.patch(f"/api/v1/links/{gone['slug']}", headers=auth, json={"disabled": True})
    before = scrape(client)
    statuses = [client.get(f"/{link['slug']}").status_code for _ in range(3)]
    statuses += [client.get("/no-such-link").status_code, client.get(f"/{gone['slug']}").status_code]
    assert statuses == [302, 302, 302, 404, 410]
    after = scrape(client)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("chatlink_redirects_total", outcome="redirect") == 3
    assert delta("chatlink_redirects_total", outcome="404") == 1
    assert delta("chatlink_redirects_total", outcome="410") == 1
    # The fast path's 302s never reach Flask and are counted all the same, with their latency.
    assert delta("chatlink_http_requests_total", group="redirect", status="302") == 3
    assert delta("chatlink_http_request_duration_seconds_count", group="redirect") == 5
    assert (
        delta("chatlink_link_cache_requests_total", result="hit")
        + delta("chatlink_link_cache_requests_total", result="miss")
        == 5
    )
    assert delta("chatlink_link_cache_requests_total", result="miss") >= 1  # the unknown slug at least


def test_drained_clicks_and_the_stream_are_measured(app, client, make_link):
    link = make_link()
    before = scrape(client)
    for _ in range(4):
        client.get(f"/{link['slug']}")
    drainer = background_for(app).drainer
    drainer.observe()
    queued = scrape(client)
    assert value(queued, "chatlink_click_stream_length") == 4
    assert value(queued, "chatlink_click_drain_lag_seconds") >= 0
    assert drain(app) == 4
    drainer.observe()
    after = scrape(client)
    drained = value(after, "chatlink_clicks_drained_total") - value(before, "chatlink_clicks_drained_total")
    assert drained == 4
    assert value(after, "chatlink_click_stream_length") == 0
    assert value(after, "chatlink_click_drain_lag_seconds") == 0
    assert value(after, "chatlink_click_spool_bytes") == 0


def test_leads_deliveries_and_the_outbox_are_measured(events_app, auth, make_link, receiver, owner_conn):  # noqa: F811
    client = events_app.test_client()
    _register(client, auth, receiver.url)
    before = scrape(client)
    link = make_link(message="Olá {name}", lead_form=FORM)
    _, token = _open(client, link["slug"])
    assert _submit(client, link["slug"], token).status_code == 303
    deliverer = background_for(events_app).deliverer
    owner_conn.execute("update outbox set next_attempt_at = now() - interval '90 seconds' where status = 'pending'")
    deliverer.observe()
    waiting = scrape(client)
    assert value(waiting, "chatlink_outbox_backlog") >= 1
    assert value(waiting, "chatlink_outbox_oldest_due_seconds") >= 89
    _make_due(owner_conn)
    deliverer.deliver_once()
    after = scrape(client)
    assert value(after, "chatlink_leads_created_total") - value(before, "chatlink_leads_created_total") == 1
    delivered = value(after, "chatlink_deliveries_total", result="delivered")
    assert delivered - value(before, "chatlink_deliveries_total", result="delivered") >= 1


def test_pool_and_breaker_gauges_are_published(client):
    samples = scrape(client)
    assert value(samples, "chatlink_db_pool_connections") >= 1
    assert ("chatlink_redis_breaker_open", ()) in samples


def test_every_answer_carries_a_request_id_the_fast_path_too(client, make_link):
    link = make_link()
    redirect = client.get(f"/{link['slug']}")
    assert redirect.status_code == 302
    ids = {redirect.headers["X-Request-Id"], client.get("/livez").headers["X-Request-Id"]}
    ids.add(client.get("/api/v1/links", headers={"Authorization": "Bearer nope"}).headers["X-Request-Id"])
    assert len(ids) == 3 and all(len(i) == 16 for i in ids)


def test_a_request_id_from_the_client_is_ignored_without_a_trusted_proxy(client):
    assert client.get("/livez", headers={"X-Request-Id": "abc-123"}).headers["X-Request-Id"] != "abc-123"


@pytest.mark.parametrize(("given", "kept"), [("abc-123", True), ("bad id\x1b[31m", False), ("x" * 65, False)])
def test_a_trusted_proxys_request_id_is_kept_when_sane(make_app, settings, given, kept):
    client = make_app(settings, trusted_proxies=1).test_client()
    answered = client.get("/livez", headers={"X-Request-Id": given}).headers["X-Request-Id"]
    assert (answered == given) is kept


def _format(formatter: logging.Formatter, message: str, *args, **extra) -> str:
    record = logging.LogRecord("chatlink.test", logging.WARNING, __file__, 1, message, args, None)
    record.__dict__.update(extra)
    logs.Context().filter(record)
    return formatter.format(record)


def test_json_lines_have_time_level_logger_message_and_request_id():
    token = logs.request_id.set("rid-1")
    try:
        line = json.loads(_format(logs.Json(), "hello %s", "world", status=302))
    finally:
        logs.request_id.reset(token)
    assert line["message"] == "hello world" and line["level"] == "WARNING" and line["logger"] == "chatlink.test"
    assert line["request_id"] == "rid-1" and line["status"] == 302
    assert len(line["time"]) == len("2026-12-02T04:03:39.123Z") and line["time"].endswith("Z")


@pytest.mark.parametrize("formatter", [logs.Json(), logs.Text()], ids=["json", "text"])
def test_visitor_values_cannot_forge_a_line_or_drive_the_terminal(formatter):
    line = _format(formatter, "GET %s 404", "/zz\r\n2026-12-02 INFO forged\x1b[31m")
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    message = json.loads(line)["message"] if isinstance(formatter, logs.Json) else line
    assert "\\x0d\\x0a" in message and "\\x1b[31m" in message


def test_addresses_are_masked_and_times_are_not():
    text = logs.hide_addresses("from 198.51.100.7 and [2001:db8::1]:80 and ::1 at 02/Dec/2026:04:03:39 +0000 12:30")
    assert text == "from [address] and [[address]]:80 and [address] at 02/Dec/2026:04:03:39 +0000 12:30"
    assert logs.hide_addresses("Invalid request from ip=127.0.0.1: bad") == "Invalid request from ip=[address]: bad"
    assert logs.hide_addresses("Listening at: http://127.0.0.1:8000 (7)") == "Listening at: http://[address]:8000 (7)"
    assert logs.hide_addresses("06:31:22.993 std::map") == "06:31:22.993 std::map"


def test_the_request_id_reaches_the_event_it_caused_and_its_delivery(make_app, settings, auth, receiver):  # noqa: F811
    app = make_app(settings, trusted_proxies=1)
    client = app.test_client()
    hook = client.post("/api/v1/webhooks", headers=auth, json={"url": receiver.url, "events": ["link.created"]})
    assert hook.status_code == 201
    created = client.post("/api/v1/links", headers={**auth, "X-Request-Id": "edge-7"}, json={"phone": "+5511987654321"})
    assert created.status_code == 201 and created.headers["X-Request-Id"] == "edge-7"
    assert background_for(app).deliverer.deliver_once() == 1
    [delivery] = receiver.received
    assert json.loads(delivery["body"])["request_id"] == "edge-7"
    assert delivery["headers"]["X-Request-Id"] == "edge-7"


def test_a_worker_puts_what_it_loaded_out_of_the_collectors_reach():
    """A full collection walked the whole app's objects in the middle of a request: 25-100 ms, the p99 of
    make bench-analytics. gunicorn calls post_worker_init once the worker has loaded the app."""
    import gc

    hook = runpy.run_path(str(ROOT / "gunicorn.conf.py"))["post_worker_init"]
    gc.unfreeze()
    try:
        hook(None)
        assert gc.get_freeze_count() > 10_000  # the modules and data this process has loaded
    finally:
        gc.unfreeze()


def test_gunicorn_builds_no_access_line_of_its_own():
    """The access line is observe.py's. gunicorn's own, turned on by logconfig_dict, would cost every request a
    dict of formatted atoms for a logger that drops them; with resp and req unset, building it would raise."""
    from datetime import timedelta

    from gunicorn.config import Config

    config = Config()
    settings = runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    config.set("logger_class", settings.get("logger_class", "gunicorn.glogging.Logger"))
    config.set("logconfig_dict", settings["logconfig_dict"])
    logger = config.logger_class(config)
    assert logger.access(None, None, {}, timedelta(milliseconds=1)) is None
