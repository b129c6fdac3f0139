"""What a links API call costs PostgreSQL in round trips, read from libpq's trace of the one pooled connection:
the pool checks only connections that sat idle, and a transaction's statements are pipelined."""

from __future__ import annotations

import time
from contextlib import contextmanager

import psycopg
from psycopg import pq

from service.platform import db as platform_db

BODY = {"phone": "+55 11 98765-4321", "message": "Olá!", "tags": ["t"]}


@contextmanager
def traced(app, path):
    """Trace the protocol messages of the app's only pooled connection into path while the block runs."""
    pool = app.extensions["chatlink.db"].pool
    with open(path, "w") as trace_file:
        with pool.connection() as conn:
            pgconn = conn.pgconn
        pgconn.trace(trace_file.fileno())
        pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        try:
            yield
        finally:
            pgconn.untrace()


def round_trips(path) -> int:
    """How many times the client stopped sending to wait for the server's answers: each F (frontend) line
    followed by a B (backend) line in the trace."""
    senders = [line.split("\t", 1)[0] for line in path.read_text().splitlines() if line[:2] in ("F\t", "B\t")]
    return sum(1 for first, second in zip(senders, senders[1:], strict=False) if (first, second) == ("F", "B"))


def one_connection_app(make_app, settings):
    app = make_app(settings, db_pool_size=1)
    app.extensions["chatlink.db"].pool.wait(5)
    return app


def test_creating_a_link_costs_two_round_trips(make_app, settings, auth, tmp_path):
    app = one_connection_app(make_app, settings)
    client = app.test_client()
    assert client.post("/api/v1/links", json=BODY, headers=auth).status_code == 201  # warm: keys, prepared plans
    with traced(app, tmp_path / "trace"):
        assert client.post("/api/v1/links", json=BODY, headers=auth).status_code == 201
    # BEGIN + the key's check (which sets the account) + the insert; the outbox insert + COMMIT.
    assert round_trips(tmp_path / "trace") == 2


def test_editing_and_reading_a_link_cost_their_round_trips(make_app, settings, auth, tmp_path):
    app = one_connection_app(make_app, settings)
    client = app.test_client()
    slug = client.post("/api/v1/links", json=BODY, headers=auth).get_json()["slug"]
    with traced(app, tmp_path / "patch"):
        assert client.patch(f"/api/v1/links/{slug}", json={"title": "New"}, headers=auth).status_code == 200
    with traced(app, tmp_path / "get"):
        assert client.get(f"/api/v1/links/{slug}", headers=auth).status_code == 200
    # PATCH: BEGIN + the key's check + the update (the fields it gives, the others kept); COMMIT.
    assert round_trips(tmp_path / "patch") == 2
    # GET: the key's check (which also makes the implicit transaction read-only) + the select + the Sync, read
    # once they are all answered.
    assert round_trips(tmp_path / "get") == 1
    assert "begin" not in (tmp_path / "get").read_text().lower()


def test_a_connection_that_died_while_idle_is_replaced_before_a_request_gets_it(
    make_app, settings, auth, owner_conn, monkeypatch
):
    app = one_connection_app(make_app, settings)
    client = app.test_client()
    assert client.get("/api/v1/links", headers=auth).status_code == 200
    with app.extensions["chatlink.db"].pool.connection() as conn:
        pid = conn.info.backend_pid
    owner_conn.execute("select pg_terminate_backend(%s)", [pid])
    monkeypatch.setattr(platform_db, "IDLE_CHECK_SECONDS", 0.0)  # as if it had sat idle past the threshold
    time.sleep(0.01)
    assert client.get("/api/v1/links", headers=auth).status_code == 200


def test_an_error_in_a_pipelined_transaction_rolls_it_all_back(app, auth, owner_conn):
    db = app.extensions["chatlink.db"]
    account_id = owner_conn.execute(
        "select account_id from api_keys where public_id = %s", [auth["Authorization"].split("_")[1]]
    ).fetchone()[0]
    try:
        with db.transaction(account_id) as conn:
            conn.execute(
                "insert into links (account_id, slug, phone)"
                " values (current_account_id(), 'pipe-rollback', '+14155552671')"
            )
            conn.execute("select 1 / 0")
    except psycopg.errors.DivisionByZero:
        pass
    else:
        raise AssertionError("the division by zero was not raised")
    assert owner_conn.execute("select count(*) from links where slug = 'pipe-rollback'").fetchone()[0] == 0


def test_an_exception_in_the_block_rolls_back_the_pipelined_writes_before_it(app, auth, owner_conn):
    db = app.extensions["chatlink.db"]
    public_id = auth["Authorization"].split("_")[1]
    account_id = owner_conn.execute("select account_id from api_keys where public_id = %s", [public_id]).fetchone()[0]
    try:
        with db.transaction(account_id) as conn:
            conn.execute(
                "insert into links (account_id, slug, phone)"
                " values (current_account_id(), 'pipe-raise', '+14155552671')"
            )
            raise LookupError("the view gave up")
    except LookupError:
        pass
    assert owner_conn.execute("select count(*) from links where slug = 'pipe-raise'").fetchone()[0] == 0
    with db.transaction(account_id) as conn:  # the connection went back to the pool clean
        assert conn.execute("select current_setting('chatlink.account_id')").fetchone()


def test_a_connection_is_back_in_the_pool_the_moment_its_transaction_ends(make_app, settings):
    # No hand-over to the pool's worker thread on return (which a reset= callback would cost): the next request of
    # the worker finds the connection at once. A hundred times, so that a return that only races ahead cannot pass.
    db = one_connection_app(make_app, settings).extensions["chatlink.db"]
    for _ in range(100):
        with db.transaction() as conn:
            conn.execute("select 1")
        assert db.pool.get_stats()["pool_available"] == 1
