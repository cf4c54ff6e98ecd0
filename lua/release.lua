-- release: pending reservations become cancelled or expired; their units go back to
-- stock and off their users' counts. Many orders per call (the sweep expires a burst
-- of deadlines in a few calls); each order is released at most once: a second call
-- says what the order is.
-- KEYS: 1 meta, 2 outbox, 3 pending (zset), 4 users (hash: a shard with meta `layout` 2),
--       then per order, in ARGV order: the order hash, the user count (string: a shard
--       without the users hash), one stock hash per order line
-- ARGV: 1 campaign, 2 target state ('cancelled'|'expired'), 3 key prefix,
--       4 events channel, then per order: (order_id, number of stock keys)
-- Replies: {'restoring'} while the shard is lost or being rebuilt (prelude `shard_state`), or
--   {'done', {outcome, ...}, {sku, gen, ...}} with one outcome per order, in order:
--   'released' | 'not_found' | 'not_pending:<state>' | 'not_due:<expires_ms>' | 'bad_keys'.
--   An order id without an order hash also leaves the pending set (nothing can ever
--   release it). The flat list names each sku brought back from zero with its new
--   generation (one restock notice per sku per call).
-- Every order's conditions are checked before its first write.

local campaign, target, prefix, channel = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if target ~= 'cancelled' and target ~= 'expired' then
  return redis.error_reply('release target must be cancelled or expired')
end
if shard_state(KEYS[1]) ~= 'live' then
  return { 'restoring' }
end

local users_hash = redis.call('HGET', KEYS[1], 'layout') == '2'
local now = now_ms()
local outcomes = {}
local docs = {}
local restocked = {}
local restocked_order = {}
local key_at = 5

for arg = 5, #ARGV, 2 do
  local order_id, nstock = ARGV[arg], tonumber(ARGV[arg + 1])
  local order_key, user_key, first_stock = KEYS[key_at], KEYS[key_at + 1], key_at + 2
  key_at = first_stock + nstock
  local o = redis.call('HMGET', order_key, 'state', 'items', 'units', 'expires', 'user', 'total', 'created', 'paid', 'window')
  local outcome
  if not o[1] or not is_order_of(order_id, o[7]) then
    redis.call('ZREM', KEYS[3], order_id)
    outcome = 'not_found'
  elseif o[1] ~= 'pending_payment' then
    outcome = 'not_pending:' .. o[1]
  elseif target == 'expired' and now < tonumber(o[4]) then
    outcome = 'not_due:' .. o[4]
  else
    local lines = order_lines(o[2])
    if user_key ~= prefix .. 'user:' .. o[5] or not stock_keys_match(prefix, lines, first_stock, nstock) then
      outcome = 'bad_keys'
    else
      for i, line in ipairs(lines) do
        local key = KEYS[first_stock + i - 1]
        local avail = redis.call('HINCRBY', key, 'avail', line[2])
        redis.call('HINCRBY', key, 'resv', -line[2])
        if avail == line[2] then
          -- This sku was sold out until now: a new generation lets every gateway drop
          -- its sold-out flag and ignore older sold-out answers still in flight.
          local gen = redis.call('HINCRBY', key, 'gen', 1)
          if not restocked[line[1]] then
            restocked_order[#restocked_order + 1] = line[1]
          end
          restocked[line[1]] = gen
        end
      end
      if users_hash then
        -- The field stays (at 0): its user is still a buyer.
        redis.call('HINCRBY', KEYS[4], o[5], -tonumber(o[3]))
      else
        local held = redis.call('DECRBY', user_key, tonumber(o[3]))
        if held <= 0 then
          redis.call('DEL', user_key)
        end
      end
      redis.call('HSET', order_key, 'state', target, 'ended', int(now))
      redis.call('ZREM', KEYS[3], order_id)
      docs[#docs + 1] = order_doc(campaign, order_id, o[5], target, o[2], o[6], o[7], o[4], o[8], o[9], now)
      outcome = 'released'
    end
  end
  outcomes[#outcomes + 1] = outcome
end

if #docs > 0 then
  emit_docs(KEYS[2], campaign, docs, channel)
end
local flat = {}
for _, sku in ipairs(restocked_order) do
  flat[#flat + 1] = sku
  flat[#flat + 1] = int(restocked[sku])
  notify(channel, 'restock ' .. campaign .. ' ' .. sku .. ' ' .. int(restocked[sku]))
end
return { 'done', outcomes, flat }
