"""Click capture and the pipeline: fields recorded, bots, HEAD/DNT, roll-ups, max_clicks, and every fallback."""

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from service.clicks import pipeline
from service.platform.db import Database
from tests.conftest import ROOT, background_for, drain

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.0 Mobile/15E148 Safari/604.1"
)
DESKTOP = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"
WHATSAPP_PREVIEW = "WhatsApp/2.23.20.0 A"


def _clicks(owner_conn, slug):
    return owner_conn.execute(
        "select c.* from clicks c join links l on l.id = c.link_id where l.slug = %s order by clicked_at",
        [slug],
    ).fetchall()


def _columns(owner_conn):
    return [d.name for d in owner_conn.execute("select * from clicks limit 0").description]


def _rollup(owner_conn, slug):
    return owner_conn.execute(
        "select sum(clicks), sum(bot_clicks), sum(unique_visitors) from click_rollups r"
        " join links l on l.id = r.link_id where l.slug = %s",
        [slug],
    ).fetchone()


def test_a_redirect_records_one_click_with_every_field(app, client, make_link, owner_conn):
    link = make_link()
    response = client.get(
        f"/{link['slug']}?utm_source=instagram&utm_medium=story&utm_campaign=black-friday&utm_content=v2&utm_term=x",
        headers={"User-Agent": IPHONE, "Referer": "https://l.instagram.com/some/path?u=1"},
        environ_base={"REMOTE_ADDR": "200.147.67.142"},
    )
    assert response.status_code == 302
    click_id = response.headers["X-Click-Id"]
    assert drain(app) == 1
    [row] = _clicks(owner_conn, link["slug"])
    record = dict(zip(_columns(owner_conn), row, strict=True))
    assert str(record["click_id"]) == click_id
    assert record["referrer"] == "https://l.instagram.com/some/path?u=1"
    assert record["referrer_host"] == "l.instagram.com"
    assert (record["browser"], record["os"], record["device_type"]) == ("Mobile Safari", "iOS", "phone")
    assert record["is_bot"] is False
    assert record["country"] == "BR"
    assert (record["utm_source"], record["utm_medium"], record["utm_campaign"]) == (
        "instagram",
        "story",
        "black-friday",
    )
    assert (record["utm_content"], record["utm_term"]) == ("v2", "x")
    assert len(record["visitor_id"]) == 32


def test_click_ids_are_time_ordered_uuid7(client, make_link):
    link = make_link()
    ids = [client.get(f"/{link['slug']}").headers["X-Click-Id"] for _ in range(5)]
    assert all(i[14] == "7" for i in ids)
    assert ids == sorted(ids)


def test_no_raw_ip_is_stored(app, client, make_link, owner_conn):
    link = make_link()
    client.get(f"/{link['slug']}", environ_base={"REMOTE_ADDR": "203.0.113.77"})
    drain(app)
    [row] = _clicks(owner_conn, link["slug"])
    assert not any("203.0.113.77" in str(value) for value in row)


def test_country_comes_from_the_configured_cdn_header(make_app, settings, make_link, owner_conn):
    app = make_app(settings, country_header="CF-IPCountry")
    link = make_link()
    app.test_client().get(f"/{link['slug']}", headers={"CF-IPCountry": "pt"})
    app.test_client().get(f"/{link['slug']}", headers={"CF-IPCountry": "XX"})  # Cloudflare's "unknown"
    drain(app)
    assert [r[10] for r in _clicks(owner_conn, link["slug"])] == ["PT", None]


def test_the_country_header_is_ignored_unless_configured(app, client, make_link, owner_conn):
    link = make_link()
    client.get(f"/{link['slug']}", headers={"CF-IPCountry": "PT"}, environ_base={"REMOTE_ADDR": "10.0.0.1"})
    drain(app)
    assert _clicks(owner_conn, link["slug"])[0][10] is None


