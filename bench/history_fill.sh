#!/usr/bin/env bash
# Publish cost against history fill: the per-user workload (10,000
# subscribers, a topic each, 5 publishes per topic, 32 keep-alive
# publishers; durable default) on a fresh server whose history was first
# filled through the batch endpoint to:
#   empty         --history-size 100,000, nothing published before
#   half          --history-size 100,000, 50,000 published (50%)
#   full          --history-size 100,000, 200,000 published (100%, trimming)
#   full-1M       --history-size 1,000,000, 2,000,000 published (100%, trimming)
# One or two builds, alternated, ROUNDS rounds (default 2).
#
#   bash bench/history_fill.sh NEW_HERALD [OLD_HERALD]
#   PIN=1 ...   server on core 0, load generator on core 1 (less spread)
#
# Writes bench/results/history-fill.jsonl (one line per run), prints a
# table (medians), draws bench/plots/history-fill.svg. Loopback only; every
# run is bounded by the load generator's timeouts (300 s at most).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
new="$1"; old="${2:-}"; rounds="${ROUNDS:-2}"
LG="$root/bench/loadgen/target/release/herald-loadgen"
[ -x "$LG" ] || (cd "$root/bench/loadgen" && CARGO_TARGET_DIR="$root/bench/loadgen/target" cargo build --release --locked)
KEY=fill-secret
PORT="${PORT:-8094}"
out="$root/bench/results/history-fill.jsonl"
svg="$root/bench/plots/history-fill.svg"
mkdir -p "$(dirname "$out")" "$(dirname "$svg")"
: > "$out"
tmp="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$tmp"' EXIT

run() { # label binary state cap fill
  local label="$1" bin="$2" state="$3" cap="$4" fill="$5"
  local token; token="$("$bin" token --jwt-key "$KEY" --publish '*' --subscribe '*' --ttl 1h)"
  rm -rf "$tmp/data"
  ${PIN:+taskset -c 0} "$bin" serve --listen "127.0.0.1:$PORT" --jwt-key "$KEY" --data-dir "$tmp/data" \
    --max-connections 0 --max-connections-per-ip 0 --history-size "$cap" > "$tmp/out" 2> /dev/null &
  pid=$!
  local up=""
  for _ in $(seq 100); do grep -q '^listening on ' "$tmp/out" && { up=1; break; }; sleep 0.1; done
  [ -n "$up" ] || { echo "herald did not start" >&2; return 1; }
  if [ "$fill" -gt 0 ]; then
    python3 "$root/bench/fill_history.py" "http://127.0.0.1:$PORT" "$token" "$fill" 2> /dev/null
    sleep 2
  fi
  ${PIN:+taskset -c 1} timeout 300 "$LG" many-topics --subscribers 10000 --rounds 5 --pub-concurrency 32 \
    --target herald --url "http://127.0.0.1:$PORT" --token "$token" --server-pid "$pid" > "$tmp/lg" 2> /dev/null || true
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""
  python3 - "$label" "$state" "$cap" "$fill" "$tmp/lg" "$out" <<'PY'
import json, sys
label, state, cap, fill, lg, out = sys.argv[1:]
result = {}
for line in open(lg):
    if line.startswith("RESULT "):
        result = json.loads(line[7:])
row = {"build": label, "state": state, "cap": int(cap), "fill": int(fill),
       "publish_rate": result.get("publish_rate"),
       "cpu_us_per_publish": result.get("server_cpu_us_per_update"),
       "lost": result.get("lost")}
print(json.dumps(row))
open(out, "a").write(json.dumps(row) + "\n")
PY
}

for r in $(seq "$rounds"); do
  for state in "empty 100000 0" "half 100000 50000" "full 100000 200000" "full-1M 1000000 2000000"; do
    # shellcheck disable=SC2086
    set -- $state
    [ -n "$old" ] && run old "$old" "$@"
    run new "$new" "$@"
  done
done
python3 "$root/bench/history_fill_report.py" "$out" "$svg"
