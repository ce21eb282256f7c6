#!/usr/bin/env bash
# Publish throughput against concurrent publishers: Herald (durable, the
# default), Herald --durability relaxed, Herald --history memory and
# nginx + nchan, each running many-topics (10,000 subscribers, a topic each,
# 5 updates per topic = 50,000 publishes) with 1, 8, 32 and 128 keep-alive
# publishers; plus Herald (durable) publishing 100,000 updates to the same
# 10,000 topics through its batch endpoint, 1,000 and 10,000 per request
# (BATCH_PUBS requests in flight at once, default 2).
# Each run gets a fresh server. For Herald it reads herald_history_syncs_total
# from /metrics before and after the run (fsyncs/s; "n/a" when the counter is
# absent).
#
#   bash bench/publish_scaling.sh          # ~5 minutes
#   QUICK=1 bash bench/publish_scaling.sh  # 1,000 subscribers, 10,000 updates: a smoke test
#   STEADY=1 bash bench/publish_scaling.sh # steady state: each Herald server's
#                                          # history is filled past its cap
#                                          # (FILL, default 200,000 = 2x the
#                                          # default --history-size) first;
#                                          # results under .../steady/ and
#                                          # publish-scaling-steady.svg
#
# Writes bench/results/scaling-*.json (one RESULT per run, plus the mode and
# the fsync figures), bench/results/scaling.md (also printed) and
# bench/plots/publish-scaling.svg. QUICK=1 writes the same files under
# $SCALING_OUT (default /tmp/herald-scaling-quick) instead.
#
# Bounded: publishing stops PUBLISH_FOR seconds (10) after the first publish
# of a run (slow configurations publish fewer than 50,000; the table shows how
# many were accepted), each run waits at most 40 s for its deliveries, and the
# load generator is killed after 90 s. Loopback only.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

if [ "${QUICK:-0}" = 1 ]; then
  SUBS=1000; ROUNDS=10; BATCH_UPDATES=10000; PUBLISH_FOR="${PUBLISH_FOR:-5}"
  out="${SCALING_OUT:-/tmp/herald-scaling-quick}"; svg="$out/publish-scaling.svg"
else
  SUBS=10000; ROUNDS=5; BATCH_UPDATES=100000; PUBLISH_FOR="${PUBLISH_FOR:-10}"
  out="$root/bench/results"; svg="$root/bench/plots/publish-scaling.svg"
fi
if [ "${STEADY:-0}" = 1 ]; then
  out="$out/steady"; svg="${svg%.svg}-steady.svg"
fi
CONCURRENCY=(1 8 32 128)
BATCH_SIZES=(1000 10000)
mkdir -p "$out" "$(dirname "$svg")"
rm -f "$out"/scaling-*.json

echo "==> building herald and the load generator"
cargo build --release --locked --bin herald
# The load generator shares the target dir: one build of the herald library.
(cd bench/loadgen && cargo build --release --locked)
LG="$CARGO_TARGET_DIR/release/herald-loadgen"
HERALD="$CARGO_TARGET_DIR/release/herald"

HERALD_PORT="${HERALD_PORT:-8092}"
NCHAN_PORT="${NCHAN_PORT:-8081}"
export NCHAN_PORT
KEY=scaling-secret
TOKEN="$("$HERALD" token --jwt-key "$KEY" --publish '*' --subscribe '*' --ttl 2h)"
herald_pid=""
tmp="$(mktemp -d)"

# Herald modes: extra `herald serve` flags.
herald_flags() {
  case "$1" in
    herald-sync) echo "" ;;
    herald-relaxed) echo "--durability relaxed" ;;
    herald-memory) echo "--history memory" ;;
  esac
}

