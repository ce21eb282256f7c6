-- RECORD: write where reserved ids went (partition:counter), replacing
-- this request's reservation, unless it was taken over (it expired and
-- another request reserved the id). Called by append_reserved in
-- src/cluster/append.rs once the entries are appended.
--
-- KEYS: id keys. ARGV: id ttl (ms), the request's token, then per key its
-- position.
--
-- Why a script: compare-and-set per key; a reservation that expired and
-- was taken by another request is not overwritten between the GET and the
-- SET.
for i = 1, #KEYS do
  local v = redis.call('GET', KEYS[i])
  if not v or v == 'pending:' .. ARGV[2] then
    redis.call('SET', KEYS[i], ARGV[i + 2], 'PX', ARGV[1])
  end
end
return 'ok'
