-- name: resolve_link
-- One link by slug for the public redirect, across accounts, with its human click count (narrow path).
select link, clicks from resolve_link(%(slug)s);

-- name: insert_link
-- Create a link for the transaction's account; returns nothing when the slug is taken.
insert into links (account_id, slug, phone, message, title, tags, expires_at, max_clicks, lead_form)
values (current_account_id(), %(slug)s, %(phone)s, %(message)s, %(title)s, %(tags)s, %(expires_at)s, %(max_clicks)s,
        %(lead_form)s)
on conflict (slug) do nothing
returning *;

-- name: get_link
-- One live link of the transaction's account.
select * from links where slug = %(slug)s and deleted_at is null;

-- name: update_link
-- Change the editable fields an edit gives (set_<field> true) of a live link, the others kept: one statement.
update links
   set phone = case when %(set_phone)s then %(phone)s else phone end,
       message = case when %(set_message)s then %(message)s else message end,
       title = case when %(set_title)s then %(title)s else title end,
       tags = case when %(set_tags)s then %(tags)s else tags end,
       expires_at = case when %(set_expires_at)s then %(expires_at)s else expires_at end,
       max_clicks = case when %(set_max_clicks)s then %(max_clicks)s else max_clicks end,
       disabled = case when %(set_disabled)s then %(disabled)s else disabled end,
       lead_form = case when %(set_lead_form)s then %(lead_form)s else lead_form end,
       updated_at = now()
 where slug = %(slug)s and deleted_at is null
returning *;

-- name: delete_link
-- Soft-delete a link: its slug stays taken and its redirect answers 410.
update links set deleted_at = now(), updated_at = now()
 where slug = %(slug)s and deleted_at is null
returning *;

-- name: list_links
-- A page of the account's live links, newest first, after the cursor, optionally by tag and text.
select *
  from links
 where deleted_at is null
   and (%(tag)s::text is null or tags @> array[%(tag)s::text])
   and (%(q)s::text is null or slug ilike %(q)s or title ilike %(q)s or message ilike %(q)s)
   and (%(after_created)s::timestamptz is null or (created_at, id) < (%(after_created)s, %(after_id)s::bigint))
 order by created_at desc, id desc
 limit %(limit)s;

-- name: claim_idempotency_key
-- Reserve an Idempotency-Key for this account; returns nothing when it was used before.
insert into idempotency_keys (account_id, key, request_hash)
values (current_account_id(), %(key)s, %(request_hash)s)
on conflict (account_id, key) do nothing
returning key;

-- name: get_idempotency_key
-- The stored request hash and response of a used Idempotency-Key.
select request_hash, status, body from idempotency_keys where key = %(key)s;

-- name: finish_idempotency_key
-- Store the response a claimed Idempotency-Key answered with.
update idempotency_keys set status = %(status)s, body = %(body)s where key = %(key)s;
