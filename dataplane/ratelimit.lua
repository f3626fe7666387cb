-- kubegate token buckets: every bucket of one request is checked first and
-- charged only if all pass (all-or-nothing, one round trip).
-- KEYS[i]: bucket (all keys of a call share one hash tag: same cluster slot).
-- ARGV[3i-2]: capacity (burst), ARGV[3i-1]: refill tokens per second,
-- ARGV[3i]: key TTL in ms (time to refill from empty, plus slack).
-- Server time (TIME) makes gateway clocks irrelevant; Redis 7 replicates effects.
-- Reply: {allowed 0|1, binding index (1-based), remaining, reset_ms, retry_ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local n = #KEYS
local levels = {}
local worst, worst_wait = 0, -1
for i = 1, n do
  local cap = tonumber(ARGV[3 * i - 2])
  local rate = tonumber(ARGV[3 * i - 1]) / 1000
  local st = redis.call('HMGET', KEYS[i], 't', 'ts')
  local level = cap
  if st[1] then
    local elapsed = now - tonumber(st[2])
    if elapsed < 0 then elapsed = 0 end
    level = math.min(cap, tonumber(st[1]) + elapsed * rate)
  end
  levels[i] = level
  if level < 1 then
    local wait = (1 - level) / rate
    if wait > worst_wait then worst, worst_wait = i, wait end
  end
end
if worst > 0 then
  local cap = tonumber(ARGV[3 * worst - 2])
  local rate = tonumber(ARGV[3 * worst - 1]) / 1000
  return {0, worst, 0, math.ceil((cap - levels[worst]) / rate), math.ceil(worst_wait)}
end
local bind, bind_left = 1, nil
for i = 1, n do
  local left = levels[i] - 1
  redis.call('HSET', KEYS[i], 't', left, 'ts', now)
  redis.call('PEXPIRE', KEYS[i], ARGV[3 * i])
  if bind_left == nil or left < bind_left then bind, bind_left = i, left end
end
local cap = tonumber(ARGV[3 * bind - 2])
local rate = tonumber(ARGV[3 * bind - 1]) / 1000
return {1, bind, math.floor(bind_left), math.ceil((cap - bind_left) / rate), 0}
