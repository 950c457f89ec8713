-- admit: every check of one request in one atomic step (prelude: _windows.lua).
--
-- KEYS: 1 state, 2 spend, 3 reservations (hash), 4 reservation expiries (zset),
--       5 win:rpm, 6 win:rpd, 7 win:tpm, 8 rate-limited debounce, 9 usage stream
-- ARGV: 1 now_ms, 2 request_id, 3 require_ready (0/1), 4 cap (-1: none), 5 input_microcents,
--       6 output_nanocents_per_token, 7 max_output_tokens, 8 min_output_tokens,
--       9 worst_microcents, 10 min_microcents, 11 reservation expiry (ms), 12 spend TTL (ms, 0: none),
--       13 rpm, 14 rpd, 15 tpm (-1: none), 16 tpm_input_tokens,
--       17 owner_id, 18 parent_id ('' if unknown), 19 period_id
-- Reply (integers): admitted, refusal (0 none, 1 budget, 2 rpm, 3 rpd, 4 tpm, 5 not_ready),
--       granted_output_tokens, clamped, reserved_microcents, spent_microcents,
--       reserved_total_microcents, retry_after_ms,
--       requests limit (-1: none), remaining, reset_ms, tokens limit (-1: none), remaining, reset_ms

local now = tonumber(ARGV[1])
local rid = ARGV[2]
local cap = tonumber(ARGV[4])
local max_out = tonumber(ARGV[7])
local DEBOUNCE_MS = 60000

local spent, reserved, exhausted = 0, 0, false

-- 1. sweep this owner's expired reservations
if cap >= 0 then
  local st = redis.call('HMGET', KEYS[2], 'spent', 'reserved', 'exhausted')
  spent = tonumber(st[1]) or 0
  reserved = tonumber(st[2]) or 0
  exhausted = st[3] == '1'
  local dirty = false
  if reserved ~= 0 then
    local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 500)
    if #expired > 0 then
      local amounts = redis.call('HMGET', KEYS[3], unpack(expired))
      for i = 1, #amounts do
        reserved = reserved - (tonumber(amounts[i]) or 0)
      end
      redis.call('HDEL', KEYS[3], unpack(expired))
      redis.call('ZREM', KEYS[4], unpack(expired))
      dirty = true
    end
    -- no open reservation left (or their keys are gone): nothing can be reserved
    if reserved < 0 or (reserved ~= 0 and redis.call('EXISTS', KEYS[4]) == 0) then
      reserved = 0
      dirty = true
    end
  end
  if dirty then
    redis.call('HSET', KEYS[2], 'reserved', fmt(reserved))
  end
end

local function reply(admitted, refusal, granted, clamped, amount, retry_ms, rate)
  return {admitted, refusal, granted, clamped, amount, spent, reserved, retry_ms,
          rate[1], rate[2], rate[3], rate[4], rate[5], rate[6]}
end

local NO_RATE = {-1, 0, 0, -1, 0, 0}

-- 2. readiness of a capped sub-account's spend after a Redis restart
if ARGV[3] == '1' and redis.call('HGET', KEYS[1], 'ready') ~= '1' then
  return reply(0, 5, 0, 0, 0, 1000, NO_RATE)
end

