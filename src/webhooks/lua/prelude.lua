-- Shared by the counting scripts (prepended to each). KEYS: a namespace's room counts (hash), member counts (hash,
-- fields `<room>\0<user>`), one node's contribution (hash, fields `r\0<room>`, `m\0<room>\0<user>` and the
-- member's last verified flag `v\0<room>\0<user>`), its outbox (stream), its event sequence (string). All carry
-- the namespace's hash tag. ARGV[1]: the outbox's approximate cap.
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
