-- limiter_v1: one atomic admission decision for one API key (llm_gateway/limiter.py).
--
-- Versioned unit: the Redis keys carry "rl:v1:", so a gateway running a later version of
-- this script (different key layout) can run beside this one during a rolling deploy
-- without misreading its state. Change the layout => new file, new prefix.
--
-- Requests-per-minute and tokens-per-minute are continuously refilled token buckets
-- (capacity = the per-minute limit, refilled limit/60 per second), as OpenAI does. The
-- concurrent-request cap is a set of leases (sorted set: lease id -> expiry in ms), so a
-- replica that dies mid-request frees its slots when their leases lapse.
-- Time is Redis server time, the one clock every replica shares.
-- All or nothing: if any limit says no, nothing is written.
--
-- KEYS[1]  bucket hash  (rl = requests level, rt = its time; tl/tt the same for tokens)
-- KEYS[2]  lease zset
-- ARGV[1]  rpm             (0 = unlimited)
-- ARGV[2]  tpm             (0 = unlimited)
-- ARGV[3]  max concurrent  (0 = unlimited)
-- ARGV[4]  tokens to reserve
-- ARGV[5]  lease id
-- ARGV[6]  lease length, ms
--
-- Returns {verdict, requests remaining, requests reset ms, tokens remaining, tokens reset ms,
--          retry after ms, leases held}; verdict 0 = allowed, 1 = rpm, 2 = tpm, 3 = concurrency.
-- "reset" is the time until that bucket is full again (OpenAI's x-ratelimit-reset-*).

local rpm = tonumber(ARGV[1])
local tpm = tonumber(ARGV[2])
local max_concurrent = tonumber(ARGV[3])
local tokens = tonumber(ARGV[4])

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000

local state = redis.call('HMGET', KEYS[1], 'rl', 'rt', 'tl', 'tt')

local function level(limit, stored, stamp)
  if stored == false then return limit end       -- no state (new, or expired when full)
  local value = tonumber(stored) + (now - tonumber(stamp)) * limit / 60000
  if value > limit then return limit end
  return value
end

local req_level, tok_level = 0, 0
local verdict, retry_ms = 0, 0

if rpm > 0 then
  req_level = level(rpm, state[1], state[2])
  if req_level < 1 then
    verdict = 1
    retry_ms = (1 - req_level) * 60000 / rpm
  end
end
if tpm > 0 then
  tok_level = level(tpm, state[3], state[4])
  if tok_level < tokens and verdict == 0 then
    verdict = 2
    retry_ms = (tokens - tok_level) * 60000 / tpm
  end
end

local held = 0
if max_concurrent > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)   -- lapsed leases: their holders died
  held = redis.call('ZCARD', KEYS[2])
  if held >= max_concurrent and verdict == 0 then
    verdict = 3
    local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    retry_ms = 1000
    if oldest[2] and tonumber(oldest[2]) - now < retry_ms then retry_ms = tonumber(oldest[2]) - now end
  end
end

if verdict == 0 then
  local ttl = 0
  if rpm > 0 then
    req_level = req_level - 1
    redis.call('HSET', KEYS[1], 'rl', tostring(req_level), 'rt', tostring(now))
    ttl = math.max(ttl, (rpm - req_level) * 60000 / rpm)
  end
  if tpm > 0 then
    tok_level = tok_level - tokens
    redis.call('HSET', KEYS[1], 'tl', tostring(tok_level), 'tt', tostring(now))
    ttl = math.max(ttl, (tpm - tok_level) * 60000 / tpm)
  end
  if ttl > 0 then
    -- Once a bucket is full again its state equals "no state": let Redis drop it.
    -- Use the longer of this write's refill and the hash's current life, never shorter.
    local current = redis.call('PTTL', KEYS[1])
    local want = math.ceil(ttl) + 1000
    if current < want then redis.call('PEXPIRE', KEYS[1], want) end
  end
  if max_concurrent > 0 then
    local lease_ms = tonumber(ARGV[6])
    redis.call('ZADD', KEYS[2], now + lease_ms, ARGV[5])
    redis.call('PEXPIRE', KEYS[2], lease_ms * 2)
    held = held + 1
  end
end

local function reset_ms(limit, value)
  if limit <= 0 or value >= limit then return 0 end
  return math.ceil((limit - value) * 60000 / limit)
end

return {verdict, math.floor(req_level), reset_ms(rpm, req_level), math.floor(tok_level),
        reset_ms(tpm, tok_level), math.ceil(retry_ms), held}
