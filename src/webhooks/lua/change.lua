-- One change of a socket of the node. ARGV: cap, worker, the change's number in the worker's sequence, counted
-- ('1': that worker has had a change counted here before), delta (1 join, -1 leave), socket id, user id ('' none),
-- verified ('1'/'0'), socket event ('1': also socket.connected/disconnected), rooms.
-- Returns the number of events written; -1 when a change of that number or later was applied already (a retry
-- after a lost reply); -2 when the worker's mark is gone although it had one: the node was reaped, nothing done.
local mark = 'w\0' .. ARGV[2]
local last = redis.call('HGET', KEYS[3], mark)
if last then
  if tonumber(last) >= tonumber(ARGV[3]) then return -1 end
elseif ARGV[4] == '1' then
  return -2
end
local rooms = {}
for i = 10, #ARGV do rooms[#rooms + 1] = ARGV[i] end
change(tonumber(ARGV[5]), ARGV[6], ARGV[7], ARGV[8], ARGV[9] == '1', rooms)
redis.call('HSET', KEYS[3], mark, ARGV[3])
return written
