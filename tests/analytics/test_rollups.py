"""The roll-ups (daily: click_daily, click_breakdowns; monthly: click_monthly, click_breakdowns_monthly; per account:
account_daily): counted once under re-delivery, and equal to a count over raw clicks for any range in any zone
(whole UTC months and days from the roll-ups, the partial days at the ends from below)."""

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from service.analytics.store import DIMENSIONS
from service.clicks.pipeline import ingest, to_row
from tests.clicks.test_pipeline import DESKTOP, IPHONE, WHATSAPP_PREVIEW

ZONES = ("UTC", "Asia/Kolkata", "America/Sao_Paulo", "Australia/Adelaide", "Pacific/Chatham")


def _ingest_history(app, make_link, owner_conn, clicks: int, days: int) -> dict:
    """clicks clicks over the last `days` days on three links of one account, with a spread of every dimension."""
    rng = random.Random(20261202 + days)
    links = [make_link() for _ in range(3)]
    ids = {
        link["slug"]: owner_conn.execute("select id, account_id from links where slug = %s", [link["slug"]]).fetchone()
        for link in links
    }
    now = datetime.now(UTC)
    rows = []
    for _ in range(clicks):
        slug = rng.choice(list(ids))
        agent = rng.choice([IPHONE, DESKTOP, WHATSAPP_PREVIEW])
        click = {
            "id": str(uuid.uuid4()),
            "ts": (now - timedelta(minutes=rng.randrange(1, days * 24 * 60))).timestamp(),
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
        assert ingest(conn, rows) == clicks
    return {"slugs": list(ids), "ids": ids, "rows": rows, "db": db, "days": days}


@pytest.fixture
def history(app, make_link, owner_conn):
    """400 clicks over the last 9 days on three links of one account."""
    return _ingest_history(app, make_link, owner_conn, clicks=400, days=9)


@pytest.fixture
def long_history(app, make_link, owner_conn):
    """900 clicks over the last 130 days (several whole UTC months) on three links of one account."""
    return _ingest_history(app, make_link, owner_conn, clicks=900, days=130)


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
    links = [link_id for link_id, _ in history["ids"].values()]
    totals = owner_conn.execute(
        "select (select sum(clicks + bot_clicks) from click_daily where link_id = any(%(links)s)),"
        " (select count(*) from clicks where link_id = any(%(links)s)),"
        " (select sum(clicks + bot_clicks) from click_breakdowns"
        "   where link_id = any(%(links)s) and dimension = 'country')",
        {"links": links},
    ).fetchone()
    assert totals == (400, 400, 400)


def _random_range(rng: random.Random, days: int) -> tuple[datetime, datetime]:
    """A range inside (or overlapping the ends of) the last `days` days, from an hour to all of them."""
    start = datetime.now(UTC) - timedelta(days=rng.uniform(0.2, days + 0.5))
    return start, start + timedelta(days=rng.uniform(0.05, days))


@pytest.mark.parametrize("seed", range(12))
def test_link_breakdowns_equal_a_count_over_raw_clicks_for_any_range_and_zone(seed, history, client, auth, owner_conn):
    _assert_breakdowns_match_raw_clicks(random.Random(seed), history, client, auth, owner_conn)


@pytest.mark.parametrize("seed", range(10))
def test_link_breakdowns_over_whole_months_equal_a_count_over_raw_clicks(seed, long_history, client, auth, owner_conn):
    _assert_breakdowns_match_raw_clicks(random.Random(1000 + seed), long_history, client, auth, owner_conn)


def _assert_breakdowns_match_raw_clicks(rng, history, client, auth, owner_conn) -> None:
    slug = rng.choice(history["slugs"])
    zone = rng.choice(ZONES)
    start, end = _random_range(rng, history["days"])
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
    _assert_account_stats_match_raw_clicks(random.Random(100 + seed), history, client, auth, owner_conn)


@pytest.mark.parametrize("seed", range(8))
def test_account_stats_over_whole_months_equal_a_count_over_raw_clicks(seed, long_history, client, auth, owner_conn):
    _assert_account_stats_match_raw_clicks(random.Random(2000 + seed), long_history, client, auth, owner_conn)


def _assert_account_stats_match_raw_clicks(rng, history, client, auth, owner_conn) -> None:
    start, end = _random_range(rng, history["days"])
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


def test_redelivered_clicks_are_added_to_the_monthly_and_account_roll_ups_once(long_history, owner_conn):
    with long_history["db"].connection() as conn:
        assert ingest(conn, long_history["rows"][::3]) == 0  # the drainer's retry after a crash before XACK
    link_ids = [link_id for link_id, _ in long_history["ids"].values()]
    [account_id] = {account_id for _, account_id in long_history["ids"].values()}
    totals = owner_conn.execute(
        "select (select sum(clicks + bot_clicks) from click_monthly where link_id = any(%(links)s)),"
        " (select sum(clicks + bot_clicks) from click_breakdowns_monthly"
        "   where link_id = any(%(links)s) and dimension = 'utm_source'),"
        " (select sum(clicks + bot_clicks) from account_daily where account_id = %(account)s),"
        " (select count(*) from clicks where link_id = any(%(links)s))",
        {"links": link_ids, "account": account_id},
    ).fetchone()
    assert totals == (900, 900, 900, 900)


def test_monthly_and_account_roll_ups_equal_counts_over_raw_clicks(long_history, owner_conn):
    [account_id] = {account_id for _, account_id in long_history["ids"].values()}
    scope = {"account": account_id}

    def rows(sql: str, **params) -> list[tuple]:
        return owner_conn.execute(sql, {**scope, **params}).fetchall()

    months = rows(
        "select link_id, month, clicks, bot_clicks, unique_visitors from click_monthly where account_id = %(account)s"
        " order by 1, 2"
    )
    assert len(months) >= 3 * 5  # 130 days touch at least 5 UTC months
    assert months == rows(
        "select link_id, date_trunc('month', day)::date, sum(clicks), sum(bot_clicks), sum(unique_visitors)"
        " from click_daily where account_id = %(account)s group by 1, 2 order by 1, 2"
    )
    assert [row[:4] for row in months] == rows(
        "select link_id, date_trunc('month', clicked_at at time zone 'UTC')::date, count(*) filter (where not is_bot),"
        " count(*) filter (where is_bot) from clicks where account_id = %(account)s group by 1, 2 order by 1, 2"
    )
    for name in DIMENSIONS:
        assert rows(
            "select link_id, month, value, clicks, bot_clicks from click_breakdowns_monthly"
            " where account_id = %(account)s and dimension = %(name)s order by 1, 2, 3",
            name=name,
        ) == rows(
            f"select link_id, date_trunc('month', clicked_at at time zone 'UTC')::date, {name},"  # noqa: S608 (a fixed column name)
            " count(*) filter (where not is_bot), count(*) filter (where is_bot) from clicks"
            " where account_id = %(account)s group by 1, 2, 3 order by 1, 2, 3",
        ), name
    assert rows(
        "select day, clicks, bot_clicks, unique_visitors from account_daily where account_id = %(account)s order by 1"
    ) == rows(
        "select day, sum(clicks), sum(bot_clicks), sum(unique_visitors) from click_daily"
        " where account_id = %(account)s group by 1 order by 1"
    )


def test_rebuilding_the_long_roll_ups_gives_what_ingest_maintained(long_history, owner_conn):
    tables = ("click_monthly", "click_breakdowns_monthly", "account_daily")

    def snapshot() -> list:
        return [owner_conn.execute(f"select * from {t} order by 1, 2, 3, 4, 5").fetchall() for t in tables]  # noqa: S608

    maintained = snapshot()
    owner_conn.execute("select rebuild_long_rollups()")
    assert snapshot() == maintained
