#!/usr/bin/env bash
# Runs every Rust test binary (`cargo test --release --lib --bins --tests`),
# three at a time instead of one after another: most of the suite's time is
# spent waiting (Redis failovers, restarts, Chromium), not computing, so the
# binaries overlap well on two cores. Called by scripts/test-all.sh.
#
#   bash scripts/run-tests.sh            # build the tests, then run them
#   bash scripts/run-tests.sh -- ARGS    # ARGS go to every test binary
#
# Three lanes, each running its binaries one after another:
#   - browser: every test that drives Chromium (example_*, browser*,
#     status_ui), so that two browsers never compete for the two cores;
#   - the other two share the rest, longest first (cluster, storm, failover
#     and history take most of the time), balanced by the weights below.
# Within a binary, tests run in parallel as `cargo test` runs them (one per
# core: four at a time made the cluster's 10,000-update test miss its
# deadline beside the other lanes). Each
# binary's output goes to a log, printed in full if it fails; the script
# exits non-zero if any binary failed (after all have run).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
args=()
if [ "${1:-}" = "--" ]; then shift; args=("$@"); fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cargo test --release --locked --lib --bins --tests --no-run --message-format=json-render-diagnostics \
  > "$work/build.json"

# Lanes: one line per binary, "lane name path".
python3 - "$work/build.json" > "$work/lanes" <<'EOF'
import json, re, sys
# Seconds each binary took alone on the 2-core machine (scripts/test-all.sh
# prints the times of every run); unknown ones count 5.
weights = {"cluster": 160, "storm": 90, "failover": 50, "history": 40, "hub_http": 10,
           "herald": 10, "memory_bounds": 6, "jwks": 6, "edge": 6, "vanished": 5,
           "nothing_lost": 5}
bins = []
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        kind = m["target"]["kind"][0]
        name = m["target"]["name"] + ("" if kind == "test" else f"({kind})")
        bins.append((name, m["executable"]))
browser = re.compile(r"^(example_|browser|status_ui)")
lanes = {"a": 0, "b": 0}
for name, exe in sorted(bins, key=lambda b: -weights.get(b[0], 5)):
    if browser.match(name):
        print("browser", name, exe)
        continue
    lane = min(lanes, key=lanes.get)
    lanes[lane] += weights.get(name, 5)
    print(lane, name, exe)
EOF

run_lane() { # lane
  local lane="$1" name exe start rc
  while read -r l name exe; do
    [ "$l" = "$lane" ] || continue
    start=$(date +%s)
    rc=0
    # A binary that hangs is stopped after 15 minutes and counts as failed.
    timeout --kill-after=10 900 "$exe" ${args[@]+"${args[@]}"} > "$work/$name.log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
      echo "    [$(date +%T)] ok     $name ($(( $(date +%s) - start )) s, lane $lane)"
    else
      echo "    [$(date +%T)] FAILED $name (exit $rc, $(( $(date +%s) - start )) s, lane $lane)"
      echo "$name" >> "$work/failed"
    fi
  done < "$work/lanes"
}

echo "    $(wc -l < "$work/lanes") test binaries in three lanes"
pids=()
for lane in a b browser; do
  run_lane "$lane" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done

if [ -s "$work/failed" ]; then
  while read -r name; do
    echo
    echo "==================== $name: output ===================="
    cat "$work/$name.log"
  done < "$work/failed"
  echo
  echo "failed: $(tr '\n' ' ' < "$work/failed")"
  exit 1
fi
echo "    every test binary passed"
