#!/usr/bin/env bash
# Fanout over TLS and HTTP/2, beside HTTP/1.1 in clear text and beside
# nginx + nchan over TLS (the same certificate, one worker each way):
# deliveries per second and server CPU per delivery.
#
#   bash bench/tls_fanout.sh [SUBSCRIBERS] [UPDATES] [STREAMS_PER_H2_CONNECTION]
#   (defaults 5000 1000 50)
#   HERALD_ONLY=1 bash bench/tls_fanout.sh 100 20 10   # Herald's four cases only
#   HERALD_BIN=... LOADGEN_BIN=... bash bench/tls_fanout.sh   # binaries already built
#
# Exits non-zero when a case lost or duplicated a delivery or did not run
# (the test command runs the small Herald-only form as a smoke test).
#
# Every case starts a fresh server, connects SUBSCRIBERS to one topic,
# publishes UPDATES (HTTP/1.1 publishers, 8 at a time) and waits for every
# delivery; the load generator checks each one (no loss, no duplicate).
# Publishers always speak HTTP/1.1 (over TLS where the server is TLS). Loopback
# only; each case is bounded (timeout 300 s). Prints a Markdown table.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
SUBS="${1:-5000}"; UPDATES="${2:-1000}"; PER="${3:-50}"

# HERALD_BIN / LOADGEN_BIN: binaries already built (the test command passes
# the ones its tests built, instead of building herald again with another
# feature set); otherwise both are built here.
HERALD="${HERALD_BIN:-}"
LG="${LOADGEN_BIN:-}"
if [ -z "$HERALD" ]; then
  cargo build --release --locked --bin herald >&2
  HERALD="$CARGO_TARGET_DIR/release/herald"
fi
if [ -z "$LG" ]; then
  (cd bench/loadgen && cargo build --release --locked) >&2
  LG="$CARGO_TARGET_DIR/release/herald-loadgen"
fi

tmp="$(mktemp -d)"
herald_pid=""
cleanup() {
  [ -n "$herald_pid" ] && kill "$herald_pid" 2>/dev/null || true
  NCHAN_RUN_DIR="$tmp/nchan" bash bench/peers/nchan.sh stop >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -keyout "$tmp/key.pem" \
  -out "$tmp/cert.pem" -days 2 -nodes -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null
KEY=tls-fanout-secret
TOKEN="$("$HERALD" token --jwt-key "$KEY" --publish '*' --subscribe '*' --ttl 2h)"
PORT=8095

start_herald() { # tls(0/1)
  rm -rf "$tmp/data"
  local tls=()
  [ "$1" = 1 ] && tls=(--tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem")
  "$HERALD" serve --listen "127.0.0.1:$PORT" --jwt-key "$KEY" \
    --max-connections 0 --max-connections-per-ip 0 --data-dir "$tmp/data" "${tls[@]}" \
    > "$tmp/herald.out" 2> "$tmp/herald.err" &
  herald_pid=$!
  for _ in $(seq 100); do grep -q '^listening on ' "$tmp/herald.out" && return 0; sleep 0.1; done
  echo "herald did not start" >&2; cat "$tmp/herald.err" >&2; return 1
}
stop_herald() { kill "$herald_pid" 2>/dev/null || true; wait "$herald_pid" 2>/dev/null || true; herald_pid=""; }

nchan() { # start|stop
  NCHAN_PORT=$PORT NCHAN_RUN_DIR="$tmp/nchan" NCHAN_TLS_CERT="$tmp/cert.pem" NCHAN_TLS_KEY="$tmp/key.pem" \
    bash bench/peers/nchan.sh "$1" >/dev/null
}
nchan_pids() { local m; m="$(cat "$tmp/nchan/nginx.pid")"; echo "$m" $(pgrep -P "$m" || true); }

rows=()
failed=0
case_run() { # label server scheme h2streams
  local label="$1" server="$2" scheme="$3" h2="$4" pids target
  if [ "$server" = herald ]; then
    start_herald "$([ "$scheme" = https ] && echo 1 || echo 0)"; pids="$herald_pid"
    target=(--target herald --token "$TOKEN")
  else
    nchan start; pids="$(nchan_pids)"; target=(--target nchan)
  fi
  local pidargs=()
  for p in $pids; do pidargs+=(--server-pid "$p"); done
  echo "==> $label" >&2
  timeout 300 "$LG" fanout "${target[@]}" --url "$scheme://127.0.0.1:$PORT" \
    --subscribers "$SUBS" --updates "$UPDATES" --h2-streams "$h2" --no-progress \
    "${pidargs[@]}" > "$tmp/lg.out" 2> "$tmp/lg.err" || { tail -5 "$tmp/lg.err" >&2; }
  if [ "$server" = herald ]; then stop_herald; else nchan stop; fi
  local r; r="$(sed -n 's/^RESULT //p' "$tmp/lg.out")"
  [ -n "$r" ] || { echo "   no result for $label" >&2; failed=1; return 0; }
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); sys.exit(r["lost"] or r["duplicates"] or r["dropped"] or r["connected"] != r["subscribers"])' "$r" \
    || { echo "   $label: lost, duplicated or unconnected subscribers" >&2; failed=1; }
  rows+=("$(python3 - "$label" "$r" <<'PY'
import json, sys
label, r = sys.argv[1], json.loads(sys.argv[2])
d = r.get("received", 0)
cpu = r.get("server_cpu_s")
per = f"{cpu * 1e9 / d:.0f}" if cpu is not None and d else "n/a"
print(f"| {label} | {r['connected']:,} | {r['published']:,} | {d:,} | {r['lost']} / {r['duplicates']} / {r['dropped']} | "
      f"{r['deliveries_per_sec']:,.0f} | {cpu} | {per} | {r['latency_ms']['p50']:.1f} / {r['latency_ms']['p99']:.1f} |")
PY
)")
}

case_run "Herald, HTTP/1.1 clear text" herald http 0
case_run "Herald, HTTP/1.1 over TLS" herald https 0
case_run "Herald, HTTP/2 over TLS, $PER streams/conn" herald https "$PER"
case_run "Herald, h2c, $PER streams/conn" herald http "$PER"
if [ "${HERALD_ONLY:-0}" != 1 ]; then
  case_run "nginx+nchan, HTTP/1.1 over TLS" nchan https 0
  case_run "nginx+nchan, HTTP/2 over TLS, $PER streams/conn" nchan https "$PER"
fi

echo
echo "Fanout: $SUBS subscribers on one topic, $UPDATES updates ($(nproc) cores, $(date -u +%F))"
echo
echo "| case | subscribers | updates accepted | deliveries | lost / dup / streams cut | deliveries/s | server CPU (s) | server CPU per delivery (ns) | latency p50 / p99 (ms) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
exit "$failed"
