-- counters: one consistent snapshot of every sku's stock counters.
-- KEYS: 1.. stock hashes
-- Replies: one {total, avail, resv, sold, price} per key ({} for a missing key)

local out = {}
for i = 1, #KEYS do
  local s = redis.call('HMGET', KEYS[i], 'total', 'avail', 'resv', 'sold', 'price')
  if s[1] then
    out[i] = s
  else
    out[i] = {}
  end
end
return out
