-- release: a pending reservation becomes cancelled or expired; its units go back to
-- stock and off the user's count. Runs once: a second call says what the order is.
-- KEYS: 1 order, 2 user count, 3 outbox, 4 pending (zset), 5.. stock hash per order line
-- ARGV: 1 campaign, 2 order_id, 3 target state ('cancelled'|'expired'), 4 key prefix,
--       5 events channel
-- Replies: {'released', {sku, gen, ...}} {'not_found'} {'not_pending', state}
--          {'not_due', expires_ms} {'bad_keys'}

local campaign, order_id, target, prefix, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if target ~= 'cancelled' and target ~= 'expired' then
  return redis.error_reply('release target must be cancelled or expired')
end

local o = redis.call('HMGET', KEYS[1], 'state', 'items', 'units', 'expires')
if not o[1] then
  return { 'not_found' }
end
if o[1] ~= 'pending_payment' then
  return { 'not_pending', o[1] }
end
local now = now_ms()
if target == 'expired' and now < tonumber(o[4]) then
  return { 'not_due', o[4] }
end
local lines = order_lines(o[2])
if not check_stock_keys(prefix, lines, 5) then
  return { 'bad_keys' }
end

local restocked = {}
for i, line in ipairs(lines) do
  local key = KEYS[4 + i]
  local avail = redis.call('HINCRBY', key, 'avail', line[2])
  redis.call('HINCRBY', key, 'resv', -line[2])
  if avail == line[2] then
    -- This sku was sold out until now: a new generation lets every gateway drop
    -- its sold-out flag and ignore older sold-out answers still in flight.
    local gen = redis.call('HINCRBY', key, 'gen', 1)
    restocked[#restocked + 1] = line[1]
    restocked[#restocked + 1] = int(gen)
  end
end
local held = redis.call('DECRBY', KEYS[2], tonumber(o[3]))
if held <= 0 then
  redis.call('DEL', KEYS[2])
end
redis.call('HSET', KEYS[1], 'state', target, 'ended', int(now))
redis.call('ZREM', KEYS[4], order_id)
emit(KEYS[3], campaign, order_id, KEYS[1], now)
for i = 1, #restocked, 2 do
  redis.call('PUBLISH', channel, 'restock ' .. campaign .. ' ' .. restocked[i] .. ' ' .. restocked[i + 1])
end
return { 'released', restocked }
