-- Shared by every recovery script (prepended to each). KEYS[1] is a namespace's log or one session's hash; every
-- key carries its namespace's hash tag.

-- The holder (`<node>/<conn>`) a session's hash names, or nil: no key, or not one of ours (another type, or a hash
-- without a holder), which a save replaces.
local function holder_of(key)
  if redis.call('TYPE', key)['ok'] ~= 'hash' then
    return nil
  end
  local holder = redis.call('HGET', key, 'holder')
  if not holder then
    return nil
  end
  return holder
end
