#!/usr/bin/env bash
# Soak test: one fresh herald under mixed load for a bounded time, its memory
# and open files sampled throughout. Exits non-zero when herald died or when
# its RSS kept growing after the warm-up.
#
#   bench/soak.sh                  # 10 minutes (SOAK_SECONDS or --duration N to change)
#   bench/soak.sh --quick          # ~60 s, to try the script
#   bench/soak.sh --out DIR        # keep samples.csv, logs and loadgen results in DIR
#
# What runs at the same time (loopback only; every process stops by itself):
#   - idle:     SOAK_SUBSCRIBERS (10000) subscribers spread over SOAK_TOPICS (100)
#               topics, reading promptly for the whole run;
#   - churn:    SOAK_CHURN (100) clients connecting, reading SOAK_CHURN_HOLD_MS (2000)
#               and disconnecting, over and over; the same process publishes
#               SOAK_RATE (250) updates/s round-robin over the topics
#               (payload SOAK_PAYLOAD_BYTES, 256);
#   - slow:     SOAK_SLOW (300) slow readers, each on SOAK_SLOW_TOPICS (20) of the
#               same topics: half read 64 bytes/s for 40 s (25 s quick), half
#               read nothing for 50 s (30 s quick; longer than --write-timeout
#               30s plus the time to fill the buffers); then each drains for
#               up to 10 s to see whether herald ended its stream, and
#               reconnects (herald-loadgen slow-readers; small
#               SO_RCVBUF and MSS so the kernel buffers little). Herald runs
#               with --queue-capacity SOAK_QUEUE (256).
#   - sampler:  every SOAK_SAMPLE_SECONDS (2) herald's VmRSS, open fds, and its
#               /metrics counters go to samples.csv.
# Herald keeps SOAK_HISTORY (20000; 2500 quick) updates of history, so its
# history (and its in-memory cache of up to 10,000 updates) reaches steady
# state inside the warm-up.
#
# Pass/fail rule (bench/soak_plot.py): warm-up = first 20% of the run.
# baseline = median RSS of the samples in [20%, 40%) of the run,
# final = median RSS of the samples in [80%, 100%].
# FAIL if final - baseline > max(SOAK_TOL_PCT (10) % of baseline, SOAK_TOL_MB (20) MiB).
# Medians over whole windows ignore single spikes (allocator, a burst of
# reconnects); comparing two windows after the warm-up ignores the ramp-up.
# Also FAIL if herald exited before the end or a sample could not be taken.
#
# Writes the plot to bench/plots/soak.svg (SOAK_PLOT to change).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
DURATION="${SOAK_SECONDS:-600}"
QUICK=0
OUT_KEEP=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; DURATION="${SOAK_SECONDS:-60}" ;;
    --duration) DURATION="$2"; shift ;;
    --duration=*) DURATION="${1#*=}" ;;
    --out) OUT_KEEP="$2"; shift ;;
    --out=*) OUT_KEEP="${1#*=}" ;;
    -h|--help) awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$DURATION" in ''|*[!0-9]*) echo "duration must be whole seconds" >&2; exit 2 ;; esac
if [ "$DURATION" -lt 30 ]; then echo "duration must be at least 30 s" >&2; exit 2; fi

SUBS="${SOAK_SUBSCRIBERS:-10000}"
TOPICS="${SOAK_TOPICS:-100}"
RATE="${SOAK_RATE:-250}"
PAYLOAD="${SOAK_PAYLOAD_BYTES:-256}"
CHURN="${SOAK_CHURN:-100}"
CHURN_HOLD_MS="${SOAK_CHURN_HOLD_MS:-2000}"
SLOW="${SOAK_SLOW:-300}"
INTERVAL="${SOAK_SAMPLE_SECONDS:-2}"
SLOW_TOPICS="${SOAK_SLOW_TOPICS:-20}"
QUEUE="${SOAK_QUEUE:-256}"
if [ "$QUICK" = 1 ]; then
  STALL=30; MAX_LIFE=25; HISTORY="${SOAK_HISTORY:-2500}"
else
  STALL=50; MAX_LIFE=40; HISTORY="${SOAK_HISTORY:-20000}"
fi
PLOT="${SOAK_PLOT:-$root/bench/plots/soak.svg}"
if [ "$SUBS" -gt 19000 ]; then
  echo "SOAK_SUBSCRIBERS > 19000 needs more than one loadgen process per workload (not supported here)" >&2
  exit 2
fi

HERALD="$root/target/release/herald"
LG="$root/bench/loadgen/target/release/herald-loadgen"
if [ ! -x "$HERALD" ]; then
  echo "==> building herald (release)"
  (cd "$root" && CARGO_TARGET_DIR="$root/target" nice cargo build --release --bin herald)
fi
if [ ! -x "$LG" ]; then
  echo "==> building herald-loadgen (release)"
  (cd "$root/bench/loadgen" && CARGO_TARGET_DIR="$root/bench/loadgen/target" nice cargo build --release --locked)
