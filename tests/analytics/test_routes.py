"""Analytics API: link stats (series with time zones, breakdowns, bots), account stats, raw clicks and CSV."""

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from service.clicks.pipeline import API_FIELDS
from service.platform.http import formula_safe
from tests.clicks.test_pipeline import IPHONE, WHATSAPP_PREVIEW
from tests.conftest import drain


def _backdate(owner_conn, slug, hours_ago):
    """Move a link's clicks and roll-ups back in time by whole days, keeping every roll-up consistent."""
    assert hours_ago % 24 == 0, "the daily roll-ups move by whole days"
    shift = timedelta(hours=hours_ago)
    for table in ("click_daily", "click_breakdowns"):
        owner_conn.execute(
            f"update {table} set day = day - %s where link_id = (select id from links where slug = %s)",  # noqa: S608
            [hours_ago // 24, slug],
        )
    owner_conn.execute(
        "update clicks set clicked_at = clicked_at - %s where link_id = (select id from links where slug = %s)",
        [shift, slug],
    )
    owner_conn.execute(
        "update click_rollups set hour = hour - %s where link_id = (select id from links where slug = %s)",
        [shift, slug],
    )
    owner_conn.execute("select rebuild_long_rollups()")  # the monthly and per-account ones, from the daily ones


@pytest.fixture
def clicked_link(app, client, make_link):
    link = make_link()
    path = f"/{link['slug']}"
    client.get(
        f"{path}?utm_source=ig&utm_campaign=bf",
        headers={"User-Agent": IPHONE, "Referer": "https://l.instagram.com/x"},
        environ_base={"REMOTE_ADDR": "200.147.67.142"},
    )
    client.get(f"{path}?utm_source=ig", headers={"User-Agent": IPHONE}, environ_base={"REMOTE_ADDR": "200.147.67.143"})
    client.get(
        f"{path}?utm_source=fb",
        headers={"User-Agent": IPHONE, "Referer": "https://m.facebook.com/"},
        environ_base={"REMOTE_ADDR": "8.8.8.8"},
    )
    client.get(path, headers={"User-Agent": WHATSAPP_PREVIEW})
    drain(app)
    return link


def test_link_stats_totals_and_breakdowns_exclude_bots(client, auth, clicked_link):
    stats = client.get(f"/api/v1/links/{clicked_link['slug']}/stats", headers=auth).get_json()
    assert (stats["clicks"], stats["unique_visitors"], stats["bot_clicks"]) == (3, 3, 1)
    b = stats["breakdowns"]
    assert b["utm_source"] == [{"value": "ig", "clicks": 2}, {"value": "fb", "clicks": 1}]
    assert b["country"] == [{"value": "BR", "clicks": 2}, {"value": "US", "clicks": 1}]
    assert b["device_type"] == [{"value": "phone", "clicks": 3}]
    assert {"value": "l.instagram.com", "clicks": 1} in b["referrer_host"]
    assert b["utm_campaign"][0] == {"value": None, "clicks": 2}
    assert set(b) == {
        "country",
        "referrer_host",
        "device_type",
        "browser",
        "os",
        "utm_source",
        "utm_medium",
        "utm_campaign",
    }


def test_include_bots_counts_them_everywhere(client, auth, clicked_link):
    stats = client.get(f"/api/v1/links/{clicked_link['slug']}/stats?include_bots=true", headers=auth).get_json()
    assert stats["clicks"] == 4 and stats["bot_clicks"] == 1
    assert {"value": "bot", "clicks": 1} in stats["breakdowns"]["device_type"]


def test_daily_series_is_zero_filled(client, auth, clicked_link, owner_conn):
    _backdate(owner_conn, clicked_link["slug"], hours_ago=48)
    today = datetime.now(UTC).date()
    start = (today - timedelta(days=4)).isoformat()
    end = (today + timedelta(days=1)).isoformat()
    stats = client.get(f"/api/v1/links/{clicked_link['slug']}/stats?from={start}&to={end}", headers=auth).get_json()
    series = stats["series"]
    assert [p["start"][:10] for p in series] == [(today - timedelta(days=d)).isoformat() for d in range(4, -1, -1)]
    assert [p["clicks"] for p in series] == [0, 0, 3, 0, 0]


def test_time_zone_moves_clicks_to_the_local_day(client, auth, make_link, app, owner_conn):
    link = make_link()
    client.get(f"/{link['slug']}", headers={"User-Agent": IPHONE})
    drain(app)
    # Put the click at 01:30 UTC on 2026-03-10: that is still 2026-03-09 in São Paulo (UTC-3).
    owner_conn.execute(
        "update clicks set clicked_at = '2026-03-10 01:30+00' where link_id = (select id from links where slug = %s)",
        [link["slug"]],
    )
    owner_conn.execute(
        "update click_rollups set hour = '2026-03-10 01:00+00' where link_id = (select id from links where slug = %s)",
        [link["slug"]],
    )
    query = "from=2026-03-09&to=2026-03-11"
    utc = client.get(f"/api/v1/links/{link['slug']}/stats?{query}", headers=auth).get_json()["series"]
    sp = client.get(f"/api/v1/links/{link['slug']}/stats?{query}&tz=America/Sao_Paulo", headers=auth).get_json()
    assert [(p["start"], p["clicks"]) for p in utc] == [
        ("2026-03-09T00:00:00+00:00", 0),
        ("2026-03-10T00:00:00+00:00", 1),
    ]
    assert [(p["start"], p["clicks"]) for p in sp["series"]] == [
        ("2026-03-09T00:00:00-03:00", 1),
        ("2026-03-10T00:00:00-03:00", 0),
    ]


def test_hourly_series(client, auth, clicked_link):
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start, end = (now - timedelta(hours=2)).isoformat(), (now + timedelta(hours=1)).isoformat()
    stats = client.get(
        f"/api/v1/links/{clicked_link['slug']}/stats",
        headers=auth,
        query_string={"from": start, "to": end, "interval": "hour"},
    ).get_json()
    assert [p["clicks"] for p in stats["series"]] == [0, 0, 3]


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("interval=week", "interval"),
        ("tz=Mars/Base", "tz"),
        ("from=yesterday", "from"),
        ("from=2026-02-01&to=2026-01-01", "from"),
        ("interval=hour&from=2026-01-01&to=2026-06-01", "from"),
        ("top=0", "top"),
        ("bogus=1", "bogus"),
    ],
)
def test_bad_stats_parameters_answer_422(client, auth, clicked_link, query, field):
    response = client.get(f"/api/v1/links/{clicked_link['slug']}/stats?{query}", headers=auth)
    assert response.status_code == 422 and field in response.get_json()["errors"]


