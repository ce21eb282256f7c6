#!/usr/bin/env bash
# Herald vs nginx+nchan vs Pushpin: identical workloads, same machine, same
# run. Installs the peers if missing (Debian packages), builds Herald and the
# load generator, starts each server fresh for each workload, stops it, and
# writes the side-by-side table with ratios into bench/RESULTS.md (between
# the COMPARE markers) plus SVG plots under bench/plots/.
#
#   bash bench/compare.sh            # full run (~11 minutes)
#   QUICK=1 bash bench/compare.sh    # small sizes, a smoke test of the script
#   STEADY=1 bash bench/compare.sh   # steady state: Herald's history is filled
#                                    # past its cap (FILL, default 200,000 = 2x
#                                    # the default --history-size) before each
#                                    # of its runs; the peers keep no such
#                                    # bounded history. Results under
#                                    # bench/results/steady/, table between the
#                                    # COMPARE-STEADY markers
#
# Loopback only; every phase is bounded by the load generator's timeouts.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
out="$root/bench/results"
plots="$root/bench/plots"
marker=COMPARE
if [ "${STEADY:-0}" = 1 ]; then
  out="$out/steady"; plots="$plots/steady"; marker=COMPARE-STEADY
fi
mkdir -p "$out" "$plots"
# Only this script's results (publish_scaling.sh keeps its scaling-*.json here too).
rm -f "$out"/herald-*.json "$out"/nchan-*.json "$out"/pushpin-*.json

# PER_USER: subscribers (a topic each), updates per topic, concurrent publishers.
if [ "${QUICK:-0}" = 1 ]; then
  F1=(200 200); F2=(1000 50); MANY=2000; IDLE=2000; CHURN=(50 5 20); PER_USER=(1000 5 32)
else
  F1=(1000 2000); F2=(10000 200); MANY=19000; IDLE=19000; CHURN=(100 10 50); PER_USER=(10000 5 32)
fi

echo "==> building herald and the load generator"
cargo build --release --locked --bin herald
(cd bench/loadgen && CARGO_TARGET_DIR="$root/bench/loadgen/target" cargo build --release --locked)
LG="$root/bench/loadgen/target/release/herald-loadgen"
HERALD="$CARGO_TARGET_DIR/release/herald"

HERALD_PORT=8090
KEY=compare-secret
TOKEN="$("$HERALD" token --jwt-key "$KEY" --publish '*' --subscribe '*' --ttl 2h)"
herald_pid=""
tmp="$(mktemp -d)"

start_server() {
  case "$1" in
    herald)
      rm -rf "$tmp/data"
      # The load generator opens tens of thousands of connections from a
      # few loopback addresses: lift the connection limits for the bench.
      "$HERALD" serve --listen "127.0.0.1:$HERALD_PORT" --jwt-key "$KEY" \
        --max-connections 0 --max-connections-per-ip 0 \
        --data-dir "$tmp/data" > "$tmp/herald.out" 2> "$tmp/herald.err" &
      herald_pid=$!
      local up=""
      for _ in $(seq 100); do grep -q '^listening on ' "$tmp/herald.out" && { up=1; break; }; sleep 0.1; done
      [ -n "$up" ] || { echo "herald did not start" >&2; cat "$tmp/herald.err" >&2; return 1; }
      if [ "${STEADY:-0}" = 1 ]; then
        python3 bench/fill_history.py "http://127.0.0.1:$HERALD_PORT" "$TOKEN" "${FILL:-200000}"
        sleep 2
      fi ;;
    nchan) bash bench/peers/nchan.sh start ;;
    pushpin) bash bench/peers/pushpin.sh start ;;
  esac
}

stop_server() {
  case "$1" in
    herald) kill "$herald_pid" 2>/dev/null || true; wait "$herald_pid" 2>/dev/null || true ;;
    nchan) bash bench/peers/nchan.sh stop ;;
    pushpin) bash bench/peers/pushpin.sh stop ;;
  esac
}

