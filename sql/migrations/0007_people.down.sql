-- Drops what 0007_people created and the API-key writes it granted.
revoke insert, update on api_keys from chatlink_app;
drop function if exists sign_up(text, text, text);
drop function if exists create_user(text, text);
drop function if exists find_invite(bytea);
drop function if exists find_session(bytea);
drop function if exists find_login(text);
drop table if exists sessions;
drop table if exists invites;
drop policy if exists users_read on users;
drop table if exists memberships;
drop table if exists users;
drop function if exists current_user_id();
