#!/usr/bin/env bash
# fuzz.sh - builds the libFuzzer targets (clang, ASan + UBSan, in their own
# build dir) and runs them against the seed corpora in tests/fuzz/corpus/.
#
#   scripts/fuzz.sh TARGET|all SECONDS   run fuzz_config, fuzz_routes,
#                                        fuzz_spool_record (or all three,
#                                        one after the other) SECONDS each
#   scripts/fuzz.sh corpus               regenerate tests/fuzz/corpus/ from
#                                        the real encoders (gen_corpus.c)
#   FUZZ_BUILD_DIR=dir                   build dir (default build-fuzz/)
#   FUZZ_CC=clang                        compiler (default clang-14, else clang)
#   FUZZ_ARGS="-jobs=2 ..."              extra libFuzzer arguments
#   FUZZ_KEEP=1                          keep the work dirs (grown corpora)
#
# Each run fuzzes a copy of the seed corpus in a temporary work dir, so the
# inputs libFuzzer adds never land in the repository. A crash, leak,
# sanitizer report, timeout or broken property is saved as
# tests/fuzz/crashes/TARGET-crash-HASH (gitignored) and makes the exit
# status non-zero; reproduce with build-fuzz/tests/fuzz/TARGET FILE.
# Prints one summary line per target: executions, exec/s, coverage, corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD=${FUZZ_BUILD_DIR:-build-fuzz}
TARGETS=(fuzz_config fuzz_routes fuzz_spool_record)
read -r -a EXTRA <<<"${FUZZ_ARGS:-}"

usage() {
    echo "usage: scripts/fuzz.sh TARGET|all SECONDS | scripts/fuzz.sh corpus" >&2
    echo "       targets: ${TARGETS[*]}" >&2
    exit 2
}

build() {
    local cc=${FUZZ_CC:-$(command -v clang-14 || command -v clang || true)}
    [ -n "$cc" ] || {
        echo "fuzz: clang not found (scripts/deps.sh installs clang-14 and libclang-rt-14-dev)" >&2
        exit 1
    }
    CC=$cc cmake -S "$ROOT" -B "$BUILD" -DM2A_FUZZ=ON -DM2A_BUILD_TESTS=OFF \
        -DM2A_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$BUILD" -j"${JOBS:-$(nproc)}" --target "$@" >/dev/null
}

# run TARGET SECONDS: fuzzes a copy of the corpus; 0 when nothing was found.
run() {
    local t=$1 secs=$2 work rc=0 t0=$SECONDS
    # On /dev/shm when there is one: the spool target writes and fsyncs
    # files for every input (M2A_TEST_TMPDIR: its spool dir goes there too).
    local base=${TMPDIR:-/tmp}
    [ -d /dev/shm ] && [ -w /dev/shm ] && base=/dev/shm
    work=$(mktemp -d "$base/m2a-fuzz-$t.XXXXXX")
    mkdir -p "$work/corpus" "$ROOT/tests/fuzz/crashes"
    cp -r "$ROOT/tests/fuzz/corpus/$t/." "$work/corpus/"
    local args=(-max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$ROOT/tests/fuzz/crashes/$t-")
    [ -f "$ROOT/tests/fuzz/$t.dict" ] && args+=(-dict="$ROOT/tests/fuzz/$t.dict")
    echo "==> fuzz $t for $secs s (work dir $work)"
    touch "$work/stamp"
    M2A_TEST_TMPDIR=$work "$BUILD/tests/fuzz/$t" "${args[@]}" "${EXTRA[@]}" "$work/corpus" \
        </dev/null >"$work/log" 2>&1 || rc=$?
    local last execs eps
    last=$(grep -E '^#[0-9]+' "$work/log" | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log")
    eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/log")
    printf '%s: %s s, %s execs, %s exec/s, cov %s, ft %s, corpus %s files (%s), exit %s\n' \
        "$t" "$((SECONDS - t0))" "${execs:-?}" "${eps:-?}" \
        "$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")" \
        "$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")" \
        "$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$last")" \
        "$(sed -n 's/.* corp: [0-9]*\/\([0-9a-zA-Z]*\).*/\1/p' <<<"$last")" "$rc"
    if [ "$rc" != 0 ]; then
        echo "fuzz: $t FAILED; last lines of its log:" >&2
        grep -v '^#[0-9]' "$work/log" | tail -n 40 >&2
        find "$ROOT/tests/fuzz/crashes" -name "$t-*" -newer "$work/stamp" | sed 's/^/  saved /' >&2
    fi
    if [ "${FUZZ_KEEP:-0}" = 1 ]; then
        echo "   kept $work"
    else
        rm -rf "$work"
    fi
    return "$rc"
}

[ $# -ge 1 ] || usage
if [ "$1" = corpus ]; then
    build fuzz_gen_corpus
    "$BUILD/tests/fuzz/fuzz_gen_corpus" "$ROOT" "$ROOT/tests/fuzz/corpus"
    echo "fuzz: wrote tests/fuzz/corpus/"
    exit 0
fi
if [ $# -ne 2 ] || ! [[ $2 =~ ^[0-9]+$ ]]; then
    usage
fi
if [ "$1" = all ]; then
    selected=("${TARGETS[@]}")
else
    [[ " ${TARGETS[*]} " == *" $1 "* ]] || usage
    selected=("$1")
fi
build "${selected[@]}"
status=0
for t in "${selected[@]}"; do
    run "$t" "$2" || status=1
done
exit $status