fi

work="$(mktemp -d /tmp/herald-soak.XXXXXX)"
pids=()          # every process this script started
herald_pid=""
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$OUT_KEEP" ] && [ -d "$work" ]; then
    mkdir -p "$OUT_KEEP"
    cp -a "$work"/*.csv "$work"/*.txt "$work"/*.log "$work"/*.json "$OUT_KEEP"/ 2>/dev/null || true
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---- herald ----------------------------------------------------------------
KEY="soak-$(date +%s)-$RANDOM"
extra=()
help="$("$HERALD" serve --help)"
if grep -q -- '--max-connections-per-ip' <<<"$help"; then
  extra+=(--max-connections 0 --max-connections-per-ip 0)
else
  echo "note: this herald has no --max-connections[-per-ip]; not passed"
fi
if grep -q -- '--write-timeout' <<<"$help"; then
  extra+=(--write-timeout 30s)
else
  echo "note: this herald has no --write-timeout; slow readers are ended only by queue cut-off"
fi
if grep -q -- '--queue-capacity' <<<"$help"; then extra+=(--queue-capacity "$QUEUE"); fi
if grep -q -- '--history-size' <<<"$help"; then extra+=(--history-size "$HISTORY"); fi

RUST_LOG="${RUST_LOG:-warn}" "$HERALD" serve --listen 127.0.0.1:0 --jwt-key "$KEY" \
  --data-dir "$work/data" "${extra[@]}" >"$work/herald.log" 2>&1 &
herald_pid=$!
pids+=("$herald_pid")
addr=""
for _ in $(seq 100); do
  addr="$(sed -n 's#.*listening on http://\([0-9.:]*\).*#\1#p' "$work/herald.log" | head -1)"
  [ -n "$addr" ] && break
  kill -0 "$herald_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "FAIL: herald did not start" >&2
  cat "$work/herald.log" >&2
  exit 1
fi
url="http://$addr"
TOKEN="$("$HERALD" token --jwt-key "$KEY" --publish '*' --subscribe '*' --ttl 2h)"
echo "==> herald pid $herald_pid on $url (${extra[*]})"
echo "==> soak: ${DURATION}s, $SUBS subscribers on $TOPICS topics, $RATE publishes/s," \
  "$CHURN churning, $SLOW slow readers, queue $QUEUE, history $HISTORY"

metric() { # name -> value from the last /metrics scrape ($work/metrics.txt), or empty
  awk -v n="$1" '$1 == n { print $2; exit }' "$work/metrics.txt" 2>/dev/null
}
scrape() {
  curl -s -m 2 "$url/metrics" >"$work/metrics.tmp" 2>/dev/null && mv "$work/metrics.tmp" "$work/metrics.txt"
}

# ---- load ------------------------------------------------------------------
run_id="soak$(date +%s)"
common=(--target herald --url "$url" --token "$TOKEN" --run-id "$run_id" --no-progress
        --server-pid "$herald_pid")
# Loadgen processes end a few seconds before the sampler, so the last samples
# also show herald after the clients left.
load_s=$((DURATION - DURATION / 20 - 2))
idle_hold=$((load_s - 15))
nice -n 5 "$LG" idle "${common[@]}" --connections "$SUBS" --topics "$TOPICS" \
  --hold "$idle_hold" --connect-concurrency 200 --connect-phase-timeout 60 \
  --json-out "$work/idle.json" >"$work/idle.txt" 2>"$work/idle.log" &
pids+=($!)
nice -n 5 "$LG" churn "${common[@]}" --connections "$CHURN" --duration "$load_s" \
  --publish-rate "$RATE" --topics "$TOPICS" --hold-ms "$CHURN_HOLD_MS" \
  --payload-bytes "$PAYLOAD" --pub-concurrency 4 --threads 1 \
  --json-out "$work/churn.json" >"$work/churn.txt" 2>"$work/churn.log" &
pids+=($!)
nice -n 5 "$LG" slow-readers "${common[@]}" --connections "$SLOW" --duration "$load_s" \
  --topics "$TOPICS" --topics-per-conn "$SLOW_TOPICS" --stall "$STALL" --drain 10 --max-life "$MAX_LIFE" \
  --read-bytes 64 --read-interval-ms 1000 --threads 1 \
  --json-out "$work/slow.json" >"$work/slow.txt" 2>"$work/slow.log" &
pids+=($!)

# ---- sampler ---------------------------------------------------------------
csv="$work/samples.csv"
echo "t_s,rss_kb,fds,subscribers,published,delivered,cut_off,write_timeouts" >"$csv"
t0=$(date +%s%N)
died=0
missed=0
while :; do
  now=$(date +%s%N)
  t_ms=$(((now - t0) / 1000000))
  [ "$t_ms" -ge $((DURATION * 1000)) ] && break
  if ! rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$herald_pid/status" 2>/dev/null) || [ -z "$rss" ]; then
    died=1
    break
  fi
  fds=$(ls "/proc/$herald_pid/fd" 2>/dev/null | wc -l)
  if scrape; then
    echo "$(awk -v t="$t_ms" 'BEGIN { printf "%.1f", t / 1000 }'),$rss,$fds,$(metric herald_subscribers),$(metric herald_published_total),$(metric herald_delivered_total),$(metric herald_slow_cut_off_total),$(metric herald_write_timeouts_total)" >>"$csv"
  else
    missed=$((missed + 1))
    echo "$(awk -v t="$t_ms" 'BEGIN { printf "%.1f", t / 1000 }'),$rss,$fds,,,,," >>"$csv"
  fi
  [ $((t_ms / 1000 % 60)) -lt "$INTERVAL" ] && [ "$t_ms" -ge 1000 ] &&
    echo "  t=$((t_ms / 1000))s rss=$((rss / 1024))MiB fds=$fds subscribers=$(metric herald_subscribers) published=$(metric herald_published_total) cut_off=$(metric herald_slow_cut_off_total)"
  next=$((t0 + (t_ms / 1000 / INTERVAL + 1) * INTERVAL * 1000000000))
  sleep "$(awk -v n="$next" -v now="$(date +%s%N)" 'BEGIN { d = (n - now) / 1e9; if (d < 0.05) d = 0.05; printf "%.3f", d }')"
done
end_s=$((($(date +%s%N) - t0) / 1000000000))
if [ "$died" = 0 ] && ! kill -0 "$herald_pid" 2>/dev/null; then died=1; fi

# Loadgens should be done by now; give them a few seconds, then stop them.
for p in "${pids[@]:1}"; do
  for _ in $(seq 20); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
  kill "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
done
fds_after=""
if [ "$died" = 0 ]; then
  sleep 2
  fds_after=$(ls "/proc/$herald_pid/fd" 2>/dev/null | wc -l)
  scrape || true
fi

# ---- report ----------------------------------------------------------------
lg() { # file key -> value of "key" in a loadgen RESULT line
  sed -n 's/^RESULT //p' "$work/$1" 2>/dev/null | python3 -c '
import json, sys
try:
    v = json.loads(sys.stdin.read()).get(sys.argv[1])
except Exception:
    v = None
print("" if v is None else v)' "$2"
}
mkdir -p "$(dirname "$PLOT")"
summary="$work/summary.txt"
set +e
python3 "$root/bench/soak_plot.py" "$csv" "$PLOT" \
  --tolerance-pct "${SOAK_TOL_PCT:-10}" --tolerance-mb "${SOAK_TOL_MB:-20}" \
  --title "herald soak: ${DURATION}s, $SUBS subscribers / $TOPICS topics, $RATE pub/s, $CHURN churning, $SLOW slow readers" \
  >"$summary"
rss_rc=$?
set -e
{
  echo "duration_s            $end_s (requested $DURATION)"
  echo "subscribers           $SUBS idle on $TOPICS topics (connected $(lg idle.txt connected), dropped $(lg idle.txt dropped_during_hold))"
  echo "churn                 $CHURN clients: $(lg churn.txt connects) connects, $(lg churn.txt errors) errors"
  echo "slow readers          $SLOW ($(lg slow.txt stalled_readers) stalling): $(lg slow.txt sessions) sessions, $(lg slow.txt cut_off) ended by herald ($(lg slow.txt cut_off_clean) clean, $(lg slow.txt cut_off_abort) aborted), $(lg slow.txt survived) outlived their slow session"
  echo "publishes             $(metric herald_published_total) accepted by herald (loadgen: $(lg churn.txt published) ok, $(lg churn.txt publish_errors) errors, $(lg churn.txt publish_rejected) rejected, $(lg churn.txt publish_rate)/s)"
  echo "deliveries            $(metric herald_delivered_total) queued by herald; idle subscribers received $(lg idle.txt received), churners $(lg churn.txt received)"
  wt="$(metric herald_write_timeouts_total)"
  echo "cut-offs              herald_slow_cut_off_total $(metric herald_slow_cut_off_total), herald_write_timeouts_total ${wt:-n/a (not exported by this herald)}"
  echo "fds after clients     ${fds_after:-n/a}"
  echo "metrics scrapes missed $missed"
  cat "$summary"
} | tee "$work/report.txt"
[ -n "$OUT_KEEP" ] && cp "$work/report.txt" "$work/summary.txt" "$OUT_KEEP"/ 2>/dev/null || true
echo "plot: $PLOT"

if [ "$died" = 1 ]; then
  echo "FAIL: herald exited during the soak; last lines of its log:"
  tail -20 "$work/herald.log"
  exit 1
fi
if [ "$rss_rc" -ne 0 ]; then
  echo "FAIL: RSS grew after the warm-up (see above)"
  exit 1
fi
echo "PASS"
