"""The click pipeline through faults: PostgreSQL read-only, Redis full, the spool's disk full, dead letters."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid

import pytest
import redis

from service.clicks import pipeline
from service.platform.db import Database, app_conninfo
from tests.conftest import ROOT, background_for, drain
from tests.test_ledger import PrivateRedis


def _stored(owner_conn, ids) -> set[str]:
    rows = owner_conn.execute("select click_id::text from clicks where click_id = any(%s::uuid[])", [list(ids)])
    return {r[0] for r in rows.fetchall()}


@contextlib.contextmanager
def _app_role_read_only(owner_conn):
    """PostgreSQL refuses the service's writes (as a standby would) in this test's database only; new sessions of
    the app role start read-only, and the caller makes its existing sessions read-only too."""
    dbname = owner_conn.info.dbname
    owner_conn.execute(f'alter role chatlink_app in database "{dbname}" set default_transaction_read_only = on')
    try:
        yield
    finally:
        owner_conn.execute(f'alter role chatlink_app in database "{dbname}" reset default_transaction_read_only')


def _pooled_sessions(db: Database, setting: str) -> None:
    """Set default_transaction_read_only on the pool's idle session(s), as a server-wide reload would."""
    with db.connection() as conn:
        conn.execute(f"set default_transaction_read_only = {setting}")


def test_with_postgresql_read_only_nothing_is_dead_lettered_and_all_is_stored_once_writable(
    app, client, make_link, owner_conn
):
    link = make_link()
    ids = {client.get(f"/{link['slug']}").headers["X-Click-Id"] for _ in range(20)}
    drainer = background_for(app).drainer
    drainer.ensure_group()
    drainer.maintain()  # the drainer's session exists before PostgreSQL turns read-only
    with _app_role_read_only(owner_conn):
        _pooled_sessions(drainer.db, "on")
        for _ in range(3):
            assert drainer._guarded_count(drainer.drain_once) is None  # a pause, not a dead letter
        assert drainer.redis.xlen(drainer.dead_letters) == 0
        assert drainer.redis.xlen(drainer.stream) == 20  # nothing acknowledged
        assert _stored(owner_conn, ids) == set()
        _pooled_sessions(drainer.db, "off")
    assert drain(app) == 20
    assert _stored(owner_conn, ids) == ids
    assert drainer.redis.xlen(drainer.dead_letters) == 0


def test_a_new_connection_to_a_read_only_postgresql_still_serves_redirects(
    make_app, settings, make_link, owner_conn, dead_port, tmp_path
):
    link = make_link()
    with _app_role_read_only(owner_conn):
        # Redis down too: the link is read from PostgreSQL, and the click it cannot write waits in the spool.
        down = make_app(settings, redis_url=f"redis://127.0.0.1:{dead_port}/0").test_client()
        response = down.get(f"/{link['slug']}")
        assert response.status_code == 302 and response.headers["X-Click-Id"]
    spool = pipeline.Spool(tmp_path / "spool")
    assert spool.drain(background_for(down.application).db) == 1
    assert _stored(owner_conn, [response.headers["X-Click-Id"]]) == {response.headers["X-Click-Id"]}


def test_a_drainer_frees_a_full_redis_once_postgresql_returns(make_app, settings, make_link, owner_conn, tmp_path):
    private = PrivateRedis(tmp_path / "redis")
    try:
        app = make_app(settings, redis_url=private.url, rate_limits_enabled=False)
        client = app.test_client()
        link = make_link()
        ids = {client.get(f"/{link['slug']}").headers["X-Click-Id"] for _ in range(300)}
        work = background_for(app)
        drainer, live_db = work.drainer, work.db
        drainer.ensure_group()  # as at start
        admin = redis.Redis.from_url(private.url)
        held = admin.memory_usage(drainer.stream)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] - 1024)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            admin.set("probe", "x")
        dead = Database(app_conninfo(settings.database_url) + " port=1", size=1, timeout_ms=200, min_size=0)
        dead.open()
        drainer.db = dead  # PostgreSQL unreachable: every step fails
        for _ in range(3):
            assert drainer._guarded_count(lambda: drainer.drain_once(block_ms=10)) is None
        drainer.db = live_db  # PostgreSQL is back; Redis is still full
        dead.close()
        for _ in range(20):
            if drainer._guarded_count(lambda: drainer.drain_once(block_ms=10)) == 0:
                break
        assert admin.xlen(drainer.stream) == 0
        assert _stored(owner_conn, ids) == ids
        assert admin.memory_usage(drainer.stream) < held / 10  # the memory the clicks held is free again
        admin.close()
    finally:
        private.kill()


