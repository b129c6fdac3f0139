-- Drops the database's id (the service then cannot name its Redis keys: migrate up again).
drop table if exists service_identity;
