#!/usr/bin/env bash
# A long storm of faults against a three-node cluster on Redis with
# Sentinel (tests/storm.rs): node kills and stalls, Redis stalls, failovers
# asked for and forced by killing the primary, subscribers that drop and
# resume on other nodes; then every subscriber is checked (every update
# answered 200 that it may see, once, in order; nothing it may not see).
#
#   bash bench/chaos.sh [SEED] MINUTES      # e.g. bash bench/chaos.sh 30
#
# Without SEED a random one is drawn and printed; a failing seed replays
# the same schedule of faults. Loopback only; bounded by MINUTES plus the
# checks (at most a few minutes more). Prints the test's summary line:
# faults injected by kind, updates acknowledged and deliveries checked.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
if [ $# -ge 2 ]; then seed="$1"; minutes="$2"; else seed="$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')"; minutes="${1:-30}"; fi
echo "==> chaos: seed $seed, $minutes minutes"
HERALD_STORM_SEED="$seed" HERALD_STORM_SECS="$(( minutes * 60 ))" \
  timeout "$(( minutes * 60 + 900 ))" cargo test --release --locked --test storm -- --include-ignored --nocapture 2>&1 |
  tee "${CHAOS_LOG:-/tmp/chaos-$seed.log}" |
  grep -A2 -E '^storm:|panicked|test result|seed'
