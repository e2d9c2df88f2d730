-- Counts again a worker's sockets after its node was reaped while they stayed connected. ARGV: cap, worker, number,
-- then per socket: socket id, user id ('' none), verified, socket event ('1'), room count, rooms. Only when the
-- worker's mark is gone (the reap took them; a mark means they are counted): returns the events written, or -1.
local mark = 'w\0' .. ARGV[2]
if redis.call('HEXISTS', KEYS[3], mark) == 1 then return -1 end
local i = 4
while i <= #ARGV do
  local count = tonumber(ARGV[i + 4])
  local rooms = {}
  for j = 1, count do rooms[j] = ARGV[i + 4 + j] end
  change(1, ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3] == '1', rooms)
  i = i + 5 + count
end
redis.call('HSET', KEYS[3], mark, ARGV[3])
return written
