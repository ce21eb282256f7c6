-- PROBE: the merger's question to idle partitions: is anything unread
-- past the last entry this node read (does the partition's counter say
-- more)? If not, the partition's clock is raised to the `t` of the last
-- entry the node has queued, so its next entry sorts after all of them,
-- whatever the Redis clocks say: a clock that steps back or runs behind
-- another Redis's cannot reorder what nodes already applied. Called by
-- Cluster::probe in src/cluster/merger.rs.
--
-- KEYS: per partition, its counter (herald:{pP}:n) and clock
-- (herald:{pP}:t). ARGV: that `t`, then per partition the counter of the
-- last entry read. Returns per partition its clock, or 0 when something is
-- unread (or the log was reset: the reader sees to that).
--
-- Why a script: APPEND reads and writes the same two keys atomically, so
-- between this script's look at the counter and its raise of the clock no
-- entry can be appended; an entry appended after it gets a t above the
-- raised clock, and one appended before shows in the counter.
local target = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 2 do
  local counter = tonumber(redis.call('GET', KEYS[i * 2 - 1]) or '0')
  if counter ~= tonumber(ARGV[i + 1]) then
    out[i] = 0
  else
    local clock = tonumber(redis.call('GET', KEYS[i * 2]) or '0')
    if clock < target then
      clock = target
      redis.call('SET', KEYS[i * 2], string.format('%d', clock))
    end
    out[i] = string.format('%d', clock)
  end
end
return out
