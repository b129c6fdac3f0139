-- name: link_series
-- Zero-filled clicks, bot clicks and unique visitors per day or hour (in the given zone) from the hourly roll-ups.
with buckets as (
    select generate_series(
               date_trunc(%(interval)s, %(start)s::timestamptz at time zone %(tz)s),
               date_trunc(%(interval)s, (%(end)s::timestamptz - interval '1 microsecond') at time zone %(tz)s),
               ('1 ' || %(interval)s)::interval) as bucket
), rolled as (
    select date_trunc(%(interval)s, hour at time zone %(tz)s) as bucket,
           sum(clicks) as clicks, sum(bot_clicks) as bot_clicks, sum(unique_visitors) as unique_visitors
      from click_rollups
     where link_id = %(link_id)s and hour >= %(start)s and hour < %(end)s
     group by 1
)
select b.bucket at time zone %(tz)s as bucket, coalesce(r.clicks, 0)::bigint as clicks,
       coalesce(r.bot_clicks, 0)::bigint as bot_clicks, coalesce(r.unique_visitors, 0)::bigint as unique_visitors
  from buckets b left join rolled r on r.bucket = b.bucket
 order by b.bucket;

-- name: link_breakdowns
-- Clicks by each dimension value: whole UTC months and days from the roll-ups, the partial days at the ends from clicks.
with rolled as (
    select dimension, value, clicks, bot_clicks
      from click_breakdowns_monthly
     where link_id = %(link_id)s and month >= %(first_month)s and month < %(end_month)s
    union all
    select dimension, value, clicks, bot_clicks
      from click_breakdowns
     where link_id = %(link_id)s and day >= %(first_day)s and day < %(first_month)s
    union all
    select dimension, value, clicks, bot_clicks
      from click_breakdowns
     where link_id = %(link_id)s and day >= %(end_month)s and day < %(end_day)s
), edge_clicks as (  -- two plain range scans of (link_id, clicked_at), not one scan of the link with an OR
    select * from clicks where link_id = %(link_id)s and clicked_at >= %(head_start)s and clicked_at < %(head_end)s
    union all
    select * from clicks where link_id = %(link_id)s and clicked_at >= %(tail_start)s and clicked_at < %(tail_end)s
), edges as (
    select d.dimension, d.value, count(*) as clicks
      from edge_clicks c
     cross join lateral (values ('country', c.country), ('referrer_host', c.referrer_host),
                                ('device_type', c.device_type), ('browser', c.browser), ('os', c.os),
                                ('utm_source', c.utm_source), ('utm_medium', c.utm_medium),
                                ('utm_campaign', c.utm_campaign)) as d (dimension, value)
     where %(include_bots)s or not c.is_bot
     group by 1, 2
)
select dimension, value, sum(clicks)::bigint as clicks
  from (select dimension, value, clicks + case when %(include_bots)s then bot_clicks else 0 end as clicks from rolled
        union all
        select * from edges) as both_parts
 group by 1, 2
having sum(clicks) > 0;

-- name: account_totals
-- The account's clicks, bot clicks and unique visitors in the range: its daily roll-up for whole UTC days, the hourly
-- ones for the partial days at the ends.
select coalesce(sum(clicks), 0)::bigint as clicks, coalesce(sum(bot_clicks), 0)::bigint as bot_clicks,
       coalesce(sum(unique_visitors), 0)::bigint as unique_visitors
  from (select clicks, bot_clicks, unique_visitors
          from account_daily
         where day >= %(first_day)s and day < %(end_day)s
        union all
        select clicks, bot_clicks, unique_visitors from click_rollups where hour >= %(head_start)s and hour < %(head_end)s
        union all
        select clicks, bot_clicks, unique_visitors from click_rollups where hour >= %(tail_start)s and hour < %(tail_end)s)
       as parts;

-- name: account_top_links
-- The account's links with the most clicks in the range, from the monthly, daily and (at the ends) hourly roll-ups.
-- Each part's counts are read as integer (one link's month is far below 2^31 clicks) so that their sums are plain
-- bigint arithmetic, not numeric: this sum runs over every link of the account for each month and day in the range.
with counted as (
    select link_id, sum(clicks) as clicks, sum(bot_clicks) as bot_clicks, sum(unique_visitors) as unique_visitors
      from (select link_id, clicks::int, bot_clicks::int, unique_visitors::int
              from click_monthly
             where month >= %(first_month)s and month < %(end_month)s
            union all
            select link_id, clicks::int, bot_clicks::int, unique_visitors::int
              from click_daily
             where day >= %(first_day)s and day < %(first_month)s
            union all
            select link_id, clicks::int, bot_clicks::int, unique_visitors::int
              from click_daily
             where day >= %(end_month)s and day < %(end_day)s
            union all
            select link_id, clicks::int, bot_clicks::int, unique_visitors::int
              from click_rollups
             where hour >= %(head_start)s and hour < %(head_end)s
            union all
            select link_id, clicks::int, bot_clicks::int, unique_visitors::int
              from click_rollups
             where hour >= %(tail_start)s and hour < %(tail_end)s) as parts
     group by link_id
)
select l.slug, l.title, c.clicks, c.bot_clicks, c.unique_visitors
  from counted c join links l on l.id = c.link_id
 order by c.clicks desc, l.slug
 limit %(limit)s;

-- name: list_clicks
-- A link's raw clicks in the range, newest first, after the cursor.
select *
  from clicks
 where link_id = %(link_id)s and clicked_at >= %(start)s and clicked_at < %(end)s
   -- After the cursor ('infinity' for the first page): plain comparisons, so that a prepared (generic) plan still
   -- starts its index scan at the cursor. With "cursor is null or …" each page of an export rescanned the link's
   -- clicks from the newest one (6,000 rows/s at a million clicks).
   and clicked_at <= %(after_at)s::timestamptz
   and (clicked_at, click_id) < (%(after_at)s::timestamptz, %(after_id)s::uuid)
 order by clicked_at desc, click_id desc
 limit %(limit)s;

-- name: export_clicks_csv
-- A link's raw clicks in the range, newest first, as formula-safe CSV with a header line: the API's fields, written
-- as the JSON writes them (ISO 8601 times in UTC, true/false).
copy (
    select click_id,
           replace(to_char(clicked_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '')
               || '+00:00' as clicked_at,
           csv_cell(referrer) as referrer, csv_cell(referrer_host) as referrer_host, csv_cell(browser) as browser,
           csv_cell(os) as os, csv_cell(device_type) as device_type,
           case when is_bot then 'true' else 'false' end as is_bot, csv_cell(country) as country,
           csv_cell(utm_source) as utm_source, csv_cell(utm_medium) as utm_medium,
           csv_cell(utm_campaign) as utm_campaign, csv_cell(utm_content) as utm_content, csv_cell(utm_term) as utm_term
      from clicks
     where link_id = %(link_id)s and clicked_at >= %(start)s and clicked_at < %(end)s
     order by clicked_at desc, click_id desc
) to stdout (format csv, header);
