#!/usr/bin/env bash
# Cluster figures on one machine: Herald nodes on one real redis-server
# (appendonly yes, appendfsync always: a 200 means in Redis's AOF on disk).
#
#   bash bench/cluster.sh            # ~6 minutes
#   QUICK=1 bash bench/cluster.sh    # small sizes, a smoke test
#   SKIP_BIG=1 bash bench/cluster.sh # without the 5 x 19,000 connections run
#   HERALD_BIN=/path/to/herald ...   # another build (an A/B: run it with the
#                                    # build before a change, then without)
#
# 1. Cross-node latency: publish on node 1, subscribers on node 3, at
#    1,000 updates/s (100 subscribers) and 10,000 updates/s (10
#    subscribers), beside the same workload on one node (default durable
#    history, no Redis).
# 2. Throughput through one Redis: per-user single publishes (10,000
#    subscribers on node 2, a topic each, 32 publishers on node 1) and batch
#    publishes (100,000 updates, 1,000 per request, 2 in flight).
# 2b. The same two workloads with --redis-partitions 4 over two Redis
#    (ports 6391 and 6392, both appendfsync always): the scaling ratio.
# 3. Connections past one process: five nodes, five load generator
#    processes of 19,000 subscribers each (one per node), one broadcast of 5
#    updates to all 95,000; RSS per connection per node.
#
# Writes bench/results/cluster-*.json and prints a summary table
# (bench/results/cluster.md). Loopback only; every run is bounded by the
# load generator's timeouts; everything started is stopped on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
out="$root/bench/results"
mkdir -p "$out"
# SKIP_BIG keeps the figures of the last big run.
if [ "${SKIP_BIG:-0}" = 1 ]; then
  find "$out" -name 'cluster-*' ! -name 'cluster-big-*' \( -name '*.json' -o -name '*.redis-cpu' \) -delete
else
  rm -f "$out"/cluster-*.json "$out"/cluster-*.redis-cpu
fi

if [ "${QUICK:-0}" = 1 ]; then
  LAT_SECS=2; MANY=1000; BATCH_UPDATES=10000; BIG=2000
else
  LAT_SECS=5; MANY=10000; BATCH_UPDATES=100000; BIG=19000
fi

echo "==> building herald and the load generator"
cargo build --release --locked --bin herald
(cd bench/loadgen && cargo build --release --locked)
LG="$CARGO_TARGET_DIR/release/herald-loadgen"
HERALD="${HERALD_BIN:-$CARGO_TARGET_DIR/release/herald}"
command -v redis-server >/dev/null || { echo "redis-server is not installed (apt-get install redis-server)" >&2; exit 1; }

KEY=cluster-bench-secret
TOKEN="$("$HERALD" token --jwt-key "$KEY" --publish '*' --subscribe '*' --ttl 2h)"
REDIS_PORT=6391
REDIS_PORT2=6392
tmp="$(mktemp -d)"
redis_pid=""
redis2_pid=""
node_pids=()

launch_redis() { # port dir -> pid in $launched
  rm -rf "$2"; mkdir -p "$2"
  redis-server --port "$1" --bind 127.0.0.1 --dir "$2" --save '' \
    --appendonly yes --appendfsync always > "$2.log" 2>&1 &
  launched=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/$1 && printf 'PING\r\n' >&3 && timeout 1 head -c 5 <&3 | grep -q PONG) 2>/dev/null && return 0
    sleep 0.1
  done
  echo "redis did not start on port $1" >&2; return 1
}
start_redis() { launch_redis "$REDIS_PORT" "$tmp/redis"; redis_pid=$launched; }
start_redis2() { launch_redis "$REDIS_PORT2" "$tmp/redis2"; redis2_pid=$launched; }

