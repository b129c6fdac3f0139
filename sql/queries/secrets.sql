-- name: service_secret
-- A named random secret shared by every worker, created on first use (SECURITY DEFINER narrow path).
select service_secret(%(name)s) as secret;

-- name: stored_webhook_secrets
-- Every webhook's stored secret, all accounts (owner connection: make rotate-secrets).
select id, secret from webhooks order by id;

-- name: reseal_webhook_secret
-- Replace one webhook's stored secret with its re-encrypted form (owner connection).
update webhooks set secret = %(secret)s where id = %(id)s;

-- name: stored_whatsapp_tokens
-- Every account's stored WhatsApp access token (owner connection: make rotate-secrets).
select account_id, access_token from whatsapp_settings order by account_id;

-- name: reseal_whatsapp_token
-- Replace one account's stored access token with its re-encrypted form (owner connection).
update whatsapp_settings set access_token = %(access_token)s where account_id = %(account_id)s;
