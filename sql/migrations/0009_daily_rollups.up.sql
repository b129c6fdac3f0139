-- Daily roll-ups for analytics at scale: clicks per link and UTC day, and clicks per link, UTC day and breakdown
-- dimension value. ingest_clicks() adds to them from the same rows it inserts, so a re-delivered click is never
-- counted twice; the existing clicks are rolled up here once.

create table click_daily (
    link_id         bigint not null,
    account_id      bigint not null,
    day             date not null,
    clicks          bigint not null default 0,
    bot_clicks      bigint not null default 0,
    unique_visitors bigint not null default 0,
    primary key (link_id, day)
);
create index click_daily_account_day on click_daily (account_id, day);

create table click_breakdowns (
    link_id    bigint not null,
    account_id bigint not null,
    day        date not null,
    dimension  text not null,
    value      text,  -- null: unknown (no referrer, no country, …), counted like any value
    clicks     bigint not null default 0,
    bot_clicks bigint not null default 0,
    unique nulls not distinct (link_id, day, dimension, value)
);

alter table click_daily enable row level security;
alter table click_daily force row level security;
create policy click_daily_tenant on click_daily using (account_id = current_account_id());
create policy click_daily_owner on click_daily to current_user using (true);
alter table click_breakdowns enable row level security;
alter table click_breakdowns force row level security;
create policy click_breakdowns_tenant on click_breakdowns using (account_id = current_account_id());
create policy click_breakdowns_owner on click_breakdowns to current_user using (true);
grant select on click_daily, click_breakdowns to chatlink_app;

-- Rebuild the daily roll-ups from the hourly ones and the clicks (here for the clicks stored so far; also for an
-- operator after a repair, and for `make bench-analytics`, which COPYs its clicks straight into the table).
create function rebuild_daily_rollups() returns void
    language sql
    set search_path = pg_catalog, public, pg_temp
    as $$
        delete from click_daily;
        delete from click_breakdowns;
        insert into click_daily (link_id, account_id, day, clicks, bot_clicks, unique_visitors)
        select link_id, account_id, (hour at time zone 'UTC')::date, sum(clicks), sum(bot_clicks),
               sum(unique_visitors)
          from click_rollups
         group by 1, 2, 3;
        insert into click_breakdowns (link_id, account_id, day, dimension, value, clicks, bot_clicks)
        select c.link_id, c.account_id, (c.clicked_at at time zone 'UTC')::date, d.dimension, d.value,
               count(*) filter (where not c.is_bot), count(*) filter (where c.is_bot)
          from clicks c
         cross join lateral (values ('country', c.country), ('referrer_host', c.referrer_host),
                                    ('device_type', c.device_type), ('browser', c.browser), ('os', c.os),
                                    ('utm_source', c.utm_source), ('utm_medium', c.utm_medium),
                                    ('utm_campaign', c.utm_campaign)) as d (dimension, value)
         group by 1, 2, 3, 4, 5;
    $$;
revoke all on function rebuild_daily_rollups() from public;
select rebuild_daily_rollups();

-- 0002's ingest_clicks, now also adding to the daily roll-ups.
create or replace function ingest_clicks() returns bigint
    language plpgsql security definer
    set search_path = pg_catalog, public, pg_temp
    set timezone = 'UTC'
    as $$
declare
    added bigint;
begin
    with inserted as (
        insert into clicks (click_id, clicked_at, link_id, account_id, referrer, referrer_host, browser, os,
                            device_type, is_bot, country, utm_source, utm_medium, utm_campaign, utm_content,
                            utm_term, visitor_id)
        select distinct on (click_id) click_id, clicked_at, link_id, account_id, referrer, referrer_host, browser,
               os, device_type, is_bot, country, utm_source, utm_medium, utm_campaign, utm_content, utm_term,
               visitor_id
          from pg_temp.click_staging
         order by click_id
        on conflict do nothing
        returning link_id, account_id, clicked_at, is_bot, visitor_id, country, referrer_host, device_type,
                  browser, os, utm_source, utm_medium, utm_campaign
    ), new_visitors as (
        insert into click_visitors (link_id, day, visitor_id)
        select distinct link_id, clicked_at::date, visitor_id from inserted where not is_bot
         order by 1, 2, 3
        on conflict do nothing
        returning link_id, day, visitor_id
    ), first_seen as (
        select v.link_id, date_trunc('hour', min(i.clicked_at)) as hour
          from new_visitors v
          join inserted i on i.link_id = v.link_id and i.visitor_id = v.visitor_id
                         and i.clicked_at::date = v.day and not i.is_bot
         group by v.link_id, v.day, v.visitor_id
    ), uniques as (
        select link_id, hour, count(*) as n from first_seen group by link_id, hour
    ), counts as (
        select link_id, account_id, date_trunc('hour', clicked_at) as hour,
               count(*) filter (where not is_bot) as clicks, count(*) filter (where is_bot) as bot_clicks
          from inserted
         group by 1, 2, 3
    ), hourly as (
        select c.link_id, c.account_id, c.hour, c.clicks, c.bot_clicks, coalesce(u.n, 0) as unique_visitors
          from counts c left join uniques u on u.link_id = c.link_id and u.hour = c.hour
    ), rolled as (
        insert into click_rollups (link_id, account_id, hour, clicks, bot_clicks, unique_visitors)
        select link_id, account_id, hour, clicks, bot_clicks, unique_visitors from hourly
         order by link_id, hour
        on conflict (link_id, hour) do update
           set clicks = click_rollups.clicks + excluded.clicks,
               bot_clicks = click_rollups.bot_clicks + excluded.bot_clicks,
               unique_visitors = click_rollups.unique_visitors + excluded.unique_visitors
        returning 1
    ), daily as (
        insert into click_daily (link_id, account_id, day, clicks, bot_clicks, unique_visitors)
        select link_id, account_id, hour::date, sum(clicks), sum(bot_clicks), sum(unique_visitors) from hourly
         group by 1, 2, 3
         order by 1, 3
        on conflict (link_id, day) do update
           set clicks = click_daily.clicks + excluded.clicks,
               bot_clicks = click_daily.bot_clicks + excluded.bot_clicks,
               unique_visitors = click_daily.unique_visitors + excluded.unique_visitors
        returning 1
    ), broken_down as (
        insert into click_breakdowns (link_id, account_id, day, dimension, value, clicks, bot_clicks)
        select i.link_id, i.account_id, i.clicked_at::date, d.dimension, d.value,
               count(*) filter (where not i.is_bot), count(*) filter (where i.is_bot)
          from inserted i
         cross join lateral (values ('country', i.country), ('referrer_host', i.referrer_host),
                                    ('device_type', i.device_type), ('browser', i.browser), ('os', i.os),
                                    ('utm_source', i.utm_source), ('utm_medium', i.utm_medium),
                                    ('utm_campaign', i.utm_campaign)) as d (dimension, value)
         group by 1, 2, 3, 4, 5
         order by 1, 3, 4, 5
        on conflict (link_id, day, dimension, value) do update
           set clicks = click_breakdowns.clicks + excluded.clicks,
               bot_clicks = click_breakdowns.bot_clicks + excluded.bot_clicks
        returning 1
    )
    select count(*) into added from inserted;
    return added;
end
$$;
