-- A socket joined the room: it is held, its messages no longer expire. ARGV[1]: the holder. Returns 1.
redis.call('SADD', holders, ARGV[1])
if redis.call('XLEN', queue) > 0 then
  redis.call('PERSIST', queue)
end
return 1