start_server() { # mode
  case "$1" in
    herald-*)
      rm -rf "$tmp/data"
      # shellcheck disable=SC2046
      "$HERALD" serve --listen "127.0.0.1:$HERALD_PORT" --jwt-key "$KEY" \
        --max-connections 0 --max-connections-per-ip 0 --data-dir "$tmp/data" \
        $(herald_flags "$1") > "$tmp/herald.out" 2> "$tmp/herald.err" &
      herald_pid=$!
      local up=""
      for _ in $(seq 100); do grep -q '^listening on ' "$tmp/herald.out" && { up=1; break; }; sleep 0.1; done
      [ -n "$up" ] || { echo "herald did not start" >&2; cat "$tmp/herald.err" >&2; return 1; }
      if [ "${STEADY:-0}" = 1 ]; then
        python3 bench/fill_history.py "http://127.0.0.1:$HERALD_PORT" "$TOKEN" "${FILL:-200000}"
        sleep 2
      fi ;;
    nchan) bash bench/peers/nchan.sh start ;;
  esac
}

stop_server() { # mode
  case "$1" in
    herald-*)
      if [ -n "$herald_pid" ]; then
        kill "$herald_pid" 2>/dev/null || true; wait "$herald_pid" 2>/dev/null || true
      fi
      herald_pid="" ;;
    nchan) bash bench/peers/nchan.sh stop ;;
  esac
}

server_pids() { # mode
  case "$1" in
    herald-*) echo "$herald_pid" ;;
    nchan) local m; m="$(cat bench/peers/run/nchan/nginx.pid)"; echo "$m" $(pgrep -P "$m" || true) ;;
  esac
}

target_args() { # mode
  case "$1" in
    herald-*) echo "--target herald --url http://127.0.0.1:$HERALD_PORT --token $TOKEN" ;;
    nchan) echo "--target nchan --url http://127.0.0.1:$NCHAN_PORT" ;;
  esac
}

# herald_history_syncs_total, or nothing when the server has no such counter.
syncs() { # mode
  case "$1" in
    herald-*) curl -s --max-time 2 "http://127.0.0.1:$HERALD_PORT/metrics" |
                awk '$1 == "herald_history_syncs_total" { print $2 }' ;;
  esac
}

run() { # mode label workload args...
  local mode="$1" label="$2"; shift 2
  local file="$out/scaling-$mode-$label.json"
  echo "==> $mode: $label ($*)"
  start_server "$mode"
  local pidargs="" before after
  for p in $(server_pids "$mode"); do pidargs="$pidargs --server-pid $p"; done
  before="$(syncs "$mode" || true)"
  # shellcheck disable=SC2046,SC2086
  if ! timeout 90 "$LG" "$@" $(target_args "$mode") $pidargs --publish-for "$PUBLISH_FOR" \
       --timeout 40 --quiet-ms 3000 --no-progress > "$tmp/lg.out" 2> "$tmp/lg.err"; then
    echo "   load generator failed for $mode $label:" >&2; tail -5 "$tmp/lg.err" >&2
  fi
  after="$(syncs "$mode" || true)"
  stop_server "$mode"
  sed -n 's/^RESULT //p' "$tmp/lg.out" > "$tmp/result.json" || true
  if [ -s "$tmp/result.json" ]; then
    python3 bench/publish_scaling_report.py annotate "$tmp/result.json" "$file" \
      --mode "$mode" --syncs-before "$before" --syncs-after "$after"
    python3 bench/publish_scaling_report.py line "$file"
  else
    echo "   no result for $mode $label" >&2
  fi
}

trap 'stop_server herald-; bash bench/peers/nchan.sh stop >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
started=$(date +%s)
for mode in herald-sync herald-relaxed herald-memory nchan; do
  for c in "${CONCURRENCY[@]}"; do
    run "$mode" "c$c" many-topics --subscribers "$SUBS" --rounds "$ROUNDS" --pub-concurrency "$c"
  done
done
for b in "${BATCH_SIZES[@]}"; do
  run herald-sync "batch$b" publish-batch --subscribers "$SUBS" --updates "$BATCH_UPDATES" \
    --batch-size "$b" --pub-concurrency "${BATCH_PUBS:-2}"
done
echo "==> runs took $(( $(date +%s) - started )) s"

python3 bench/publish_scaling_report.py table "$out" --svg "$svg" > "$out/scaling.md"
cat "$out/scaling.md"
echo "==> wrote $out/scaling.md, $out/scaling-*.json and $svg"
