-- Shared prelude of admit.lua and settle.lua: sliding windows as time buckets (the algorithm and
-- its bounds are in extproc/limits/__init__.py). store.py puts the window sizes in front of it:
-- RPM_W, RPM_B, RPD_W, RPD_B, TPM_W, TPM_B (milliseconds).
--
-- A window key is a hash: field "<bucket index>" -> count, plus
--   n  = the sum of every bucket field present,
--   lo = no bucket field below it (older ones were deleted),
--   hi = the newest bucket written.
-- Reading never writes; `win_write` deletes what left the window, sets one bucket, n, lo, hi in
-- one HSET and refreshes the key's TTL (window + one bucket).

local function fmt(x)
  return string.format('%d', x)
end

-- The window at `now`: the total over the buckets overlapping [now - w, now], what to delete,
-- and the count of bucket `probe` (the one about to be written).
local function win_read(key, now, w, b, probe)
  local cutoff = math.floor((now - w) / b)
  local win = {key = key, w = w, b = b, cutoff = cutoff, cur = math.floor(now / b), n = 0,
               probe = probe, probe_count = 0, stale = nil, reset_all = false}
  local st = redis.call('HMGET', key, 'n', 'lo', 'hi', fmt(probe))
  local n = tonumber(st[1])
  if not n then
    win.lo = win.cur
    return win
  end
  local lo, hi = tonumber(st[2]), tonumber(st[3])
  if hi < cutoff then
    win.reset_all = true
    win.lo = cutoff
    return win
  end
  win.hi = hi
  if lo < cutoff then
    local stale = {}
    for i = lo, cutoff - 1 do
      stale[#stale + 1] = fmt(i)
    end
    local vals = redis.call('HMGET', key, unpack(stale))
    for i = 1, #vals do
      n = n - (tonumber(vals[i]) or 0)
    end
    win.stale = stale
    lo = cutoff
  end
  if n < 0 then n = 0 end
  win.n, win.lo = n, lo
  if probe >= lo then
    win.probe_count = tonumber(st[4]) or 0
  end
  return win
end

-- Add `amount` to `bucket` (a negative amount stops at an empty bucket). Returns what was added.
local function win_write(win, bucket, amount)
  local key = win.key
  if win.reset_all then
    redis.call('DEL', key)
  elseif win.stale then
    redis.call('HDEL', key, unpack(win.stale))
  end
  if bucket < win.lo then bucket = win.lo end
  local count
  if bucket == win.probe then
    count = win.probe_count
  else
    count = tonumber(redis.call('HGET', key, fmt(bucket))) or 0
  end
  if count + amount < 0 then amount = -count end
  local n = win.n + amount
  if n < 0 then n = 0 end
  local hi = win.hi
  if hi == nil or bucket > hi then hi = bucket end
  redis.call('HSET', key, fmt(bucket), fmt(count + amount), 'n', fmt(n), 'lo', fmt(win.lo),
             'hi', fmt(hi))
  redis.call('PEXPIRE', key, win.w + win.b)
  win.n, win.hi, win.stale, win.reset_all = n, hi, nil, false
  return amount
end

-- Milliseconds until the oldest buckets have left the window far enough that `cost` more fits.
local function win_wait_ms(win, now, limit, cost)
  if cost > limit or win.hi == nil then
    return win.w + win.b
  end
  local excess = win.n + cost - limit
  local fields = {}
  for i = win.cutoff, win.hi do
    fields[#fields + 1] = fmt(i)
  end
  local vals = redis.call('HMGET', win.key, unpack(fields))
  local freed = 0
  for j = 1, #vals do
    freed = freed + (tonumber(vals[j]) or 0)
    if freed >= excess then
      return (win.cutoff + j) * win.b + win.w - now
    end
  end
  return (win.hi + 1) * win.b + win.w - now
end

-- Milliseconds until the window holds nothing (OpenAI's x-ratelimit-reset-*).
local function win_reset_ms(win, now)
  if win.n <= 0 or win.hi == nil then
    return 0
  end
  return (win.hi + 1) * win.b + win.w - now
end

