#!/usr/bin/env bash
# Run one workload split over K herald-loadgen processes (for more connections
# than one process may open: 20,000 files each), then merge their results.
#
#   bench/loadgen/sharded.sh K WORKLOAD [WORKLOAD ARGS...]
#   e.g. bench/loadgen/sharded.sh 3 fanout --target herald --url http://127.0.0.1:8080 \
#            --token "$JWT" --subscribers 45000 --updates 100
#
# Every shard gets --shard i/K, the same --run-id (so they share topics) and a
# --start-at barrier START_DELAY seconds ahead (default 30): shard 0 publishes
# at that moment, the others only subscribe. Environment:
#   LOADGEN_BIN  binary (default: target/release/herald-loadgen beside this script)
#   OUT_DIR      where shardN.json/.txt/.err go (default: a new temp dir)
#   START_DELAY  seconds allowed for all shards to connect (default 30)
#   PLOT         merged SVG to write (optional)
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,16p' "$0"
  exit 2
fi
K=$1
shift
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${LOADGEN_BIN:-$HERE/target/release/herald-loadgen}
OUT=${OUT_DIR:-$(mktemp -d /tmp/loadgen-shards.XXXXXX)}
mkdir -p "$OUT"
RUN=${RUN_ID:-sh$(date +%s)}
DELAY=${START_DELAY:-30}
START=$(( $(date +%s%3N) + DELAY * 1000 ))
pids=()
for ((i = 0; i < K; i++)); do
  "$BIN" "$@" --shard "$i/$K" --run-id "$RUN" --start-at "$START" \
    --json-out "$OUT/shard$i.json" --no-progress >"$OUT/shard$i.txt" 2>"$OUT/shard$i.err" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do
  wait "$p" || rc=1
done
if [ $rc -ne 0 ]; then
  echo "a shard failed; see $OUT/shard*.err" >&2
fi
echo "per-shard output in $OUT" >&2
if [ -n "${PLOT:-}" ]; then
  "$BIN" merge "$OUT"/shard*.json --plot "$PLOT" --json-out "$OUT/merged.json"
else
  "$BIN" merge "$OUT"/shard*.json --json-out "$OUT/merged.json"
fi
exit $rc
