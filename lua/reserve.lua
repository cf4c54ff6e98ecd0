-- reserve: all lines of one order, or none.
-- KEYS: 1 meta, 2 user count, 3 idempotency, 4 order, 5 outbox, 6 pending (zset),
--       7 buyers (set), 8 order rate (string "<second> <count>"),
--       9.. one stock hash per line, in ARGV order
-- ARGV: 1 campaign, 2 order_id, 3 user_id, 4 fingerprint, 5 idempotency ttl secs,
--       6 outbox max length, 7 events channel, then (sku, qty) pairs
-- Replies (first element is the outcome):
--   {'reserved', order_id, items_json, total, created_ms, expires_ms, {sku, gen, ...}, buyers}
--   {'replay', order_id, items_json, total, created_ms, expires_ms, {}}
--   {'reused'}  {'campaign_not_found'}  {'not_active'}  {'sku_not_found', sku}
--   {'sold_out', sku, gen, available, buyers}
--   {'limit_exceeded', held, limit}  {'backlog_full', len}  {'rate_limited', retry_after_ms}
-- The {sku, gen, ...} list names skus this reservation brought to zero, with their
-- stock generation. `buyers` (the buyer set's size) comes with every reply that can
-- flag a sku sold out: a gateway trusts that flag only once it has heard of that many
-- buyers, so a buyer's retry is never answered sold_out before their notice arrived.
-- Every condition is checked before the first write.

local campaign, order_id, user_id, fingerprint = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local idem_ttl, outbox_max, channel = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local FIRST_STOCK_KEY, FIRST_LINE_ARG = 9, 8
local n = (#ARGV - FIRST_LINE_ARG + 1) / 2

local function reply_from_idem(outcome)
  local r = redis.call('HMGET', KEYS[3], 'order', 'items', 'total', 'created', 'expires')
  return { outcome, r[1], r[2], r[3], r[4], r[5], {} }
end

if redis.call('EXISTS', KEYS[3]) == 1 then
  if redis.call('HGET', KEYS[3], 'fp') ~= fingerprint then
    return { 'reused' }
  end
  return reply_from_idem('replay')
end

local meta = redis.call('HMGET', KEYS[1], 'starts', 'ends', 'limit', 'window', 'max_orders_per_sec')
if not meta[1] then
  return { 'campaign_not_found' }
end
local now = now_ms()
if now < tonumber(meta[1]) or now >= tonumber(meta[2]) then
  return { 'not_active' }
end

local lines = {}
local units = 0
for i = 1, n do
  local sku, qty = ARGV[FIRST_LINE_ARG + 2 * (i - 1)], tonumber(ARGV[FIRST_LINE_ARG + 2 * i - 1])
  local s = redis.call('HMGET', KEYS[FIRST_STOCK_KEY + i - 1], 'avail', 'price', 'gen')
  if not s[1] then
    return { 'sku_not_found', sku }
  end
  lines[i] = { sku = sku, qty = qty, avail = tonumber(s[1]), price = tonumber(s[2]), gen = s[3] or '0' }
  units = units + qty
end
for i = 1, n do
  if lines[i].avail < lines[i].qty then
    return { 'sold_out', lines[i].sku, lines[i].gen, int(lines[i].avail), redis.call('SCARD', KEYS[7]) }
  end
end

local held = tonumber(redis.call('GET', KEYS[2]) or '0')
local limit = tonumber(meta[3])
if held + units > limit then
  return { 'limit_exceeded', int(held), int(limit) }
end
local backlog = redis.call('XLEN', KEYS[5])
if backlog >= outbox_max then
  return { 'backlog_full', backlog }
end
if redis.call('EXISTS', KEYS[4]) == 1 then
  return redis.error_reply('order id already in use: ' .. order_id)
end
-- max_orders_per_sec counts reservations granted in the current second (Redis clock),
-- across every gateway; only requests that would otherwise succeed are counted.
local second = math.floor(now / 1000)
local granted = 0
local max_rate = tonumber(meta[5] or '')
if max_rate then
  local rate = redis.call('GET', KEYS[8])
  if rate then
    local sep = string.find(rate, ' ', 1, true)
    if tonumber(string.sub(rate, 1, sep - 1)) == second then
      granted = tonumber(string.sub(rate, sep + 1))
    end
  end
  if granted >= max_rate then
    return { 'rate_limited', int(1000 - now % 1000) }
  end
end

-- All checks passed: from here on every call writes.
if max_rate then
  redis.call('SET', KEYS[8], int(second) .. ' ' .. int(granted + 1), 'PX', 2000)
end
local total = 0
local items = {}
local emptied = {}
for i = 1, n do
  local l = lines[i]
  local key = KEYS[FIRST_STOCK_KEY + i - 1]
  local left = redis.call('HINCRBY', key, 'avail', -l.qty)
  redis.call('HINCRBY', key, 'resv', l.qty)
  if left == 0 then
    emptied[#emptied + 1] = l.sku
    emptied[#emptied + 1] = l.gen
  end
  total = total + l.qty * l.price
  items[i] = '{"sku_id":' .. cjson.encode(l.sku) .. ',"quantity":' .. int(l.qty)
    .. ',"price_cents":' .. int(l.price) .. '}'
end
local items_json = '[' .. table.concat(items, ',') .. ']'
local expires = now + tonumber(meta[4]) * 1000

redis.call('INCRBY', KEYS[2], units)
redis.call('HSET', KEYS[4], 'user', user_id, 'state', 'pending_payment', 'items', items_json,
  'units', units, 'total', int(total), 'created', int(now), 'expires', int(expires), 'window', meta[4])
redis.call('HSET', KEYS[3], 'fp', fingerprint, 'order', order_id, 'items', items_json,
  'total', int(total), 'created', int(now), 'expires', int(expires))
redis.call('EXPIRE', KEYS[3], idem_ttl)
redis.call('ZADD', KEYS[6], expires, order_id)
-- Gateways answer sold-out and ended locally, except to known buyers, whose retries
-- must reach this script to be replayed.
if redis.call('SADD', KEYS[7], user_id) == 1 then
  redis.call('PUBLISH', channel, 'buyer ' .. campaign .. ' ' .. user_id)
end
emit(KEYS[5], campaign, order_id, KEYS[4], now, channel)
return { 'reserved', order_id, items_json, int(total), int(now), int(expires), emptied, redis.call('SCARD', KEYS[7]) }
