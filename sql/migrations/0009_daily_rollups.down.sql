-- Restores 0002's ingest_clicks (hourly roll-ups only) and drops the daily roll-ups.

-- Move the session's staged clicks (pg_temp.click_staging) into clicks, once each, and update the roll-ups
-- in the same transaction. Returns how many clicks were new.
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
        returning link_id, account_id, clicked_at, is_bot, visitor_id
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
    ), rolled as (
        insert into click_rollups (link_id, account_id, hour, clicks, bot_clicks, unique_visitors)
        select c.link_id, c.account_id, c.hour, c.clicks, c.bot_clicks, coalesce(u.n, 0)
          from counts c left join uniques u on u.link_id = c.link_id and u.hour = c.hour
         order by c.link_id, c.hour
        on conflict (link_id, hour) do update
           set clicks = click_rollups.clicks + excluded.clicks,
               bot_clicks = click_rollups.bot_clicks + excluded.bot_clicks,
               unique_visitors = click_rollups.unique_visitors + excluded.unique_visitors
        returning 1
    )
    select count(*) into added from inserted;
    return added;
end
$$;

drop function if exists rebuild_daily_rollups();
drop table if exists click_breakdowns;
drop table if exists click_daily;
