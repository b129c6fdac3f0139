-- Write-through of a committed edit: keep the entry of the newer of two concurrent edits, whichever arrives first.
-- KEYS[1] the link's cache key. ARGV: [1] entry (JSON object), [2] ttl in seconds, [3] its version (updated_at).
local current = redis.call('GET', KEYS[1])
if current and current ~= '' then
    local ok, link = pcall(cjson.decode, current)
    if ok and type(link) == 'table' and tonumber(link.updated_at) and tonumber(link.updated_at) > tonumber(ARGV[3]) then
        return 0
    end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
