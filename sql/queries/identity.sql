-- name: service_identity
-- The id migration 0006 gave this database: the namespace of every Redis key the service writes.
select id::text as id from service_identity;
