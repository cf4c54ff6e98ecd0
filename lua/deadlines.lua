-- deadlines: one shard's unpaid orders in deadline order, for the expiry sweep.
-- reserve.lua appends each new order's id to a list, in reservation order, which is
-- deadline order too (one payment window per campaign, one Redis clock per shard).
-- A paid, cancelled or expired order stays where it is (a list has no cheap removal
-- from its middle) and leaves from the head, here, as the sweep meets it: an id costs
-- a list entry (~40 bytes) instead of a sorted-set member (~150). The sorted set that
-- builds before this one (and rebuilds) write is read too.
-- KEYS: 1 deadlines (list), 2 pending (sorted set, by deadline)
-- ARGV: 1 now (ms), 2 due ids wanted at most (0: only the next deadline), 3 the
--       shard's order key prefix
-- Reply: {next, id, ...}: `next` is the earliest deadline of an order still pending
--   (-1: none; `now` when the scan's bound came first: look again), then the ids of pending orders due at `now`, oldest first, at most
--   ARGV[2] (the list's first, then the sorted set's).

local now, want, order_prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
-- Ids read per LRANGE, and at most per call: a long run of settled orders behind a
-- pending one is walked past a page at a time, and a call stays short.
local PAGE, SCAN_MAX = 256, 4096

-- An order's key from its id: named by its ref (the id's last 20 hex digits, led by an
-- 8) when it was made from one, else by the whole id (builds before derived ids: a
-- UUIDv7 has its version digit 7 there). `OrderId::key_part` is the same rule.
local function order_key(id)
  if string.sub(id, -20, -20) == '8' then
    return order_prefix .. string.sub(id, -20)
  end
  return order_prefix .. id
end

local reply = { -1 }
local next_ms
local settled_head = 0
local at, at_head, done = 0, true, false
while not done and at < SCAN_MAX do
  local ids = redis.call('LRANGE', KEYS[1], at, at + PAGE - 1)
  if #ids == 0 then
    break
  end
  for _, id in ipairs(ids) do
    local o = redis.call('HMGET', order_key(id), 'state', 'expires', 'created')
    if o[1] ~= 'pending_payment' or not is_order_of(id, o[3]) then
      -- Settled (or gone with a rebuild): nothing left to expire.
      if at_head then
        settled_head = settled_head + 1
      end
    else
      at_head = false
      local expires = tonumber(o[2])
      next_ms = next_ms or expires
      if expires > now or #reply - 1 >= want then
        done = true
        break
      end
      reply[#reply + 1] = id
    end
  end
  at = at + #ids
end
if settled_head > 0 then
  redis.call('LTRIM', KEYS[1], settled_head, -1)
end
-- The scan stopped at its bound before it met a pending order or the list's end: what
-- lies behind is not known yet, so the sweep must look again now (never "nothing
-- pending": a long run of paid orders at the head would hide an unpaid one).
if not done and not next_ms and at >= SCAN_MAX then
  next_ms = now
end

local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if first[2] then
  local z = tonumber(first[2])
  if not next_ms or z < next_ms then
    next_ms = z
  end
  local room = want - (#reply - 1)
  if room > 0 then
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, room)) do
      reply[#reply + 1] = id
    end
  end
end
reply[1] = next_ms or -1
return reply
