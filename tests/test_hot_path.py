"""The redirect's hot path: one Redis command per cached redirect, rate limits included, round trips shared
between threads (group commit), and the WSGI fast path in front of Flask never taking a fixed path."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from service import slugs
from service.cache import ScriptBatcher
from tests.conftest import drain
from tests.test_live import _create

# Answers ARGV[1]; counts its calls in KEYS[1]; with ARGV[2] = 'slow', keeps Redis busy for 300 ms first.
ECHO = """
if ARGV[2] == 'slow' then
    local start = redis.call('TIME')
    repeat local now = redis.call('TIME')
    until (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > 300000
end
redis.call('INCR', KEYS[1])
return ARGV[1]
"""


@pytest.fixture
def redis_client(redis_url):
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


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


def test_calls_from_many_threads_each_get_their_own_reply(redis_client, key_prefix):
    batcher = ScriptBatcher(redis_client, ECHO)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: batcher([f"{key_prefix}calls"], [str(i), ""]), range(400)))
    assert replies == [str(i) for i in range(400)]
    assert redis_client.get(f"{key_prefix}calls") == "400"


def test_calls_arriving_during_a_round_trip_share_the_next_one(redis_client, key_prefix):
    batcher = ScriptBatcher(redis_client, ECHO)
    counter = f"{key_prefix}calls"
    pipelines = []
    run = batcher._run
    batcher._run = lambda batch: pipelines.append(len(batch)) or run(batch)  # count, then really send
    slow = threading.Thread(target=batcher, args=([counter], ["first", "slow"]))
    slow.start()
    while not batcher._leading:
        time.sleep(0.001)
    with ThreadPoolExecutor(10) as pool:  # all ten queue while the slow call holds Redis
        replies = list(pool.map(lambda i: batcher([counter], [str(i), ""]), range(10)))
    slow.join()
    assert replies == [str(i) for i in range(10)]
    assert pipelines == [1, 10]
    assert redis_client.get(counter) == "11"


def test_an_error_in_one_call_does_not_fail_the_others_in_its_batch(redis_client, key_prefix):
    redis_client.set(f"{key_prefix}text", "not a number")
    batcher = ScriptBatcher(redis_client, ECHO)
    keys = [f"{key_prefix}text" if i == 3 else f"{key_prefix}calls" for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batcher, [key], [str(i), ""]) for i, key in enumerate(keys)]
    for i, future in enumerate(futures):
        if i == 3:
            with pytest.raises(redis.ResponseError):
                future.result()
        else:
            assert future.result() == str(i)


def test_a_lost_connection_fails_every_waiting_call_and_leaves_none_hanging(dead_port):
    client = redis.Redis(port=dead_port, socket_timeout=0.5, socket_connect_timeout=0.5)
    batcher = ScriptBatcher(client, ECHO)
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(batcher, ["k"], [str(i), ""]) for i in range(20)]
        for future in futures:
            with pytest.raises(redis.ConnectionError):
                future.result(timeout=10)
    assert not batcher._leading and not batcher._queue


def test_a_script_missing_from_redis_is_loaded_again(redis_client, key_prefix):
    batcher = ScriptBatcher(redis_client, ECHO)
    batcher.script.sha = "0" * 40  # as after a Redis restart: EVALSHA answers NOSCRIPT
    assert batcher([f"{key_prefix}calls"], ["back", ""]) == "back"
    assert batcher.script.sha != "0" * 40


def test_the_fast_path_never_takes_a_fixed_path(app):
    fixed = {rule.rule[1:] for rule in app.url_map.iter_rules() if rule.rule.count("/") == 1 and "<" not in rule.rule}
    assert {"livez", "health"} <= fixed
    assert not any(slugs.could_exist(path.lower()) for path in fixed)


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


def test_an_interrupted_round_trip_leaves_nobody_waiting(redis_client, key_prefix):
    batcher = ScriptBatcher(redis_client, ECHO)
    counter, run = f"{key_prefix}calls", batcher._run
    entered, release, interrupted = threading.Event(), threading.Event(), []

    def interrupted_run(batch):
        batcher._run = run  # only this first round trip is cut short
        entered.set()
        release.wait(5)
        raise KeyboardInterrupt

    def first_call():
        try:
            batcher([counter], ["first", ""])
        except KeyboardInterrupt as exc:
            interrupted.append(exc)

    batcher._run = interrupted_run
    leader = threading.Thread(target=first_call)
    leader.start()
    entered.wait(5)
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(batcher, [counter], [str(i), ""]) for i in range(4)]
        time.sleep(0.2)  # they queue behind the round trip about to be interrupted
        release.set()
        assert [future.result(timeout=10) for future in futures] == ["0", "1", "2", "3"]
    leader.join(5)
    assert interrupted and not batcher._leading
    assert batcher([counter], ["later", ""]) == "later"


def test_every_limit_of_a_redirect_limit_string_is_enforced(make_app, settings, make_link):
    link = make_link()
    client = make_app(settings, rate_limit_redirect="100/minute;2/hour").test_client()
    assert [client.get(f"/{link['slug']}").status_code for _ in range(3)] == [302, 302, 429]
    refused = client.get(f"/{link['slug']}")
    assert refused.status_code == 429 and 3500 < int(refused.headers["Retry-After"]) <= 3600


def test_an_error_inside_the_fast_path_is_a_logged_problem_not_a_bare_500(app, client, monkeypatch, caplog):
    def broken(slug, environ):
        raise RuntimeError("a bug")

    monkeypatch.setattr(app.extensions["redirector"], "resolve", broken)
    response = client.get("/some-link")
    assert response.status_code == 500 and response.mimetype == "application/problem+json"
    assert "a bug" in caplog.text


def test_utm_values_are_read_as_utf_8(app, client, make_link, owner_conn):
    link = make_link()
    response = client.get(f"/{link['slug']}?utm_campaign=ver%C3%A3o&utm%5Fsource=caf%C3%A9")
    assert response.status_code == 302
    drain(app)
    row = owner_conn.execute(
        "select utm_campaign, utm_source from clicks where click_id = %s", [response.headers["X-Click-Id"]]
    ).fetchone()
    assert tuple(row.values() if isinstance(row, dict) else row) == ("verão", "café")
