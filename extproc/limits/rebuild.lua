-- rebuild: set a period's spent from the ledger, once, after Redis lost it; then mark the owner
-- ready. A ready owner is left untouched (its live counters are newer than any ledger sum).
-- KEYS: 1 state, 2 spend
-- ARGV: 1 spent_microcents, 2 spend TTL (ms, 0: none), 3 warned (0/1), 4 exhausted (0/1)
-- Reply: 1 if rebuilt, 0 if the owner was ready already

if redis.call('HGET', KEYS[1], 'ready') == '1' then
  return 0
end
redis.call('HSET', KEYS[2], 'spent', ARGV[1])
if ARGV[3] == '1' then redis.call('HSET', KEYS[2], 'warned', '1') end
if ARGV[4] == '1' then redis.call('HSET', KEYS[2], 'exhausted', '1') end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call('HSET', KEYS[1], 'ready', '1')
return 1
