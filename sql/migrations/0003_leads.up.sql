-- Lead capture: a form per link, leads, webhooks, WhatsApp Business settings, and the outbox that delivers events.

alter table links add column lead_form jsonb;

create table leads (
    id         uuid primary key default gen_random_uuid(),
    account_id bigint not null references accounts (id) on delete cascade,
    link_id    bigint not null references links (id) on delete cascade,
    click_id   uuid,
    form_nonce text not null unique,  -- the form token's nonce: a token stores at most one lead
    name       text,
    phone      text,
    email      text,
    note       text,
    consent    boolean not null default false,
    created_at timestamptz not null default now()
);
create index leads_account_newest on leads (account_id, created_at desc, id desc);
create index leads_link_newest on leads (link_id, created_at desc, id desc);

create table webhooks (
    id         uuid primary key default gen_random_uuid(),
    account_id bigint not null references accounts (id) on delete cascade,
    url        text not null check (url ~ '^https?://'),
    events     text[] not null,
    -- Kept as is: the service signs with it. Returned once, at creation.
    secret     text not null,
    created_at timestamptz not null default now()
);
create index webhooks_account on webhooks (account_id);

create table whatsapp_settings (
    account_id      bigint primary key references accounts (id) on delete cascade,
    phone_number_id text not null,
    access_token    text not null,  -- never returned by the API nor logged
    template        text not null,
    language        text not null,
    notify_number   text not null,
    updated_at      timestamptz not null default now()
);

-- One row per event and destination, written in the transaction that caused the event.
create table outbox (
    id              bigint generated always as identity primary key,
    event_id        uuid not null,
    account_id      bigint not null references accounts (id) on delete cascade,
    event_type      text not null,
    webhook_id      uuid references webhooks (id) on delete cascade,  -- null: the WhatsApp notification
    lead_id         uuid references leads (id) on delete cascade,     -- erasing a lead erases its events
    payload         jsonb not null,
    status          text not null default 'pending' check (status in ('pending', 'delivered', 'failed')),
    attempts        integer not null default 0,
    next_attempt_at timestamptz not null default now(),
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    created_at      timestamptz not null default now(),
    unique (event_id, webhook_id)
);
create index outbox_due on outbox (next_attempt_at) where status = 'pending';
create index outbox_webhook on outbox (webhook_id, created_at desc);

create table delivery_attempts (
    outbox_id    bigint not null references outbox (id) on delete cascade,
    account_id   bigint not null,
    attempted_at timestamptz not null default now(),
    status_code  integer,
    error        text,
    duration_ms  integer not null
);
create index delivery_attempts_outbox on delivery_attempts (outbox_id, attempted_at);

do $$
declare t text;
begin
    foreach t in array array['leads', 'webhooks', 'whatsapp_settings', 'outbox', 'delivery_attempts'] loop
        execute format('alter table %I enable row level security', t);
        execute format('alter table %I force row level security', t);
        execute format('create policy %I on %I using (account_id = current_account_id())'
                       ' with check (account_id = current_account_id())', t || '_tenant', t);
        execute format('create policy %I on %I to %I using (true)', t || '_owner', t, current_user);
    end loop;
end
$$;

-- The redirect's narrow path also returns the lead form, and always the human click count (it seeds the
-- Redis counter that enforces max_clicks, which may be set later).
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

-- The delivery worker's narrow path: lease up to p_limit due deliveries (other workers skip them).
create function claim_deliveries(p_limit integer, p_lease_seconds integer)
    returns table (id bigint, event_id uuid, event_type text, payload jsonb, attempts integer, url text,
                   secret text, phone_number_id text, access_token text, template text, language text,
                   notify_number text)
    language sql security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        with due as (
            select o.id from outbox o
             where o.status = 'pending' and o.next_attempt_at <= now()
             order by o.next_attempt_at
             limit p_limit
               for update skip locked
        ), leased as (
            update outbox o set next_attempt_at = now() + make_interval(secs => p_lease_seconds)
              from due where o.id = due.id
            returning o.*
        )
        select l.id, l.event_id, l.event_type, l.payload, l.attempts, w.url, w.secret, s.phone_number_id,
               s.access_token, s.template, s.language, s.notify_number
          from leased l
          left join webhooks w on w.id = l.webhook_id
          left join whatsapp_settings s on l.webhook_id is null and s.account_id = l.account_id
    $$;

-- Record one delivery attempt: delivered, retry at p_retry_at, or failed for good (p_retry_at null).
create function finish_delivery(p_id bigint, p_delivered boolean, p_status integer, p_error text,
                                p_duration_ms integer, p_retry_at timestamptz)
    returns void
    language sql security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        insert into delivery_attempts (outbox_id, account_id, status_code, error, duration_ms)
        select o.id, o.account_id, p_status, p_error, p_duration_ms from outbox o where o.id = p_id;
        update outbox
           set attempts = attempts + 1, last_status = p_status, last_error = p_error,
               status = case when p_delivered then 'delivered' when p_retry_at is null then 'failed' else 'pending' end,
               delivered_at = case when p_delivered then now() end,
               next_attempt_at = coalesce(p_retry_at, next_attempt_at)
         where id = p_id;
    $$;

revoke all on function resolve_link(text), capture_lead(bigint, text, uuid, text, text, text,
    text, boolean), claim_deliveries(integer, integer), finish_delivery(bigint, boolean, integer, text, integer,
    timestamptz) from public;
grant execute on function resolve_link(text), capture_lead(bigint, text, uuid, text, text,
    text, text, boolean), claim_deliveries(integer, integer), finish_delivery(bigint, boolean, integer, text,
    integer, timestamptz) to chatlink_app;
grant select, delete on leads to chatlink_app;
grant select, insert, delete on webhooks to chatlink_app;
grant select, insert, update, delete on whatsapp_settings to chatlink_app;
grant select, insert on outbox to chatlink_app;
grant select on delivery_attempts to chatlink_app;
