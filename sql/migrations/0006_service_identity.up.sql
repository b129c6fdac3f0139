-- The id of this database, made once when the database is created: every Redis key the service writes lives
-- under KEY_PREFIX + this id, so a database recreated or restored from scratch never reads another one's keys.
create table service_identity (
    singleton  boolean primary key default true check (singleton),
    id         uuid not null default gen_random_uuid(),
    created_at timestamptz not null default now()
);
insert into service_identity default values;
grant select on service_identity to chatlink_app;
