-- APPEND: check every id of a request, then append every update: all or
-- nothing. Loaded by src/cluster/scripts.rs, called by src/cluster/append.rs.
--
-- KEYS, four per update, in request order:
--   herald:{pP}:id:<id>  its id key (where the id is remembered)
--   herald:{pP}:log      its partition's stream
--   herald:{pP}:n        its partition's counter
--   herald:{pP}:t        its partition's clock (t of the last entry)
-- ARGV: maxlen, id ttl (ms), mode, stamp ("1": give entries a clock, needed
-- to merge partitions; one partition is merged by stream order alone),
-- deadline (Redis time in microseconds; 0: none), then per update: id,
-- record, partition.
--
-- A call that runs after its deadline appends nothing and returns
-- {"late", now}: the node that sent it may have answered 503 by then, and
-- its publisher gone on to its next update, which this one must not
-- follow (a call held in a stalled link or a stopped Redis runs when it
-- thaws).
--
-- Mode `s`: stored, ids checked and recorded here; `r`: stored, ids
-- reserved and recorded by the caller on another Redis (the id key given
-- is the update's own partition's: checked too, so an append whose answer
-- was lost is not made twice by a retry, and its position recorded there
-- at once); `l`: live-only entries (subscription events: delivered, never
-- stored, ids not kept).
--
-- Each entry's `t` is the Redis clock in microseconds, strictly increasing
-- within a partition and within one call. Returns the counter value of
-- each update, or {"dup", id}, or {"busy", id} (reserved by a publish in
-- flight).
--
-- Why a script: Redis runs it atomically, so no other publish can take an
-- id between the check and the SET, no reader sees half a request, and the
-- counter (n), the clock (t) and the stream stay in step: n goes up by one
-- per entry with no holes, which is how readers detect a reset or a gap.
local maxlen, ttl, mode = ARGV[1], ARGV[2], ARGV[3]
local count = #KEYS / 4
local deadline = tonumber(ARGV[5]) or 0
if deadline > 0 then
  local now = redis.call('TIME')
  local now_us = tonumber(now[1]) * 1000000 + tonumber(now[2])
  if now_us > deadline then return {'late', string.format('%d', now_us)} end
end
if mode ~= 'l' then
  local seen = {}
  for i = 0, count - 1 do
    local key, id = KEYS[i * 4 + 1], ARGV[6 + i * 3]
    local v = redis.call('GET', key)
    if v and string.sub(v, 1, 7) == 'pending' then return {'busy', id} end
    if v or seen[key] then return {'dup', id} end
    seen[key] = true
  end
end
local stamp = ARGV[4] == '1'
local prev, clocks = 0, {}
if stamp then
  local now = redis.call('TIME')
  prev = tonumber(now[1]) * 1000000 + tonumber(now[2]) - 1
end
local out = {}
for i = 0, count - 1 do
  local idk, log, ctr, tk = KEYS[i * 4 + 1], KEYS[i * 4 + 2], KEYS[i * 4 + 3], KEYS[i * 4 + 4]
  local rec, part = ARGV[7 + i * 3], ARGV[8 + i * 3]
  local n = redis.call('INCR', ctr)
  local fields = {'n', n}
  if stamp then
    local last = clocks[tk] or tonumber(redis.call('GET', tk) or '0')
    local t = prev + 1
    if t <= last then t = last + 1 end
    prev, clocks[tk] = t, t
    fields[3], fields[4] = 't', string.format('%d', t)
  end
  fields[#fields + 1] = 'r'
  fields[#fields + 1] = rec
  if mode == 'l' then
    fields[#fields + 1] = 'l'
    fields[#fields + 1] = '1'
  end
  redis.call('XADD', log, 'MAXLEN', '~', maxlen, '*', unpack(fields))
  if mode ~= 'l' then
    redis.call('SET', idk, part .. ':' .. n, 'PX', ttl)
  end
  out[#out + 1] = n
end
for tk, t in pairs(clocks) do
  redis.call('SET', tk, string.format('%d', t))
end
return out
