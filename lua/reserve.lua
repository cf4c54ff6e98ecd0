-- reserve: the orders of one campaign gathered into one call (group commit), each
-- decided on its own exactly as if it came alone, in arrival order: all its lines or
-- none, per-user limit (answered before stock), idempotency, window, thresholds,
-- sold-out naming the sku.
-- What is the batch's is done once: campaign meta, the clock, the rate counter, the
-- outbox length, each stock hash's read and write, one push of the deadlines, one
-- outbox entry carrying every order granted (a version 3 entry: a compact row per
-- order), one buyer notice.
-- The order's own hash is its idempotency record: it is named by the order's ref,
-- derived from (campaign, user, idempotency key), so a retry names the same hash, and
-- the fingerprint is its lines. The id is `<campaign>.<12 hex of created ms><ref>`.
-- A key whose order is older than the idempotency window names a new order: the next
-- ref of the key's chain (see `engine/src/order_ids.rs`). An idempotency
-- record of its own (a string, or a hash written before the string form) is what
-- builds before this one wrote; in a shard launched before the users hash it is still
-- read first, so their orders replay, and it is written too while `write_records` is 1
-- (a rolling upgrade from such a build, or a window in which a rollback to one must
-- stay safe: its gateways find a retry's order only through that record). A shard with
-- the users hash was launched by this build: no such record can be there, and none is
-- read.
-- The users' units: a shard with meta `layout` 2 keeps them in one hash (user → units
-- held or bought; a field per user who ever got a reservation, so its fields are the
-- buyers); a shard launched before it keeps a count string per user and a buyer set.
-- The keys of that earlier layout (a user's count string, an order's idempotency
-- record) are named here, in the shard's slot, only for the shards that have them
-- (`legacy_keys`): the caller sends none.
-- KEYS: 1 meta, 2 outbox, 3 deadlines (list), 4 buyers (set), 5 order rate
--       (string "<second> <count>"), 6 users (hash), then per order, in ARGV order:
--       order (named by the chain's first ref), one stock hash per line
-- ARGV: 1 campaign, 2 idempotency ttl secs, 3 outbox max length, 4 notice channel,
--       5 write_records (1: also write each order's idempotency record), 6 the outbox
--       entry's message version (3: compact rows; 2: whole events, which builds
--       before it read), then per
--       order: its ref (derived), user_id, fingerprint, idempotency key, its sampled
--       trace's W3C traceparent or '' (carried on in its outbox event), number of
--       lines, then (sku, qty) per line
-- Reply: one element per order, in order, then the call's own {created_ms, expires_ms}
-- (this call's clock and the deadline of every order it grants; 0 when it grants none).
-- Each order's element is one of
--   prices (a string, not a list): the common new order, told only what neither its
--     request nor the call's last element says: the price of each line in order,
--     comma-separated; its ref is the requested one and it emptied no sku; its id is
--     `<campaign>.<12 hex of created_ms><ref>`, its total the lines' quantities times
--     their prices (one string: no list for Redis to build and send per order)
--   {'granted', created_ms, expires_ms, prices, ref, {sku, gen, ...}, buyers}: a new
--     order that brought a sku to zero or whose key's chain moved past the requested
--     ref (`ref`, '' when it did not)
--   {'replay', order_id, items_json, total, created_ms, expires_ms, {}}
--   {'reused'}  {'campaign_not_found'}  {'not_active'}  {'sku_not_found', sku}
--   {'sold_out', sku, gen, available, buyers}
--   {'limit_exceeded', held, limit}  {'backlog_full', len}  {'rate_limited', retry_after_ms}
--   {'restoring'} (every order, while the shard is being rebuilt)
-- The {sku, gen, ...} list names skus this order brought to zero, with their stock
-- generation. `buyers` (the buyer set's size after the call) comes with every reply
-- that can flag a sku sold out: a gateway trusts that flag only once it has heard of
-- that many buyers, so a buyer's retry is never answered sold_out before their notice
-- arrived. Every order's conditions are checked before its first write.

local campaign, idem_ttl, outbox_max, channel = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local write_records = ARGV[5] == '1'
local compact = ARGV[6] == '3'
local K_META, K_OUTBOX, K_DEADLINES, K_BUYERS, K_RATE, K_USERS = 1, 2, 3, 4, 5, 6

local meta = redis.call('HMGET', KEYS[K_META], 'starts', 'ends', 'limit', 'window', 'max_orders_per_sec',
  'restoring', 'shards', 'layout')
local users_hash = meta[8] == '2'
if meta[6] then
  -- Being rebuilt: no decision at all (not even a replay: its record may not be back yet).
  local replies, at = {}, 7
  while at <= #ARGV do
    replies[#replies + 1] = { 'restoring' }
    at = at + 6 + 2 * tonumber(ARGV[at + 5])
  end
  replies[#replies + 1] = { 0, 0 }
  return replies
end
local now = now_ms()
local now_s = int(now)
local open = meta[1] and now >= tonumber(meta[1]) and now < tonumber(meta[2])
local backlog = redis.call('XLEN', KEYS[K_OUTBOX])
local second = math.floor(now / 1000)
-- max_orders_per_sec holds for the campaign: each of its N shards grants at most its
-- ceil(threshold / N) in a second of Redis time, so the campaign grants at most the
-- threshold plus one order per shard (users are spread over the shards by a hash).
local max_rate = tonumber(meta[5] or '')
if max_rate then
  max_rate = math.ceil(max_rate / math.max(1, tonumber(meta[7] or '1') or 1))
end
local granted_this_second = 0
if max_rate then
  local rate = redis.call('GET', KEYS[K_RATE])
  if rate then
    local sep = string.find(rate, ' ', 1, true)
    if tonumber(string.sub(rate, 1, sep - 1)) == second then
      granted_this_second = tonumber(string.sub(rate, sep + 1))
    end
  end
end

-- The keys of this shard start as its meta key does (less its `meta`).
local prefix = string.sub(KEYS[K_META], 1, -5)
local order_prefix = prefix .. 'order:'

-- A user's count string and an order's idempotency record, as `engine/src/keys.rs`
-- names them (`user`, `idempotency`): only shards without the users hash have them.
local function legacy_keys(user_id, idem_key)
  return prefix .. 'user:' .. user_id, prefix .. 'idem:' .. #user_id .. ':' .. user_id .. ':' .. idem_key
end
local window_ms = idem_ttl * 1000
-- An empty list in a reply (no sku emptied), shared by every reply that has one.
local NONE = {}
-- What every order this call grants shares: its ids' time digits and its deadline.
local id_now, expires_ms, expires_s = string.format('%012x', now), nil, nil
-- Ids of one key's chain looked at, at most (the chain grows by one per idempotency
-- window in which the key was used again).
local MAX_CHAIN = 64

-- Whether an order's items (JSON) are exactly the requested lines (ARGV from `first`):
-- the fingerprint, with no sort (skus are distinct within an order).
local function same_lines(items_json, first, n)
  local items = cjson.decode(items_json)
  if #items ~= n then
    return false
  end
  local want = {}
  for i = 1, n do
    want[ARGV[first + 2 * (i - 1)]] = tonumber(ARGV[first + 2 * i - 1])
  end
  for _, it in ipairs(items) do
    if want[it.sku_id] ~= tonumber(it.quantity) then
      return false
    end
  end
  return true
end

-- An order's id: its creation time (Redis ms, 12 hex digits) in front of its ref, so
-- ids grow with time (this call's own time formatted once, for every order it grants).
local function id_of(ref, created_ms)
  return campaign .. '.' .. (created_ms == now and id_now or string.format('%012x', created_ms)) .. ref
end

-- A string as JSON: quoted as it is unless it has a character JSON escapes (most user
-- ids and every idempotency key have none; cjson is the slow way).
local function json_text(v)
  if string.find(v, '[%c"\\]') then
    return cjson.encode(v)
  end
  return '"' .. v .. '"'
end

-- What a request's key already made: walks the key's chain from the derived ref to
-- the first order still in its window (a replay, or `reused` when its lines differ)
-- or to the first free ref. Returns that reply, or nil and the free ref and its key.
local function earlier_order(ref0, key0, user_id, first, n, now)
  local ref, key = ref0, key0
  for step = 1, MAX_CHAIN do
    -- Every writer of an order hash writes `user`: a new order's probe reads one field.
    local user = redis.call('HGET', key, 'user')
    if not user then
      return nil, ref, key
    end
    local o = redis.call('HMGET', key, 'items', 'total', 'created', 'expires')
    if now < tonumber(o[3]) + window_ms then
      if user == user_id and same_lines(o[1], first, n) then
        return { 'replay', id_of(ref, tonumber(o[3])), o[1], o[2], o[3], o[4], NONE }
      end
      return { 'reused' }
    end
    ref = '8' .. string.sub(redis.sha1hex(ref0 .. '#' .. step), 1, 17) .. string.sub(ref0, -2)
    key = order_prefix .. ref
  end
  return { 'reused' }
end

-- An idempotency record: a string "fp\norder\ntotal\ncreated\nexpires\nitems", or
-- (written before the string form) a hash with those fields; nil when absent.
local function idempotency_record(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'table' and v.err then
    local r = redis.call('HMGET', key, 'fp', 'order', 'items', 'total', 'created', 'expires')
    return { fp = r[1], order = r[2], items = r[3], total = r[4], created = r[5], expires = r[6] }
  end
  if not v then
    return nil
  end
  local f, at = {}, 1
  for _ = 1, 5 do
    local nl = string.find(v, '\n', at, true)
    f[#f + 1] = string.sub(v, at, nl - 1)
    at = nl + 1
  end
  return { fp = f[1], order = f[2], total = f[3], created = f[4], expires = f[5], items = string.sub(v, at) }
end

-- A batch's stock: each stock hash is read at its first line and written once at the
-- end (what its lines took), not per line: orders of one hot sku share one key. Each
-- order is still decided against the stock its predecessors left.
local stocks, touched = {}, {}
local function stock_of(key)
  local st = stocks[key]
  if st == nil then
    local s = redis.call('HMGET', key, 'avail', 'price', 'gen')
    -- The price also as written (a decimal integer): what is written and answered
    -- below is built from the strings, with no number formatted again.
    st = s[1] and { avail = tonumber(s[1]), price = tonumber(s[2]), price_s = s[2], gen = s[3] or '0', taken = 0 }
      or false
    stocks[key] = st
  end
  return st
end

-- A line's item (JSON) and its row text (`sku:qty:price`); a one-unit line's are made
-- once per sku and call. Sku ids are [A-Za-z0-9_-] (checked at the edge): no escaping.
local function line_text(l, st)
  if l.qty == 1 and st.one_item then
    return st.one_item, st.one_text
  end
  local item = '{"sku_id":"' .. l.sku .. '","quantity":' .. l.qty_s .. ',"price_cents":' .. st.price_s .. '}'
  local text = l.sku .. ':' .. l.qty_s .. ':' .. st.price_s
  if l.qty == 1 then
    st.one_item, st.one_text = item, text
  end
  return item, text
end
-- Reused by every order of the call (filled from 1 to its line count).
local ITEMS, TEXTS, PRICES = {}, {}, {}
-- The first `n` of a reused list, comma-separated (one line: the line as it is).
local function joined(list, n)
  return n == 1 and list[1] or table.concat(list, ',', 1, n)
end

-- Each order's lines, as tables reused from order to order (filled from 1 to its count).
local LINES = {}
local replies = {}
local docs = {}
local deadlines = {}
local new_buyers = {}
local needs_buyer_count = {}
local key_at, arg_at = 7, 7

while arg_at <= #ARGV do
  local asked_ref, user_id, fingerprint, idem_key = ARGV[arg_at], ARGV[arg_at + 1], ARGV[arg_at + 2], ARGV[arg_at + 3]
  local ref = asked_ref
  local trace = ARGV[arg_at + 4]
  local n = tonumber(ARGV[arg_at + 5])
  local k_order, first_stock = KEYS[key_at], key_at + 1
  local first_line = arg_at + 6
  key_at = first_stock + n
  arg_at = first_line + 2 * n
  local k_user, k_idem
  if not users_hash or write_records then
    k_user, k_idem = legacy_keys(user_id, idem_key)
  end

  local reply
  local seen = not users_hash and idempotency_record(k_idem)
  if seen then
    if seen.fp ~= fingerprint then
      reply = { 'reused' }
    else
      reply = { 'replay', seen.order, seen.items, seen.total, seen.created, seen.expires, NONE }
    end
  else
    reply, ref, k_order = earlier_order(ref, k_order, user_id, first_line, n, now)
  end
  if reply then
    -- A replay or a reused key: nothing more to decide.
  elseif not meta[1] then
    reply = { 'campaign_not_found' }
  elseif not open then
    reply = { 'not_active' }
  else
    local lines, units = LINES, 0
    for i = 1, n do
      local sku, qty = ARGV[first_line + 2 * (i - 1)], tonumber(ARGV[first_line + 2 * i - 1])
      local key = KEYS[first_stock + i - 1]
      local st = stock_of(key)
      if not st then
        reply = { 'sku_not_found', sku }
        break
      end
      local l = lines[i]
      if not l then
        l = {}
        lines[i] = l
      end
      l.sku, l.qty, l.qty_s, l.key, l.st = sku, qty, ARGV[first_line + 2 * i - 1], key, st
      units = units + qty
    end
    -- What would refuse the order besides its user's limit: stock, the outbox backlog,
    -- the rate. These checks write nothing, so they run first; the limit still answers
    -- first (an order over it is refused whatever stock is left, and a refused order
    -- never makes a sharded campaign move units to this shard).
    local refused
    if not reply then
      for i = 1, n do
        local st = lines[i].st
        if st.avail < lines[i].qty then
          refused = { 'sold_out', lines[i].sku, st.gen, int(st.avail), 0 }
          break
        end
      end
      if refused then
        -- Answered below, unless the limit answers first.
      elseif backlog + #docs >= outbox_max then
        refused = { 'backlog_full', backlog + #docs }
      elseif max_rate and granted_this_second >= max_rate then
        -- max_orders_per_sec counts reservations granted in the current second (Redis
        -- clock), across every gateway; only requests that would otherwise succeed count.
        refused = { 'rate_limited', int(1000 - now % 1000) }
      end
    end
    -- The limit. With the users hash, an order nothing else refuses has its units added
    -- and the sum checked: one command, not a read and then a write. Over the limit,
    -- the user held units before (an order over the limit by itself is read first), so
    -- taking its units back leaves the user's field as it was.
    local limit = tonumber(meta[3])
    local known, counted = nil, false
    if reply then
      -- A replay, a reused key, or no such campaign, window or sku.
    elseif users_hash and not refused and units <= limit then
      local after = redis.call('HINCRBY', KEYS[K_USERS], user_id, units)
      if after > limit then
        redis.call('HINCRBY', KEYS[K_USERS], user_id, -units)
        reply = { 'limit_exceeded', int(after - units), meta[3] }
      else
        -- None held before: a new buyer, or one whose orders all ended (told again,
        -- which changes nothing).
        known = after ~= units or nil
        counted = true
      end
    else
      local held
      if users_hash then
        held = redis.call('HGET', KEYS[K_USERS], user_id)
      else
        held = redis.call('GET', k_user)
      end
      held = tonumber(held or '0')
      if held + units > limit then
        reply = { 'limit_exceeded', int(held), meta[3] }
      elseif refused then
        reply = refused
        if refused[1] == 'sold_out' then
          needs_buyer_count[#replies + 1] = 5
        end
      end
    end
    if not reply then
      -- All checks passed: from here on every call writes.
      granted_this_second = granted_this_second + 1
      local total, items, lines_text, prices, emptied = 0, ITEMS, TEXTS, PRICES, NONE
      for i = 1, n do
        local l = lines[i]
        local st = l.st
        if st.taken == 0 then
          touched[#touched + 1] = l.key
        end
        st.avail, st.taken = st.avail - l.qty, st.taken + l.qty
        if st.avail == 0 then
          if emptied == NONE then
            emptied = {}
          end
          emptied[#emptied + 1] = l.sku
          emptied[#emptied + 1] = st.gen
        end
        total = total + l.qty * st.price
        local item, text = line_text(l, st)
        items[i] = item
        lines_text[i] = text
        prices[i] = st.price_s
      end
      -- One line of one unit: the same text for every such order of the sku (made once).
      local items_json
      if n == 1 and lines[1].qty == 1 then
        local st = lines[1].st
        items_json = st.one_json
        if not items_json then
          items_json = '[' .. items[1] .. ']'
          st.one_json = items_json
        end
      else
        items_json = '[' .. joined(items, n) .. ']'
      end
      local order_id = id_of(ref, now)
      if not expires_ms then
        expires_ms = now + tonumber(meta[4]) * 1000
        expires_s = int(expires_ms)
      end
      -- One line of one unit (most orders): its units and total are as they came.
      local one = n == 1 and lines[1].qty == 1
      local units_s = one and '1' or int(units)
      local total_s = one and lines[1].st.price_s or int(total)
      if not counted then
        redis.call('INCRBY', k_user, units_s)
      end
      redis.call('HSET', k_order, 'user', user_id, 'state', 'pending_payment', 'items', items_json,
        'units', units_s, 'total', total_s, 'created', now_s, 'expires', expires_s, 'window', meta[4])
      if write_records then
        -- One string, one command: fingerprint and first answer (items last: no newlines).
        redis.call('SET', k_idem, fingerprint .. '\n' .. order_id .. '\n' .. total_s .. '\n' .. now_s
          .. '\n' .. expires_s .. '\n' .. items_json, 'EX', idem_ttl)
      end
      deadlines[#deadlines + 1] = order_id
      -- Gateways answer sold-out and ended locally, except to known buyers, whose
      -- retries must reach this script to be replayed.
      if users_hash then
        if not known then
          new_buyers[#new_buyers + 1] = user_id
        end
      elseif redis.call('SADD', KEYS[K_BUYERS], user_id) == 1 then
        new_buyers[#new_buyers + 1] = user_id
      end
      -- The order's event, as a compact row (what a reservation implies is left out)
      -- or whole; the key travels to MySQL, so a rebuilt shard still replays this order.
      -- An idempotency key is [A-Za-z0-9_.:-] (checked at the edge): quoted as it is.
      if compact then
        docs[#docs + 1] = '["' .. order_id .. '",' .. json_text(user_id) .. ',"' .. idem_key .. '","'
          .. joined(lines_text, n) .. '",' .. total_s .. ',' .. now_s .. ',' .. expires_s .. ','
          .. meta[4] .. (trace ~= '' and ',{"trace":' .. cjson.encode(trace) .. '}]' or ']')
      else
        docs[#docs + 1] = order_doc(campaign, order_id, user_id, 'pending_payment', items_json, total_s,
          now_s, expires_s, '0', meta[4], now_s, ',"idempotency_key":' .. cjson.encode(idem_key)
          .. (trace ~= '' and ',"trace":' .. cjson.encode(trace) or ''))
      end
      if emptied == NONE and ref == asked_ref then
        reply = joined(prices, n)
      else
        reply = { 'granted', now, expires_ms, joined(prices, n), ref == asked_ref and '' or ref, emptied, 0 }
        needs_buyer_count[#replies + 1] = 7
      end
    end
  end
  replies[#replies + 1] = reply
end

for _, key in ipairs(touched) do
  local taken = int(stocks[key].taken)
  redis.call('HINCRBY', key, 'avail', '-' .. taken)
  redis.call('HINCRBY', key, 'resv', taken)
end
-- Reservation order is deadline order (deadlines.lua reads it); pushed in slices, as
-- `unpack` has a stack limit.
for at = 1, #deadlines, 512 do
  redis.call('RPUSH', KEYS[K_DEADLINES], unpack(deadlines, at, math.min(at + 511, #deadlines)))
end
if #docs > 0 then
  if max_rate then
    redis.call('SET', KEYS[K_RATE], int(second) .. ' ' .. int(granted_this_second), 'PX', 2000)
  end
  -- Nothing but this call has written to the outbox since `backlog` was read.
  emit_docs(KEYS[K_OUTBOX], campaign, docs, channel, backlog, compact)
end
if #new_buyers > 0 then
  notify(channel, 'buyers ' .. campaign .. ' ' .. cjson.encode(new_buyers))
end
if next(needs_buyer_count) then
  local buyers = users_hash and redis.call('HLEN', KEYS[K_USERS]) or redis.call('SCARD', KEYS[K_BUYERS])
  for i, at in pairs(needs_buyer_count) do
    replies[i][at] = buyers
  end
end
replies[#replies + 1] = { now, expires_ms or 0 }
return replies