def test_a_drainer_started_while_redis_is_full_drains_into_the_existing_group(
    make_app, settings, make_link, owner_conn, tmp_path
):
    """A background process restarted during the fault: XGROUP CREATE is refused when Redis is full (it needs
    memory), but the group exists, so the new drainer must read without creating it."""
    private = PrivateRedis(tmp_path / "redis")
    try:
        app = make_app(settings, redis_url=private.url, rate_limits_enabled=False)
        background_for(app).drainer.ensure_group()  # the process before the restart
        client = app.test_client()
        link = make_link()
        ids = {client.get(f"/{link['slug']}").headers["X-Click-Id"] for _ in range(50)}
        admin = redis.Redis.from_url(private.url)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", admin.info("memory")["used_memory"] - 1024)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            admin.xgroup_create("probe-stream", "probe", mkstream=True)
        restarted = background_for(make_app(settings, redis_url=private.url, rate_limits_enabled=False)).drainer
        for _ in range(5):
            if restarted._guarded_count(lambda: restarted.drain_once(block_ms=10)) == 0:
                break
        assert _stored(owner_conn, ids) == ids
        admin.close()
    finally:
        private.kill()


def test_stale_consumers_are_forgotten_after_their_entries_are_reclaimed(app, client, make_link, owner_conn):
    link = make_link()
    drainer = background_for(app).drainer
    drainer.ensure_group()
    ids = {client.get(f"/{link['slug']}").headers["X-Click-Id"] for _ in range(3)}
    # Three processes that read as consumers and died: one holding the clicks, two holding nothing.
    drainer.redis.xreadgroup(drainer.GROUP, "dead-with-clicks", {drainer.stream: ">"}, count=100)
    for name in ("dead-idle-1", "dead-idle-2"):
        drainer.redis.xgroup_createconsumer(drainer.stream, drainer.GROUP, name)
    drainer.reclaim_idle_ms, drainer.consumer_expiry_ms = 0, -1
    assert drainer.reclaim() == 3
    assert _stored(owner_conn, ids) == ids
    names = {c["name"] for c in drainer.redis.xinfo_consumers(drainer.stream, drainer.GROUP)}
    assert names <= {drainer.consumer}


def test_a_live_consumer_or_one_holding_clicks_is_not_forgotten(app, client, make_link):
    link = make_link()
    drainer = background_for(app).drainer
    drainer.ensure_group()
    client.get(f"/{link['slug']}")
    drainer.redis.xreadgroup(drainer.GROUP, "holding", {drainer.stream: ">"}, count=100)
    drainer.redis.xgroup_createconsumer(drainer.stream, drainer.GROUP, "just-read")
    assert drainer.forget_stale_consumers() == []  # default expiry: 10 × RECLAIM_IDLE_MS, at least 5 s
    drainer.consumer_expiry_ms = -1  # as if both had been idle that long
    assert drainer.forget_stale_consumers() == ["just-read"]  # "holding" keeps its pending click


def test_replay_dead_moves_dead_letters_back_once(app, client, make_link, owner_conn, database_url, settings):
    link = make_link()
    response = client.get(f"/{link['slug']}")
    drainer = background_for(app).drainer
    drainer.ensure_group()
    [(_, [(entry_id, fields)])] = drainer.redis.xread({drainer.stream: "0"})
    # As if PostgreSQL had refused it: the entry sits in the dead letters, gone from the stream.
    drainer.redis.xadd(drainer.dead_letters, {**fields, "error": "refused: ForeignKeyViolation (23503)"})
    drainer.redis.xdel(drainer.stream, entry_id)
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": settings.redis_url,
        "KEY_PREFIX": settings.key_prefix,
        "SPOOL_DIR": settings.spool_dir,
    }
    run = [sys.executable, "-m", "service.cli", "replay-dead"]
    result = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "replayed: 1 " in result.stdout
    assert drainer.redis.xlen(drainer.dead_letters) == 0
    assert drain(app) == 1
    again = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "replayed: 0 " in again.stdout
    click_id = response.headers["X-Click-Id"]
    assert owner_conn.execute("select count(*) from clicks where click_id = %s", [click_id]).fetchone()[0] == 1


def _record(click_id: str, link_id: int, account_id: int) -> dict:
    return {"id": click_id, "ts": 1.7e9, "ua": "", "bot": False, "vid": "v" * 32, "l": link_id, "a": account_id}


