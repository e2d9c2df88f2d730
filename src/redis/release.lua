-- Gives up a lease (KEYS[1]) if ARGV[1] (node id) holds it, so that another node takes it at once rather than when
-- it expires. Returns 1 when it was held.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
