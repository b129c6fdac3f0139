-- An API call's key is checked inside its transaction, in the round trip of its first statement: the look-up by
-- public id, the comparison and the revocation check in one call that then acts for the key's account, instead of
-- a pooled connection and a round trip of its own (find_api_key) before the transaction.
-- A refused key fails the statement, and with it the transaction, with SQLSTATE CK401: a code of its own, outside
-- class 28, which psycopg reports as OperationalError, the class that says "PostgreSQL is unavailable"
-- (the breaker would count made-up keys as outages). The message says which refusal it is.
-- Comparing the stored and the presented SHA-256 digests with = leaks at most how many leading bytes of the digest
-- match: of no use without a preimage, since the secret has 256 bits of entropy.
create function act_for_api_key(p_public_id text, p_secret_hash bytea, p_read_only boolean)
    returns bigint
    language plpgsql volatile security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
declare
    v_account_id bigint;
    v_secret_hash bytea;
    v_revoked boolean;
begin
    select k.account_id, k.secret_hash, k.revoked_at is not null
      into v_account_id, v_secret_hash, v_revoked
      from api_keys k
     where k.public_id = p_public_id;
    if v_account_id is null or v_secret_hash <> p_secret_hash then
        raise exception 'not valid' using errcode = 'CK401';
    end if;
    if v_revoked then
        raise exception 'revoked' using errcode = 'CK401';
    end if;
    perform set_config('chatlink.account_id', v_account_id::text, true),
            set_config('chatlink.user_id', '', true);
    if p_read_only then
        perform set_config('transaction_read_only', 'on', true);
    end if;
    return v_account_id;
end
$$;

revoke all on function act_for_api_key(text, bytea, boolean) from public;
grant execute on function act_for_api_key(text, bytea, boolean) to chatlink_app;
