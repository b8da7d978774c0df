-- limiter_v1_renew: extend the concurrency leases of requests still in flight in this process.
-- Same key layout as limiter_v1.lua. Only a lease still live (in the set, expiry in the
-- future) is extended: one that was freed, or that lapsed but has not been pruned yet (pruning
-- happens only when limiter_v1.lua next runs for the key), is not brought back, so a renewal
-- can never resurrect a slot another replica may already count as free.
--
-- KEYS[i]   lease zset of the i-th lease
-- ARGV[1]   lease length, ms
-- ARGV[i+1] the i-th lease id

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local lease_ms = tonumber(ARGV[1])
local renewed = 0
for i, key in ipairs(KEYS) do
  local expiry = redis.call('ZSCORE', key, ARGV[i + 1])
  if expiry and tonumber(expiry) > now then
    renewed = renewed + redis.call('ZADD', key, 'XX', 'CH', now + lease_ms, ARGV[i + 1])
    redis.call('PEXPIRE', key, lease_ms * 2)
  end
end
return renewed
