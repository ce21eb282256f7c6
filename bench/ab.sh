#!/usr/bin/env bash
# Two herald builds, same load generator, same machine, alternating runs:
# the before/after of a change, free of the drift between separate
# compare.sh runs (the machine is shared and virtualised).
#
#   bash bench/ab.sh OLD_HERALD NEW_HERALD [ROUNDS]
#   ONLY=fanout bash bench/ab.sh OLD NEW 6   # one workload, more rounds
#   PIN=1 bash bench/ab.sh OLD NEW            # server on core 0, load generator
#                                             # on core 1: far less spread
#   STEADY=1 bash bench/ab.sh OLD NEW         # steady state: before each run,
#                                             # fill history past its cap
#                                             # (FILL updates, default 200,000
#                                             # = 2x the default --history-size)
#                                             # through the batch endpoint
#
# e.g. build the old one with `git worktree add /tmp/old <rev>` and
# `cargo build --release` there. Workloads (loopback only, each bounded by
# the load generator's own duration/timeouts): churn (100 connections, 10 s,
# 50 publishes/s), fanout 1000 x 2000, many-topics 5000, per-user (10,000
# topics x 5 publishes, 32 publishers), idle 5000 (server RSS per
# connection). Prints one line per run and workload.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
old="$1"; new="$2"; rounds="${3:-2}"
LG="$root/bench/loadgen/target/release/herald-loadgen"
[ -x "$LG" ] || (cd "$root/bench/loadgen" && CARGO_TARGET_DIR="$root/bench/loadgen/target" cargo build --release --locked)
KEY=ab-secret
PORT=8093
tmp="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT

start() { # binary token
  rm -rf "$tmp/data"
  local extra=()
  # Builds that know connection limits get them lifted for the bench.
  if "$1" serve --help | grep -q -- --max-connections-per-ip; then
    extra=(--max-connections 0 --max-connections-per-ip 0)
  fi
  ${PIN:+taskset -c 0} "$1" serve --listen "127.0.0.1:$PORT" --jwt-key "$KEY" --data-dir "$tmp/data" "${extra[@]}" \
    > "$tmp/out" 2> /dev/null &
  pid=$!
  local up=""
  for _ in $(seq 100); do grep -q '^listening on ' "$tmp/out" && { up=1; break; }; sleep 0.1; done
  [ -n "$up" ] || { echo "herald did not start" >&2; return 1; }
  if [ "${STEADY:-0}" = 1 ]; then
    # History full and trimming, as after weeks in production; then a
    # moment for the sweep to catch up with the fill's backlog.
    python3 "$root/bench/fill_history.py" "http://127.0.0.1:$PORT" "$2" "${FILL:-200000}" 2> /dev/null
    sleep 2
  fi
}

stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; }

run() { # label binary workload args...
  local label="$1" bin="$2"; shift 2
  # ONLY=fanout (say) runs just the workloads whose name contains it.
  case "$*" in *"${ONLY:-}"*) ;; *) return 0 ;; esac
  local token; token="$("$bin" token --jwt-key "$KEY" --publish '*' --subscribe '*' --ttl 1h)"
  start "$bin" "$token"
  ${PIN:+taskset -c 1} timeout 300 "$LG" "$@" --target herald --url "http://127.0.0.1:$PORT" --token "$token" \
    --server-pid "$pid" > "$tmp/lg" 2> /dev/null || true
  stop
  local result; result="$(sed -n 's/^RESULT //p' "$tmp/lg")"
  local tag=""; [ "${STEADY:-0}" = 1 ] && tag=" steady"
  echo "$label$tag $*: $(python3 - "$result" <<'EOF'
import json, sys
d = json.loads(sys.argv[1] or "{}")
out = []
for k in ["deliveries_per_sec", "connects_per_sec", "publish_rate", "rss_per_conn_bytes",
          "server_cpu_s", "lost"]:
    if isinstance(d.get(k), (int, float)):
        out.append(f"{k}={d[k]}")
lat = d.get("latency_ms")
if isinstance(lat, dict) and "p99" in lat:
    out.append(f"p99_ms={lat['p99']}")
print("  ".join(out) or "no result")
EOF
)"
}

for r in $(seq "$rounds"); do
  for label in old new; do
    bin="$old"; [ "$label" = new ] && bin="$new"
    run "$label" "$bin" churn --connections 100 --duration 10 --publish-rate 50
    run "$label" "$bin" fanout --subscribers 1000 --updates 2000
    run "$label" "$bin" many-topics --subscribers 5000
    # per-user: 10,000 subscribers each on its own topic, 5 publishes per
    # topic, 32 keep-alive publishers (compare.sh's per-user workload).
    run "$label" "$bin" many-topics --subscribers 10000 --rounds 5 --pub-concurrency 32
    run "$label" "$bin" idle --connections 5000 --hold 3
  done
done
