-- Restores 0003's resolve_link (explicit columns) and capture_lead (the lead.created payload built in PL/pgSQL).

drop function capture_lead(uuid, bigint, text, uuid, text, text, text, text, boolean, uuid, jsonb);
drop function resolve_link(text);
create function resolve_link(p_slug text)
    returns table (id bigint, account_id bigint, phone text, message text, disabled boolean,
                   deleted boolean, expires_at timestamptz, max_clicks bigint, clicks bigint, lead_form jsonb)
    language sql stable security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        select l.id, l.account_id, l.phone, l.message, l.disabled, l.deleted_at is not null,
               l.expires_at, l.max_clicks,
               (select coalesce(sum(r.clicks), 0)::bigint from click_rollups r where r.link_id = l.id),
               l.lead_form
          from links l
         where l.slug = p_slug
    $$;

-- The public form's narrow path: store a lead for a live link with a form, and queue its events in the same
-- transaction. Returns the lead id, or null when this form token was used before.
create function capture_lead(p_link_id bigint, p_nonce text, p_click_id uuid, p_name text, p_phone text,
                             p_email text, p_note text, p_consent boolean)
    returns uuid
    language plpgsql security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
declare
    v_account bigint;
    v_slug text;
    v_lead uuid;
    v_event uuid := gen_random_uuid();
    v_payload jsonb;
begin
    select l.account_id, l.slug into v_account, v_slug
      from links l where l.id = p_link_id and l.lead_form is not null and l.deleted_at is null;
    if v_account is null then
        return null;
    end if;
    insert into leads (account_id, link_id, click_id, form_nonce, name, phone, email, note, consent)
    values (v_account, p_link_id, p_click_id, p_nonce, p_name, p_phone, p_email, p_note, p_consent)
    on conflict (form_nonce) do nothing
    returning id into v_lead;
    if v_lead is null then
        return null;
    end if;
    v_payload := jsonb_build_object(
        'id', v_event, 'type', 'lead.created', 'created_at', now(),
        'data', jsonb_build_object('lead_id', v_lead, 'link', v_slug, 'click_id', p_click_id, 'name', p_name,
                                   'phone', p_phone, 'email', p_email, 'note', p_note, 'consent', p_consent));
    insert into outbox (event_id, account_id, event_type, webhook_id, lead_id, payload)
    select v_event, v_account, 'lead.created', w.id, v_lead, v_payload
      from webhooks w where w.account_id = v_account and 'lead.created' = any (w.events);
    insert into outbox (event_id, account_id, event_type, webhook_id, lead_id, payload)
    select v_event, v_account, 'whatsapp.notify', null, v_lead, v_payload
      from whatsapp_settings s where s.account_id = v_account;
    return v_lead;
end
$$;

revoke all on function resolve_link(text), capture_lead(bigint, text, uuid, text, text, text, text, boolean) from public;
grant execute on function resolve_link(text), capture_lead(bigint, text, uuid, text, text, text, text, boolean)
    to chatlink_app;
