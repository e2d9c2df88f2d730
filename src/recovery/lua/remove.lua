-- Deletes a session if ARGV[1] (`<node>/<conn>`) holds it. Returns 1 when deleted, 0 otherwise.
if holder_of(KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
