-- name: insert_webhook
-- Register an endpoint for the transaction's account.
insert into webhooks (account_id, url, events, secret) values (current_account_id(), %(url)s, %(events)s, %(secret)s)
returning id, url, events, created_at;

-- name: list_webhooks
-- The account's endpoints, newest first.
select id, url, events, created_at from webhooks order by created_at desc;

-- name: count_webhooks
-- How many endpoints the account has.
select count(*) as n from webhooks;

-- name: get_webhook
-- One endpoint of the account.
select id from webhooks where id = %(id)s;

-- name: delete_webhook
-- Remove an endpoint; its outbox rows go with it.
delete from webhooks where id = %(id)s returning id;

-- name: list_deliveries
-- An endpoint's deliveries, newest first, each with its attempts.
select o.event_id, o.event_type, o.status, o.attempts, o.last_status, o.last_error, o.next_attempt_at,
       o.delivered_at, o.created_at,
       coalesce((select json_agg(json_build_object('at', a.attempted_at, 'status_code', a.status_code,
                                                   'error', a.error, 'duration_ms', a.duration_ms)
                                 order by a.attempted_at)
                   from delivery_attempts a where a.outbox_id = o.id), '[]') as log
  from outbox o
 where o.webhook_id = %(webhook_id)s
 order by o.created_at desc, o.id desc
 limit 100;

-- name: queue_link_created
-- Queue a link.created event for every endpoint of the account subscribed to it.
insert into outbox (event_id, account_id, event_type, webhook_id, payload)
select %(event_id)s, current_account_id(), 'link.created', w.id, %(payload)s::jsonb
  from webhooks w
 where 'link.created' = any (w.events);

-- name: upsert_whatsapp
-- Store the account's WhatsApp Business settings; returns them without the access token.
insert into whatsapp_settings (account_id, phone_number_id, access_token, template, language, notify_number)
values (current_account_id(), %(phone_number_id)s, %(access_token)s, %(template)s, %(language)s, %(notify_number)s)
on conflict (account_id) do update
   set phone_number_id = excluded.phone_number_id, access_token = excluded.access_token,
       template = excluded.template, language = excluded.language, notify_number = excluded.notify_number,
       updated_at = now()
returning phone_number_id, template, language, notify_number, updated_at;

-- name: get_whatsapp
-- The account's WhatsApp Business settings without the access token.
select phone_number_id, template, language, notify_number, updated_at from whatsapp_settings;

-- name: delete_whatsapp
-- Forget the account's WhatsApp Business settings.
delete from whatsapp_settings;

-- name: claim_deliveries
-- Lease due outbox rows round-robin across accounts, skipping busy ones (SECURITY DEFINER narrow path).
select * from claim_deliveries(%(limit)s, %(lease)s, %(per_account)s, %(busy)s::bigint[]);

-- name: finish_delivery
-- Record an attempt: delivered, retry later, or failed for good (SECURITY DEFINER narrow path).
select finish_delivery(%(id)s, %(delivered)s, %(status)s, %(error)s, %(duration_ms)s, %(retry_at)s);

-- name: outbox_stats
-- Pending deliveries across accounts and the age of the oldest due one, for /metrics (narrow path).
select backlog, oldest_due_seconds from outbox_stats();
