-- People: users (argon2id hashes), memberships (user × account with a role), one-time invite / set-password
-- tokens and login sessions (only SHA-256 hashes of tokens stored), fenced by row-level security.

create table users (
    id                  bigint generated always as identity primary key,
    email               text not null unique check (length(email) between 3 and 254),
    password_hash       text,
    created_at          timestamptz not null default now(),
    password_changed_at timestamptz
);

create table memberships (
    account_id bigint not null references accounts (id) on delete cascade,
    user_id    bigint not null references users (id) on delete cascade,
    role       text not null check (role in ('owner', 'member')),
    created_at timestamptz not null default now(),
    primary key (account_id, user_id)
);
create index memberships_user on memberships (user_id, created_at);

create table invites (
    id         uuid primary key,
    account_id bigint not null references accounts (id) on delete cascade,
    email      text not null,
    role       text not null check (role in ('owner', 'member')),
    purpose    text not null check (purpose in ('invite', 'set-password')),
    token_hash bytea not null unique,
    created_at timestamptz not null default now(),
    expires_at timestamptz not null,
    used_at    timestamptz
);

create table sessions (
    id           uuid primary key,
    user_id      bigint not null references users (id) on delete cascade,
    account_id   bigint not null references accounts (id) on delete cascade,
    token_hash   bytea not null unique,
    user_agent   text not null default '',
    created_at   timestamptz not null,
    last_seen_at timestamptz not null,
    expires_at   timestamptz not null,
    revoked_at   timestamptz
);
create index sessions_user_newest on sessions (user_id, created_at desc);

-- The person a transaction acts for, set with set_config('chatlink.user_id', id, true); null when unset.
create function current_user_id() returns bigint
    language sql stable
    as $$ select nullif(current_setting('chatlink.user_id', true), '')::bigint $$;

alter table users enable row level security;
alter table users force row level security;
-- A person sees themself and the people of the account acting; people are created through create_user().
create policy users_read on users for select
    using (id = current_user_id()
           or exists (select from memberships m where m.user_id = users.id and m.account_id = current_account_id()));
create policy users_update on users for update using (id = current_user_id()) with check (id = current_user_id());

alter table memberships enable row level security;
alter table memberships force row level security;
create policy memberships_read on memberships for select
    using (account_id = current_account_id() or user_id = current_user_id());
create policy memberships_tenant on memberships
    using (account_id = current_account_id()) with check (account_id = current_account_id());

alter table invites enable row level security;
alter table invites force row level security;
create policy invites_tenant on invites
    using (account_id = current_account_id()) with check (account_id = current_account_id());

alter table sessions enable row level security;
alter table sessions force row level security;
-- A person's own sessions (every account), and the account's sessions so an owner removing a member ends
-- theirs; a session is started only by its person, in the account acting.
create policy sessions_read on sessions for select
    using (user_id = current_user_id() or account_id = current_account_id());
create policy sessions_start on sessions for insert
    with check (user_id = current_user_id() and account_id = current_account_id());
create policy sessions_end on sessions for update
    using (user_id = current_user_id() or account_id = current_account_id())
    with check (user_id = current_user_id() or account_id = current_account_id());

do $$
declare t text;
begin
    foreach t in array array['users', 'memberships', 'invites', 'sessions'] loop
        execute format('create policy %I on %I to %I using (true)', t || '_owner', t, current_user);
    end loop;
end
$$;

-- Log-in's narrow path: a person's id and hash by normalised email, before anyone is known.
create function find_login(p_email text)
    returns table (user_id bigint, password_hash text)
    language sql stable security definer
    set search_path = pg_catalog, public, pg_temp
    as $$ select u.id, u.password_hash from users u where u.email = p_email $$;

-- The session check's narrow path: a session by its token's hash, with the member's current role.
create function find_session(p_token_hash bytea)
    returns table (id uuid, user_id bigint, account_id bigint, role text, created_at timestamptz,
                   last_seen_at timestamptz, expires_at timestamptz, revoked boolean)
    language sql stable security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        select s.id, s.user_id, s.account_id, m.role, s.created_at, s.last_seen_at, s.expires_at,
               s.revoked_at is not null
          from sessions s
          left join memberships m on m.account_id = s.account_id and m.user_id = s.user_id
         where s.token_hash = p_token_hash
    $$;

-- An invite's narrow path: the invite by its token's hash, before anyone is known.
create function find_invite(p_token_hash bytea)
    returns table (id uuid, account_id bigint, email text, role text, purpose text, expires_at timestamptz,
                   used boolean)
    language sql stable security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        select i.id, i.account_id, i.email, i.role, i.purpose, i.expires_at, i.used_at is not null
          from invites i
         where i.token_hash = p_token_hash
    $$;

-- An invite's new person (no one acts yet, and the row is nobody's to see until the membership exists);
-- null when the email is taken.
create function create_user(p_email text, p_password_hash text) returns bigint
    language sql security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        insert into users (email, password_hash, password_changed_at) values (p_email, p_password_hash, now())
        on conflict (email) do nothing
        returning id
    $$;

-- Self sign-up's narrow path: a new account and its owner together, or nothing when either name is taken.
create function sign_up(p_account text, p_email text, p_password_hash text)
    returns table (account_id bigint, user_id bigint)
    language plpgsql security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
declare
    v_account bigint;
    v_user bigint;
begin
    insert into accounts (name) values (p_account) on conflict (name) do nothing returning id into v_account;
    insert into users (email, password_hash, password_changed_at) values (p_email, p_password_hash, now())
        on conflict (email) do nothing returning id into v_user;
    if v_account is null or v_user is null then
        raise exception 'account or email taken' using errcode = 'unique_violation';  -- undoes both
    end if;
    insert into memberships (account_id, user_id, role) values (v_account, v_user, 'owner');
    return query select v_account, v_user;
end
$$;

revoke all on function find_login(text), find_session(bytea), find_invite(bytea), sign_up(text, text, text),
    create_user(text, text) from public;
grant select, update on users to chatlink_app;
grant select, insert, update, delete on memberships, invites to chatlink_app;
grant select, insert, update on sessions to chatlink_app;
grant insert, update on api_keys to chatlink_app;
grant execute on function find_login(text), find_session(bytea), find_invite(bytea), sign_up(text, text, text),
    create_user(text, text), current_user_id() to chatlink_app;
