-- warmup: loads a new campaign's window and stock in one step. The caller lists the
-- campaign in the index (another slot on a cluster) before this runs, so a campaign
-- that can sell is always one the relay and the sweeps visit.
-- Refuses to touch a campaign that already exists, so a repeated launch can never
-- reset live stock.
-- KEYS: 1 meta, 2.. one stock hash per sku, in ARGV order
-- ARGV: 1 campaign, 2 starts_ms, 3 ends_ms, 4 per_user_limit, 5 payment_window_secs,
--       6 max_orders_per_sec ('' = none), 7 max_user_requests_per_sec ('' = none),
--       8 events channel, 9 the campaign's shard count, 10 '1': the users' units in one
--       hash (meta `layout` 2, `engine.users_hash`), then (sku, stock, price_cents)
--       triples (a sharded campaign: this shard's slice of each sku's stock)
-- Replies: {'created'} {'exists'}

local FIRST_STOCK_KEY = 2
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    return { 'exists' }
  end
end
local skus = {}
for i = FIRST_STOCK_KEY, #KEYS do
  local base = 11 + (i - FIRST_STOCK_KEY) * 3
  local sku, stock, price = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  skus[#skus + 1] = sku
  redis.call('HSET', KEYS[i], 'total', stock, 'avail', stock, 'resv', 0, 'sold', 0,
    'price', price, 'gen', 0)
end
write_meta(KEYS[1], 2, skus)
redis.call('HSET', KEYS[1], 'shards', ARGV[9])
if ARGV[10] == '1' then
  redis.call('HSET', KEYS[1], 'layout', 2)
end
redis.call('PUBLISH', ARGV[8], 'meta ' .. ARGV[1])
return { 'created' }
