#!/usr/bin/env bash
# Run every cargo-fuzz target (fuzz/fuzz_targets/*.rs) for a bounded time.
#
#   bench/fuzz.sh [SECONDS] [TARGET...]      (default: FUZZ_SECONDS or 60)
#
# One target at a time, one job (-j1), niced, each libFuzzer run capped at
# SECONDS of fuzzing (-max_total_time) and 2 GiB of RSS, and the whole
# cargo invocation killed if it overruns by two minutes. The corpus grows in
# fuzz/corpus/TARGET (seeded from fuzz/seeds/TARGET, which is versioned and
# only read); crash inputs stay in fuzz/artifacts/TARGET. Prints, per
# target, the executions, the corpus size and whether it crashed; exits
# non-zero if any target crashed (or did not run).
#
# Needs the nightly toolchain (libFuzzer instrumentation); installs
# cargo-fuzz from crates.io when it is missing.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${FUZZ_SECONDS:-60}
if [[ $# -gt 0 && $1 =~ ^[0-9]+$ ]]; then
    SECS=$1
    shift
fi
TOOLCHAIN=${FUZZ_TOOLCHAIN:-+nightly}

if ! cargo "$TOOLCHAIN" fuzz --version >/dev/null 2>&1; then
    echo "== cargo-fuzz missing: installing it (cargo install cargo-fuzz --locked)"
    nice cargo install cargo-fuzz --locked || { echo "cannot install cargo-fuzz" >&2; exit 2; }
fi

if [[ $# -gt 0 ]]; then
    TARGETS=("$@")
else
    mapfile -t TARGETS < <(cd fuzz && cargo "$TOOLCHAIN" fuzz list)
fi
[[ ${#TARGETS[@]} -gt 0 ]] || { echo "no fuzz targets found" >&2; exit 2; }

echo "== building ${#TARGETS[@]} fuzz targets (nightly, release, ASan)"
(cd fuzz && nice cargo "$TOOLCHAIN" fuzz build) || { echo "fuzz build failed" >&2; exit 2; }

LOGS=$ROOT/fuzz/target/fuzz-logs
mkdir -p "$LOGS"
failed=0
rows=()
for t in "${TARGETS[@]}"; do
    corpus=$ROOT/fuzz/corpus/$t
    seeds=$ROOT/fuzz/seeds/$t
    artifacts=$ROOT/fuzz/artifacts/$t
    mkdir -p "$corpus" "$artifacts"
    dirs=("$corpus")
    [[ -d $seeds ]] && dirs+=("$seeds")
    before=$(find "$artifacts" -type f | wc -l)
    log=$LOGS/$t.log
    touch "$LOGS/$t.start"
    echo "== $t: ${SECS}s (log: ${log#"$ROOT"/})"
    start=$(date +%s)
    (cd fuzz && timeout --kill-after=10 $((SECS + 120)) nice cargo "$TOOLCHAIN" fuzz run "$t" -j1 "${dirs[@]}" -- \
        -max_total_time="$SECS" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1) >"$log" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    # Executions: libFuzzer's final statistics, else its last status line.
    execs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
    [[ -n $execs ]] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#')
    size=$(find "$corpus" -type f | wc -l)
    after=$(find "$artifacts" -type f | wc -l)
    new=$((after - before))
    if [[ $rc -ne 0 || $new -gt 0 ]]; then
        failed=1
        verdict="CRASH (exit $rc, $new new artifact(s))"
        grep -m1 -E 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|==ERROR' "$log" | sed 's/^/    /'
        find "$artifacts" -type f -newer "$LOGS/$t.start" 2>/dev/null | sed 's/^/    /'
    else
        verdict="ok"
    fi
    rows+=("$(printf '%-16s %6ss %12s %8s  %s' "$t" "$took" "${execs:-?}" "$size" "$verdict")")
done

echo
printf '%-16s %7s %12s %8s  %s\n' target seconds execs corpus result
printf '%s\n' "${rows[@]}"
exit $failed
