-- Restores 0009's ingest_clicks (hourly and daily roll-ups) and drops the monthly and per-account roll-ups and csv_cell.

-- 0009's ingest_clicks.
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

alter table click_breakdowns reset (fillfactor);
alter table click_rollups reset (fillfactor);
drop function csv_cell(text);
drop function rebuild_long_rollups();
drop table account_daily, click_breakdowns_monthly, click_monthly;
drop index click_daily_account_day;
create index click_daily_account_day on click_daily (account_id, day);
