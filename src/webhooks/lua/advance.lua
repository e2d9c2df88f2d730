-- Moves a dispatcher's cursor (KEYS[2]) to ARGV[2] if ARGV[1] still holds the lease (KEYS[1]): a holder that
-- lost it (stalled past its expiry) cannot move the new holder's cursor back. Returns 1 when moved.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
