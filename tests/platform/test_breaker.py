"""The breaker: one slow reply is tolerated, repeated failures open it, probes back off; Redis and PostgreSQL each
behind one (a private redis-server behind a proxy that delays replies; PostgreSQL behind a proxy that stops)."""

from __future__ import annotations

import time

import psycopg
import pytest

from service.platform.breaker import Breaker
from service.platform.db import DatabaseDown
from tests.support import TcpProxy
from tests.test_ledger import PrivateRedis


def _open_breaker(**options) -> Breaker:
    breaker = Breaker("test", **options)
    for _ in range(breaker.failures):
        breaker.failure(RuntimeError("down"))
    assert breaker.is_open
    return breaker


def test_one_failure_does_not_open_the_breaker():
    breaker = Breaker("test", failures=3)
    breaker.failure(TimeoutError("one slow reply"))
    assert breaker.allow() and not breaker.is_open


def test_consecutive_failures_open_the_breaker_and_a_success_between_them_resets_the_count():
    breaker = Breaker("test", failures=3)
    breaker.failure(TimeoutError())
    breaker.failure(TimeoutError())
    breaker.success()
    breaker.failure(TimeoutError())
    breaker.failure(TimeoutError())
    assert not breaker.is_open
    breaker.failure(TimeoutError())
    assert breaker.is_open and not breaker.allow()


def test_one_failed_round_trip_shared_by_many_callers_counts_once():
    breaker = Breaker("test", failures=3)
    batch_error = TimeoutError("the batch's round trip")
    for _ in range(8):  # eight threads whose calls went in the same pipeline
        breaker.failure(batch_error)
    assert not breaker.is_open


def test_a_failure_ratio_over_the_window_opens_the_breaker_without_consecutive_failures():
    breaker = Breaker("test", failures=100, ratio=0.5, min_calls=20, window=60)
    for _ in range(10):
        breaker.success()
        breaker.failure(TimeoutError())
    assert breaker.is_open


def test_an_open_breaker_lets_exactly_one_probe_through_once_the_delay_has_passed():
    breaker = _open_breaker(first_delay=0.05)
    assert not breaker.allow()
    while not breaker.available:
        time.sleep(0.01)
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else still skips while it is out
    breaker.success()
    assert not breaker.is_open and breaker.allow()


def test_failed_probes_double_the_delay_up_to_the_maximum_and_a_success_resets_it():
    breaker = _open_breaker(first_delay=0.01, max_delay=0.05)
    delays = [breaker.delay]
    for _ in range(4):
        while not breaker.allow():
            time.sleep(0.005)
        breaker.failure(ConnectionError())
        delays.append(breaker.delay)
    assert delays == [0.01, 0.02, 0.04, 0.05, 0.05]
    while not breaker.allow():
        time.sleep(0.005)
    breaker.success()
    assert breaker.delay == 0.01


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.kill()


@pytest.fixture
def redis_proxy(private_redis):
    proxy = TcpProxy(private_redis.port)
    yield proxy
    proxy.stop()


def test_one_slow_redis_reply_does_not_send_the_worker_to_postgresql(make_app, settings, make_link, redis_proxy):
    link = make_link()
    app = make_app(settings, redis_url=redis_proxy.url("redis", "/0"), redis_timeout_ms=100)
    redis, client = app.extensions["chatlink.redis"], app.test_client()
    stream = redis.key("clicks")
    redis_proxy.delay_replies(1, 0.3)  # an fsync stall: one reply three times the timeout late
    assert client.get(f"/{link['slug']}").status_code == 302  # this one was served from PostgreSQL
    assert redis.available
    queued = redis.client.xlen(stream)
    for _ in range(5):
        assert client.get(f"/{link['slug']}").status_code == 302
    assert redis.client.xlen(stream) == queued + 5  # the clicks after the stall went through Redis again