start_node() { # port [extra args]
  local port="$1"; shift
  "$HERALD" serve --listen "127.0.0.1:$port" --jwt-key "$KEY" \
    --max-connections 0 --max-connections-per-ip 0 --data-dir "$tmp/data-$port" "$@" \
    > "$tmp/node-$port.out" 2> "$tmp/node-$port.err" &
  node_pids+=($!)
  for _ in $(seq 200); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz")" = 200 ] && return 0
    sleep 0.1
  done
  echo "node $port did not become ready" >&2; cat "$tmp/node-$port.err" >&2; return 1
}

stop_all() {
  for p in "${node_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${node_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  node_pids=()
  for r in "$redis_pid" "$redis2_pid"; do
    if [ -n "$r" ]; then kill "$r" 2>/dev/null || true; wait "$r" 2>/dev/null || true; fi
  done
  redis_pid=""; redis2_pid=""
}
trap 'stop_all; rm -rf "$tmp"' EXIT

node_pid() { # port
  local i=0
  for p in "${node_pids[@]}"; do
    if grep -q "127.0.0.1:$1" "/proc/$p/cmdline" 2>/dev/null; then echo "$p"; return; fi
    i=$((i + 1))
  done
}

cpu_ticks() { # pid -> utime+stime in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
TICK=$(getconf CLK_TCK)

lg() { # label args...
  local label="$1"; shift
  echo "==> $label"
  # How busy each Redis was during the run (is Redis the limit?).
  local r1=0 r2=0
  [ -n "$redis_pid" ] && r1=$(cpu_ticks "$redis_pid")
  [ -n "$redis2_pid" ] && r2=$(cpu_ticks "$redis2_pid")
  timeout 600 "$LG" "$@" --token "$TOKEN" --no-progress --json-out "$out/cluster-$label.full.json" \
    > "$tmp/lg.out" 2> "$tmp/lg.err" || { echo "   load generator failed:" >&2; tail -3 "$tmp/lg.err" >&2; }
  sed -n 's/^RESULT //p' "$tmp/lg.out" > "$out/cluster-$label.json" || true
  # Redis CPU seconds over the run (publishes, and every node's reads).
  local busy=""
  for pr in "$redis_pid:$r1" "$redis2_pid:$r2"; do
    local pid="${pr%%:*}" before="${pr#*:}"
    [ -n "$pid" ] || continue
    busy="$busy $(awk -v d="$(( $(cpu_ticks "$pid") - before ))" -v t="$TICK" 'BEGIN { printf "%.2f", d / t }')"
  done
  if [ -n "$busy" ]; then
    echo "   Redis CPU seconds (each Redis):$busy"
    echo "$busy" > "$out/cluster-$label.redis-cpu"
  fi
  rm -f "$out/cluster-$label.full.json"
  grep -E '^(publish rate|deliveries/s|latency|lost |duplicates|server CPU per)' "$tmp/lg.out" | sed 's/^/   /' || true
}

cluster3() { start_redis; for port in 8101 8102 8103; do start_node "$port" --transport "redis://127.0.0.1:$REDIS_PORT"; done; }
partitioned3() { # four partitions over two Redis
  start_redis; start_redis2
  for port in 8101 8102 8103; do
    start_node "$port" --transport "redis://127.0.0.1:$REDIS_PORT,redis://127.0.0.1:$REDIS_PORT2" --redis-partitions 4
  done
}
single() { start_node 8101; }

# 1. Cross-node latency vs one node.
for rate_subs in "1000 100" "10000 10"; do
  set -- $rate_subs; rate=$1; subs=$2; updates=$((rate * LAT_SECS))
  single
  lg "latency-single-$rate" fanout --target herald --url http://127.0.0.1:8101 \
    --subscribers "$subs" --updates "$updates" --rate "$rate" --pub-concurrency 8 --server-pid "$(node_pid 8101)"
  stop_all
  cluster3
  lg "latency-cluster-$rate" fanout --target herald --url http://127.0.0.1:8103 \
    --publish-url http://127.0.0.1:8101 --subscribers "$subs" --updates "$updates" --rate "$rate" \
    --pub-concurrency 8 --server-pid "$(node_pid 8103)"
  stop_all
done

# 2. Throughput through one Redis.
cluster3
lg "per-user-cluster" many-topics --target herald --url http://127.0.0.1:8102 \
  --publish-url http://127.0.0.1:8101 --subscribers "$MANY" --rounds 5 --pub-concurrency 32 \
  --server-pid "$(node_pid 8102)"
stop_all
cluster3
lg "batch-cluster" publish-batch --target herald --url http://127.0.0.1:8102 \
  --publish-url http://127.0.0.1:8101 --subscribers "$MANY" --updates "$BATCH_UPDATES" \
  --batch-size 1000 --pub-concurrency 2 --server-pid "$(node_pid 8102)"
stop_all

# 2b. Four partitions over two Redis.
partitioned3
lg "latency-p4-1000" fanout --target herald --url http://127.0.0.1:8103 \
  --publish-url http://127.0.0.1:8101 --subscribers 100 --updates $((1000 * LAT_SECS)) --rate 1000 \
  --pub-concurrency 8 --server-pid "$(node_pid 8103)"
stop_all
partitioned3
lg "per-user-p4" many-topics --target herald --url http://127.0.0.1:8102 \
  --publish-url http://127.0.0.1:8101 --subscribers "$MANY" --rounds 5 --pub-concurrency 32 \
  --server-pid "$(node_pid 8102)"
stop_all
partitioned3
lg "batch-p4" publish-batch --target herald --url http://127.0.0.1:8102 \
  --publish-url http://127.0.0.1:8101 --subscribers "$MANY" --updates "$BATCH_UPDATES" \
  --batch-size 1000 --pub-concurrency 2 --server-pid "$(node_pid 8102)"
stop_all

# 3. 5 x 19,000 subscribers on five nodes, one broadcast.
if [ "${SKIP_BIG:-0}" != 1 ]; then
  start_redis
  ports=(8101 8102 8103 8104 8105)
  for port in "${ports[@]}"; do start_node "$port" --transport "redis://127.0.0.1:$REDIS_PORT"; done
  run_id="big$(date +%s)"
  start_at=$(( $(date +%s%3N) + 60000 ))
  total=$((BIG * 5))
  shard_pids=()
  for i in 0 1 2 3 4; do
    port=${ports[$i]}
    "$LG" fanout --target herald --url "http://127.0.0.1:$port" --publish-url http://127.0.0.1:8101 \
      --token "$TOKEN" --subscribers "$total" --updates 5 --shard "$i/5" --run-id "$run_id" \
      --start-at "$start_at" --server-pid "$(node_pid "$port")" --no-progress \
      --connect-phase-timeout 55 --json-out "$tmp/big$i.json" > "$tmp/big$i.out" 2> "$tmp/big$i.err" &
    shard_pids+=($!)
  done
  for p in "${shard_pids[@]}"; do wait "$p" || echo "a shard failed (see its output)" >&2; done
  for i in 0 1 2 3 4; do
    echo "   node ${ports[$i]}: $(grep -E '^(connected|server RSS per connection|deliveries received)' "$tmp/big$i.out" | tr -s ' ' | tr '\n' ';')"
    sed -n 's/^RESULT //p' "$tmp/big$i.out" > "$out/cluster-big-node$i.json" || true
  done
  "$LG" merge "$tmp"/big*.json --json-out "$tmp/big-merged.json" > "$tmp/big-merged.out" 2>&1 || true
  sed -n 's/^RESULT //p' "$tmp/big-merged.out" > "$out/cluster-big-merged.json" || true
  grep -E '^(connected|deliveries expected|deliveries received|lost |latency)' "$tmp/big-merged.out" | sed 's/^/   merged: /' || true
  stop_all
fi

python3 - "$out" <<'PY' | tee "$out/cluster.md"
import json, os, sys, glob
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, f"cluster-{name}.json")))
    except Exception:
        return {}
