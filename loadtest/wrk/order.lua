-- wrk: the throughput scenario's order POST (the same request k6's throughput.js
-- sends): a JWT from the runner's token file, a fresh idempotency key, one line.
-- Counts the answers per thread (201, 409, anything else) and prints them with the
-- latency percentiles as one `WRK {...}` JSON line the runner reads.
-- Env: WRK_TOKENS (the runner's token file), WRK_PATH, WRK_SKU, WRK_RUN.

local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
  table.insert(threads, thread)
end

local tokens, body, path, run
-- Globals, not locals: done() reads them from each thread with thread:get().
counter, created, sold_out, odd = 0, 0, 0, 0

function init(args)
  local f = assert(io.open(os.getenv("WRK_TOKENS"), "r"))
  local text = f:read("*a")
  f:close()
  tokens = {}
  for token in string.gmatch(text, '"token"%s*:%s*"([^"]+)"') do
    tokens[#tokens + 1] = token
  end
  path = os.getenv("WRK_PATH")
  run = os.getenv("WRK_RUN") or "w"
  body = '{"items":[{"sku_id":"' .. os.getenv("WRK_SKU") .. '","quantity":1}]}'
end

function request()
  counter = counter + 1
  local token = tokens[math.random(#tokens)]
  local headers = {
    ["content-type"] = "application/json",
    ["authorization"] = "Bearer " .. token,
    ["idempotency-key"] = run .. "-" .. id .. "-" .. counter,
  }
  return wrk.format("POST", path, headers, body)
end

function response(status, headers, resp_body)
  if status == 201 then
    created = created + 1
  elseif status == 409 then
    sold_out = sold_out + 1
  else
    odd = odd + 1
  end
end

function done(summary, latency, requests)
  local c, s, o = 0, 0, 0
  for _, t in ipairs(threads) do
    c = c + t:get("created")
    s = s + t:get("sold_out")
    o = o + t:get("odd")
  end
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"created":%d,"sold_out":%d,"odd":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, c, s, o,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
