-- name: visitor_key
-- The HMAC key for visitor ids of one UTC day, created on first use (SECURITY DEFINER narrow path).
select visitor_key(%(day)s) as key;