# PIDs whose memory is the server's: every process of the instance.
server_pids() {
  case "$1" in
    herald) echo "$herald_pid" ;;
    nchan) local m; m="$(cat bench/peers/run/nchan/nginx.pid)"; echo "$m" $(pgrep -P "$m" || true) ;;
    pushpin)
      for f in bench/peers/run/pushpin/pushpin.pid bench/peers/run/pushpin/zurl.pid \
               bench/peers/run/pushpin/run/*.pid; do
        [ -f "$f" ] && tr -dc '0-9\n' < "$f" && echo
      done | grep -v '^$' | sort -u ;;
  esac
}

target_args() {
  case "$1" in
    herald) echo "--target herald --url http://127.0.0.1:$HERALD_PORT --token $TOKEN" ;;
    nchan) echo "--target nchan --url http://127.0.0.1:${NCHAN_PORT:-8081}" ;;
    # Pushpin refuses bursts of new streams (a fixed internal queue of 100).
    pushpin) echo "--target pushpin --url http://127.0.0.1:${PUSHPIN_PORT:-7999} --publish-url http://127.0.0.1:${PUSHPIN_PUBLISH_PORT:-5561} --connect-concurrency 100" ;;
  esac
}

run() { # server name workload args...
  local server="$1" name="$2"; shift 2
  echo "==> $server: $name"
  start_server "$server"
  local pidargs=""
  for p in $(server_pids "$server"); do pidargs="$pidargs --server-pid $p"; done
  # shellcheck disable=SC2046
  if ! timeout 600 "$LG" "$@" $(target_args "$server") $pidargs \
       --json-out "$out/$server-$name.full.json" > "$tmp/lg.out" 2> "$tmp/lg.err"; then
    echo "   load generator failed for $server $name:" >&2; tail -5 "$tmp/lg.err" >&2
  fi
  sed -n 's/^RESULT //p' "$tmp/lg.out" > "$out/$server-$name.json" || true
  tail -n 25 "$tmp/lg.out" | grep -v '^RESULT ' || true
  if [ "$server" = pushpin ] && ! bash bench/peers/pushpin.sh status >/dev/null 2>&1; then
    echo "   note: pushpin was not running at the end of $name (condure crash?)" | tee -a "$out/notes.txt"
  fi
  stop_server "$server"
  rm -f "$out/$server-$name.full.json"
}

trap 'stop_server herald; bash bench/peers/nchan.sh stop >/dev/null 2>&1 || true; bash bench/peers/pushpin.sh stop >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
for server in herald nchan pushpin; do
  run "$server" idle idle --connections "$IDLE" --hold 5
  run "$server" fanout-1 fanout --subscribers "${F1[0]}" --updates "${F1[1]}" --plot "$plots/$server-fanout-${F1[0]}x${F1[1]}.svg"
  run "$server" fanout-2 fanout --subscribers "${F2[0]}" --updates "${F2[1]}" --plot "$plots/$server-fanout-${F2[0]}x${F2[1]}.svg"
  run "$server" many-topics many-topics --subscribers "$MANY"
  run "$server" per-user many-topics --subscribers "${PER_USER[0]}" --rounds "${PER_USER[1]}" --pub-concurrency "${PER_USER[2]}"
  run "$server" churn churn --connections "${CHURN[0]}" --duration "${CHURN[1]}" --publish-rate "${CHURN[2]}"
done

python3 bench/compare_table.py "$out" > "$tmp/table.md"
cat "$tmp/table.md"
python3 - "$root/bench/RESULTS.md" "$tmp/table.md" "$marker" <<'PY'
import sys, re
path, table, marker = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
text = open(path).read() if __import__("os").path.exists(path) else "# Benchmark results\n"
begin, end = f"<!-- {marker}:BEGIN -->", f"<!-- {marker}:END -->"
block = f"{begin}\n{table}\n{end}"
text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda m: block, text, flags=re.S) if begin in text else text.rstrip() + "\n\n" + block + "\n"
open(path, "w").write(text)
PY
echo "==> table written to bench/RESULTS.md, plots in bench/plots/"
