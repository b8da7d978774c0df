-- limiter_v1_settle: after a request, return unused tokens and/or free its concurrency lease.
-- Same key layout as limiter_v1.lua (see there). One call does both, so finishing a
-- request costs one round trip.
--
-- KEYS[1]  bucket hash, KEYS[2] lease zset
-- ARGV[1]  tpm (0 = no token bucket to adjust)
-- ARGV[2]  tokens to give back (reserved - actual; negative when the request used more)
-- ARGV[3]  lease id to free ('' = none)

local tpm = tonumber(ARGV[1])
local delta = tonumber(ARGV[2])

if tpm > 0 and delta ~= 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
  local state = redis.call('HMGET', KEYS[1], 'tl', 'tt')
  local value = tpm
  if state[1] then
    value = tonumber(state[1]) + (now - tonumber(state[2])) * tpm / 60000
    if value > tpm then value = tpm end
  end
  value = value + delta
  if value > tpm then value = tpm end
  redis.call('HSET', KEYS[1], 'tl', tostring(value), 'tt', tostring(now))
  local want = math.ceil((tpm - value) * 60000 / tpm) + 1000
  if redis.call('PTTL', KEYS[1]) < want then redis.call('PEXPIRE', KEYS[1], want) end
end

if ARGV[3] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[3])
end
return 1
