#!/usr/bin/env bash
# Cross-node latency of two Herald builds, alternated: the before/after of a
# change to the cluster path, free of the drift between separate
# bench/cluster.sh runs. Workload: bench/cluster.sh's "1,000 updates/s, 4
# partitions over two Redis, node 1 -> node 3" (100 subscribers on node 3,
# publishes through node 1, one topic: three partitions idle, so the merger
# probes), 5 s per run.
#
#   bash bench/cluster_latency_ab.sh OLD_HERALD NEW_HERALD [ROUNDS]
#
# Loopback only (Redis on 6391/6392, nodes on 8101-8103); every run is
# bounded by the load generator's own timeout; everything started is
# stopped. Prints one latency line per run.
set -uo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
old="$1"; new="$2"; rounds="${3:-4}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
LG="$CARGO_TARGET_DIR/release/herald-loadgen"
[ -x "$LG" ] || (cd "$root/bench/loadgen" && cargo build --release --locked)
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
KEY=cluster-latency-ab
tmp="$(mktemp -d)"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT

run() { # label binary
  local label="$1" bin="$2"
  rm -rf "${tmp:?}"/*; mkdir -p "$tmp/r1" "$tmp/r2"
  pids=()
  for port in 6391 6392; do
    redis-server --port "$port" --bind 127.0.0.1 --dir "$tmp/r${port: -1}" --save '' \
      --appendonly yes --appendfsync always > /dev/null 2>&1 &
    pids+=($!)
  done
  sleep 0.5
  for port in 8101 8102 8103; do
    "$bin" serve --listen "127.0.0.1:$port" --jwt-key "$KEY" --data-dir "$tmp/d$port" \
      --max-connections 0 --max-connections-per-ip 0 \
      --transport redis://127.0.0.1:6391,redis://127.0.0.1:6392 --redis-partitions 4 \
      > "$tmp/n$port.out" 2> /dev/null &
    pids+=($!)
  done
  for port in 8101 8102 8103; do
    for _ in $(seq 100); do grep -q '^listening' "$tmp/n$port.out" 2> /dev/null && break; sleep 0.1; done
  done
  sleep 1
  local token; token="$("$bin" token --jwt-key "$KEY" --publish '*' --subscribe '*' --ttl 1h)"
  echo "$label $(timeout 120 "$LG" fanout --target herald --url http://127.0.0.1:8103 \
    --publish-url http://127.0.0.1:8101 --subscribers 100 --updates 5000 --rate 1000 \
    --pub-concurrency 8 --token "$token" --no-progress 2> /dev/null | grep -E '^latency')"
  kill "${pids[@]}" 2> /dev/null; wait "${pids[@]}" 2> /dev/null
}

for r in $(seq "$rounds"); do
  # Alternate who goes first.
  if [ $((r % 2)) = 1 ]; then run old "$old"; run new "$new"; else run new "$new"; run old "$old"; fi
done
