"""The Redis broker's Lua scripts: each state change that must be atomic is one script.
The key layout they work on is in the docstring of `brokers/redis.py`."""

# KEYS: one queue's streams, highest level first. Take up to ARGV[3] in that order.
READ_BY_PRIORITY = """
local budget = tonumber(ARGV[3])
local out = {}
for _, key in ipairs(KEYS) do
  if budget <= 0 then break end
  local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', budget,
                         'STREAMS', key, '>')
  if got then
    table.insert(out, got[1])
    budget = budget - #got[1][2]
  end
end
return out
"""

# KEYS: delayed, then the streams of levels 0..9. A member's first byte is its level.
MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('XADD', KEYS[2 + string.byte(member, 1)], '*', 'e', string.sub(member, 2))
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return #due
"""

# Move the oldest dead letters back to the stream, atomically.
REQUEUE_DEAD = """
local entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[1]))
for _, entry in ipairs(entries) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'e' then redis.call('XADD', KEYS[2], '*', 'e', fields[i + 1], 'r', '1') end
  end
  redis.call('XDEL', KEYS[1], entry[1])
end
return #entries
"""

# KEYS: one queue's streams, then its delayed set; ARGV[1]: the group. Delete what waits
# (entries after the group's last-delivered id, and every delayed message) and count it;
# entries being run stay, and so does the group, so a running worker is not disturbed
# (deleting the stream would delete its consumer group).
PURGE = """
local delayed = KEYS[#KEYS]
local total = redis.call('ZCARD', delayed)
redis.call('DEL', delayed)
for i = 1, #KEYS - 1 do
  local key = KEYS[i]
  if redis.call('EXISTS', key) == 1 then
    local last = '0-0'
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local name, id
      for i = 1, #g, 2 do
        if g[i] == 'name' then name = g[i + 1] end
        if g[i] == 'last-delivered-id' then id = g[i + 1] end
      end
      if name == ARGV[1] then last = id end
    end
    while true do
      local entries = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', 1000)
      if #entries == 0 then break end
      local ids = {}
      for i, entry in ipairs(entries) do ids[i] = entry[1] end
      redis.call('XDEL', key, unpack(ids))
      total = total + #ids
      last = ids[#ids]
    end
  end
end
return total
"""

# Move one pending entry elsewhere (requeue or dead letter) and ack it, atomically.
SETTLE = """
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'e', ARGV[2], unpack(ARGV, 5))
redis.call('XACK', KEYS[1], ARGV[3], ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
return 1
"""

# KEYS: per queue its delayed set, then its streams of levels 0..9 (11 keys a queue). ARGV:
# per message its queue's index (from 0), level, due time in ms (0: ready now), envelope.
# One script for a batch: added whole or not at all, and on Cluster a batch of one queue's
# messages is one slot's (publish_many groups by queue there).
ADD_MANY = """
for i = 1, #ARGV, 4 do
  local base = tonumber(ARGV[i]) * 11
  local level = tonumber(ARGV[i + 1])
  if ARGV[i + 2] == '0' then
    redis.call('XADD', KEYS[base + 2 + level], '*', 'e', ARGV[i + 3])
  else
    redis.call('ZADD', KEYS[base + 1], ARGV[i + 2], string.char(level) .. ARGV[i + 3])
  end
end
return 0
"""

# KEYS: one queue's streams; ARGV[1]: the group. Each stream's last id handed out to the
# group ('0-0' without one): an XREAD from there wakes on the first message not yet handed
# out, and not on those delivered and still pending.
LAST_DELIVERED = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = '0-0'
  if redis.call('EXISTS', key) == 1 then
    for _, g in ipairs(redis.call('XINFO', 'GROUPS', key)) do
      local name, id
      for j = 1, #g, 2 do
        if g[j] == 'name' then name = g[j + 1] end
        if g[j] == 'last-delivered-id' then id = g[j + 1] end
      end
      if name == ARGV[1] then out[i] = id end
    end
  end
end
return out
"""
