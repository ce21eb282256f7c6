-- RESERVE: hold the ids of a publish whose ids are kept on another Redis
-- than its log entries, before anything is appended. Called by
-- append_reserved in src/cluster/append.rs.
--
-- KEYS: the id keys (herald:{pP}:id:<id>) kept on this Redis.
-- ARGV: hold (ms), the request's token, then the ids (for the answer).
-- Returns "ok", {"dup", id} or {"busy", id}, having reserved all or none.
--
-- Why a script: the check and the reservation are one step, so two
-- requests with the same id cannot both reserve it, and a refusal leaves
-- nothing reserved (nothing to release).
local seen = {}
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if v and string.sub(v, 1, 7) == 'pending' then return {'busy', ARGV[i + 2]} end
  if v or seen[KEYS[i]] then return {'dup', ARGV[i + 2]} end
  seen[KEYS[i]] = true
end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], 'pending:' .. ARGV[2], 'PX', ARGV[1])
end
return 'ok'
