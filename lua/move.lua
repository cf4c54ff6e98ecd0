-- move: units of one sku from one shard of a campaign to another, in steps that each
-- run on their own shard (two slots: no script can hold both), never creating or
-- losing a unit:
--   'take'   on the donor: n = min(avail, want) units leave `avail` for `out` (nothing
--            unless at least `min` are there) and a record of them enters the donor's
--            moves hash (move id -> "<to shard> <sku> <n> <taken ms>"); one step.
--   'give'   on the receiver: a move id is applied at most once (moved-in set): the
--            units join `avail` and `in`; a sku brought back from zero gets a new
--            generation and a restock notice.
--   'settle' on the donor: the record leaves once the receiver has the units.
-- `total` stays each shard's launch slice, so per shard avail + resv + sold =
-- total + in - out, and at every instant, per sku,
--   Σ shards (avail + resv + sold) + units in transit (taken, not yet given)
--     = Σ shards total = stock_total.
-- A gateway that stops between steps leaves a record; the sync-worker finishes it
-- (give, then settle: both are safe to repeat). Take and give answer 'restoring' on a
-- shard that is not live and while a rebuild has paused the campaign's moves.
-- take:   KEYS 1 meta, 2 stock hash, 3 moves hash
--         ARGV 1 'take', 2 move id, 3 to shard, 4 sku, 5 want, 6 min (the taken-at time is
--         Redis's clock)
--         -> {'taken', n} | {'short', avail} | {'restoring'}
-- give:   KEYS 1 meta, 2 stock hash, 3 moved-in set
--         ARGV 1 'give', 2 move id, 3 n, 4 campaign, 5 sku, 6 events channel
--         -> {'given'} | {'already'} | {'restoring'}
-- settle: KEYS 1 moves hash (the receiver's set is in another slot: the caller
--         settles only after 'given' or 'already')
--         ARGV 1 'settle', 2 move id -> {'settled'} | {'gone'}
-- received: KEYS 1 moved-in set; ARGV 1 'received', 2 move id -> 1 | 0 (read only)

local MOVED_IN_KEEP_MS = 86400000
local mode = ARGV[1]
if mode == 'take' then
  if shard_state(KEYS[1]) ~= 'live' or moves_paused(KEYS[1]) then
    return { 'restoring' }
  end
  -- The same move id twice (a call repeated after a lost reply) takes nothing more.
  local seen = redis.call('HGET', KEYS[3], ARGV[2])
  if seen then
    return { 'taken', string.match(seen, '^%S+ %S+ (%d+)') }
  end
  local want, min = tonumber(ARGV[5]), tonumber(ARGV[6])
  local avail = tonumber(redis.call('HGET', KEYS[2], 'avail') or '0')
  if avail < min or want < 1 then
    return { 'short', int(avail) }
  end
  local n = math.min(avail, want)
  redis.call('HINCRBY', KEYS[2], 'avail', -n)
  redis.call('HINCRBY', KEYS[2], 'out', n)
  -- Redis's clock, not the caller's: whoever finishes a stale move compares with it.
  redis.call('HSET', KEYS[3], ARGV[2], ARGV[3] .. ' ' .. ARGV[4] .. ' ' .. int(n) .. ' ' .. int(now_ms()))
  return { 'taken', int(n) }
end
if mode == 'give' then
  if shard_state(KEYS[1]) ~= 'live' or moves_paused(KEYS[1]) then
    return { 'restoring' }
  end
  -- Received ids, with when: kept MOVED_IN_KEEP_MS (a day), far longer than a move can
  -- stay unsettled while anything runs, so the set holds a day of moves, not a
  -- campaign's whole life. A set written before (ids without times) is kept as is.
  local now = now_ms()
  local fresh = redis.pcall('ZADD', KEYS[3], 'NX', now, ARGV[2])
  if type(fresh) == 'table' and fresh.err then
    fresh = redis.call('SADD', KEYS[3], ARGV[2])
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - MOVED_IN_KEEP_MS)
  end
  if fresh == 0 then
    return { 'already' }
  end
  local n = tonumber(ARGV[3])
  local avail = redis.call('HINCRBY', KEYS[2], 'avail', n)
  redis.call('HINCRBY', KEYS[2], 'in', n)
  if avail == n then
    local gen = redis.call('HINCRBY', KEYS[2], 'gen', 1)
    notify(ARGV[6], 'restock ' .. ARGV[4] .. ' ' .. ARGV[5] .. ' ' .. int(gen))
  end
  return { 'given' }
end
if mode == 'received' then
  local at = redis.pcall('ZSCORE', KEYS[1], ARGV[2])
  if type(at) == 'table' and at.err then
    return redis.call('SISMEMBER', KEYS[1], ARGV[2])
  end
  if at then
    return 1
  end
  return 0
end
if mode == 'settle' then
  if redis.call('HDEL', KEYS[1], ARGV[2]) == 0 then
    return { 'gone' }
  end
  return { 'settled' }
end
return redis.error_reply('move: unknown step ' .. tostring(mode))