def lat(r, k):
    v = (r.get("latency_ms") or {}).get(k)
    return f"{v:.1f}" if isinstance(v, (int, float)) else "n/a"
print("## Cluster (bench/cluster.sh)\n")
print("| workload | deliveries/s | p50 ms | p99 ms | lost | dup |")
print("|---|---|---|---|---|---|")
for rate in (1000, 10000):
    for mode in ("single", "cluster"):
        r = load(f"latency-{mode}-{rate}")
        name = f"{rate:,} updates/s, " + ("one node" if mode == "single" else "publish node 1 -> subscribers node 3")
        print(f"| {name} | {r.get('deliveries_per_sec', 'n/a')} | {lat(r,'p50')} | {lat(r,'p99')} | {r.get('lost','n/a')} | {r.get('duplicates','n/a')} |")
r = load("latency-p4-1000")
if r:
    print(f"| 1,000 updates/s, 4 partitions over two Redis, node 1 -> node 3 (one topic: three partitions idle) | {r.get('deliveries_per_sec', 'n/a')} | {lat(r,'p50')} | {lat(r,'p99')} | {r.get('lost','n/a')} | {r.get('duplicates','n/a')} |")
print()
for name, label in (("per-user-cluster", "per-user single publishes via node 1, subscribers on node 2"),
                    ("batch-cluster", "batch publishes (1,000 per request) via node 1, subscribers on node 2"),
                    ("per-user-p4", "four partitions over two Redis: per-user single publishes"),
                    ("batch-p4", "four partitions over two Redis: batch publishes (1,000 per request)")):
    r = load(name)
    print(f"- {label}: {r.get('publish_rate','n/a')} updates/s published, {r.get('deliveries_per_sec','n/a')} delivered/s, "
          f"p50/p99 {lat(r,'p50')}/{lat(r,'p99')} ms, lost {r.get('lost','n/a')}, dup {r.get('duplicates','n/a')}, "
          f"receiving node CPU {r.get('server_cpu_us_per_update','n/a')} us/update")
