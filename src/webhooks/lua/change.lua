-- A socket joins (ARGV[2] = 1) or leaves (-1) rooms ARGV[7..]. ARGV: cap, delta, socket id, user id ('' none),
-- verified ('1'/'0'), socket event ('1': also socket.connected/disconnected). A leave only takes what this node
-- gave (its contribution), so a node declared down, reaped, then leaving late, cannot make a count negative.
-- Returns the number of events written.
local delta, socket, user, verified = tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local socket_event = ARGV[6] == '1'
if delta > 0 then
  if socket_event then emit('socket.connected', nil, user, verified, socket) end
  for i = 7, #ARGV do
    local room = ARGV[i]
    redis.call('HINCRBY', KEYS[3], 'r\0' .. room, 1)
    if redis.call('HINCRBY', KEYS[1], room, 1) == 1 then emit('room.occupied', room) end
    if user ~= '' then
      local m = room .. '\0' .. user
      redis.call('HINCRBY', KEYS[3], 'm\0' .. m, 1)
      redis.call('HSET', KEYS[3], 'v\0' .. m, verified)
      if redis.call('HINCRBY', KEYS[2], m, 1) == 1 then emit('member.added', room, user, verified) end
    end
  end
else
  for i = 7, #ARGV do
    local room = ARGV[i]
    if tonumber(redis.call('HGET', KEYS[3], 'r\0' .. room) or '0') > 0 then
      take(KEYS[3], 'r\0' .. room, 1)
      if user ~= '' then
        local m = room .. '\0' .. user
        if tonumber(redis.call('HGET', KEYS[3], 'm\0' .. m) or '0') > 0 then
          if take(KEYS[3], 'm\0' .. m, 1) then redis.call('HDEL', KEYS[3], 'v\0' .. m) end
          if take(KEYS[2], m, 1) then emit('member.removed', room, user, verified) end
        end
      end
      if take(KEYS[1], room, 1) then emit('room.vacated', room) end
    end
  end
  if socket_event then emit('socket.disconnected', nil, user, verified, socket) end
end
return written