@pytest.mark.parametrize(
    "agent",
    [
        WHATSAPP_PREVIEW,
        "facebookexternalhit/1.1",
        "Slackbot-LinkExpanding 1.0",
        "Twitterbot/1.0",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "TelegramBot (like TwitterBot)",
    ],
)
def test_bots_get_their_302_but_are_kept_apart(app, client, make_link, owner_conn, agent):
    link = make_link()
    assert client.get(f"/{link['slug']}", headers={"User-Agent": agent}).status_code == 302
    drain(app)
    row = _clicks(owner_conn, link["slug"])[0]
    assert (row[8], row[9]) == ("bot", True)
    assert _rollup(owner_conn, link["slug"]) == (0, 1, 0)


@pytest.mark.parametrize(("agent", "device"), [(IPHONE, "phone"), (DESKTOP, "desktop"), ("", "other")])
def test_device_types(agent, device):
    assert pipeline.describe_agent(agent, False)[2] == device


def test_head_is_not_recorded(app, client, make_link):
    link = make_link()
    response = client.head(f"/{link['slug']}")
    assert response.status_code == 302 and "X-Click-Id" not in response.headers
    assert drain(app) == 0


def test_dnt_is_honoured_only_when_the_operator_says_so(make_app, settings, make_link, owner_conn):
    link = make_link()
    honouring = make_app(settings, honor_dnt=True).test_client()
    response = honouring.get(f"/{link['slug']}", headers={"DNT": "1"})
    assert response.status_code == 302 and "X-Click-Id" not in response.headers
    assert "X-Click-Id" not in honouring.get(f"/{link['slug']}", headers={"Sec-GPC": "1"}).headers
    ignoring = make_app(settings)
    assert "X-Click-Id" in ignoring.test_client().get(f"/{link['slug']}", headers={"DNT": "1"}).headers
    assert drain(ignoring) == 1


def test_404_and_410_are_not_clicks(app, client, auth, make_link):
    link = make_link()
    client.patch(f"/api/v1/links/{link['slug']}", headers=auth, json={"disabled": True})
    assert "X-Click-Id" not in client.get(f"/{link['slug']}").headers
    assert "X-Click-Id" not in client.get("/no-such-slug").headers
    assert drain(app) == 0


def test_rollups_count_clicks_bots_and_unique_visitors(app, client, make_link, owner_conn):
    link = make_link()
    path = f"/{link['slug']}"
    for _ in range(3):
        client.get(path, headers={"User-Agent": IPHONE}, environ_base={"REMOTE_ADDR": "198.51.100.1"})
    client.get(path, headers={"User-Agent": DESKTOP}, environ_base={"REMOTE_ADDR": "198.51.100.1"})
    client.get(path, headers={"User-Agent": IPHONE}, environ_base={"REMOTE_ADDR": "198.51.100.2"})
    client.get(path, headers={"User-Agent": WHATSAPP_PREVIEW})
    drain(app)
    assert _rollup(owner_conn, link["slug"]) == (5, 1, 3)
    # A second batch with a returning visitor adds clicks, not visitors.
    client.get(path, headers={"User-Agent": IPHONE}, environ_base={"REMOTE_ADDR": "198.51.100.2"})
    drain(app)
    assert _rollup(owner_conn, link["slug"]) == (6, 1, 3)


def test_the_same_click_ingested_twice_is_stored_and_counted_once(app, client, make_link, database_url, owner_conn):
    link = make_link()
    client.get(f"/{link['slug']}")
    entry = app.extensions["chatlink.redis"].client.xrange(pipeline.stream_key(app.extensions["chatlink.redis"]))[0][1]
    row = pipeline.to_row(__import__("json").loads(entry["d"]), int(entry["l"]), int(entry["a"]))
    drain(app)
    db = Database(database_url, size=1, timeout_ms=2000, setup_sql=pipeline.STAGING_DDL)
    db.open()
    try:
        with db.pool.connection() as conn:
            assert pipeline.ingest(conn, [row, row]) == 0
    finally:
        db.close()
    assert len(_clicks(owner_conn, link["slug"])) == 1
    assert _rollup(owner_conn, link["slug"])[0] == 1


