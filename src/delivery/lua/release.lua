-- Holders leave: one (a socket left), or all of a node's (a dead node). When that removes the last one, the
-- messages expire after the TTL, or are kept.
-- ARGV: mode ('one' or 'node'), the holder or the node's prefix `<node>/`, ttl_ms (0: kept), the calling node's
-- prefix. Returns {removed, holders left, whether the calling node still holds the room (0/1)}.
local mode, target, ttl, mine = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local removed = 0
if mode == 'one' then
  removed = redis.call('SREM', holders, target)
else
  for _, member in ipairs(redis.call('SMEMBERS', holders)) do
    if starts_with(member, target) then
      removed = removed + redis.call('SREM', holders, member)
    end
  end
end
local left = redis.call('SCARD', holders)
-- Only a leave that emptied the room starts the clock: a repeated leave must not restart it.
if removed > 0 and left == 0 and redis.call('XLEN', queue) > 0 then
  if ttl > 0 then
    redis.call('PEXPIRE', queue, ttl)
  else
    redis.call('PERSIST', queue)
  end
end
local still = 0
if left > 0 then
  for _, member in ipairs(redis.call('SMEMBERS', holders)) do
    if starts_with(member, mine) then
      still = 1
      break
    end
  end
end
return {removed, left, still}