def test_stats_of_another_accounts_link_answer_404(client, new_api_key, clicked_link):
    other = {"Authorization": f"Bearer {new_api_key()}"}
    assert client.get(f"/api/v1/links/{clicked_link['slug']}/stats", headers=other).status_code == 404
    assert client.get(f"/api/v1/links/{clicked_link['slug']}/clicks", headers=other).status_code == 404
    totals = client.get("/api/v1/stats", headers=other).get_json()
    assert (totals["clicks"], totals["top_links"]) == (0, [])


def test_account_stats_total_and_rank_links(app, client, auth, make_link, clicked_link):
    second = make_link()
    client.get(f"/{second['slug']}", headers={"User-Agent": IPHONE})
    drain(app)
    stats = client.get("/api/v1/stats", headers=auth).get_json()
    assert (stats["clicks"], stats["bot_clicks"], stats["unique_visitors"]) == (4, 1, 4)
    assert [(t["slug"], t["clicks"]) for t in stats["top_links"]] == [(clicked_link["slug"], 3), (second["slug"], 1)]


def test_raw_clicks_page_newest_first(client, auth, clicked_link):
    first = client.get(f"/api/v1/links/{clicked_link['slug']}/clicks?limit=3", headers=auth).get_json()
    rest = client.get(
        f"/api/v1/links/{clicked_link['slug']}/clicks?limit=3&cursor={first['next_cursor']}", headers=auth
    ).get_json()
    items = first["items"] + rest["items"]
    assert len(items) == 4 and rest["next_cursor"] is None
    assert [i["clicked_at"] for i in items] == sorted((i["clicked_at"] for i in items), reverse=True)
    assert "visitor_id" not in items[0]