def test_the_spool_reads_past_a_torn_record_and_keeps_it_aside(app, make_link, owner_conn, tmp_path):
    link = make_link()
    link_id, account_id = owner_conn.execute(
        "select id, account_id from links where slug = %s", [link["slug"]]
    ).fetchone()
    spool = pipeline.Spool(tmp_path / "spool")
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    spool.append(_record(first, 0, 0) | {"l": link_id, "a": account_id}, link_id, account_id)
    with spool.path.open("ab") as handle:  # a crash in the middle of a record
        handle.write(pipeline._frame(_record(str(uuid.uuid4()), link_id, account_id))[:40])
    spool.append(_record(second, 0, 0), link_id, account_id)  # must not merge into the torn one
    assert spool.drain(background_for(app).db) == 2
    assert _stored(owner_conn, [first, second]) == {first, second}
    assert spool.dead_records() == 1
    [kept] = list(spool.dead.glob("damaged-*.jsonl"))
    assert pipeline.unframe(kept.read_bytes().strip()) is None


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 64 KiB tmpfs of this test's own: a spool directory that really fills up."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    mounted = subprocess.run(
        [shutil.which("mount") or "/bin/mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mountpoint)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run([shutil.which("umount") or "/bin/umount", "-l", str(mountpoint)], check=False)


def test_a_full_spool_tears_no_record_and_every_click_id_given_is_stored(
    make_app, settings, make_link, owner_conn, dead_port, tiny_tmpfs
):
    link = make_link()
    spool_dir = tiny_tmpfs / "spool"
    with _app_role_read_only(owner_conn):
        # Redis down and PostgreSQL refusing writes: every click goes to the spool until its disk is full.
        app = make_app(
            settings,
            redis_url=f"redis://127.0.0.1:{dead_port}/0",
            rate_limits_enabled=False,
            spool_dir=str(spool_dir),
            db_timeout_ms=300,
        )
        client = app.test_client()
        responses = [client.get(f"/{link['slug']}", headers={"User-Agent": f"visitor/{i}"}) for i in range(400)]
    assert {r.status_code for r in responses} == {302}
    given = {r.headers["X-Click-Id"] for r in responses if "X-Click-Id" in r.headers}
    without_id = sum("X-Click-Id" not in r.headers for r in responses)
    assert given and without_id  # the disk filled up part way
    spool = pipeline.Spool(spool_dir)
    records = [line for path in spool_dir.glob("clicks-*") for line in path.read_bytes().split(b"\n") if line]
    assert all(pipeline.unframe(line) for line in records)  # no torn record
    assert {pipeline.unframe(line)["id"] for line in records} == given
    assert pipeline.NodeCounter(spool_dir / "dropped").value() == without_id
    assert spool.drain(background_for(make_app(settings)).db) == len(given)
    assert _stored(owner_conn, given) == given
    assert json.loads(app.test_client().get("/health").data)["checks"]["clicks:dropped"][0]["observedValue"] == (
        without_id
    )


def test_spool_appends_on_a_full_disk_are_whole_or_absent(tiny_tmpfs):
    spool = pipeline.Spool(tiny_tmpfs / "spool")
    written, refused = [], 0
    for i in range(600):  # records of different sizes, so that the last ones cross a page the disk cannot give
        click = _record(str(uuid.uuid4()), 1, 1) | {"ua": "x" * (50 + i * 7 % 400)}
        try:
            spool.append(click, 1, 1)
            written.append(click["id"])
        except OSError:
            refused += 1
    assert written and refused  # the disk filled up part way
    records = [line for line in spool.path.read_bytes().split(b"\n") if line]
    assert [pipeline.unframe(line)["id"] for line in records] == written  # every record whole, none torn


def test_redirects_keep_answering_from_postgresql_while_redis_refuses_writes(
    make_app, settings, make_link, owner_conn, tmp_path
):
    private = PrivateRedis(tmp_path / "redis")
    try:
        link = make_link()
        admin = redis.Redis.from_url(private.url)
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")  # every write refused: the script cannot queue the click
        client = make_app(settings, redis_url=private.url).test_client()
        responses = [client.get(f"/{link['slug']}") for _ in range(3)]
        assert [r.status_code for r in responses] == [302] * 3
        ids = {r.headers["X-Click-Id"] for r in responses}
        assert _stored(owner_conn, ids) == ids  # written straight to PostgreSQL
        admin.close()
    finally:
        private.kill()