-- 3. windows
local windows = {}
local specs = {
  {code = 2, name = 'rpm', key = KEYS[5], limit = tonumber(ARGV[13]), cost = 1, w = RPM_W, b = RPM_B},
  {code = 3, name = 'rpd', key = KEYS[6], limit = tonumber(ARGV[14]), cost = 1, w = RPD_W, b = RPD_B},
  {code = 4, name = 'tpm', key = KEYS[7], limit = tonumber(ARGV[15]), cost = tonumber(ARGV[16]),
   w = TPM_W, b = TPM_B},
}
local refusal, refusal_name, retry_ms = 0, nil, 0
for _, spec in ipairs(specs) do
  if spec.limit >= 0 then
    local win = win_read(spec.key, now, spec.w, spec.b, math.floor(now / spec.b))
    win.spec = spec
    windows[#windows + 1] = win
    if win.n + spec.cost > spec.limit then
      local wait = win_wait_ms(win, now, spec.limit, spec.cost)
      if refusal == 0 or wait > retry_ms then
        refusal, refusal_name, retry_ms = spec.code, spec.name, wait
      end
    end
  end
end

-- the x-ratelimit-* figures: requests from the tighter of rpm / rpd, tokens from tpm
-- (read before anything is counted on a refusal, after counting on success)
local function rate_figures()
  local rate = {-1, 0, 0, -1, 0, 0}
  for _, win in ipairs(windows) do
    local spec = win.spec
    local remaining = spec.limit - win.n
    if remaining < 0 then remaining = 0 end
    local reset = win_reset_ms(win, now)
    if spec.code == 4 then
      rate[4], rate[5], rate[6] = spec.limit, remaining, reset
    elseif rate[1] < 0 or remaining < rate[2] then
      rate[1], rate[2], rate[3] = spec.limit, remaining, reset
    end
  end
  return rate
end

if refusal ~= 0 then
  local last = tonumber(redis.call('GET', KEYS[8]))
  if not last or now - last >= DEBOUNCE_MS then
    redis.call('SET', KEYS[8], ARGV[1], 'PX', DEBOUNCE_MS)
    local parent = ARGV[18] == '' and 'null' or cjson.encode(ARGV[18])
    redis.call('XADD', KEYS[9], '*', 'e',
      '{"type":"rate_limited","sub_account_id":' .. cjson.encode(ARGV[17]) ..
      ',"parent_id":' .. parent .. ',"limit":"' .. refusal_name .. '","at":' .. ARGV[1] .. '}')
  end
  return reply(0, refusal, 0, 0, 0, retry_ms, rate_figures())
end

-- 4. budget: reserve the worst case, or clamp the output to what remains, or refuse
local amount, granted, clamped = 0, max_out, 0
if cap >= 0 then
  local remaining = cap - spent - reserved
  local worst = tonumber(ARGV[9])
  local input = tonumber(ARGV[5])
  local out_nc = tonumber(ARGV[6])
  if worst <= remaining then
    amount = worst
  elseif out_nc > 0 and tonumber(ARGV[10]) <= remaining then
    -- floor((remaining - input) * 1000 / out_nc) without leaving exact double arithmetic
    local a = remaining - input
    local q = math.floor(a / out_nc)
    local r = a - q * out_nc
    if r < 0 then
      q, r = q - 1, r + out_nc
    elseif r >= out_nc then
      q, r = q + 1, r - out_nc
    end
    granted = q * 1000 + math.floor(r * 1000 / out_nc)
    if granted > max_out then granted = max_out end
    amount = input + math.floor((granted * out_nc + 999) / 1000)
    if amount > remaining then amount = remaining end -- only beyond 2^53 nano-cents
    clamped = 1
  else
    -- a cap that not even an empty budget could pay this request from is not "exhausted"
    if not exhausted and tonumber(ARGV[10]) <= cap then
      redis.call('HSET', KEYS[2], 'exhausted', '1')
      if tonumber(ARGV[12]) > 0 then
        redis.call('PEXPIRE', KEYS[2], ARGV[12])
      end
      local parent = ARGV[18] == '' and 'null' or cjson.encode(ARGV[18])
      redis.call('XADD', KEYS[9], '*', 'e',
        '{"type":"budget","sub_account_id":' .. cjson.encode(ARGV[17]) ..
        ',"parent_id":' .. parent .. ',"threshold":100,"spent_microcents":' .. fmt(spent) ..
        ',"cap_microcents":' .. ARGV[4] .. ',"period":' .. cjson.encode(ARGV[19]) ..
        ',"at":' .. ARGV[1] .. '}')
    end
    return reply(0, 1, 0, 0, 0, 0, rate_figures())
  end
end

-- 5. everything passed: count the request, hold the reservation
for _, win in ipairs(windows) do
  if win.spec.cost > 0 then
    win_write(win, win.cur, win.spec.cost)
  end
end
if cap >= 0 then
  local before = reserved
  if redis.call('HSETNX', KEYS[3], rid, fmt(amount)) == 0 then
    -- the same request admitted twice: its new reservation replaces the old one
    reserved = reserved - (tonumber(redis.call('HGET', KEYS[3], rid)) or 0)
    redis.call('HSET', KEYS[3], rid, fmt(amount))
  end
  reserved = reserved + amount
  redis.call('HSET', KEYS[2], 'reserved', fmt(reserved))
  redis.call('ZADD', KEYS[4], ARGV[11], rid)
  -- the period's keys may have just been created: give them the period's TTL (it never changes)
  if before == 0 and tonumber(ARGV[12]) > 0 then
    redis.call('PEXPIRE', KEYS[2], ARGV[12])
    redis.call('PEXPIRE', KEYS[3], ARGV[12])
    redis.call('PEXPIRE', KEYS[4], ARGV[12])
  end
end
return reply(1, 0, granted, clamped, amount, 0, rate_figures())