def test_csv_export_streams_every_click_with_formulas_neutralised(app, client, auth, make_link):
    link = make_link()
    for hostile in ('=HYPERLINK("http://evil")', "+1+2", "-3", "@SUM(A1)", "plain"):
        client.get(f"/{link['slug']}", query_string={"utm_campaign": hostile})
    drain(app)
    response = client.get(f"/api/v1/links/{link['slug']}/clicks", headers={**auth, "Accept": "text/csv"})
    assert response.status_code == 200 and response.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    campaigns = sorted(r["utm_campaign"] for r in rows)
    assert campaigns == sorted(['\'=HYPERLINK("http://evil")', "'+1+2", "'-3", "'@SUM(A1)", "plain"])
    assert all(not r[k].startswith(("=", "+", "-", "@")) for r in rows for k in r)


def test_a_range_inside_an_hour_is_widened_so_totals_and_breakdowns_agree(client, auth, clicked_link):
    now = datetime.now(UTC)
    stats = client.get(
        f"/api/v1/links/{clicked_link['slug']}/stats",
        headers=auth,
        query_string={"from": (now - timedelta(minutes=1)).isoformat(), "to": now.isoformat()},
    ).get_json()
    assert stats["clicks"] == 3 and sum(b["clicks"] for b in stats["breakdowns"]["device_type"]) == 3
    assert stats["from"].endswith(":00:00+00:00")


@pytest.mark.parametrize("query", ["to=0001-01-10", "from=0001-01-01&to=0001-01-05&tz=Asia/Tokyo", "from=9999-12-31"])
def test_dates_out_of_range_answer_422(client, auth, clicked_link, query):
    for path in (
        f"/api/v1/links/{clicked_link['slug']}/stats",
        "/api/v1/stats",
        f"/api/v1/links/{clicked_link['slug']}/clicks",
    ):
        assert client.get(f"{path}?{query}", headers=auth).status_code == 422, path


def test_csv_export_has_the_json_pages_fields_and_values(app, client, auth, make_link, owner_conn):
    link = make_link()
    for campaign in ("=1+1", "", "plain, with a comma", 'say "hi"', "line\nbreak"):
        client.get(
            f"/{link['slug']}",
            query_string={"utm_campaign": campaign, "utm_source": "ig"},
            headers={"User-Agent": IPHONE, "Referer": "https://l.instagram.com/x"},
        )
    client.get(f"/{link['slug']}", headers={"User-Agent": WHATSAPP_PREVIEW})
    drain(app)
    # A click stored at a whole second: the JSON (Python's isoformat) then writes no fraction, and neither may the CSV.
    owner_conn.execute(
        "update clicks set clicked_at = date_trunc('second', clicked_at) where click_id ="
        " (select click_id from clicks where link_id = (select id from links where slug = %s) limit 1)",
        [link["slug"]],
    )
    pages = client.get(f"/api/v1/links/{link['slug']}/clicks?limit=100", headers=auth).get_json()["items"]
    response = client.get(f"/api/v1/links/{link['slug']}/clicks", headers={**auth, "Accept": "text/csv"})
    assert response.headers["Content-Disposition"] == f'attachment; filename="{link["slug"]}-clicks.csv"'
    text = response.get_data(as_text=True)
    assert text.splitlines()[0].split(",") == list(API_FIELDS)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(pages) == 6
    for row, item in zip(rows, pages, strict=True):
        expected = {
            name: "true" if value is True else "false" if value is False else formula_safe(value)
            for name, value in item.items()
        }
        assert row == expected


def test_an_export_the_client_abandons_is_cancelled_and_its_connection_reused(app, client, auth, make_link, owner_conn):
    link = make_link()
    owner_conn.execute(
        "insert into clicks (click_id, clicked_at, link_id, account_id, device_type, is_bot, visitor_id, referrer)"
        " select gen_random_uuid(), now() - make_interval(secs => i), l.id, l.account_id, 'phone', false, 'v',"
        " 'https://example.com/' || repeat('x', 100) from links l, generate_series(1, 3000) as i where l.slug = %s",
        [link["slug"]],
    )
    response = client.get(
        f"/api/v1/links/{link['slug']}/clicks", headers={**auth, "Accept": "text/csv"}, buffered=False
    )
    chunks = iter(response.response)
    first = next(chunks)
    assert first.startswith(b"click_id,clicked_at,") and len(first) >= 1 << 16  # streamed in chunks, not rows
    response.close()  # the client went away after the first chunk
    assert not owner_conn.execute(
        "select 1 from pg_stat_activity where query ilike 'copy (%%' and state = 'active'"
    ).fetchall()
    again = client.get(f"/api/v1/links/{link['slug']}/clicks", headers={**auth, "Accept": "text/csv"})
    assert again.get_data().count(b"\n") == 3001
