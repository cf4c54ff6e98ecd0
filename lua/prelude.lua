-- Shared by every script (concatenated in front of each one at compile time).
-- Numbers are written with %d so no value ever passes through a float format.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function int(v)
  return string.format('%d', v)
end

-- Whether a campaign shard can be used: 'live', 'missing' (no meta: its data was
-- lost, or it never existed) or 'restoring' (being rebuilt from MySQL and the other
-- shards). Every script that reads or changes a shard's stock or orders asks this
-- first and answers 503 on anything but 'live', so a half-rebuilt shard is never
-- sold from, released into or confirmed against.
local function shard_state(meta_key)
  local m = redis.call('HMGET', meta_key, 'starts', 'restoring')
  if not m[1] then
    return 'missing'
  end
  if m[2] then
    return 'restoring'
  end
  return 'live'
end

-- While a rebuild reads the surviving shards of a campaign, units may not move between
-- them (a read of one shard and then another must not see a unit in both): take and
-- give refuse until `moves_paused_until` (Redis clock, ms) has passed. The pause
-- lapses by itself if the rebuilder stops.
local function moves_paused(meta_key)
  local until_ms = redis.call('HGET', meta_key, 'moves_paused_until')
  return until_ms ~= false and now_ms() < tonumber(until_ms)
end

-- One order's state as an order event (the JSON the persister reads): the whole
-- order, so a consumer can apply events in any order. Numbers come formatted
-- (`event_ms` may come as a number). Campaign and order ids ([A-Za-z0-9_.-], checked
-- at the edge) and states need no escaping; a user id may. `extra` (optional) is more
-- fields, already formatted, each led by a comma.
local function order_doc(campaign, order_id, user, state, items_json, total, created, expires, paid,
                         window, event_ms, extra)
  return '{"order_id":"' .. order_id
    .. '","campaign_id":"' .. campaign
    .. '","user_id":' .. cjson.encode(user)
    .. ',"status":"' .. state .. '"'
    .. ',"items":' .. items_json
    .. ',"total_cents":' .. total
    .. ',"created_ms":' .. created
    .. ',"expires_ms":' .. expires
    .. ',"paid_ms":' .. (paid or '0')
    .. ',"payment_window_secs":' .. window
    .. ',"event_ms":' .. (type(event_ms) == 'string' and event_ms or int(event_ms)) .. (extra or '') .. '}'
end

-- When an outbox is empty, an `outbox <tag>` notice tells the relays that it has work
-- again (the tag is the outbox key's hash tag without `c:`: the campaign id, or a
-- shard's tag): an idle relay polls nothing (a missed notice is caught by the relay's
-- rescan after a notice gap). `len` (optional) is the outbox's length if the caller
-- knows it.
-- Sends a notice. A channel with a hash tag is a shard's own channel (on a cluster, in
-- the slot of the shard's keys): SPUBLISH reaches only that slot's master and replicas,
-- where a PUBLISH would be forwarded to every node of the cluster.
local function notify(channel, text)
  if string.find(channel, '{', 1, true) then
    redis.call('SPUBLISH', channel, text)
  else
    redis.call('PUBLISH', channel, text)
  end
end

local function announce_work(outbox, campaign, channel, len)
  if (len or redis.call('XLEN', outbox)) == 0 then
    notify(channel, 'outbox ' .. (string.match(outbox, '{c:(.-)}') or campaign))
  end
end

-- Appends one outbox entry carrying many orders' events (field `orders`): one entry,
-- one AMQP message, one persister transaction for everything one script call decided.
-- A version 2 message, {"version":2,"events":[...]}, of whole events; or, with `rows`
-- true, a version 3 message, {"version":3,"reserved":[...]}, of reservations as
-- compact rows (`common/src/message.rs`, `ReservedRow`, says what a row holds and what
-- it implies). `len` as for `announce_work`.
local function emit_docs(outbox, campaign, docs, channel, len, rows)
  announce_work(outbox, campaign, channel, len)
  local head = rows and '{"version":3,"reserved":[' or '{"version":2,"events":['
  redis.call('XADD', outbox, '*', 'orders', head .. table.concat(docs, ',') .. ']}')
end

-- Appends one order's event, read from its hash, as a version 1 entry (field `order`).
local function emit(outbox, campaign, order_id, order_key, event_ms, channel, extra)
  local o = redis.call('HMGET', order_key, 'user', 'state', 'items', 'total', 'created', 'expires', 'paid', 'window')
  announce_work(outbox, campaign, channel)
  redis.call('XADD', outbox, '*', 'order',
    order_doc(campaign, order_id, o[1], o[2], o[3], o[4], o[5], o[6], o[7], o[8], event_ms, extra))
end

-- Whether the order hash read under an id's key is that id's order. An id made from a
-- ref (its last 20 hex digits, led by an 8) shares its key with every order its key's
-- chain ever named there, so it must also carry the hash's creation time (the 12 hex
-- digits before the ref): an order a lost shard forgot and the retry that took its ref
-- again are two orders. Ids of builds before (UUIDv7) have a key of their own.
local function is_order_of(order_id, created)
  if string.sub(order_id, -20, -20) ~= '8' then
    return true
  end
  return tonumber(string.sub(order_id, -32, -21), 16) == tonumber(created)
end

-- Reads an order's line list back into {sku, qty} pairs.
local function order_lines(items_json)
  local lines = {}
  for _, it in ipairs(cjson.decode(items_json)) do
    lines[#lines + 1] = { it.sku_id, tonumber(it.quantity) }
  end
  return lines
end

-- Every stock key must be the one derived from the order's own lines: a caller
-- that passed other keys would otherwise move the wrong counters.
local function stock_keys_match(prefix, lines, first_key_index, count)
  if count ~= #lines then
    return false
  end
  for i, line in ipairs(lines) do
    if KEYS[first_key_index + i - 1] ~= prefix .. 'stock:' .. line[1] then
      return false
    end
  end
  return true
end

-- Writes a campaign's meta hash from ARGV[first ..]: starts, ends, per-user limit,
-- payment window, max_orders_per_sec, max_user_rps ('' = none); `skus` lists its skus.
local function write_meta(key, first, skus)
  redis.call('HSET', key, 'starts', ARGV[first], 'ends', ARGV[first + 1], 'limit', ARGV[first + 2],
    'window', ARGV[first + 3], 'max_orders_per_sec', ARGV[first + 4], 'max_user_rps', ARGV[first + 5],
    'skus', table.concat(skus, ','), 'version', 1)
end
