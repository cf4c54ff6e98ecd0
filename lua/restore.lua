-- restore: rebuilds campaign shards whose data Redis lost (one master restarted empty,
-- a whole Redis lost) from MySQL (the shard's orders) and the campaign's surviving
-- shards (conservation of units). Each step runs in one shard's slot.
--
-- Steps on a lost shard, under a lease: the meta's `restoring` field holds the
-- rebuilder's token and `restoring_until` the lease's end (Redis clock, ms). Every other
-- script answers 503 while `restoring` is set (prelude `shard_state`); a rebuilder that
-- stopped is taken over once its lease has lapsed; no step ever writes into a live shard.
--   'hold'    KEYS 1 meta; ARGV 1 'hold', 2 token, 3 lease ms
--             A live shard found behind MySQL: `restoring` set with a lease on its data
--             as it is, so every script answers 503 while what it holds reaches MySQL;
--             renewed by the same token, and then rebuilt ('begin' by the same token).
--             -> {'ok'} | {'busy'} (another rebuilder's lease) | {'lost'} (no meta)
--   'unhold'  KEYS 1 meta; ARGV 1 'unhold', 2 token -> {'ok'}: the hold dropped (if ours)
--   'begin'   KEYS 1 meta, 2 moves out, 3 moved in (a shard that came back behind keeps
--             records of moves its rebuilt stock no longer counts: they go), 4 users
--             ARGV 1 'begin', 2 token, 3 lease ms, 4 campaign, 5 starts_ms, 6 ends_ms,
--             7 per_user_limit, 8 payment_window_secs, 9 max_orders_per_sec,
--             10 max_user_rps, 11 events channel, 12 shard count, 13 skus (comma-separated),
--             14 '1' when a lost shard comes back with the users hash (meta `layout` 2); a
--             shard whose meta is still there keeps its layout, and with the hash its
--             users are written anew (the `users` step)
--             -> {'begun'}: the meta is written, with `restoring`
--                {'live'}: the shard holds its data; nothing to do
--                {'busy'}: another rebuilder's lease has not lapsed
--   'orders'  KEYS 1 meta, 2 pending (zset), 3 buyers (set), then per order its hash,
--             its idempotency record if it has one, its payment event marker if it has one
--             ARGV 1 'orders', 2 token, 3 lease ms, then per order 13 fields: order_id,
--             user, state, items_json, units, total, created_ms, expires_ms, paid_ms or '',
--             payment_window_secs, idempotency record or '', its ttl secs, payment event
--             marker ttl secs or ''
--   'users'   KEYS 1 meta, 2 users (hash), then one user count (string) per user
--             ARGV 1 'users', 2 token, 3 lease ms, then (user, units held or bought) per user
--             (the hash with meta `layout` 2, else the strings; every user with an order
--             in the shard is listed, 0 when none counts, so the hash's fields are the buyers)
--   'finish'  KEYS 1 meta, 2.. one stock hash per sku
--             ARGV 1 'finish', 2 token, 3 lease ms, 4 campaign, 5 events channel,
--             6 stock generation, then per sku (sku, total, avail, resv, sold, price, in, out)
--             The stock is written and the lease dropped in this one step: the shard goes
--             live whole, and no flag outlives a finished rebuild.
--   orders/users/finish -> {'ok'} | {'lost'} (the lease is not this token's: nothing written)
--
-- Steps on a surviving shard of the same campaign (the rebuild's consistent read):
--   'pause'   KEYS 1 meta; ARGV 1 'pause', 2 ms: no unit moves in or out of this shard
--             for that long (move.lua) -> {'ok'} | {'gone'} (the shard is not live)
--   'census'  KEYS 1 meta, 2 moves hash, 3.. one stock hash per sku; ARGV 1 'census'
--             -> {'ok', {avail + resv + sold per sku}, {move id, record, ...}} | {'gone'}
--   'resume'  KEYS 1 meta; ARGV 1 'resume' -> {'ok'}

local mode = ARGV[1]

if mode == 'pause' then
  if shard_state(KEYS[1]) ~= 'live' then
    return { 'gone' }
  end
  redis.call('HSET', KEYS[1], 'moves_paused_until', int(now_ms() + tonumber(ARGV[2])))
  return { 'ok' }
end
if mode == 'census' then
  if shard_state(KEYS[1]) ~= 'live' then
    return { 'gone' }
  end
  local sums = {}
  for i = 3, #KEYS do
    local s = redis.call('HMGET', KEYS[i], 'avail', 'resv', 'sold')
    sums[#sums + 1] = int(tonumber(s[1] or '0') + tonumber(s[2] or '0') + tonumber(s[3] or '0'))
  end
  return { 'ok', sums, redis.call('HGETALL', KEYS[2]) }
end
if mode == 'resume' then
  redis.call('HDEL', KEYS[1], 'moves_paused_until')
  return { 'ok' }
end

local token, lease_ms = ARGV[2], tonumber(ARGV[3])

if mode == 'hold' then
  local m = redis.call('HMGET', KEYS[1], 'starts', 'restoring', 'restoring_until')
  if not m[1] then
    return { 'lost' }
  end
  if m[2] and m[2] ~= token and now_ms() < tonumber(m[3] or '0') then
    return { 'busy' }
  end
  redis.call('HSET', KEYS[1], 'restoring', token, 'restoring_until', int(now_ms() + lease_ms))
  return { 'ok' }
end
if mode == 'unhold' then
  if redis.call('HGET', KEYS[1], 'restoring') == token then
    redis.call('HDEL', KEYS[1], 'restoring', 'restoring_until')
  end
  return { 'ok' }
end

if mode == 'begin' then
  local m = redis.call('HMGET', KEYS[1], 'starts', 'restoring', 'restoring_until', 'layout')
  if m[1] and not m[2] then
    return { 'live' }
  end
  if m[2] and m[2] ~= token and now_ms() < tonumber(m[3] or '0') then
    return { 'busy' }
  end
  local skus = {}
  for sku in string.gmatch(ARGV[13], '[^,]+') do
    skus[#skus + 1] = sku
  end
  local users_hash = m[4] == '2' or (not m[1] and ARGV[14] == '1')
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  if users_hash then
    redis.call('DEL', KEYS[4])
  end
  write_meta(KEYS[1], 5, skus)
  redis.call('HSET', KEYS[1], 'shards', ARGV[12], 'restoring', token,
    'restoring_until', int(now_ms() + lease_ms))
  if users_hash then
    redis.call('HSET', KEYS[1], 'layout', 2)
  end
  return { 'begun' }
end

-- Every later step: only the lease holder writes, and each step renews the lease.
if redis.call('HGET', KEYS[1], 'restoring') ~= token then
  return { 'lost' }
end
redis.call('HSET', KEYS[1], 'restoring_until', int(now_ms() + lease_ms))
local users_hash = redis.call('HGET', KEYS[1], 'layout') == '2'

if mode == 'orders' then
  local FIELDS = 13
  local key_at = 4
  for a = 4, #ARGV, FIELDS do
    local k_order = KEYS[key_at]
    key_at = key_at + 1
    local order_id, user, state = ARGV[a], ARGV[a + 1], ARGV[a + 2]
    redis.call('DEL', k_order)
    redis.call('HSET', k_order, 'user', user, 'state', state, 'items', ARGV[a + 3],
      'units', ARGV[a + 4], 'total', ARGV[a + 5], 'created', ARGV[a + 6],
      'expires', ARGV[a + 7], 'window', ARGV[a + 9])
    if ARGV[a + 8] ~= '' then
      redis.call('HSET', k_order, 'paid', ARGV[a + 8])
    end
    if state == 'pending_payment' then
      redis.call('ZADD', KEYS[2], ARGV[a + 7], order_id)
    else
      redis.call('ZREM', KEYS[2], order_id)
    end
    if not users_hash then
      redis.call('SADD', KEYS[3], user)
    end
    if ARGV[a + 10] ~= '' then
      redis.call('SET', KEYS[key_at], ARGV[a + 10], 'EX', ARGV[a + 11])
      key_at = key_at + 1
    end
    if ARGV[a + 12] ~= '' then
      redis.call('SET', KEYS[key_at], order_id, 'EX', ARGV[a + 12])
      key_at = key_at + 1
    end
  end
  return { 'ok' }
end
if mode == 'users' then
  for i = 3, #KEYS do
    local user, units = ARGV[2 * i - 2], ARGV[2 * i - 1]
    if users_hash then
      redis.call('HSET', KEYS[2], user, units)
    elseif tonumber(units) > 0 then
      redis.call('SET', KEYS[i], units)
    else
      redis.call('DEL', KEYS[i])
    end
  end
  return { 'ok' }
end
if mode == 'finish' then
  local campaign, channel, gen = ARGV[4], ARGV[5], ARGV[6]
  local restocked = {}
  for i = 2, #KEYS do
    local b = 7 + (i - 2) * 8
    redis.call('DEL', KEYS[i])
    redis.call('HSET', KEYS[i], 'total', ARGV[b + 1], 'avail', ARGV[b + 2], 'resv', ARGV[b + 3],
      'sold', ARGV[b + 4], 'price', ARGV[b + 5], 'gen', gen, 'in', ARGV[b + 6], 'out', ARGV[b + 7])
    if tonumber(ARGV[b + 2]) > 0 then
      restocked[#restocked + 1] = ARGV[b]
    end
  end
  redis.call('HDEL', KEYS[1], 'restoring', 'restoring_until')
  redis.call('PUBLISH', channel, 'meta ' .. campaign)
  for _, sku in ipairs(restocked) do
    redis.call('PUBLISH', channel, 'restock ' .. campaign .. ' ' .. sku .. ' ' .. gen)
  end
  return { 'ok' }
end
return redis.error_reply('restore: unknown step ' .. tostring(mode))
