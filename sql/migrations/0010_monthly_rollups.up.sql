-- Roll-ups for long ranges and whole accounts: clicks per link and UTC month, per link, month and breakdown value,
-- and per account and UTC day. ingest_clicks() adds to them from the same rows it inserts (so a re-delivered click
-- is never counted twice); the existing clicks are rolled up here once. Also the CSV exports' cell guard, in SQL.

create table click_monthly (
    link_id         bigint not null,
    account_id      bigint not null,
    month           date not null,  -- the first day of the UTC month
    clicks          bigint not null default 0,
    bot_clicks      bigint not null default 0,
    unique_visitors bigint not null default 0,
    primary key (link_id, month)
);
-- Account stats read every link of an account for a range of months (or days) from the index alone.
create index click_monthly_account_month on click_monthly (account_id, month)
    include (link_id, clicks, bot_clicks, unique_visitors);
drop index click_daily_account_day;
create index click_daily_account_day on click_daily (account_id, day)
    include (link_id, clicks, bot_clicks, unique_visitors);

create table click_breakdowns_monthly (
    link_id    bigint not null,
    account_id bigint not null,
    month      date not null,
    dimension  text not null,
    value      text,
    clicks     bigint not null default 0,
    bot_clicks bigint not null default 0,
    unique nulls not distinct (link_id, month, dimension, value)
);

create table account_daily (
    account_id      bigint not null,
    day             date not null,
    clicks          bigint not null default 0,
    bot_clicks      bigint not null default 0,
    unique_visitors bigint not null default 0,
    primary key (account_id, day)
);

