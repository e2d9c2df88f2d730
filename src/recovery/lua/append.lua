-- Appends one entry to a namespace's log and drops the entries older than the window, by Redis's own clock (the
-- one that gives the entries their ids), exactly (`MINID =`: a reader never gets an entry older than the window).
-- ARGV: keep_ms, the entry (msgpack). Returns the new entry's id.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local oldest = math.max(0, now - tonumber(ARGV[1]))
return redis.call('XADD', KEYS[1], 'MINID', '=', string.format('%.0f', oldest), '*', 'e', ARGV[2])