def rate(name):
    v = load(name).get("publish_rate")
    return v if isinstance(v, (int, float)) else None
for one, four, what in (("per-user-cluster", "per-user-p4", "single publishes"), ("batch-cluster", "batch-p4", "batch publishes")):
    a, b = rate(one), rate(four)
    if a and b:
        print(f"- scaling, {what}: four partitions over two Redis / one Redis = {b / a:.2f}x")
for name in ("per-user-cluster", "batch-cluster", "per-user-p4", "batch-p4"):
    try:
        secs = [float(x) for x in open(os.path.join(out, f"cluster-{name}.redis-cpu")).read().split()]
    except Exception:
        continue
    n = load(name).get("expected") or 0
    if n:
        per = sum(secs) * 1e6 / n
        print(f"- {name}: Redis CPU {per:.1f} us per update (all Redis together; {' + '.join(f'{s:.2f}' for s in secs)} s for {n:,} updates): one Redis core carries ~{1e6 / per:,.0f} updates/s of this kind")
nodes = sorted(glob.glob(os.path.join(out, "cluster-big-node*.json")))
if nodes:
    print("\n| node | connected | RSS per connection |")
    print("|---|---|---|")
    for i, f in enumerate(nodes):
        try:
            r = json.load(open(f))
        except Exception:
            r = {}
        print(f"| {i+1} | {r.get('connected','n/a')} | {r.get('rss_per_conn_bytes','n/a')} B |")
    m = load("big-merged")
    print(f"\nall five: {m.get('connected','n/a')} connected, {m.get('received','n/a')} / {m.get('expected','n/a')} deliveries, "
          f"lost {m.get('lost','n/a')}, p50/p99 {lat(m,'p50')}/{lat(m,'p99')} ms")
PY
