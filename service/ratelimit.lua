-- Every limit an API request counts against, in one round trip (service/ratelimit.py, ApiLimits).
-- KEYS: one fixed-window counter per limit. ARGV: amount, window (seconds) per key, in the same order.
-- Counts the request against every window (a window starts at its first request) and returns, per key,
-- {count, seconds until the window ends}.
local replies = {}
for i, key in ipairs(KEYS) do
    local window = tonumber(ARGV[2 * i])
    local n = redis.call('INCR', key)
    local ttl = window
    if n == 1 then
        redis.call('EXPIRE', key, window)
    else
        ttl = redis.call('TTL', key)
        if ttl < 0 then  -- a counter left without an expiry (it cannot stay forever)
            redis.call('EXPIRE', key, window)
            ttl = window
        end
    end
    replies[i] = {n, ttl}
end
return replies
