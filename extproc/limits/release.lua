-- release: drop one request's reservation (refused upstream before any token was produced).
-- KEYS: 1 spend, 2 reservations (hash), 3 reservation expiries (zset)
-- ARGV: 1 request_id
-- Reply: 1 if a reservation was released, 0 if there was none (settled, swept or never made)

local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held then
  return 0
end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
local reserved = (tonumber(redis.call('HGET', KEYS[1], 'reserved')) or 0) - tonumber(held)
if reserved < 0 then reserved = 0 end
redis.call('HSET', KEYS[1], 'reserved', string.format('%d', reserved))
return 1
