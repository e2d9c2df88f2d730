-- Takes a node's whole contribution (KEYS[3]) from the namespace's counts and deletes it: the node was declared
-- down, or starts again under the same id. Atomic and idempotent: whichever survivor runs it first does the work.
-- Members first, then rooms, so a room's member.removed come before its room.vacated; then the socket.disconnected
-- of the sockets whose socket.connected was written, by socket id. Returns the events written.
local all = redis.call('HGETALL', KEYS[3])
local rooms, members, verified, sockets = {}, {}, {}, {}
for i = 1, #all, 2 do
  local kind, rest, n = string.sub(all[i], 1, 1), string.sub(all[i], 3), tonumber(all[i + 1]) or 0
  if kind == 'r' then rooms[#rooms + 1] = {rest, n}
  elseif kind == 'm' then members[#members + 1] = {rest, n}
  elseif kind == 'v' then verified[rest] = all[i + 1]
  elseif kind == 's' then sockets[#sockets + 1] = {rest, all[i + 1]} end
end
for _, m in ipairs(members) do
  if m[2] > 0 and take(KEYS[2], m[1], m[2]) then
    local sep = string.find(m[1], '\0', 1, true)
    emit('member.removed', string.sub(m[1], 1, sep - 1), string.sub(m[1], sep + 1), verified[m[1]] or '0')
  end
end
for _, r in ipairs(rooms) do
  if r[2] > 0 and take(KEYS[1], r[1], r[2]) then emit('room.vacated', r[1]) end
end
table.sort(sockets, function(a, b) return a[1] < b[1] end)
for _, s in ipairs(sockets) do
  emit('socket.disconnected', nil, string.sub(s[2], 2), string.sub(s[2], 1, 1), s[1])
end
redis.call('DEL', KEYS[3])
return written
