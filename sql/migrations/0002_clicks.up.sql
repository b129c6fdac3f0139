-- Clicks (partitioned by month), hourly roll-ups per link, daily visitor keys, and the narrow paths the drainer uses.

create table clicks (
    click_id      uuid not null,
    clicked_at    timestamptz not null,
    link_id       bigint not null,
    account_id    bigint not null,
    referrer      text,
    referrer_host text,
    browser       text,
    os            text,
    device_type   text not null check (device_type in ('phone', 'tablet', 'desktop', 'bot', 'other')),
    is_bot        boolean not null,
    country       text check (country ~ '^[A-Z]{2}$'),
    utm_source    text,
    utm_medium    text,
    utm_campaign  text,
    utm_content   text,
    utm_term      text,
    visitor_id    text not null,
    -- The partition key must be in the key; a click_id always comes with the same clicked_at, so a
    -- re-delivered click still conflicts.
    primary key (click_id, clicked_at)
) partition by range (clicked_at);
create index clicks_link_newest on clicks (link_id, clicked_at desc, click_id desc);
-- Never lose a click whose month has no partition yet; maintain_clicks() creates months ahead.
create table clicks_default partition of clicks default;

-- Counts per link and UTC hour: totals, time series and account stats read these, never raw clicks.
create table click_rollups (
    link_id         bigint not null,
    account_id      bigint not null,
    hour            timestamptz not null,
    clicks          bigint not null default 0,
    bot_clicks      bigint not null default 0,
    unique_visitors bigint not null default 0,
    primary key (link_id, hour)
);
create index click_rollups_account_hour on click_rollups (account_id, hour);

-- Which visitors a link has already counted today; visitor ids change with the daily key, so old days are pruned.
create table click_visitors (
    link_id    bigint not null,
    day        date not null,
    visitor_id text not null,
    primary key (link_id, day, visitor_id)
);

-- Named random secrets shared by every worker: the visitor-id key of each UTC day ('visitor:YYYY-MM-DD',
-- deleted after two days so old visitor ids cannot be recomputed) and the form-token key.
create table service_secrets (
    name  text primary key,
    value bytea not null
);

alter table clicks enable row level security;
alter table clicks force row level security;
create policy clicks_tenant on clicks using (account_id = current_account_id());
alter table click_rollups enable row level security;
alter table click_rollups force row level security;
create policy click_rollups_tenant on click_rollups using (account_id = current_account_id());
alter table click_visitors enable row level security;
alter table click_visitors force row level security;
alter table service_secrets enable row level security;
alter table service_secrets force row level security;
do $$
declare t text;
begin
    foreach t in array array['clicks', 'click_rollups', 'click_visitors', 'service_secrets'] loop
        execute format('create policy %I on %I to %I using (true)', t || '_owner', t, current_user);
    end loop;
end
$$;

-- The redirect's narrow path now also tells how many human clicks a link has had (for max_clicks).
drop function resolve_link(text);
create function resolve_link(p_slug text)
    returns table (id bigint, account_id bigint, phone text, message text, disabled boolean,
                   deleted boolean, expires_at timestamptz, max_clicks bigint, clicks bigint)
    language sql stable security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        select l.id, l.account_id, l.phone, l.message, l.disabled, l.deleted_at is not null,
               l.expires_at, l.max_clicks,
               case when l.max_clicks is not null
                    then (select coalesce(sum(r.clicks), 0)::bigint from click_rollups r where r.link_id = l.id)
               end
          from links l
         where l.slug = p_slug
    $$;

-- Move the session's staged clicks (pg_temp.click_staging) into clicks, once each, and update the roll-ups
-- in the same transaction. Returns how many clicks were new.
create function ingest_clicks() returns bigint
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

-- Create this month's and the next months' partitions, and forget visitor data older than two days.
create function maintain_clicks(p_months_ahead integer) returns void
    language plpgsql security definer
    set search_path = pg_catalog, public, pg_temp
    set timezone = 'UTC'
    as $$
declare
    month date;
    partition text;
begin
    perform pg_advisory_xact_lock(7368912105);
    for i in 0 .. p_months_ahead loop
        month := (date_trunc('month', now()) + make_interval(months => i))::date;
        partition := format('clicks_y%sm%s', to_char(month, 'YYYY'), to_char(month, 'MM'));
        if to_regclass('public.' || partition) is null then
            begin
                execute format('create table public.%I partition of public.clicks for values from (%L) to (%L)',
                               partition, month::timestamptz, (month + interval '1 month')::timestamptz);
            exception when check_violation then
                -- clicks_default already holds rows of that month: they stay there, still counted and queried.
                raise warning 'partition % not created: clicks_default holds rows of that month', partition;
            end;
        end if;
    end loop;
    delete from click_visitors where day < current_date - 2;
    delete from service_secrets where name like 'visitor:%' and name < 'visitor:' || (current_date - 1)::text;
end
$$;

-- A named random secret (256 bits of gen_random_uuid), created on first use and shared by every worker.
create function service_secret(p_name text) returns bytea
    language plpgsql security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
declare
    found bytea;
begin
    insert into service_secrets (name, value)
    values (p_name, decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'))
    on conflict (name) do nothing;
    select value into found from service_secrets where name = p_name;
    return found;
end
$$;

revoke all on function resolve_link(text), ingest_clicks(), maintain_clicks(integer), service_secret(text) from public;
grant execute on function resolve_link(text), ingest_clicks(), maintain_clicks(integer), service_secret(text)
    to chatlink_app;
grant select on clicks, click_rollups to chatlink_app;
select maintain_clicks(2);
