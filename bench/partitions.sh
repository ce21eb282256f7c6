#!/usr/bin/env bash
# Partitions: one Redis vs --redis-partitions 4 over two Redis, alternated
# (this machine's figures drift by +-15% between runs; pairs run back to
# back compare fairly). Three Herald nodes, Redis 7 with appendonly yes and
# appendfsync always, per-user single publishes (10,000 subscribers on node
# 2, a topic each, 32 publishers on node 1) and batch publishes (100,000
# updates, 1,000 per request). Prints per run: publishes/s, Redis CPU per
# update, probes per update on the receiving node; then the medians and the
# ratio.
#
#   bash bench/partitions.sh            # 3 rounds, ~6 minutes
#   ROUNDS=1 bash bench/partitions.sh   # one round
#   LAYOUTS="one p4one p4" WORKLOADS=single bash bench/partitions.sh
#                                       # also 4 partitions on one Redis
#   FSYNC=everysec bash bench/partitions.sh  # Redis's appendfsync (default always)
#
# Writes bench/results/partitions.md. Loopback only; bounded by the load
# generator's timeouts; everything started is stopped on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
ROUNDS="${ROUNDS:-3}"
out="$root/bench/results"
mkdir -p "$out"
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }
echo "==> building herald and the load generator"
cargo build --release --locked --bin herald
(cd bench/loadgen && cargo build --release --locked)
LG="$CARGO_TARGET_DIR/release/herald-loadgen"
HERALD="$CARGO_TARGET_DIR/release/herald"
KEY=partitions-bench-secret
TOKEN="$("$HERALD" token --jwt-key "$KEY" --publish '*' --subscribe '*' --ttl 2h)"
TICK=$(getconf CLK_TCK)
tmp="$(mktemp -d)"
pids=()
redis_pids=()

stop_all() {
  for p in "${pids[@]}" "${redis_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}" "${redis_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=(); redis_pids=()
}
trap 'stop_all; rm -rf "$tmp"' EXIT

start_redis() { # port
  rm -rf "$tmp/r$1"; mkdir -p "$tmp/r$1"
  redis-server --port "$1" --bind 127.0.0.1 --dir "$tmp/r$1" --save '' \
    --appendonly yes --appendfsync "${FSYNC:-always}" > /dev/null 2>&1 &
  redis_pids+=($!)
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$1 && printf 'PING\r\n' >&3 && timeout 1 head -c 5 <&3 | grep -q PONG) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "redis did not start on port $1" >&2; return 1
}

start_nodes() { # transport partitions
  for port in 8121 8122 8123; do
    "$HERALD" serve --listen "127.0.0.1:$port" --jwt-key "$KEY" --max-connections 0 \
      --max-connections-per-ip 0 --transport "$1" --redis-partitions "$2" > /dev/null 2> "$tmp/node-$port.err" &
    pids+=($!)
  done
  for port in 8121 8122 8123; do
    for _ in $(seq 200); do
      [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ] && break
      sleep 0.1
    done
  done
}

metric() { # port name
  curl -s "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 == n { print $2 }'
}

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run() { # label config workload
  local label="$1" config="$2" workload="$3"
  stop_all
  if [ "$config" = one ]; then
    start_redis 6397
    start_nodes "redis://127.0.0.1:6397" 1
  elif [ "$config" = p4one ]; then
    start_redis 6397
    start_nodes "redis://127.0.0.1:6397" 4
  else
    start_redis 6397; start_redis 6398
    start_nodes "redis://127.0.0.1:6397,redis://127.0.0.1:6398" 4
  fi
  local before=0 p
  for p in "${redis_pids[@]}"; do before=$((before + $(ticks "$p"))); done
  local probes0 updates args
  probes0=$(metric 8122 herald_cluster_probes_total)
  if [ "$workload" = single ]; then
    updates=50000
    args=(many-topics --subscribers 10000 --rounds 5 --pub-concurrency 32)
  else
    updates=100000
    args=(publish-batch --subscribers 10000 --updates "$updates" --batch-size 1000 --pub-concurrency 2)
  fi
  timeout 600 "$LG" "${args[@]}" --target herald --url http://127.0.0.1:8122 \
    --publish-url http://127.0.0.1:8121 --server-pid "${pids[1]}" --token "$TOKEN" --no-progress \
    > "$tmp/lg.out" 2>&1 || { echo "   load generator failed" >&2; tail -3 "$tmp/lg.out" >&2; }
  local after=0
  for p in "${redis_pids[@]}"; do after=$((after + $(ticks "$p"))); done
  local probes1 rate lost
  probes1=$(metric 8122 herald_cluster_probes_total)
  rate=$(grep -E '^publish rate' "$tmp/lg.out" | awk '{print $NF}' | tr -d _)
  lost=$(grep -E '^lost ' "$tmp/lg.out" | head -1 | awk '{print $NF}')
  awk -v l="$label" -v r="$rate" -v d="$((after - before))" -v t="$TICK" -v u="$updates" \
    -v p="$((probes1 - probes0))" -v lost="$lost" \
    'BEGIN { printf "%s %s %.1f %.3f %s\n", l, r, d / t * 1e6 / u, p / u, lost }' | tee -a "$tmp/runs"
}

: > "$tmp/runs"
echo "label publishes/s redis_us_per_update probes_per_update lost"
for round in $(seq "$ROUNDS"); do
  for workload in ${WORKLOADS:-single batch}; do
    for layout in ${LAYOUTS:-one p4}; do
      run "$workload-$layout" "$layout" "$workload"
    done
  done
done
stop_all

python3 - "$tmp/runs" <<'PY' | tee "$out/partitions.md"
import sys, statistics
runs = {}
for line in open(sys.argv[1]):
    label, rate, redis_us, probes, lost = line.split()
    runs.setdefault(label, []).append((float(rate), float(redis_us), float(probes), lost))
print("## Partitions (bench/partitions.sh)\n")
print("| workload | layout | runs | publishes/s (median) | Redis CPU us/update | probes/update (node 2) | lost |")
print("|---|---|---|---|---|---|---|")
med = {}
for label in ("single-one", "single-p4one", "single-p4", "batch-one", "batch-p4one", "batch-p4"):
    r = runs.get(label, [])
    if not r:
        continue
    med[label] = statistics.median(x[0] for x in r)
    work, layout = label.split("-")
    layout = {"one": "one Redis", "p4one": "4 partitions, one Redis", "p4": "4 partitions, two Redis"}[layout]
    print(f"| {work} | {layout} | {', '.join(f'{x[0]:,.0f}' for x in r)} | {med[label]:,.0f} | "
          f"{statistics.median(x[1] for x in r):.1f} | {statistics.median(x[2] for x in r):.3f} | {','.join(x[3] for x in r)} |")
for work in ("single", "batch"):
    if f"{work}-one" in med and f"{work}-p4" in med:
        print(f"\n- {work}: four partitions over two Redis / one Redis = {med[work + '-p4'] / med[work + '-one']:.2f}x")
PY
