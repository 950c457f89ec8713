-- settle: release the reservation, count the actual cost, correct the TPM window, report the
-- cap's 80 % / 100 % crossings once per period, and append the usage event (prelude: _windows.lua).
--
-- KEYS: 1 spend, 2 reservations (hash), 3 reservation expiries (zset), 4 win:tpm,
--       5 settled marker, 6 usage stream
-- ARGV: 1 now_ms, 2 request_id, 3 cap (-1: none), 4 cost_microcents, 5 tpm (-1: none),
--       6 tpm_input_tokens, 7 actual_tokens, 8 admitted_ms (0: unknown), 9 spend TTL (ms, 0: none),
--       10 settled-marker TTL (ms), 11 owner_id, 12 parent_id ('' if unknown), 13 period_id,
--       14 usage event (JSON object, or '' for none)
-- Reply (integers): settled (0: this request was settled before), spent_microcents,
--       reserved_total_microcents, crossed 80 (0/1), crossed 100 (0/1)

local now = tonumber(ARGV[1])
local rid = ARGV[2]

if not redis.call('SET', KEYS[5], '1', 'NX', 'PX', ARGV[10]) then
  local st = redis.call('HMGET', KEYS[1], 'spent', 'reserved')
  return {0, tonumber(st[1]) or 0, tonumber(st[2]) or 0, 0, 0}
end

-- release the reservation, unless the admission sweep already released it on expiry
local st = redis.call('HMGET', KEYS[1], 'spent', 'reserved', 'warned', 'exhausted')
local spent = (tonumber(st[1]) or 0) + tonumber(ARGV[4])
local reserved = tonumber(st[2]) or 0
local held = redis.call('HGET', KEYS[2], rid)
if held then
  redis.call('HDEL', KEYS[2], rid)
  redis.call('ZREM', KEYS[3], rid)
  reserved = reserved - tonumber(held)
  if reserved < 0 then reserved = 0 end
end

-- the cap's thresholds, each crossed once per period
local cap = tonumber(ARGV[3])
local c80, c100 = 0, 0
local fields = {'spent', fmt(spent), 'reserved', fmt(reserved)}
if cap >= 0 then
  if st[3] ~= '1' and spent * 5 >= cap * 4 then
    c80 = 1
    fields[#fields + 1] = 'warned'
    fields[#fields + 1] = '1'
  end
  if st[4] ~= '1' and spent >= cap then
    c100 = 1
    fields[#fields + 1] = 'exhausted'
    fields[#fields + 1] = '1'
  end
end
redis.call('HSET', KEYS[1], unpack(fields))
-- a new hash gets the period's TTL (an existing one has it already: it never changes)
if not st[1] and not st[2] and tonumber(ARGV[9]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[9])
end

-- TPM: replace the admitted input bound by the tokens really used, in the bucket it was counted in
local tpm = tonumber(ARGV[5])
local delta = tonumber(ARGV[7]) - tonumber(ARGV[6])
if tpm >= 0 and delta ~= 0 then
  local bucket = math.floor(tonumber(ARGV[8]) / TPM_B)
  local win = win_read(KEYS[4], now, TPM_W, TPM_B, bucket)
  if win.hi ~= nil and bucket >= win.lo and bucket <= win.hi then
    win_write(win, bucket, delta)
  elseif delta > 0 then
    -- the admission's bucket is gone (or unknown): the extra tokens count from now
    win_write(win, win.cur, delta)
  end
end

-- events: the usage record with the thresholds it crossed, then one budget event per crossing
local crossed = {}
if c80 == 1 then crossed[#crossed + 1] = '80' end
if c100 == 1 then crossed[#crossed + 1] = '100' end
local event = ARGV[14]
if event ~= '' then
  local head = string.sub(event, 1, -2)
  local sep = head == '{' and '' or ','
  redis.call('XADD', KEYS[6], '*', 'e',
    head .. sep .. '"crossed":[' .. table.concat(crossed, ',') .. ']}')
end
if #crossed > 0 then
  local who = '{"type":"budget","sub_account_id":' .. cjson.encode(ARGV[11]) ..
    ',"parent_id":' .. (ARGV[12] == '' and 'null' or cjson.encode(ARGV[12])) .. ',"threshold":'
  local tail = ',"spent_microcents":' .. fmt(spent) .. ',"cap_microcents":' .. ARGV[3] ..
    ',"period":' .. cjson.encode(ARGV[13]) .. ',"at":' .. ARGV[1] .. '}'
  for _, threshold in ipairs(crossed) do
    redis.call('XADD', KEYS[6], '*', 'e', who .. threshold .. tail)
  end
end
return {1, spent, reserved, c80, c100}
