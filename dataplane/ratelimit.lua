-- kubegate token buckets for a batch of requests, decided one after another
-- in order. Each request's buckets are checked first and charged only if all
-- pass (all-or-nothing per request); the batch costs one round trip.
-- KEYS: every request's buckets, request after request (all keys of one call
-- share one hash tag: same cluster slot).
-- ARGV[1]: number of requests; then per request: its number of buckets n, and
-- per bucket: capacity (burst), refill tokens per second, key TTL in ms (time
-- to refill from empty, plus slack).
-- Server time (TIME, read once per call) makes gateway clocks irrelevant;
-- Redis 7 replicates effects. A bucket charged by several requests of one
-- call (a global limit, a busy client) is read once and written once, at the
-- end: the call is atomic, so that is the same as one write per request.
-- Reply: per request five integers {allowed 1|0, binding index (1-based, within
-- the request), remaining, reset_ms, retry_ms}; allowed = -1 when a bucket was
-- unusable (e.g. WRONGTYPE): that request fails alone, the others are decided.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local out = {}
local seen = {} -- bucket -> {tokens at now, TTL ms once charged (nil: not charged yet)}
local order = {} -- buckets to write back, in first-charged order
local k, a = 0, 2 -- KEYS[k + i], ARGV[a + ...]: the current request's first bucket
for _ = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  a = a + 1
  local levels = {}
  local worst, worst_wait, broken = 0, -1, false
  for i = 1, n do
    local cap = tonumber(ARGV[a + 3 * i - 3])
    local rate = tonumber(ARGV[a + 3 * i - 2]) / 1000
    local level = cap
    local known = seen[KEYS[k + i]]
    if known then
      level = math.min(cap, known[1])
    else
      local st = redis.pcall('HMGET', KEYS[k + i], 't', 'ts')
      if st.err then
        broken = true
      else
        local raw = cap -- refilled, before the cap
        if st[1] then
          local elapsed = now - tonumber(st[2])
          if elapsed < 0 then elapsed = 0 end
          raw = tonumber(st[1]) + elapsed * rate
        end
        level = math.min(cap, raw)
        seen[KEYS[k + i]] = {raw, nil}
      end
    end
    levels[i] = level
    if level < 1 then
      local wait = (1 - level) / rate
      if wait > worst_wait then worst, worst_wait = i, wait end
    end
  end
  local o = #out
  if broken then
    out[o + 1], out[o + 2], out[o + 3], out[o + 4], out[o + 5] = -1, 0, 0, 0, 0
  elseif worst > 0 then
    local cap = tonumber(ARGV[a + 3 * worst - 3])
    local rate = tonumber(ARGV[a + 3 * worst - 2]) / 1000
    out[o + 1], out[o + 2], out[o + 3] = 0, worst, 0
    out[o + 4], out[o + 5] = math.ceil((cap - levels[worst]) / rate), math.ceil(worst_wait)
  else
    local bind, bind_left = 1, nil
    for i = 1, n do
      local left = levels[i] - 1
      local st = seen[KEYS[k + i]]
      if st[2] == nil then order[#order + 1] = KEYS[k + i] end
      st[1], st[2] = left, ARGV[a + 3 * i - 1]
      if bind_left == nil or left < bind_left then bind, bind_left = i, left end
    end
    local cap = tonumber(ARGV[a + 3 * bind - 3])
    local rate = tonumber(ARGV[a + 3 * bind - 2]) / 1000
    out[o + 1], out[o + 2], out[o + 3] = 1, bind, math.floor(bind_left)
    out[o + 4], out[o + 5] = math.ceil((cap - bind_left) / rate), 0
  end
  k = k + n
  a = a + 3 * n
end
for _, key in ipairs(order) do
  local st = seen[key]
  redis.call('HSET', key, 't', st[1], 'ts', now)
  redis.call('PEXPIRE', key, st[2])
end
return out
