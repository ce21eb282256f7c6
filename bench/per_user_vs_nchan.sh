#!/usr/bin/env bash
# The notifications workload (scenario 1 in ../shared/SCENARIOS.md) at
# steady state, Herald against nginx+nchan, alternated in one run:
# 10,000 subscribers each on its own topic, 5 publishes per topic (50,000),
# 32 keep-alive publishers. Herald runs its defaults (durable history,
# --history-size 100,000) with its history first filled past the cap
# (200,000 updates through the batch endpoint), so every commit trims; nchan
# runs as bench/peers/nchan.sh sets it up (one worker, a 10,000-message
# buffer per channel, in memory). Each run gets a fresh server.
#
#   bash bench/per_user_vs_nchan.sh            # 3 pairs (~3 minutes)
#   ROUNDS=5 PIN=1 bash bench/per_user_vs_nchan.sh
#
# PIN=1 puts the server on core 0 and the load generator on core 1.
# HERALD=path picks the binary (default target/release/herald). Prints one
# line per run, then medians; writes bench/results/per-user-vs-nchan.jsonl.
# Loopback only; each run is bounded by the load generator (300 s at most).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
HERALD="${HERALD:-$CARGO_TARGET_DIR/release/herald}"
[ -x "$HERALD" ] || cargo build --release --locked --bin herald
LG="$root/bench/loadgen/target/release/herald-loadgen"
[ -x "$LG" ] || (cd bench/loadgen && CARGO_TARGET_DIR="$root/bench/loadgen/target" cargo build --release --locked)
rounds="${ROUNDS:-3}"
PORT=8095
export NCHAN_PORT="${NCHAN_PORT:-8081}"
KEY=per-user-secret
TOKEN="$("$HERALD" token --jwt-key "$KEY" --publish '*' --subscribe '*' --ttl 2h)"
out="$root/bench/results/per-user-vs-nchan.jsonl"
mkdir -p "$(dirname "$out")"
: > "$out"
tmp="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; bash bench/peers/nchan.sh stop >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT

record() { # server
  python3 - "$1" "$tmp/lg" "$out" <<'PY'
import json, sys
server, lg, out = sys.argv[1:]
r = {}
for line in open(lg):
    if line.startswith("RESULT "):
        r = json.loads(line[7:])
row = {"server": server, "publish_rate": r.get("publish_rate"),
       "cpu_us_per_publish": r.get("server_cpu_us_per_update"),
       "deliveries_per_sec": r.get("deliveries_per_sec"), "lost": r.get("lost")}
print(json.dumps(row))
open(out, "a").write(json.dumps(row) + "\n")
PY
}

workload=(many-topics --subscribers 10000 --rounds 5 --pub-concurrency 32)
for r in $(seq "$rounds"); do
  bash bench/peers/nchan.sh start > /dev/null
  m="$(cat bench/peers/run/nchan/nginx.pid)"
  pids=""; for p in "$m" $(pgrep -P "$m" || true); do pids="$pids --server-pid $p"; done
  [ -n "${PIN:-}" ] && for p in "$m" $(pgrep -P "$m" || true); do taskset -pc 0 "$p" > /dev/null; done
  # shellcheck disable=SC2086
  ${PIN:+taskset -c 1} timeout 300 "$LG" "${workload[@]}" --target nchan --url "http://127.0.0.1:$NCHAN_PORT" \
    $pids > "$tmp/lg" 2> /dev/null || true
  bash bench/peers/nchan.sh stop > /dev/null
  record nchan

  rm -rf "$tmp/data"
  ${PIN:+taskset -c 0} "$HERALD" serve --listen "127.0.0.1:$PORT" --jwt-key "$KEY" --data-dir "$tmp/data" \
    --max-connections 0 --max-connections-per-ip 0 > "$tmp/out" 2> /dev/null &
  pid=$!
  for _ in $(seq 100); do grep -q '^listening on ' "$tmp/out" && break; sleep 0.1; done
  python3 bench/fill_history.py "http://127.0.0.1:$PORT" "$TOKEN" 200000 2> /dev/null
  sleep 2
  ${PIN:+taskset -c 1} timeout 300 "$LG" "${workload[@]}" --target herald --url "http://127.0.0.1:$PORT" \
    --token "$TOKEN" --server-pid "$pid" > "$tmp/lg" 2> /dev/null || true
  kill "$pid"; wait "$pid" 2> /dev/null || true; pid=""
  record herald-steady
done
python3 - "$out" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for server in ("nchan", "herald-steady"):
    rs = [r for r in rows if r["server"] == server and r["publish_rate"]]
    if rs:
        print(f"median {server}: {statistics.median(r['publish_rate'] for r in rs):,.0f} publishes/s, "
              f"{statistics.median(r['cpu_us_per_publish'] for r in rs):.1f} µs server CPU per publish "
              f"({len(rs)} runs)")
PY
