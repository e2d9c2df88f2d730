-- Shared by every delivery script (prepended to each). KEYS[1] is a room's stream of pending messages, KEYS[2]
-- its set of holders (`<node>/<socket>`); both carry the room's hash tag, so one script touches one slot.
local queue, holders = KEYS[1], KEYS[2]

-- A stream whose last entry is gone is kept this long (ms) rather than deleted: it remembers the last id, so the
-- next push gets a larger one even within the same millisecond.
local KEEP_EMPTY_MS = 60000

local function emptied()
  if redis.call('XLEN', queue) == 0 then
    redis.call('PEXPIRE', queue, KEEP_EMPTY_MS)
  end
end

-- The value of `name` in an entry's flat field list, or nil.
local function field(fields, name)
  for i = 1, #fields - 1, 2 do
    if fields[i] == name then
      return fields[i + 1]
    end
  end
  return nil
end

-- Whether an entry's fields make a message the reader would return (the Rust reader's checks, but for repeated
-- fields and numbers too large: a non-empty event, args a JSON array, resync 0 or 1, at_ms digits). Entries that are not are skipped by readers,
-- so they are never a client's "first pending message" either.
local function well_formed(fields)
  local event, args, resync, at = field(fields, 'event'), field(fields, 'args'),
    field(fields, 'resync'), field(fields, 'at_ms')
  if not (event and args and resync and at) or event == '' then
    return false
  end
  if (resync ~= '0' and resync ~= '1') or not string.match(at, '^%d+$') then
    return false
  end
  if not string.match(args, '^%s*%[') then
    return false
  end
  return (pcall(cjson.decode, args))
end

-- The holders of a node all start with `<node>/`.
local function starts_with(s, prefix)
  return string.sub(s, 1, #prefix) == prefix
end
