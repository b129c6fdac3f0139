-- Fair webhook delivery (issue 11): the deliverer leases due rows round-robin across accounts, at most
-- p_per_account per account, none of the accounts already using their share (p_busy); the lease names the
-- account and the endpoint so that the deliverer can keep per-account shares and per-endpoint breakers.
-- Webhook secrets and WhatsApp tokens are now stored encrypted by the service (SECRETS_KEY); the columns keep
-- their text type, and `make rotate-secrets` encrypts rows written before.

drop function claim_deliveries(integer, integer);
create function claim_deliveries(p_limit integer, p_lease_seconds integer, p_per_account integer, p_busy bigint[])
    returns table (id bigint, account_id bigint, webhook_id uuid, event_id uuid, event_type text, payload jsonb,
                   attempts integer, url text, secret text, phone_number_id text, access_token text, template text,
                   language text, notify_number text)
    language sql security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        with ranked as (
            select o.id, o.next_attempt_at,
                   row_number() over (partition by o.account_id order by o.next_attempt_at, o.id) as turn
              from outbox o
             where o.status = 'pending' and o.next_attempt_at <= now() and o.account_id <> all (p_busy)
        ), due as (
            select o.id from outbox o join ranked r on r.id = o.id
             where r.turn <= p_per_account and o.status = 'pending' and o.next_attempt_at <= now()
             order by r.turn, r.next_attempt_at
             limit p_limit
               for update of o skip locked
        ), leased as (
            update outbox o set next_attempt_at = now() + make_interval(secs => p_lease_seconds)
              from due where o.id = due.id
            returning o.*
        )
        select l.id, l.account_id, l.webhook_id, l.event_id, l.event_type, l.payload, l.attempts, w.url, w.secret,
               s.phone_number_id, s.access_token, s.template, s.language, s.notify_number
          from leased l
          left join webhooks w on w.id = l.webhook_id
          left join whatsapp_settings s on l.webhook_id is null and s.account_id = l.account_id
    $$;

revoke all on function claim_deliveries(integer, integer, integer, bigint[]) from public;
grant execute on function claim_deliveries(integer, integer, integer, bigint[]) to chatlink_app;
