"""The daily roll-ups (click_daily, click_breakdowns): counted once under re-delivery, and equal to a count over
raw clicks for any range in any zone (whole UTC days from the roll-ups, the partial days at the ends from below)."""

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from service.analytics.store import DIMENSIONS
from service.clicks.pipeline import ingest, to_row
from tests.clicks.test_pipeline import DESKTOP, IPHONE, WHATSAPP_PREVIEW

ZONES = ("UTC", "Asia/Kolkata", "America/Sao_Paulo", "Australia/Adelaide", "Pacific/Chatham")


@pytest.fixture
def history(app, make_link, owner_conn):
    """400 clicks over the last 9 days on three links of one account, with a spread of every dimension."""
    rng = random.Random(20261202)
    links = [make_link() for _ in range(3)]
    ids = {
        link["slug"]: owner_conn.execute("select id, account_id from links where slug = %s", [link["slug"]]).fetchone()
        for link in links
    }
    now = datetime.now(UTC)
    rows = []
    for _ in range(400):
        slug = rng.choice(list(ids))
        agent = rng.choice([IPHONE, DESKTOP, WHATSAPP_PREVIEW])
        click = {
            "id": str(uuid.uuid4()),
            "ts": (now - timedelta(minutes=rng.randrange(1, 9 * 24 * 60))).timestamp(),
            "ref": rng.choice([None, "https://l.instagram.com/x", "https://m.facebook.com/"]),
            "ua": agent,
            "bot": agent == WHATSAPP_PREVIEW,
            "cc": rng.choice([None, "BR", "US", "IN"]),
            "vid": f"{rng.randrange(60):032d}",
            "utm_source": rng.choice([None, "ig", "fb"]),
            "utm_campaign": rng.choice([None, "bf", "xmas"]),
        }
        rows.append(to_row(click, *ids[slug]))
    db = app.extensions["chatlink.db"]
    with db.connection() as conn:
        assert ingest(conn, rows) == 400
    return {"slugs": list(ids), "ids": ids, "rows": rows, "db": db}


def _raw_breakdowns(owner_conn, link_id, start, end, include_bots) -> dict[str, dict]:
    counts: dict[str, dict] = {name: {} for name in DIMENSIONS}
    for name in DIMENSIONS:
        for value, clicks in owner_conn.execute(
            f"select {name}, count(*) from clicks where link_id = %s and clicked_at >= %s and clicked_at < %s"  # noqa: S608 (a fixed column name)
            f" and (%s or not is_bot) group by 1",
            [link_id, start, end, include_bots],
        ):
            counts[name][value] = clicks
    return counts


def test_redelivered_clicks_are_added_to_the_daily_roll_ups_once(history, owner_conn):
    with history["db"].connection() as conn:
        assert ingest(conn, history["rows"][:150]) == 0  # the drainer's retry after a crash before XACK
    totals = owner_conn.execute(
        "select (select sum(clicks + bot_clicks) from click_daily), (select count(*) from clicks),"
        " (select sum(clicks + bot_clicks) from click_breakdowns where dimension = 'country')"
    ).fetchone()
    assert totals == (400, 400, 400)


@pytest.mark.parametrize("seed", range(12))
def test_link_breakdowns_equal_a_count_over_raw_clicks_for_any_range_and_zone(seed, history, client, auth, owner_conn):
    rng = random.Random(seed)
    slug = rng.choice(history["slugs"])
    zone = rng.choice(ZONES)
    start = datetime.now(UTC) - timedelta(days=rng.uniform(0.2, 9.5))
    end = start + timedelta(days=rng.uniform(0.05, 9))
    include_bots = rng.random() < 0.5
    query = {"from": start.isoformat(), "to": end.isoformat(), "tz": zone, "top": 100}
    if rng.random() < 0.5:  # whole days in the zone (date form) as well as arbitrary instants
        query.update({"from": start.date().isoformat(), "to": (end.date() + timedelta(days=1)).isoformat()})
    response = client.get(
        f"/api/v1/links/{slug}/stats", headers=auth, query_string={**query, "include_bots": str(include_bots).lower()}
    )
    assert response.status_code == 200, response.get_json()
    stats = response.get_json()
    raw = _raw_breakdowns(
        owner_conn,
        history["ids"][slug][0],
        datetime.fromisoformat(stats["from"]),
        datetime.fromisoformat(stats["to"]),
        include_bots,
    )
    for name in DIMENSIONS:
        assert {item["value"]: item["clicks"] for item in stats["breakdowns"][name]} == raw[name], (name, query)


@pytest.mark.parametrize("seed", range(8))
def test_account_stats_equal_a_count_over_raw_clicks_for_any_range_and_zone(seed, history, client, auth, owner_conn):
    rng = random.Random(100 + seed)
    start = datetime.now(UTC) - timedelta(days=rng.uniform(0.2, 9.5))
    end = start + timedelta(days=rng.uniform(0.05, 9))
    query = {"from": start.isoformat(), "to": end.isoformat(), "tz": rng.choice(ZONES), "top": 10}
    stats = client.get("/api/v1/stats", headers=auth, query_string=query).get_json()
    range_ = [datetime.fromisoformat(stats["from"]), datetime.fromisoformat(stats["to"])]
    per_link = dict(
        owner_conn.execute(
            "select l.slug, count(*) filter (where not c.is_bot) from clicks c join links l on l.id = c.link_id"
            " where c.clicked_at >= %s and c.clicked_at < %s and l.slug = any(%s) group by 1",
            [*range_, history["slugs"]],
        ).fetchall()
    )
    bots = owner_conn.execute(
        "select count(*) filter (where is_bot) from clicks c join links l on l.id = c.link_id"
        " where c.clicked_at >= %s and c.clicked_at < %s and l.slug = any(%s)",
        [*range_, history["slugs"]],
    ).fetchone()[0]
    assert (stats["clicks"], stats["bot_clicks"]) == (sum(per_link.values()), bots), query
    assert {link["slug"]: link["clicks"] for link in stats["top_links"]} == per_link
