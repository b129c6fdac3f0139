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

-- name: insert_account_key
-- Store a new key's public id and hash for the acting account (the API-keys API, under row-level security).
insert into api_keys (account_id, public_id, secret_hash)
values (current_account_id(), %(public_id)s, %(secret_hash)s)
returning public_id, created_at;

-- name: list_account_keys
-- The acting account's keys, newest first, without their hashes.
select public_id, created_at, revoked_at from api_keys order by created_at desc, id desc;

-- name: revoke_account_key
-- Revoke one live key of the acting account.
update api_keys set revoked_at = now() where public_id = %(public_id)s and revoked_at is null returning public_id;

-- name: find_login
-- A person's id and password hash by normalised email, through the SECURITY DEFINER narrow path.
select user_id, password_hash from find_login(%(email)s);

-- name: find_session
-- A session and its member's current role by the token's hash, through the SECURITY DEFINER narrow path.
select id, user_id, account_id, role, created_at, last_seen_at, expires_at, revoked from find_session(%(token_hash)s);

-- name: find_invite
-- An invite or set-password token by its hash, through the SECURITY DEFINER narrow path.
select id, account_id, email, role, purpose, expires_at, used from find_invite(%(token_hash)s);

-- name: insert_user
-- Create a person with a password through the SECURITY DEFINER narrow path; null when the email is taken.
select create_user(%(email)s, %(password_hash)s) as id;

-- name: set_password_hash
-- Store the acting person's new password hash (a change, or a re-hash with new parameters).
update users set password_hash = %(password_hash)s,
       password_changed_at = case when %(changed)s then now() else password_changed_at end
 where id = current_user_id()
returning id;

-- name: get_user
-- The acting person.
select id, email, created_at from users where id = current_user_id();

-- name: user_memberships
-- The acting person's accounts and roles, oldest membership first.
select account_id, role from memberships where user_id = current_user_id() order by created_at, account_id;

-- name: upsert_membership
-- Give a person a role in the acting account (an invite keeps an existing role).
insert into memberships (account_id, user_id, role) values (current_account_id(), %(user_id)s, %(role)s)
on conflict (account_id, user_id) do nothing;

-- name: list_members
-- The acting account's people, oldest first.
select u.id, u.email, m.role, m.created_at
  from memberships m join users u on u.id = m.user_id
 order by m.created_at, u.id;

-- name: delete_member
-- Remove a person from the acting account.
delete from memberships where user_id = %(user_id)s returning user_id;

-- name: insert_invite
-- Store a one-time token's hash for the acting account.
insert into invites (id, account_id, email, role, purpose, token_hash, expires_at)
values (%(id)s, current_account_id(), %(email)s, %(role)s, %(purpose)s, %(token_hash)s, %(expires_at)s)
returning id, email, role, expires_at;

-- name: use_invite
-- Mark an unused, unexpired token of the acting account used; nothing when it was used meanwhile.
update invites set used_at = %(now)s
 where id = %(id)s and used_at is null and expires_at > %(now)s
returning id;

-- name: insert_session
-- Start a session of the acting person in the acting account.
insert into sessions (id, user_id, account_id, token_hash, user_agent, created_at, last_seen_at, expires_at)
values (%(id)s, current_user_id(), current_account_id(), %(token_hash)s, %(user_agent)s, %(now)s, %(now)s,
        %(expires_at)s);

-- name: touch_session
-- Record that a session was used (written at most once a minute per session).
update sessions set last_seen_at = %(now)s where id = %(id)s and user_id = current_user_id();

-- name: list_sessions
-- The acting person's live sessions, newest first.
select id, account_id, user_agent, created_at, last_seen_at, expires_at
  from sessions
 where user_id = current_user_id() and revoked_at is null and expires_at > %(now)s
 order by created_at desc;

-- name: revoke_session
-- End one of the acting person's sessions; returns its token hash so its cache entry can be dropped.
update sessions set revoked_at = %(now)s
 where id = %(id)s and user_id = current_user_id() and revoked_at is null
returning token_hash;

-- name: revoke_other_sessions
-- End every live session of the acting person but one (a password change).
update sessions set revoked_at = %(now)s
 where user_id = current_user_id() and revoked_at is null and id is distinct from %(keep)s
returning token_hash;

-- name: revoke_member_sessions
-- End a removed member's sessions in the acting account.
update sessions set revoked_at = %(now)s
 where account_id = current_account_id() and user_id = %(user_id)s and revoked_at is null
returning token_hash;

-- name: admin_user
-- Create a person or find them by email (owner connection, admin command).
with created as (
    insert into users (email) values (%(email)s) on conflict (email) do nothing returning id
)
select id from created union all select id from users where email = %(email)s limit 1;

-- name: admin_membership
-- Give a person a role in an account, or change it (owner connection, admin command).
insert into memberships (account_id, user_id, role) values (%(account_id)s, %(user_id)s, %(role)s)
on conflict (account_id, user_id) do update set role = excluded.role;

-- name: admin_set_password
-- Store a person's password hash (owner connection, admin command).
update users set password_hash = %(password_hash)s, password_changed_at = now() where id = %(user_id)s;

-- name: admin_invite
-- Store a one-time set-password token's hash (owner connection, admin command).
insert into invites (id, account_id, email, role, purpose, token_hash, expires_at)
values (%(id)s, %(account_id)s, %(email)s, %(role)s, 'set-password', %(token_hash)s, %(expires_at)s);

-- name: sign_up
-- Create an account and its owner through the SECURITY DEFINER narrow path; unique_violation when either is taken.
select account_id, user_id from sign_up(%(account)s, %(email)s, %(password_hash)s);