def test_drained_entries_leave_the_stream(app, client, make_link):
    link = make_link()
    for _ in range(3):
        client.get(f"/{link['slug']}")
    drainer = background_for(app).drainer
    assert drainer.pending() == 3
    drain(app)
    assert drainer.pending() == 0


def test_max_clicks_answers_410_once_reached_and_bots_do_not_count(app, client, make_link):
    link = make_link(max_clicks=2)
    path = f"/{link['slug']}"
    assert client.get(path, headers={"User-Agent": WHATSAPP_PREVIEW}).status_code == 302
    assert client.head(path).status_code == 302  # HEAD is not a click and does not use one up
    assert [client.get(path).status_code for _ in range(3)] == [302, 302, 410]
    assert drain(app) == 3


def test_an_exhausted_link_is_gone_for_bots_and_head_too(app, client, make_link):
    link = make_link(max_clicks=1)
    path = f"/{link['slug']}"
    assert client.get(path).status_code == 302
    assert client.get(path, headers={"User-Agent": WHATSAPP_PREVIEW}).status_code == 410
    assert client.head(path).status_code == 410
    assert "Location" not in client.head(path).headers


def test_an_exhausted_link_is_gone_for_bots_and_head_with_redis_down(make_app, settings, make_link, dead_port):
    link = make_link(max_clicks=1)
    down = make_app(settings, redis_url=f"redis://127.0.0.1:{dead_port}/0").test_client()
    assert down.get(f"/{link['slug']}").status_code == 302
    assert down.get(f"/{link['slug']}", headers={"User-Agent": WHATSAPP_PREVIEW}).status_code == 410
    assert down.head(f"/{link['slug']}").status_code == 410


def test_a_disabled_link_is_gone_for_bots_and_head_too(client, auth, make_link):
    link = make_link()
    path = f"/{link['slug']}"
    assert client.head(path).status_code == 302  # cached as live
    client.patch(f"/api/v1/links/{link['slug']}", headers=auth, json={"disabled": True})
    assert client.get(path, headers={"User-Agent": WHATSAPP_PREVIEW}).status_code == 410
    assert client.head(path).status_code == 410


def test_an_expired_link_is_gone_for_bots_and_head_too(client, make_link):
    soon = datetime.now(UTC) + timedelta(seconds=1)
    link = make_link(expires_at=soon.isoformat())
    path = f"/{link['slug']}"
    assert client.head(path).status_code == 302  # cached as live, with the time it closes
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.2)
    assert client.get(path, headers={"User-Agent": WHATSAPP_PREVIEW}).status_code == 410
    assert client.head(path).status_code == 410


def test_max_clicks_survives_a_cache_flush(app, client, make_link):
    link = make_link(max_clicks=2)
    path = f"/{link['slug']}"
    assert client.get(path).status_code == 302
    drain(app)
    cache = app.extensions["chatlink.redis"]
    cache.client.delete(*cache.client.keys(f"{cache.prefix}*"))  # Redis lost everything but PostgreSQL
    assert [client.get(path).status_code for _ in range(2)] == [302, 410]


def test_max_clicks_is_enforced_from_postgresql_with_redis_down(make_app, settings, client, make_link, dead_port):
    link = make_link(max_clicks=1)
    down = make_app(settings, redis_url=f"redis://127.0.0.1:{dead_port}/0").test_client()
    assert [down.get(f"/{link['slug']}").status_code for _ in range(2)] == [302, 410]


def test_with_redis_down_the_click_is_written_straight_to_postgresql(
    make_app, settings, make_link, owner_conn, dead_port
):
    link = make_link()
    down = make_app(settings, redis_url=f"redis://127.0.0.1:{dead_port}/0").test_client()
    click_id = down.get(f"/{link['slug']}").headers["X-Click-Id"]
    assert [str(r[0]) for r in _clicks(owner_conn, link["slug"])] == [click_id]
    assert _rollup(owner_conn, link["slug"])[0] == 1