do $$
declare t text;
begin
    foreach t in array array['click_monthly', 'click_breakdowns_monthly', 'account_daily'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format('create policy %I on %I using (account_id = current_account_id())', t || '_tenant', t);
        execute format('create policy %I on %I to %I using (true)', t || '_owner', t, current_user);
        execute format('grant select on %I to chatlink_app', t);
    end loop;
end
$$;

-- The counters every drained batch adds to: room left on each page lets an update stay on its page (HOT), with no new
-- entry in the (link_id, day, dimension, value) index: 86 % of the breakdown updates instead of 5 %, a third of their
-- cost. click_daily and click_monthly cannot have HOT updates (their account index covers the counts).
alter table click_breakdowns set (fillfactor = 70);
alter table click_breakdowns_monthly set (fillfactor = 70);
alter table click_rollups set (fillfactor = 70);
alter table account_daily set (fillfactor = 70);

-- The longer roll-ups from the daily ones (here for the clicks stored so far; also for an operator after a repair,
-- and for `make bench-analytics`, which COPYs its clicks straight into the table).
create function rebuild_long_rollups() returns void
    language sql
    set search_path = pg_catalog, public, pg_temp
    set timezone = 'UTC'
    as $$
        -- Ingest waits meanwhile: what it adds after this rebuild read click_daily is added on top, never lost.
        lock table click_monthly, click_breakdowns_monthly, account_daily in exclusive mode;
        delete from click_monthly;
        delete from click_breakdowns_monthly;
        delete from account_daily;
        insert into click_monthly (link_id, account_id, month, clicks, bot_clicks, unique_visitors)
        select link_id, account_id, date_trunc('month', day)::date, sum(clicks), sum(bot_clicks), sum(unique_visitors)
          from click_daily
         group by 1, 2, 3;
        insert into click_breakdowns_monthly (link_id, account_id, month, dimension, value, clicks, bot_clicks)
        select link_id, account_id, date_trunc('month', day)::date, dimension, value, sum(clicks), sum(bot_clicks)
          from click_breakdowns
         group by 1, 2, 3, 4, 5;
        insert into account_daily (account_id, day, clicks, bot_clicks, unique_visitors)
        select account_id, day, sum(clicks), sum(bot_clicks), sum(unique_visitors)
          from click_daily
         group by 1, 2;
    $$;
revoke all on function rebuild_long_rollups() from public;
select rebuild_long_rollups();

-- 0009's ingest_clicks, now also adding to the monthly and per-account roll-ups (each derived from the batch's
-- daily counts, so the batch's clicks are grouped once).
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
    ), by_day as (
        select link_id, account_id, hour::date as day, sum(clicks) as clicks, sum(bot_clicks) as bot_clicks,
               sum(unique_visitors) as unique_visitors
          from hourly
         group by 1, 2, 3
    ), daily as (
        insert into click_daily (link_id, account_id, day, clicks, bot_clicks, unique_visitors)
        select link_id, account_id, day, clicks, bot_clicks, unique_visitors from by_day
         order by 1, 3
        on conflict (link_id, day) do update
           set clicks = click_daily.clicks + excluded.clicks,
               bot_clicks = click_daily.bot_clicks + excluded.bot_clicks,
               unique_visitors = click_daily.unique_visitors + excluded.unique_visitors
        returning 1
    ), monthly as (
        insert into click_monthly (link_id, account_id, month, clicks, bot_clicks, unique_visitors)
        select link_id, account_id, date_trunc('month', day)::date, sum(clicks), sum(bot_clicks),
               sum(unique_visitors)
          from by_day
         group by 1, 2, 3
         order by 1, 3
        on conflict (link_id, month) do update
           set clicks = click_monthly.clicks + excluded.clicks,
               bot_clicks = click_monthly.bot_clicks + excluded.bot_clicks,
               unique_visitors = click_monthly.unique_visitors + excluded.unique_visitors
        returning 1
    ), per_account as (
        insert into account_daily (account_id, day, clicks, bot_clicks, unique_visitors)
        select account_id, day, sum(clicks), sum(bot_clicks), sum(unique_visitors)
          from by_day
         group by 1, 2
         order by 1, 2
        on conflict (account_id, day) do update
           set clicks = account_daily.clicks + excluded.clicks,
               bot_clicks = account_daily.bot_clicks + excluded.bot_clicks,
               unique_visitors = account_daily.unique_visitors + excluded.unique_visitors
        returning 1
    ), combinations as (  -- clicks alike in every dimension counted together first: fewer rows to split 8 ways
        select link_id, account_id, clicked_at::date as day, country, referrer_host, device_type, browser, os,
               utm_source, utm_medium, utm_campaign,
               count(*) filter (where not is_bot) as clicks, count(*) filter (where is_bot) as bot_clicks
          from inserted
         group by 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11
    ), values_by_day as (
        select c.link_id, c.account_id, c.day, d.dimension, d.value, sum(c.clicks) as clicks,
               sum(c.bot_clicks) as bot_clicks
          from combinations c
         cross join lateral (values ('country', c.country), ('referrer_host', c.referrer_host),
                                    ('device_type', c.device_type), ('browser', c.browser), ('os', c.os),
                                    ('utm_source', c.utm_source), ('utm_medium', c.utm_medium),
                                    ('utm_campaign', c.utm_campaign)) as d (dimension, value)
         group by 1, 2, 3, 4, 5
    ), broken_down as (
        insert into click_breakdowns (link_id, account_id, day, dimension, value, clicks, bot_clicks)
        select link_id, account_id, day, dimension, value, clicks, bot_clicks from values_by_day
         order by 1, 3, 4, 5
        on conflict (link_id, day, dimension, value) do update
           set clicks = click_breakdowns.clicks + excluded.clicks,
               bot_clicks = click_breakdowns.bot_clicks + excluded.bot_clicks
        returning 1
    ), broken_down_monthly as (
        insert into click_breakdowns_monthly (link_id, account_id, month, dimension, value, clicks, bot_clicks)
        select link_id, account_id, date_trunc('month', day)::date, dimension, value, sum(clicks), sum(bot_clicks)
          from values_by_day
         group by 1, 2, 3, 4, 5
         order by 1, 3, 4, 5
        on conflict (link_id, month, dimension, value) do update
           set clicks = click_breakdowns_monthly.clicks + excluded.clicks,
               bot_clicks = click_breakdowns_monthly.bot_clicks + excluded.bot_clicks
        returning 1
    )
    select count(*) into added from inserted;
    return added;
end
$$;

-- A CSV cell spreadsheet programs will not evaluate (as formula_safe in service/platform/http.py, for the exports
-- COPY writes): when its first character that is not a space, an invisible character or a quote starts a formula
-- (or it starts with tab/CR), it gets a quote first. The empty string becomes null, which COPY writes as an empty
-- unquoted cell, as Python's csv module writes ''. The characters are listed rather than \s, so that the answer
-- does not depend on the database's locale: Python's str.isspace() ones, then the invisible ones and the quotes.
create function csv_cell(cell text) returns text
    language sql immutable parallel safe
    return case
        when cell = '' then null
        when cell ~ '^[\t\r]'
          or cell ~ '^[\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\u200b\u200c\u200d\u2060\ufeff''"]*[=+@\uff1d\uff0b\uff0d\uff20-]'
            then '''' || cell
        else cell
    end;