def test_consecutive_slow_redis_replies_open_the_breaker(make_app, settings, make_link, redis_proxy):
    link = make_link()
    app = make_app(settings, redis_url=redis_proxy.url("redis", "/0"), redis_timeout_ms=100)
    redis, client = app.extensions["chatlink.redis"], app.test_client()
    assert client.get(f"/{link['slug']}").status_code == 302
    redis_proxy.slow_all(0.3)
    for _ in range(settings.breaker_failures):
        assert client.get(f"/{link['slug']}").status_code == 302
    assert not redis.available and redis.breaker.is_open


def test_redis_recovery_probes_back_off_while_it_stays_down_and_close_once_it_answers(
    make_app, settings, make_link, redis_proxy
):
    link = make_link()
    app = make_app(
        settings, redis_url=redis_proxy.url("redis", "/0"), breaker_first_probe_ms=20, redis_breaker_seconds=1
    )
    redis, client = app.extensions["chatlink.redis"], app.test_client()
    redis_proxy.stop()
    for _ in range(settings.breaker_failures):
        assert client.get(f"/{link['slug']}").status_code == 302  # from PostgreSQL
    delays = [redis.breaker.delay]
    for _ in range(3):
        while not redis.available:
            time.sleep(0.005)
        assert client.get(f"/{link['slug']}").status_code == 302  # this request was the probe; it failed
        delays.append(redis.breaker.delay)
    assert delays == [0.02, 0.04, 0.08, 0.16]
    redis_proxy.start()
    while not redis.available:
        time.sleep(0.005)
    assert client.get(f"/{link['slug']}").status_code == 302
    assert not redis.breaker.is_open and redis.breaker.delay == 0.02


def through(proxy: TcpProxy, database_url: str) -> str:
    """The service's connection string for database_url's database, through proxy."""
    info = psycopg.conninfo.conninfo_to_dict(database_url)
    return psycopg.conninfo.make_conninfo(**{**info, "host": "127.0.0.1", "port": proxy.port, "user": "chatlink_app"})


@pytest.fixture
def postgres_proxy():
    proxy = TcpProxy(5432)
    yield proxy
    proxy.stop()


def test_postgresql_down_is_refused_at_once_once_its_breaker_opens(
    make_app, settings, postgres_proxy, database_url, dead_port
):
    app = make_app(
        settings,
        app_database_url=through(postgres_proxy, database_url),
        redis_url=f"redis://127.0.0.1:{dead_port}/0",
        db_timeout_ms=300,
    )
    db, client = app.extensions["chatlink.db"], app.test_client()
    assert client.get("/some-slug").status_code == 404  # PostgreSQL answers through the proxy
    postgres_proxy.stop()
    for _ in range(settings.breaker_failures + 2):  # each waits for the pool (a connection may have survived)
        if db.breaker.is_open:
            break
        assert client.get("/some-slug").status_code in (404, 503)
    assert db.breaker.is_open
    asked = db.pool.get_stats().get("requests_num", 0)
    for _ in range(20):
        assert client.get("/some-slug", headers={"Accept": "application/json"}).status_code == 503
    assert db.pool.get_stats().get("requests_num", 0) == asked  # refused by the breaker, the pool never asked
    with pytest.raises(DatabaseDown), db.connection():
        pass


def test_a_probe_that_never_reports_back_frees_the_slot_after_the_grace(monkeypatch):
    breaker = _open_breaker(first_delay=0.01)
    monkeypatch.setattr(Breaker, "PROBE_GRACE_SECONDS", 0.05)
    while not breaker.allow():
        time.sleep(0.005)
    assert not breaker.allow()  # the probe is out (and then lost: neither success nor failure is reported)
    time.sleep(0.06)
    assert breaker.allow()


def test_a_postgresql_error_that_is_an_answer_counts_as_postgresql_up(db):
    db.breaker.failure(psycopg.OperationalError("one"))
    db.breaker.failure(psycopg.OperationalError("two"))
    with pytest.raises(psycopg.errors.UndefinedTable), db.connection() as conn:
        conn.execute("select * from no_such_table")
    db.breaker.failure(psycopg.OperationalError("three"))
    assert not db.breaker.is_open  # the refused statement broke the run of failures