def test_with_both_down_the_click_is_spooled_and_drained_when_postgresql_returns(
    app, make_link, owner_conn, dead_port, tmp_path
):
    link = make_link()
    row = owner_conn.execute("select id, account_id from links where slug = %s", [link["slug"]]).fetchone()
    dead = Database(f"postgresql://postgres@127.0.0.1:{dead_port}/x", size=1, timeout_ms=200)
    dead.open()
    spool = pipeline.Spool(tmp_path / "spool")
    sink = pipeline.ClickSink(dead, spool)
    click = {
        "id": "01930000-0000-7000-8000-000000000001",
        "ts": time.time(),
        "ua": IPHONE,
        "bot": False,
        "vid": "v" * 32,
    }
    try:
        assert sink.write(click, row[0], row[1]) == "spool"
    finally:
        dead.close()
    assert sink.dropped.value() == 0
    assert spool.drain(app.extensions["chatlink.db"]) == 1
    assert [str(r[0]) for r in _clicks(owner_conn, link["slug"])] == [click["id"]]
    assert [p.name for p in (tmp_path / "spool").iterdir()] == ["dropped"]  # the node's counter, at 0


def test_clicks_of_a_killed_worker_are_reclaimed(make_app, settings, client, make_link, owner_conn, redis_url):
    link = make_link()
    app = make_app(settings, reclaim_idle_ms=200)
    ids = {app.test_client().get(f"/{link['slug']}").headers["X-Click-Id"] for _ in range(3)}
    drainer = background_for(app).drainer
    drainer.ensure_group()
    # A real process reads the batch as its consumer and is killed before it can acknowledge.
    script = (
        "import os, signal, redis, sys\n"
        "r = redis.Redis.from_url(sys.argv[1])\n"
        "r.xreadgroup('drainers', 'doomed-worker', {sys.argv[2]: '>'}, count=100)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, redis_url, drainer.stream], cwd=ROOT, timeout=30)
    assert result.returncode == -signal.SIGKILL
    assert drainer.drain_once() == 0  # nothing new: the entries are pending for the dead consumer
    time.sleep(0.3)  # let them pass the idle threshold
    assert drainer.reclaim() == 3
    assert {str(r[0]) for r in _clicks(owner_conn, link["slug"])} == ids


def test_partitions_exist_for_this_month_and_the_next_two(owner_conn):
    names = {
        r[0]
        for r in owner_conn.execute(
            "select c.relname from pg_inherits i join pg_class c on c.oid = i.inhrelid"
            " where i.inhparent = 'clicks'::regclass"
        ).fetchall()
    }
    months = owner_conn.execute(
        "select to_char(date_trunc('month', now() at time zone 'UTC') + make_interval(months => m), 'YYYY\"m\"MM')"
        " from generate_series(0, 2) m"
    ).fetchall()
    assert {f"clicks_y{m[0]}" for m in months} <= names


def test_the_drainer_thread_moves_clicks_without_being_asked(make_app, settings, make_link, owner_conn):
    link = make_link()
    app = make_app(settings)
    background_for(app).drainer.start()  # what the background process does
    click_id = app.test_client().get(f"/{link['slug']}").headers["X-Click-Id"]
    deadline = time.monotonic() + 15
    while not _clicks(owner_conn, link["slug"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [str(r[0]) for r in _clicks(owner_conn, link["slug"])] == [click_id]


def _three_clicks_stored(app, client, make_link) -> tuple[dict, str]:
    link = make_link()
    path = f"/{link['slug']}"
    for _ in range(3):
        client.get(path)
    drain(app)
    return link, path


def test_max_clicks_set_later_counts_the_clicks_before_it(app, client, auth, make_link):
    link, path = _three_clicks_stored(app, client, make_link)
    client.patch(f"/api/v1/links/{link['slug']}", headers=auth, json={"max_clicks": 4})
    assert [client.get(path).status_code for _ in range(2)] == [302, 410]


def test_max_clicks_set_after_redis_lost_its_counters_reads_the_count_from_postgresql(app, client, auth, make_link):
    link, path = _three_clicks_stored(app, client, make_link)
    cache = app.extensions["chatlink.redis"]
    cache.client.delete(*cache.client.keys(f"{cache.prefix}*"))
    client.patch(f"/api/v1/links/{link['slug']}", headers=auth, json={"max_clicks": 4})  # a cache hit follows
    assert [client.get(path).status_code for _ in range(2)] == [302, 410]


def test_a_spool_file_whose_drain_failed_is_not_overwritten_by_the_next(
    app, make_link, owner_conn, dead_port, tmp_path
):
    link = make_link()
    link_id, account_id = owner_conn.execute(
        "select id, account_id from links where slug = %s", [link["slug"]]
    ).fetchone()
    spool = pipeline.Spool(tmp_path / "spool")
    dead = Database(f"postgresql://postgres@127.0.0.1:{dead_port}/x", size=1, timeout_ms=200)
    dead.open()
    first = {"id": "01930000-0000-7000-8000-00000000000a", "ts": time.time(), "bot": False, "vid": "a" * 32}
    second = {**first, "id": "01930000-0000-7000-8000-00000000000b"}
    try:
        spool.append(first, link_id, account_id)
        with pytest.raises(Exception):  # noqa: B017 (PostgreSQL is away: the pool times out)
            spool.drain(dead)
    finally:
        dead.close()
    spool.append(second, link_id, account_id)
    assert spool.drain(app.extensions["chatlink.db"]) == 2
    assert sorted(str(r[0]) for r in _clicks(owner_conn, link["slug"])) == [first["id"], second["id"]]


def test_an_entry_postgresql_cannot_take_is_set_aside_and_the_rest_are_stored(app, client, make_link, owner_conn):
    link = make_link()
    drainer = background_for(app).drainer
    drainer.ensure_group()
    drainer.redis.xadd(drainer.stream, {"l": "1", "a": "1", "d": "{not json"})
    ids = {client.get(f"/{link['slug']}").headers["X-Click-Id"] for _ in range(2)}
    assert drain(app) == 3
    assert {str(r[0]) for r in _clicks(owner_conn, link["slug"])} == ids
    [(_, dead)] = drainer.redis.xrange(drainer.dead_letters)
    assert dead["d"] == "{not json" and dead["error"].startswith("undecodable")
    assert drainer.pending() == 0


def test_utm_values_are_read_as_utf_8(app, client, make_link, owner_conn):
    link = make_link()
    response = client.get(f"/{link['slug']}?utm_campaign=ver%C3%A3o&utm%5Fsource=caf%C3%A9")
    assert response.status_code == 302
    drain(app)
    row = owner_conn.execute(
        "select utm_campaign, utm_source from clicks where click_id = %s", [response.headers["X-Click-Id"]]
    ).fetchone()
    assert tuple(row.values() if isinstance(row, dict) else row) == ("verão", "café")


def test_a_non_ascii_referer_is_stored_as_sent(client, make_link, owner_conn, app):
    link = make_link()
    referer = "https://exemplo.com.br/promoção?q=olá"
    # WSGI servers hand header bytes over decoded as latin-1; the browser sent UTF-8.
    wsgi_value = referer.encode().decode("latin-1")
    assert client.get(f"/{link['slug']}", environ_base={"HTTP_REFERER": wsgi_value}).status_code == 302
    drain(app)
    [(stored,)] = owner_conn.execute(
        "select c.referrer from clicks c join links l on l.id = c.link_id where l.slug = %s", [link["slug"]]
    ).fetchall()
    assert stored == referer
