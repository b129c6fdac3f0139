-- wrk script for `make bench` (tests/bench/run.py): picks each request's path and counts status codes.
--
-- Modes (arguments after `--` on the wrk command line):
--   list <file>                  GET /<slug>, cycling through the slugs in <file> (one per line);
--                                thread i starts at a different offset so the threads spread over the list.
--   seq <prefix> <count> <nthreads>
--                                GET /<prefix><n> with n = id, id + nthreads, id + 2*nthreads, ... (7 digits):
--                                across all threads every n in 1..count is requested once, in order; past
--                                count a thread starts over and counts those requests in `repeats`.
--   post <api key>               POST /api/v1/links with a JSON body (a new link with a generated slug each time).
--   api <GET|PATCH> <api key> <file>
--                                GET or PATCH (a new title) /api/v1/links/<slug>, cycling through the slugs in
--                                <file> like `list`.
--
-- Environment: CHATLINK_BENCH_PACE_MS=<ms> makes every connection wait a random 0..2x<ms> (mean <ms>) before each
-- request, for latency at a chosen rate instead of at saturation (wrk measures latency without that wait).
--
-- done() prints machine-readable lines that run.py parses:
--   bench-status <code> <count>   (one per status code seen)
--   bench-repeats <n>
--   bench-errors connect=<n> read=<n> write=<n> status=<n> timeout=<n>

-- A few real browser User-Agents, rotated, so the service sees what a click from a phone sends.
local user_agents = {
  "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
    .. "Chrome/126.0.6478.122 Mobile Safari/537.36",
  "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    .. "Version/17.5 Mobile/15E148 Safari/604.1",
  "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    .. "Chrome/126.0.0.0 Safari/537.36",
  "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
    .. "Chrome/125.0.6422.165 Mobile Safari/537.36",
  "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    .. "Version/17.5 Safari/605.1.15",
}

local function get_headers(n)
  return {
    ["User-Agent"] = user_agents[(n % #user_agents) + 1],
    ["Accept"] = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    ["Accept-Language"] = "pt-BR,pt;q=0.9,en;q=0.8",
  }
end

-- Read at load time in every Lua state: wrk decides once whether the script has a delay().
local pace = tonumber(os.getenv("CHATLINK_BENCH_PACE_MS") or "")
if pace and pace > 0 then
  function delay()
    return math.floor(math.random() * 2 * pace)
  end
end

-- Setup phase (main Lua state): number the threads and keep them for done().
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("id", #threads)
end

-- Running phase (one Lua state per thread). `id` was set by setup().
codes = {}
repeats = 0
local mode
local prepared = {}
local position = 0
local prefix, count, nthreads

function init(args)
  mode = args[1]
  if mode == "list" then
    local n = 0
    for slug in io.lines(args[2]) do
      if slug ~= "" then
        n = n + 1
        prepared[n] = wrk.format("GET", "/" .. slug, get_headers(n + id))
      end
    end
    assert(n > 0, "no slugs in " .. args[2])
    position = ((id - 1) * math.floor(n / 8)) % n -- spread the threads over the list
  elseif mode == "seq" then
    prefix, count, nthreads = args[2], tonumber(args[3]), tonumber(args[4])
    position = id
  elseif mode == "api" then
    local method, key, n = args[2], args[3], 0
    for slug in io.lines(args[4]) do
      if slug ~= "" then
        n = n + 1
        local headers = { ["Authorization"] = "Bearer " .. key }
        local body = nil
        if method == "PATCH" then
          headers["Content-Type"] = "application/json"
          body = string.format('{"title": "Bench edit %d.%d"}', id, n)
        end
        prepared[n] = wrk.format(method, "/api/v1/links/" .. slug, headers, body)
      end
    end
    assert(n > 0, "no slugs in " .. args[4])
    position = ((id - 1) * math.floor(n / 8)) % n
  elseif mode == "post" then
    local body = '{"phone": "+55 11 98765-4321", "message": "Olá! Bench link 👋", "tags": ["bench"]}'
    prepared[1] = wrk.format("POST", "/api/v1/links", {
      ["Authorization"] = "Bearer " .. args[2],
      ["Content-Type"] = "application/json",
    }, body)
  else
    error("counter.lua: unknown mode " .. tostring(mode))
  end
end

function request()
  if mode == "list" or mode == "api" then
    position = position + 1
    if position > #prepared then
      position = 1
    end
    return prepared[position]
  elseif mode == "seq" then
    local n = position
    if n > count then
      repeats = repeats + 1
      n = ((n - 1) % count) + 1
    end
    position = position + nthreads
    return wrk.format("GET", string.format("/%s%07d", prefix, n), get_headers(n))
  end
  return prepared[1]
end

function response(status, headers, body)
  codes[status] = (codes[status] or 0) + 1
end

-- Done phase (main Lua state again): sum the threads' counters.
function done(summary, latency, requests)
  local total, total_repeats = {}, 0
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("codes")) do
      total[status] = (total[status] or 0) + n
    end
    total_repeats = total_repeats + thread:get("repeats")
  end
  for status, n in pairs(total) do
    io.write(string.format("bench-status %d %d\n", status, n))
  end
  io.write(string.format("bench-repeats %d\n", total_repeats))
  local e = summary.errors
  io.write(string.format(
    "bench-errors connect=%d read=%d write=%d status=%d timeout=%d\n",
    e.connect, e.read, e.write, e.status, e.timeout
  ))
end
