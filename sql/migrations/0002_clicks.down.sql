-- Drops the click tables and functions and restores 0001's resolve_link.
drop function if exists service_secret(text);
drop function if exists maintain_clicks(integer);
drop function if exists ingest_clicks();
drop table if exists service_secrets;
drop table if exists click_visitors;
drop table if exists click_rollups;
drop table if exists clicks;
drop function resolve_link(text);
create function resolve_link(p_slug text)
    returns table (id bigint, account_id bigint, phone text, message text, disabled boolean,
                   deleted boolean, expires_at timestamptz, max_clicks bigint)
    language sql stable security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        select l.id, l.account_id, l.phone, l.message, l.disabled, l.deleted_at is not null,
               l.expires_at, l.max_clicks
          from links l
         where l.slug = p_slug
    $$;
revoke all on function resolve_link(text) from public;
grant execute on function resolve_link(text) to chatlink_app;
