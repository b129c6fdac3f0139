-- name: service_secret
-- A named random secret shared by every worker, created on first use (SECURITY DEFINER narrow path).
select service_secret(%(name)s) as secret;
