-- Appends one message, drops the oldest beyond the cap, and applies the expiry rule.
-- ARGV: cap, ttl_ms (0: kept until acknowledged), event, args (JSON), resync (0/1), at_ms.
-- Returns {id, dropped, nodes}: nodes are the distinct nodes of the room's holders (`<node>/<socket>`), the only ones
-- the message is published to live.
local ttl = tonumber(ARGV[2])
local before = redis.call('XLEN', queue)
-- Exact trimming (=), so `dropped` is exact.
local id = redis.call('XADD', queue, 'MAXLEN', '=', ARGV[1], '*',
  'event', ARGV[3], 'args', ARGV[4], 'resync', ARGV[5], 'at_ms', ARGV[6])
local dropped = before + 1 - redis.call('XLEN', queue)
local members = redis.call('SMEMBERS', holders)
local nodes, seen = {}, {}
for _, holder in ipairs(members) do
  local node = string.match(holder, '^([^/]+)/')
  if node and not seen[node] then
    seen[node] = true
    nodes[#nodes + 1] = node
  end
end
if #members > 0 then
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
return {id, dropped, nodes}
