-- Removes exactly the given ids (a batch's ack). ARGV: the ids. Returns how many were pending.
local removed = 0
-- In slices, to stay within Lua's limit on unpacked arguments.
for i = 1, #ARGV, 500 do
  removed = removed + redis.call('XDEL', queue, unpack(ARGV, i, math.min(i + 499, #ARGV)))
end
if removed > 0 then
  emptied()
end
return removed
