-- RELEASE: drop the reservations of one request that were not used (a
-- reservation on another Redis failed). Called by Cluster::release in
-- src/cluster/append.rs; best effort, a reservation also expires by itself.
--
-- KEYS: id keys. ARGV: the request's token.
--
-- Why a script: compare-and-delete per key; only this request's own
-- reservations go, never an id another request has since reserved or
-- recorded.
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == 'pending:' .. ARGV[1] then redis.call('DEL', KEYS[i]) end
end
return 'ok'
