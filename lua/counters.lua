-- counters: one consistent snapshot of every sku's stock counters of one shard.
-- KEYS: 1 meta, 2.. stock hashes
-- Replies: {'restoring'} while the shard is lost or being rebuilt, else
--   {'ok', {total, avail, resv, sold, price} per stock key ({} for a missing key)}

if shard_state(KEYS[1]) ~= 'live' then
  return { 'restoring' }
end
local out = {}
for i = 2, #KEYS do
  local s = redis.call('HMGET', KEYS[i], 'total', 'avail', 'resv', 'sold', 'price')
  if s[1] then
    out[i - 1] = s
  else
    out[i - 1] = {}
  end
end
return { 'ok', out }
