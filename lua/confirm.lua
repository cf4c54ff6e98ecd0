-- confirm: a payment for an order. Pending → paid (units stay sold); an order already
-- cancelled or expired → refund_required without touching stock. A payment event id
-- belongs to the first order it was seen with: the same id for another order changes
-- nothing and says so.
-- KEYS: 1 order, 2 outbox, 3 pending (zset), 4 payment event marker, 5 meta,
--       6.. stock hash per line
-- ARGV: 1 campaign, 2 order_id, 3 amount_cents, 4 'succeeded'|'failed', 5 key prefix,
--       6 event marker ttl secs, 7 events channel, 8 the payment event id
-- Replies (the order's state after the call comes last where there is an order):
--   {'paid', state} {'refund_required', state} {'failed_noted', state}
--   {'duplicate', state} {'already', state} {'amount_mismatch', total}
--   {'event_conflict', other_order_id} {'not_found'} {'restoring'} {'bad_keys'}

local campaign, order_id, amount, status, prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local marker_ttl, channel, event_id = tonumber(ARGV[6]), ARGV[7], ARGV[8]
-- The event id travels to MySQL with the order, so a rebuilt shard still knows it.
local event_field = ',"payment_event":' .. cjson.encode(event_id)

if shard_state(KEYS[5]) ~= 'live' then
  return { 'restoring' }
end
local o = redis.call('HMGET', KEYS[1], 'state', 'items', 'total', 'created')
if not o[1] or not is_order_of(order_id, o[4]) then
  return { 'not_found' }
end
local seen_for = redis.call('GET', KEYS[4])
if seen_for then
  if seen_for ~= order_id then
    return { 'event_conflict', seen_for }
  end
  return { 'duplicate', o[1] }
end
local function mark_event()
  redis.call('SET', KEYS[4], order_id, 'EX', marker_ttl)
end
if status == 'failed' then
  mark_event()
  return { 'failed_noted', o[1] }
end
if amount ~= o[3] then
  return { 'amount_mismatch', o[3] }
end
local lines = order_lines(o[2])
if not stock_keys_match(prefix, lines, 6, #KEYS - 5) then
  return { 'bad_keys' }
end

local now = now_ms()
if o[1] == 'pending_payment' then
  for i, line in ipairs(lines) do
    redis.call('HINCRBY', KEYS[5 + i], 'resv', -line[2])
    redis.call('HINCRBY', KEYS[5 + i], 'sold', line[2])
  end
  redis.call('HSET', KEYS[1], 'state', 'paid', 'paid', int(now))
  redis.call('ZREM', KEYS[3], order_id)
  mark_event()
  emit(KEYS[2], campaign, order_id, KEYS[1], now, channel, event_field)
  return { 'paid', 'paid' }
end
if o[1] == 'cancelled' or o[1] == 'expired' then
  redis.call('HSET', KEYS[1], 'state', 'refund_required', 'paid', int(now))
  mark_event()
  emit(KEYS[2], campaign, order_id, KEYS[1], now, channel, event_field)
  return { 'refund_required', 'refund_required' }
end
mark_event()
return { 'already', o[1] }
