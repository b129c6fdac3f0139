-- name: find_api_key
-- A key's account, hash and state by its public id, through the SECURITY DEFINER narrow path.
select account_id, secret_hash, revoked from find_api_key(%(public_id)s);

-- name: upsert_account
-- The id of the account with this name, created when new (owner connection, admin command).
insert into accounts (name) values (%(name)s)
on conflict (name) do update set name = excluded.name
returning id;

-- name: insert_api_key
-- Store a new key's public id and hash for an account (owner connection, admin command).
insert into api_keys (account_id, public_id, secret_hash) values (%(account_id)s, %(public_id)s, %(secret_hash)s);

-- name: revoke_api_key
-- Revoke the live key with this public id (owner connection, admin command).
update api_keys set revoked_at = now() where public_id = %(public_id)s and revoked_at is null returning public_id;
