-- restore: rebuilds a campaign that Redis lost (a restart with no persistence) from
-- what MySQL holds. Runs in steps, each refusing once the campaign's meta exists
-- again (it goes live only in the last step, so no reservation, release or payment
-- can touch a half-restored campaign: they all need the meta):
--   'orders':  KEYS 1 meta, 2 pending (zset), 3 buyers (set), then one order hash
--              per order; ARGV 1 'orders', then per order the ten fields
--              (order_id, user, state, items_json, units, total, created_ms,
--              expires_ms, paid_ms or '', payment_window_secs).
--   'users':   KEYS 1 meta, then one user count per user; ARGV 1 'users', then the
--              units each user holds or bought, in KEYS order.
--   'finish':  KEYS 1 meta, 2.. one stock hash per sku (the caller lists the campaign
--              in the index first: another slot on a cluster);
--              ARGV 1 'finish', 2 campaign, 3 starts_ms, 4 ends_ms, 5 per_user_limit,
--              6 payment_window_secs, 7 max_orders_per_sec, 8 max_user_rps,
--              9 events channel, 10 stock generation, 11 shard count,
--              12 '1' while other shards wait for shard 0 ('' otherwise), then per
--              sku (sku, total, avail, resv, sold, price): this shard's.
-- Replies: {'ok'} {'exists'}

if redis.call('EXISTS', KEYS[1]) == 1 then
  return { 'exists' }
end
local mode = ARGV[1]
if mode == 'orders' then
  local FIELDS = 10
  for i = 4, #KEYS do
    local a = 2 + (i - 4) * FIELDS
    local order_id, user, state = ARGV[a], ARGV[a + 1], ARGV[a + 2]
    redis.call('DEL', KEYS[i])
    redis.call('HSET', KEYS[i], 'user', user, 'state', state, 'items', ARGV[a + 3],
      'units', ARGV[a + 4], 'total', ARGV[a + 5], 'created', ARGV[a + 6],
      'expires', ARGV[a + 7], 'window', ARGV[a + 9])
    if ARGV[a + 8] ~= '' then
      redis.call('HSET', KEYS[i], 'paid', ARGV[a + 8])
    end
    if state == 'pending_payment' then
      redis.call('ZADD', KEYS[2], ARGV[a + 7], order_id)
    end
    redis.call('SADD', KEYS[3], user)
  end
  return { 'ok' }
end
if mode == 'users' then
  for i = 2, #KEYS do
    if tonumber(ARGV[i]) > 0 then
      redis.call('SET', KEYS[i], ARGV[i])
    else
      redis.call('DEL', KEYS[i])
    end
  end
  return { 'ok' }
end
if mode == 'finish' then
  local skus = {}
  for i = 2, #KEYS do
    local b = 13 + (i - 2) * 6
    skus[#skus + 1] = ARGV[b]
    redis.call('DEL', KEYS[i])
    redis.call('HSET', KEYS[i], 'total', ARGV[b + 1], 'avail', ARGV[b + 2], 'resv', ARGV[b + 3],
      'sold', ARGV[b + 4], 'price', ARGV[b + 5], 'gen', ARGV[10])
  end
  write_meta(KEYS[1], 3, skus)
  redis.call('HSET', KEYS[1], 'shards', ARGV[11])
  if ARGV[12] == '1' then
    redis.call('HSET', KEYS[1], 'restoring', 1)
  end
  redis.call('PUBLISH', ARGV[9], 'meta ' .. ARGV[2])
  return { 'ok' }
end
return redis.error_reply('restore: unknown step ' .. tostring(mode))
