-- Operability (issue 13): the outbox's backlog for /metrics, across accounts, through one narrow function.

-- Pending deliveries and the age in seconds of the oldest one that is due (0 when none is due).
create function outbox_stats()
    returns table (backlog bigint, oldest_due_seconds double precision)
    language sql security definer
    set search_path = pg_catalog, public, pg_temp
    as $$
        select count(*),
               coalesce(extract(epoch from now() - min(next_attempt_at) filter (where next_attempt_at <= now())), 0)
          from outbox
         where status = 'pending'
    $$;

revoke all on function outbox_stats() from public;
grant execute on function outbox_stats() to chatlink_app;
