-- SYNC: the start of a replica round (`--redis-replicas`): a write that
-- WAIT then waits for, and the counters of this Redis's partitions as of
-- that write. Called by Cluster::replica_round in src/cluster/replicas.rs.
--
-- KEYS[1]: a partition's sync key (herald:{pP}:sync); KEYS[2..]: the
-- counters (herald:{pP}:n) of every partition this Redis holds.
-- Returns the counters, in KEYS order.
--
-- Why a script: the write and the reads are one step, so the counters are
-- exactly those of the entries replicated before the write. Once WAIT says
-- the replicas have the write, they have every entry up to each counter,
-- and the round writes those counters to the log as commit markers: nodes
-- deliver an entry only once a marker covers it.
redis.call('SET', KEYS[1], '1')
local out = {}
for i = 2, #KEYS do
  out[#out + 1] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
return out
