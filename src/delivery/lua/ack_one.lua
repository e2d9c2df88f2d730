-- Acknowledges one live message, with the reliable push service's resync rule for messages pushed with resync: if it is
-- not the first pending message of its event, the whole queue is cleared.
-- ARGV[1]: the id. Returns {0} (not pending), {1} (removed) or {2, cleared} (cleared: resync).
local id = ARGV[1]
local found = redis.call('XRANGE', queue, id, id)
if #found == 0 then
  return {0}
end
local event = field(found[1][2], 'event')
if event and field(found[1][2], 'resync') == '1' then
  -- The first pending message of the same event is at or before this one.
  for _, entry in ipairs(redis.call('XRANGE', queue, '-', id)) do
    if field(entry[2], 'event') == event and well_formed(entry[2]) then
      if entry[1] ~= id then
        local cleared = redis.call('XLEN', queue)
        redis.call('XTRIM', queue, 'MAXLEN', 0)
        emptied()
        return {2, cleared}
      end
      break
    end
  end
end
redis.call('XDEL', queue, id)
emptied()
return {1}
