-- Appends one message, drops the oldest beyond the cap, and applies the expiry rule.
-- ARGV: cap, ttl_ms (0: kept until acknowledged), event, args (JSON), resync (0/1), at_ms.
-- Returns {id, dropped}.
local ttl = tonumber(ARGV[2])
local before = redis.call('XLEN', queue)
-- Exact trimming (=), so `dropped` is exact.
local id = redis.call('XADD', queue, 'MAXLEN', '=', ARGV[1], '*',
  'event', ARGV[3], 'args', ARGV[4], 'resync', ARGV[5], 'at_ms', ARGV[6])
local dropped = before + 1 - redis.call('XLEN', queue)
if redis.call('SCARD', holders) > 0 then
  -- Held: nothing expires (an empty stream kept for its last id may have had a TTL).
  redis.call('PERSIST', queue)
elseif before == 0 then
  -- A fresh queue nobody holds: its clock starts now.
  if ttl > 0 then
    redis.call('PEXPIRE', queue, ttl)
  else
    redis.call('PERSIST', queue)
  end
elseif ttl > 0 then
  -- A clock already running (the last holder left, or an earlier push) is never extended.
  redis.call('PEXPIRE', queue, ttl, 'NX')
end
return {id, dropped}
