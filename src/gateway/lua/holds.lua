-- Rewrites a node's set of held users (KEYS[1]) as ARGV[2..], expiring ARGV[1] ms later, in one step so that the
-- router never reads it half-written. Returns the number of users.
redis.call('DEL', KEYS[1])
local n = #ARGV - 1
for i = 2, #ARGV, 1000 do
  redis.call('SADD', KEYS[1], unpack(ARGV, i, math.min(i + 999, #ARGV)))
end
if n > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
