#!/usr/bin/env bash
# Starts Herald and the example apps on fixed loopback ports, prints their
# URLs; Ctrl-C stops everything this script started.
#
#   bash examples/run.sh
#
# Herald runs with its embedded defaults (disk history under the data dir),
# a fixed development key shared with the apps through HERALD_JWT_KEY,
# --cors-origins listing every app (their pages subscribe across origins),
# and --auth-url pointing at the notifications app: its pages bring no
# token, Herald asks the app who their session cookie belongs to.
# Data (Herald's history, the apps' SQLite files) stays in
# target/examples-data between runs; delete it to start afresh. The likes
# app keeps its comments in a redis-server started here on port 6390
# (REDIS_PORT) with `--save ''`: in memory only, gone when this script stops.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

# One line per app: example name, port, what it is. The binary is
# `cargo build --example NAME`; it gets LISTEN, DATA_DIR, HERALD_URL,
# HERALD_JWT_KEY, SESSION_KEY and REDIS_URL in its environment (export's
# worker publishes through HERALD_PUBLISH_URL, unset here: the same Herald).
APPS=(
  "notifications 3001 per-user notification center (scenario 1)"
  "likes         3002 live likes and comments, in Redis (scenario 2)"
  "export        3003 async export job: progress bar, then a download pop-up (scenario 3)"
  "dashboard     3004 live dashboard: CPU, memory, network, price, log tail (scenario 4)"
  "chat          3005 instant messaging (scenario 5)"
)

HERALD_PORT="${HERALD_PORT:-8080}"
export HERALD_URL="http://127.0.0.1:$HERALD_PORT"
# A development key: anyone who knows it can publish. Never use it outside
# your machine.
export HERALD_JWT_KEY="${HERALD_JWT_KEY:-herald-examples-development-key}"
export SESSION_KEY="${SESSION_KEY:-herald-examples-session-key}"
DATA="${EXAMPLES_DATA_DIR:-$CARGO_TARGET_DIR/examples-data}"
mkdir -p "$DATA"

echo "==> building herald and the examples (cargo build --release)"
cargo build --release --bin herald --examples

pids=()
stop() {
  trap - INT TERM EXIT
  if [ ${#pids[@]} -gt 0 ]; then
    echo
    echo "==> stopping (pids ${pids[*]})"
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
}
trap stop EXIT
trap 'stop; exit 130' INT TERM

origins=()
for app in "${APPS[@]}"; do
  read -r _ port _ <<<"$app"
  origins+=("http://127.0.0.1:$port")
done
cors=$(IFS=,; echo "${origins[*]}")

# Wait until each is listening (or has died).
wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null || { echo "a process exited; see the logs in $DATA" >&2; return 1; }
    done
    sleep 0.1
  done
  echo "127.0.0.1:$1 is not listening after 10 s; see the logs in $DATA" >&2
  return 1
}
command -v redis-server >/dev/null 2>&1 || {
  echo "redis-server not found (apt-get install redis-server): the likes example needs it" >&2
  exit 1
}
REDIS_PORT="${REDIS_PORT:-6390}"
export REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$DATA" >"$DATA/redis.log" 2>&1 &
pids+=($!)
# The apps connect at startup: Redis first.
wait_port "$REDIS_PORT"

HERALD_LOG="${HERALD_LOG:-herald=warn}" "$CARGO_TARGET_DIR/release/herald" serve \
  --listen "127.0.0.1:$HERALD_PORT" \
  --data-dir "$DATA/herald" \
  --auth-url "http://127.0.0.1:3001/api/herald-session" \
  --cors-origins "$cors" >"$DATA/herald.log" 2>&1 &
pids+=($!)
# The apps publish from their first moments (the dashboard's first sample):
# start them once Herald says it is ready, not merely listening.
wait_port "$HERALD_PORT"
ready=""
for _ in $(seq 1 100); do
  if command -v curl >/dev/null 2>&1 \
    && curl -sf -o /dev/null "http://127.0.0.1:$HERALD_PORT/readyz"; then ready=1; break; fi
  sleep 0.1
done
[ -n "$ready" ] || { echo "Herald is not ready (/readyz) after 10 s; see $DATA/herald.log" >&2; exit 1; }

for app in "${APPS[@]}"; do
  read -r name port _ <<<"$app"
  LISTEN="127.0.0.1:$port" DATA_DIR="$DATA/$name" \
    "$CARGO_TARGET_DIR/release/examples/$name" >"$DATA/$name.log" 2>&1 &
  pids+=($!)
done

for app in "${APPS[@]}"; do
  read -r _ port _ <<<"$app"
  wait_port "$port"
done

echo
echo "Herald          $HERALD_URL/   (hub: $HERALD_URL/.well-known/mercure)"
echo "Redis           $REDIS_URL   (the likes app's store; in memory only)"
for app in "${APPS[@]}"; do
  read -r name port what <<<"$app"
  printf '%-15s http://127.0.0.1:%s/   %s\n' "$name" "$port" "$what"
done
echo
echo "Open an app in two browser profiles (or a normal and a private window) to be two users."
echo "Logs: $DATA/*.log. Ctrl-C stops everything."
# Until Ctrl-C, or until one of them exits (then the others are stopped).
wait -n "${pids[@]}" || true
echo "a process exited; see the logs in $DATA" >&2
