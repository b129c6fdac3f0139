-- One round trip for the redirect: check the client's limits, read the cached link, decide whether it may still
-- redirect, count the click against max_clicks and queue it on the stream. On a miss the caller reads PostgreSQL
-- and calls again with the link as the fill (and its click count as the seed), limits not checked twice.
-- The cached link is a JSON object (Link.to_cache): this script reads id, account_id, closes_at and max_clicks.
-- KEYS: link, click stream, click-counter prefix, the client's request counters, the client's 404 counters
--       (the last two are key prefixes, '' when rate limits are off).
-- ARGV: [1] now (epoch s), [2] fill ('' none, 'link', 'unknown'), [3] fill entry, [4] fill ttl, [5] seed ('' none,
--       '?' the count is unknown because PostgreSQL is down: queue the click uncounted),
--       [6] record 1/0, [7] bot 1/0, [8] click JSON, [9] check limits 1/0, [10] request limits, [11] 404 limits
--       (each "amount window amount window …", windows in seconds: "1200 60" is 1200/minute).
-- Returns nil (miss), {'', 'unknown'}, {'', 'rate', seconds to wait}, or {link JSON, ok | gone | limit | seed}.
local function count(key, window)
    local n = redis.call('INCR', key)
    if n == 1 then redis.call('EXPIRE', key, window) end
    return n
end
if ARGV[9] == '1' and KEYS[4] ~= '' then
    -- A client over a 404 limit is refused everything; otherwise every request counts against every limit.
    for amount, window in string.gmatch(ARGV[11], '(%d+) (%d+)') do
        local key = KEYS[5] .. amount .. '/' .. window
        if tonumber(redis.call('GET', key) or '0') >= tonumber(amount) then
            return {'', 'rate', redis.call('TTL', key)}
        end
    end
    local wait = 0
    for amount, window in string.gmatch(ARGV[10], '(%d+) (%d+)') do
        local key = KEYS[4] .. amount .. '/' .. window
        if count(key, window) > tonumber(amount) then wait = math.max(wait, redis.call('TTL', key)) end
    end
    if wait > 0 then return {'', 'rate', wait} end
end
local raw = redis.call('GET', KEYS[1])
if not raw then
    if ARGV[2] == '' then return nil end
    redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4], 'NX')
    raw = redis.call('GET', KEYS[1]) or ARGV[3]
end
if raw == '' then
    if KEYS[5] ~= '' then
        for amount, window in string.gmatch(ARGV[11], '(%d+) (%d+)') do
            count(KEYS[5] .. amount .. '/' .. window, window)
        end
    end
    return {'', 'unknown'}
end
local link = cjson.decode(raw)
if link.closes_at ~= cjson.null and tonumber(link.closes_at) <= tonumber(ARGV[1]) then
    return {raw, 'gone'}
end
-- The click counter: every human click is counted, limit or not, so a max_clicks set later starts from the true
-- count; a link with a limit needs it for every request, since an exhausted link is gone for bots and HEAD too.
local counter = KEYS[3] .. link.id
local limit = link.max_clicks
local human = ARGV[6] == '1' and ARGV[7] ~= '1'
if human or limit ~= cjson.null then
    if ARGV[5] == '?' then
        -- PostgreSQL cannot tell the count: let the request through, its click uncounted. The counter stays absent,
        -- so the first request after PostgreSQL returns seeds it from the stored clicks and max_clicks holds again.
        if ARGV[6] ~= '1' then return {raw, 'ok'} end
        redis.call('XADD', KEYS[2], '*', 'l', link.id, 'a', link.account_id, 'd', ARGV[8])
        return {raw, 'ok'}
    elseif ARGV[5] ~= '' then
        redis.call('SET', counter, ARGV[5], 'NX')
    elseif redis.call('EXISTS', counter) == 0 then
        return {raw, 'seed'}  -- the count was lost (or never read): ask PostgreSQL for it first
    end
end
if not human and limit ~= cjson.null and tonumber(redis.call('GET', counter)) >= tonumber(limit) then
    return {raw, 'limit'}  -- bots and HEAD use no click up, but an exhausted link is gone for them too
end
if ARGV[6] ~= '1' then return {raw, 'ok'} end
if human and redis.call('INCR', counter) > tonumber(limit == cjson.null and math.huge or limit) then
    redis.call('DECR', counter)
    return {raw, 'limit'}
end
redis.call('XADD', KEYS[2], '*', 'l', link.id, 'a', link.account_id, 'd', ARGV[8])
return {raw, 'ok'}
