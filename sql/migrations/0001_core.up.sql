-- Accounts, API keys, links and idempotency records, each row owned by one account and fenced by row-level security.

create table accounts (
    id         bigint generated always as identity primary key,
    name       text not null unique check (length(name) between 1 and 100),
    created_at timestamptz not null default now()
);

create table api_keys (
    id          bigint generated always as identity primary key,
    account_id  bigint not null references accounts (id) on delete cascade,
    public_id   text not null unique,
    secret_hash bytea not null,
    created_at  timestamptz not null default now(),
    revoked_at  timestamptz
);

create table links (
    id         bigint generated always as identity primary key,
    account_id bigint not null references accounts (id) on delete cascade,
    slug       text not null unique check (slug ~ '^[a-z0-9_-]{3,64}$'),
    phone      text not null check (phone ~ '^\+[1-9][0-9]{6,14}$'),
    message    text,
    title      text,
    tags       text[] not null default '{}',
    expires_at timestamptz,
    max_clicks bigint check (max_clicks > 0),
    disabled   boolean not null default false,
    created_at timestamptz not null default now(),
    updated_at timestamptz not null default now(),
    deleted_at timestamptz
);
create index links_account_newest on links (account_id, created_at desc, id desc) where deleted_at is null;
create index links_tags on links using gin (tags);

create table idempotency_keys (
    account_id   bigint not null references accounts (id) on delete cascade,
    key          text not null,
    request_hash bytea not null,
    status       integer,
    body         jsonb,
    created_at   timestamptz not null default now(),
    primary key (account_id, key)
);

-- The account a transaction acts for, set with set_config('chatlink.account_id', id, true); null when unset.
create function current_account_id() returns bigint
    language sql stable
    as $$ select nullif(current_setting('chatlink.account_id', true), '')::bigint $$;

alter table accounts enable row level security;
alter table accounts force row level security;
create policy accounts_tenant on accounts using (id = current_account_id());

alter table api_keys enable row level security;
alter table api_keys force row level security;
create policy api_keys_tenant on api_keys using (account_id = current_account_id());

alter table links enable row level security;
alter table links force row level security;
create policy links_tenant on links
    using (account_id = current_account_id())
    with check (account_id = current_account_id());

alter table idempotency_keys enable row level security;
alter table idempotency_keys force row level security;
create policy idempotency_keys_tenant on idempotency_keys
    using (account_id = current_account_id())
    with check (account_id = current_account_id());

-- The owner (who runs migrations and the admin commands) sees every row: FORCE would otherwise fence it
-- too, and the narrow SECURITY DEFINER paths below run as the owner.
do $$
declare t text;
begin
    foreach t in array array['accounts', 'api_keys', 'links', 'idempotency_keys'] loop
        execute format('create policy %I on %I to %I using (true)', t || '_owner', t, current_user);
    end loop;
end
$$;

-- The public redirect's narrow path: one link by slug, only what a redirect needs.
create function resolve_link(p_slug text)
    returns table (id bigint, account_id bigint, phone text, message text, disabled boolean,
                   deleted boolean, expires_at timestamptz, max_clicks bigint)
    language sql stable security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        select l.id, l.account_id, l.phone, l.message, l.disabled, l.deleted_at is not null,
               l.expires_at, l.max_clicks
          from links l
         where l.slug = p_slug
    $$;

-- Authentication's narrow path: a key by its public id, before any account is known.
create function find_api_key(p_public_id text)
    returns table (account_id bigint, secret_hash bytea, revoked boolean)
    language sql stable security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        select k.account_id, k.secret_hash, k.revoked_at is not null
          from api_keys k
         where k.public_id = p_public_id
    $$;

revoke all on function resolve_link(text), find_api_key(text) from public;

-- The role the service runs as: owns nothing, cannot bypass row-level security. Roles are cluster-wide,
-- so it is created once and shared by every database of the cluster.
do $$
begin
    if not exists (select from pg_roles where rolname = 'chatlink_app') then
        create role chatlink_app login nosuperuser nobypassrls nocreatedb nocreaterole;
    end if;
end
$$;
grant usage on schema public to chatlink_app;
grant select on accounts, api_keys to chatlink_app;
grant select, insert, update, delete on links, idempotency_keys to chatlink_app;
grant execute on function resolve_link(text), find_api_key(text), current_account_id() to chatlink_app;
