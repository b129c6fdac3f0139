-- Drops lead capture and delivery, and restores 0002's resolve_link.
drop function if exists finish_delivery(bigint, boolean, integer, text, integer, timestamptz);
drop function if exists claim_deliveries(integer, integer);
drop function if exists capture_lead(bigint, text, uuid, text, text, text, text, boolean);
drop table if exists delivery_attempts;
drop table if exists outbox;
drop table if exists whatsapp_settings;
drop table if exists webhooks;
drop table if exists leads;
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
revoke all on function resolve_link(text) from public;
grant execute on function resolve_link(text) to chatlink_app;
alter table links drop column lead_form;
