-- Restores 0003's claim_deliveries (due rows in order of due time, whoever they belong to).

drop function claim_deliveries(integer, integer, integer, bigint[]);
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

revoke all on function claim_deliveries(integer, integer) from public;
grant execute on function claim_deliveries(integer, integer) to chatlink_app;
