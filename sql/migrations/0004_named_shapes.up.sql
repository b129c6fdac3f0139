-- The redirect's narrow path returns the whole link row (as jsonb, so a new column needs no new function), and
-- the public form's narrow path stores the lead.created event the service built (one home for event payloads).

drop function resolve_link(text);
create function resolve_link(p_slug text)
    returns table (link jsonb, clicks bigint)
    language sql stable security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        select to_jsonb(l),
               (select coalesce(sum(r.clicks), 0)::bigint from click_rollups r where r.link_id = l.id)
          from links l
         where l.slug = p_slug
    $$;

drop function capture_lead(bigint, text, uuid, text, text, text, text, boolean);
create function capture_lead(p_lead_id uuid, p_link_id bigint, p_nonce text, p_click_id uuid, p_name text,
                             p_phone text, p_email text, p_note text, p_consent boolean, p_event_id uuid,
                             p_payload jsonb)
    returns uuid
    language plpgsql security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
declare
    v_account bigint;
    v_lead uuid;
begin
    select l.account_id into v_account
      from links l where l.id = p_link_id and l.lead_form is not null and l.deleted_at is null;
    if v_account is null then
        return null;
    end if;
    insert into leads (id, account_id, link_id, click_id, form_nonce, name, phone, email, note, consent)
    values (p_lead_id, v_account, p_link_id, p_click_id, p_nonce, p_name, p_phone, p_email, p_note, p_consent)
    on conflict (form_nonce) do nothing
    returning id into v_lead;
    if v_lead is null then
        return null;
    end if;
    insert into outbox (event_id, account_id, event_type, webhook_id, lead_id, payload)
    select p_event_id, v_account, 'lead.created', w.id, v_lead, p_payload
      from webhooks w where w.account_id = v_account and 'lead.created' = any (w.events);
    insert into outbox (event_id, account_id, event_type, webhook_id, lead_id, payload)
    select p_event_id, v_account, 'whatsapp.notify', null, v_lead, p_payload
      from whatsapp_settings s where s.account_id = v_account;
    return v_lead;
end
$$;

revoke all on function resolve_link(text),
    capture_lead(uuid, bigint, text, uuid, text, text, text, text, boolean, uuid, jsonb) from public;
grant execute on function resolve_link(text),
    capture_lead(uuid, bigint, text, uuid, text, text, text, text, boolean, uuid, jsonb) to chatlink_app;
