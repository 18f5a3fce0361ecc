"""The Lua scripts of the Celery-layout Redis broker (brokers/celery_redis.py, whose docstring
has the key layout): each state change that must be atomic is one script."""

# Record a popped envelope in `unacked` (kombu's QoS.append), or dead-letter one that has no
# delivery tag. KEYS: unacked, unacked_index, the dead stream; ARGV: envelope, now.
_RECORD = """
local function record(item, dead, now)
  local ok, payload = pcall(cjson.decode, item)
  local tag, ex, rk = nil, '', ''
  if ok and type(payload) == 'table' and type(payload['properties']) == 'table' then
    local props = payload['properties']
    tag = props['delivery_tag']
    local info = props['delivery_info']
    if type(info) == 'table' then
      if type(info['exchange']) == 'string' then ex = info['exchange'] end
      if type(info['routing_key']) == 'string' then rk = info['routing_key'] end
    end
  end
  if type(tag) ~= 'string' then
    redis.call('XADD', dead, 'MAXLEN', '~', 100000, '*', 'e', item,
               'reason', 'not a kombu envelope (no JSON, or no delivery_tag)')
    return false
  end
  redis.call('HSET', KEYS[1], tag,
             '[' .. item .. ',' .. cjson.encode(ex) .. ',' .. cjson.encode(rk) .. ']')
  redis.call('ZADD', KEYS[2], now, tag)
  return tag
end
"""
RECORD = (
    _RECORD
    + """
local tag = record(ARGV[1], KEYS[3], ARGV[2])
if tag then return tag end
return ''
"""
)
# Pop up to ARGV[1] from the lists in order and record each. KEYS: unacked, unacked_index,
# then (list, its queue's dead stream) pairs. Returns {pair index, envelope, tag} each.
TAKE = (
    _RECORD
    + """
local budget = tonumber(ARGV[1])
local out = {}
for i = 3, #KEYS, 2 do
  while budget > 0 do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    budget = budget - 1
    local tag = record(item, KEYS[i + 1], ARGV[2])
    table.insert(out, {(i - 3) / 2, item, tag})  -- false: dead-lettered here
  end
end
return out
"""
)
# KEYS: unacked, unacked_index, target. Only a message still ours moves (not restored since).
REQUEUE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], ARGV[2])
return 1
"""
DEAD = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 100000, '*', 'e', ARGV[2], 'reason', ARGV[3])
return 1
"""
PARK = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
return 1
"""
# KEYS: delayed, the queue's lists by step. A member's first byte is its step's index.
MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('RPUSH', KEYS[2 + string.byte(member, 1)], string.sub(member, 2))
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return #due
"""
# kombu's restore_by_tag, as a compare-and-set: KEYS unacked, unacked_index, targets.
RESTORE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if score and tonumber(score) > tonumber(ARGV[4]) then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, #KEYS do redis.call('RPUSH', KEYS[i], ARGV[3]) end
return 1
"""
REQUEUE_DEAD = """
if redis.call('XDEL', KEYS[1], ARGV[1]) == 1 then redis.call('LPUSH', KEYS[2], ARGV[2]) end
return 1
"""
