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
-- Click counts by each dimension in one scan of the link's clicks in the range (grouping sets).
select case when grouping(country) = 0 then 'country'
            when grouping(referrer_host) = 0 then 'referrer_host'
            when grouping(device_type) = 0 then 'device_type'
            when grouping(browser) = 0 then 'browser'
            when grouping(os) = 0 then 'os'
            when grouping(utm_source) = 0 then 'utm_source'
            when grouping(utm_medium) = 0 then 'utm_medium'
            else 'utm_campaign' end as dimension,
       coalesce(country, referrer_host, device_type, browser, os, utm_source, utm_medium, utm_campaign) as value,
       count(*) as clicks
  from clicks
 where link_id = %(link_id)s and clicked_at >= %(start)s and clicked_at < %(end)s
   and (%(include_bots)s or not is_bot)
 group by grouping sets ((country), (referrer_host), (device_type), (browser), (os), (utm_source), (utm_medium),
                         (utm_campaign));

-- name: account_totals
-- The account's clicks, bot clicks and unique visitors in the range, from the roll-ups.
select coalesce(sum(clicks), 0)::bigint as clicks, coalesce(sum(bot_clicks), 0)::bigint as bot_clicks,
       coalesce(sum(unique_visitors), 0)::bigint as unique_visitors
  from click_rollups
 where hour >= %(start)s and hour < %(end)s;

-- name: account_top_links
-- The account's links with the most clicks in the range, from the roll-ups.
select l.slug, l.title, sum(r.clicks)::bigint as clicks, sum(r.bot_clicks)::bigint as bot_clicks,
       sum(r.unique_visitors)::bigint as unique_visitors
  from click_rollups r join links l on l.id = r.link_id
 where r.hour >= %(start)s and r.hour < %(end)s
 group by l.id, l.slug, l.title
 order by clicks desc, l.slug
 limit %(limit)s;

-- name: list_clicks
-- A link's raw clicks in the range, newest first, after the cursor.
select *
  from clicks
 where link_id = %(link_id)s and clicked_at >= %(start)s and clicked_at < %(end)s
   and (%(after_at)s::timestamptz is null or (clicked_at, click_id) < (%(after_at)s, %(after_id)s::uuid))
 order by clicked_at desc, click_id desc
 limit %(limit)s;
