-- tune: changes a live campaign's end, per-user limit or thresholds, and tells every
-- gateway to reload it.
-- KEYS: 1 meta
-- ARGV: 1 campaign, 2 events channel, then (field, value) pairs among
--       ends, limit, max_orders_per_sec, max_user_rps ('' = no threshold)
-- Replies: {'tuned'} {'not_found'} {'restoring'} {'ends_before_start'}

local state = shard_state(KEYS[1])
if state == 'missing' then
  return { 'not_found' }
end
if state == 'restoring' then
  return { 'restoring' }
end
for i = 3, #ARGV, 2 do
  if ARGV[i] == 'ends' and tonumber(ARGV[i + 1]) <= tonumber(redis.call('HGET', KEYS[1], 'starts')) then
    return { 'ends_before_start' }
  end
end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PUBLISH', ARGV[2], 'meta ' .. ARGV[1])
return { 'tuned' }
