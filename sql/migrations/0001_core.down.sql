-- Drops everything 0001_core created except the shared chatlink_app role (other databases may use it).
revoke all on schema public from chatlink_app;
drop function if exists find_api_key(text);
drop function if exists resolve_link(text);
drop table if exists idempotency_keys;
drop table if exists links;
drop table if exists api_keys;
drop table if exists accounts;
drop function if exists current_account_id();
