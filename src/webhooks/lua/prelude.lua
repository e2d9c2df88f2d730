-- Shared by the counting scripts (prepended to each). KEYS: a namespace's room counts (hash), member counts (hash,
-- fields `<room>\0<user>`), one node's contribution (hash, fields `r\0<room>`, `m\0<room>\0<user>`, the member's
-- last verified flag `v\0<room>\0<user>`, `s\0<socket>` → verified flag then user for the sockets whose
-- socket.connected was written, and `w\0<worker>` → the number of that worker's last change), its outbox
-- (stream), its event sequence (string). All carry the namespace's hash tag. ARGV[1]: the outbox's approximate cap.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local written = 0

-- Appends one event to the outbox, numbered by the namespace's sequence (a gap tells a reader what the cap dropped).
local function emit(kind, room, user, verified, socket)
  local n = redis.call('INCR', KEYS[5])
  local f = {'n', n, 't', kind, 'ms', now}
  if room then f[#f + 1] = 'r'; f[#f + 1] = room end
  if user and user ~= '' then
    f[#f + 1] = 'u'; f[#f + 1] = user; f[#f + 1] = 'v'; f[#f + 1] = verified
  end
  if socket then f[#f + 1] = 's'; f[#f + 1] = socket end
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*', unpack(f))
  written = written + 1
end

-- Takes `by` from a count, deleting it at zero or below; true when it reached exactly zero.
local function take(key, field, by)
  local left = redis.call('HINCRBY', key, field, -by)
  if left <= 0 then
    redis.call('HDEL', key, field)
  end
  return left == 0
end

-- A socket joins (delta 1) or leaves (-1) `rooms`; with `socket_event`, it connects or disconnects now. A leave
-- only takes what this node gave (its contribution), so a leave after the node was reaped cannot make a count
-- negative; a socket's socket.disconnected is written once, if its socket.connected was.
local function change(delta, socket, user, verified, socket_event, rooms)
  if delta > 0 then
    if socket_event then
      emit('socket.connected', nil, user, verified, socket)
      redis.call('HSET', KEYS[3], 's\0' .. socket, verified .. user)
    end
    for _, room in ipairs(rooms) do
      redis.call('HINCRBY', KEYS[3], 'r\0' .. room, 1)
      if redis.call('HINCRBY', KEYS[1], room, 1) == 1 then emit('room.occupied', room) end
      if user ~= '' then
        local m = room .. '\0' .. user
        redis.call('HINCRBY', KEYS[3], 'm\0' .. m, 1)
        redis.call('HSET', KEYS[3], 'v\0' .. m, verified)
        if redis.call('HINCRBY', KEYS[2], m, 1) == 1 then emit('member.added', room, user, verified) end
      end
    end
    return
  end
  for _, room in ipairs(rooms) do
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
  if socket_event and redis.call('HDEL', KEYS[3], 's\0' .. socket) == 1 then
    emit('socket.disconnected', nil, user, verified, socket)
  end
end
