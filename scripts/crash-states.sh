#!/usr/bin/env bash
# crash-states.sh - the long run of the spool's power-loss checker (issue
# 13; README "Delivery guarantee"). The unit test test_crash_states checks
# a few short runs in CI; this one runs more traffic with bigger budgets and
# new seeds for as long as it is given, over every configuration below, and
# prints each round's figures and a table of totals.
#
#   scripts/crash-states.sh [SECONDS]   total time, shared by the configurations (default
#                                       600; each runs at least one round, ~20-60 s on an
#                                       idle 2-core machine)
#   BUILD_DIR=dir                       build dir with tests/crash_states (default build/;
#                                       configured and built when missing)
#   SEED=n                              first seed (default 1000); configuration k uses
#                                       SEED + 100000 k, SEED + 100000 k + 1, ...
#   CRASH_ARGS="--states 512"           extra crash_states options for every configuration
#
# Each round records one run through the real spool (a writer thread and a
# reader thread, see tests/support/crash_check.h), then opens every file
# state a power loss could leave at every point of it and checks what comes
# back. A failure is described on stderr (the crash point, the files, what
# was lost or altered); re-check it with the trace saved by
#   build/tests/crash_states --save-trace FILE ...  then  --trace FILE --dump FROM:TO
# Scratch files go to $M2A_TEST_TMPDIR, by default a dir on /dev/shm.
# Exit status non-zero if any check failed or a run could not be made.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
TOTAL=${1:-600}
BUILD=${BUILD_DIR:-build}
SEED=${SEED:-1000}
read -r -a EXTRA <<<"${CRASH_ARGS:-}"
BIN=$BUILD/tests/crash_states

if [ ! -x "$BIN" ]; then
    cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}" \
        >/dev/null || exit 2
fi
cmake --build "$BUILD" -j"${JOBS:-$(nproc)}" --target crash_states >/dev/null || exit 2

if [ -z "${M2A_TEST_TMPDIR:-}" ] && [ -w /dev/shm ]; then
    M2A_TEST_TMPDIR=$(mktemp -d /dev/shm/m2a-crash-states-XXXXXX)
    export M2A_TEST_TMPDIR
    trap 'rm -rf "$M2A_TEST_TMPDIR"' EXIT
fi

# name | options. Small segments so that rotations, deletions and (with a
# small max_bytes) discards happen all the time; bodies up to 4 KiB so that
# writes and records cross sectors and pages.
COMMON=(--records 500 --max-batch 12 --max-body 4096 --segment-bytes 8192 --states 96
    --exhaustive 6 --reopen --reports 5)
CONFIGS=(
    "batch, block|--fsync batch --overflow block --max-bytes 65536"
    "batch, drop_oldest|--fsync batch --overflow drop_oldest --max-bytes 24576 --stall-ms 60"
    "batch, failed flushes|--fsync batch --overflow block --fail-every 5"
    "batch, writer only, failed flushes|--fsync batch --writer-only --fail-every 3 --records 250"
    "interval, block|--fsync interval --overflow block --min-ms 1500"
    "interval, drop_oldest|--fsync interval --overflow drop_oldest --max-bytes 24576 --min-ms 1500 --stall-ms 400"
    "never, block|--fsync never --overflow block --min-ms 1000"
)
share=$((TOTAL / ${#CONFIGS[@]}))
[ "$share" -ge 1 ] || share=1

status=0
results=()
t0=$SECONDS
for k in "${!CONFIGS[@]}"; do
    name=${CONFIGS[$k]%%|*}
    read -r -a opts <<<"${CONFIGS[$k]#*|}"
    echo "==> $name: ${opts[*]} (${share} s, seeds from $((SEED + 100000 * k)))"
    out=$("$BIN" "${COMMON[@]}" "${opts[@]}" "${EXTRA[@]}" --seed $((SEED + 100000 * k)) \
        --seconds "$share")
    rc=$?
    echo "$out" | grep -v TOTAL
    total=$(echo "$out" | grep 'TOTAL' || true)
    echo "$total"
    [ $rc = 0 ] || status=1
    # "TOTAL N round(s) in S s: ... states opened N, checks N, failures N (...)"
    results+=("$(echo "$total" | sed -E 's/.*TOTAL ([0-9]+) round\(s\) in ([0-9.]+) s: .*states opened ([0-9]+), checks ([0-9]+), failures ([0-9]+).*/\1\t\3\t\4\t\5\t\2/')")
done

echo
echo "==> crash states, $((SECONDS - t0)) s"
printf '%-36s %7s %14s %14s %9s %8s\n' configuration rounds "states opened" checks failures seconds
for k in "${!CONFIGS[@]}"; do
    IFS=$'\t' read -r rounds states checks failures secs <<<"${results[$k]}"
    printf '%-36s %7s %14s %14s %9s %8s\n' "${CONFIGS[$k]%%|*}" "$rounds" "$states" "$checks" \
        "$failures" "$secs"
done
exit $status
