-- Writes a session unless another connection holds it. ARGV: holder, data (JSON), ttl_ms, taking_over ('': none).
-- Returns 1 when written, 0 when refused.
local current = holder_of(KEYS[1])
if current and current ~= ARGV[1] and (ARGV[4] == '' or current ~= ARGV[4]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'data', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
