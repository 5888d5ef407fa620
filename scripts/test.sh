#!/usr/bin/env bash
# test.sh - the one command that checks everything: installs dependencies,
# compiles the tree with gcc and clang in every build type (warnings as
# errors, scripts/build-matrix.sh, in the background at idle priority),
# builds with -Werror, runs the unit tests, the fault suites, the packaging
# checks and the interop runs (real Mosquitto, RabbitMQ and other MQTT
# brokers started by the test fixtures), then builds under AddressSanitizer
# + UndefinedBehaviorSanitizer and runs every test that build has (all but
# the cluster and fleet suites, the packaging checks and two of the four
# interop brokers: tests/CMakeLists.txt says why), then
# a 20 s fuzz smoke per target.
#
#   scripts/test.sh                 everything
#   BUILD_DIR=dir                   main build dir (default build/)
#   ASAN_BUILD_DIR=dir              sanitizer build dir (default build-asan/)
#   M2A_MATRIX_RUN=0                skip the compile-only build matrix
#   M2A_SANITIZE_RUN=0              skip the sanitizer pass (the first pass then runs
#                                   every test; otherwise integration tests but the
#                                   interop runs are left to the sanitizer pass)
#   M2A_PLAIN_ALL=1                 the first pass runs every test anyway
#   M2A_FUZZ_RUN=0                  skip the fuzz smoke (scripts/fuzz.sh all 20)
#   CTEST_ARGS="-L unit"            extra ctest arguments (e.g. a label), both passes
#   JOBS=n                          build/test parallelism (default nproc)
#
# Works unattended (CI=true, no stdin). Exit status non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-build}
ASAN_BUILD_DIR=${ASAN_BUILD_DIR:-build-asan}
JOBS=${JOBS:-$(nproc)}
read -r -a EXTRA <<<"${CTEST_ARGS:-}"
T0=$SECONDS
status=0
FAILURES=$(mktemp)
MATRIX_LOG=$(mktemp)
MATRIX_PID=
trap 'rm -f "$FAILURES" "$MATRIX_LOG"; [ -z "$MATRIX_PID" ] || kill "$MATRIX_PID" 2>/dev/null || true' EXIT

step() {
    echo
    echo "==> $* ($((SECONDS - T0)) s)"
}

# build_and_test DIR CMAKE_ARGS...: configure, build, run ctest; 0 if all passed.
build_and_test() {
    local dir=$1
    shift
    step "configure $dir: cmake $*"
    cmake -S "$ROOT" -B "$dir" "$@" || return 1
    step "build $dir (-j$JOBS)"
    cmake --build "$dir" -j"$JOBS" || return 1
    step "test $dir: ctest --output-on-failure -j$JOBS ${PASS_ARGS[*]} ${EXTRA[*]}"
    # The brokers fixture (RabbitMQ) starts before the first integration test
    # and stops after the last; integration tests hold a resource lock so only
    # one runs at a time, unit tests run in parallel.
    # The fault suite (label fault) leaves its table (fault, iterations, sent,
    # delivered, lost, duplicated, secs, notes) here; ctest hides a passing
    # test's output.
    local table=$dir/test-state/fault-table.txt rc=0
    rm -f "$table"
    (cd "$dir" && ctest --output-on-failure -j"$JOBS" --timeout 900 "${PASS_ARGS[@]}" \
        "${EXTRA[@]}") || rc=1
    if [ -s "$table" ]; then
        step "fault suite table ($dir)"
        awk -F'\t' 'BEGIN { printf "%-36s %10s %8s %10s %6s %10s %5s  %s\n", "fault",
            "iterations", "sent", "delivered", "lost", "duplicated", "secs", "notes" }
            { printf "%-36s %10s %8s %10s %6s %10s %5s  %s\n", $1, $2, $3, $4, $5, $6, $7, $8 }' \
            "$table"
    fi
    if [ $rc != 0 ]; then
        # ctest prints a failed test's whole output, and a long one (the
        # fault suites) buries check's own verdict: keep the failed tests
        # and assertions (FILE:LINE:F|E:SUITE:CASE:...: message) for the
        # summary at the very end.
        {
            echo "$dir:"
            sed 's/^/  failed: /' "$dir"/Testing/Temporary/LastTestsFailed*.log 2>/dev/null || true
            grep -h -E '^[^ ]+\.c:[0-9]+:[FE]:' "$dir"/Testing/Temporary/LastTest*.log \
                2>/dev/null | tail -n 40 || true
        } >>"$FAILURES"
    fi
    return $rc
}

step "dependencies: scripts/deps.sh"
scripts/deps.sh </dev/null

# The build matrix compiles in the background at the lowest CPU and I/O
# priority: the integration tests mostly wait on brokers, and the matrix
# fills those idle cycles instead of adding five minutes to the run. Its
# result is reported (and counted) before the sanitizer pass.
if [ "${M2A_MATRIX_RUN:-1}" != 0 ]; then
    step "build matrix: scripts/build-matrix.sh in the background (nice 19, idle I/O)"
    idle_io=()
    ! ionice -c 3 true 2>/dev/null || idle_io=(ionice -c 3)
    nice -n 19 "${idle_io[@]}" scripts/build-matrix.sh >"$MATRIX_LOG" 2>&1 &
    MATRIX_PID=$!
else
    step "build matrix skipped (M2A_MATRIX_RUN=0)"
fi

matrix_wait() {
    [ -n "$MATRIX_PID" ] || return 0
    step "build matrix: waiting for it to finish"
    local rc=0
    wait "$MATRIX_PID" || rc=$?
    MATRIX_PID=
    cat "$MATRIX_LOG"
    if [ $rc != 0 ]; then
        echo "FAILED: build matrix" >&2
        echo "build matrix: FAILED (see its lines above)" >>"$FAILURES"
        status=1
    fi
}

# The optimised pass runs the unit tests, the fault suites (the bridge
# under faults, at full speed: the cluster and fleet suites only here), the
# packaging checks and the interop runs against the other MQTT brokers; the
# rest of the integration tests run once, in the sanitizer pass, which runs
# everything it builds. Running them twice cost ~11 minutes of a CI run
# that had grown past 30. M2A_PLAIN_ALL=1 runs everything here too.
PASS_ARGS=()
if [ "${M2A_PLAIN_ALL:-0}" != 1 ] && [ "${M2A_SANITIZE_RUN:-1}" != 0 ]; then
    PASS_ARGS=(-L '^(unit|fault|packaging|interop)$')
fi
if ! build_and_test "$BUILD_DIR" -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-RelWithDebInfo}" \
    -DM2A_WERROR=ON; then
    echo "FAILED: $BUILD_DIR" >&2
    status=1
fi

matrix_wait

if [ "${M2A_SANITIZE_RUN:-1}" != 0 ]; then
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:strict_string_checks=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    PASS_ARGS=()
    if ! build_and_test "$ASAN_BUILD_DIR" -DCMAKE_BUILD_TYPE=Debug -DM2A_SANITIZE=ON \
        -DM2A_WERROR=ON; then
        echo "FAILED: $ASAN_BUILD_DIR (sanitizers)" >&2
        status=1
    fi
else
    step "sanitizer pass skipped (M2A_SANITIZE_RUN=0)"
fi

# A short run of each libFuzzer target (clang, build-fuzz/) from the seed
# corpus: catches a harness that no longer builds or a crash on the seeds.
if [ "${M2A_FUZZ_RUN:-1}" != 0 ]; then
    step "fuzz smoke: scripts/fuzz.sh all 20"
    if ! scripts/fuzz.sh all 20; then
        echo "FAILED: fuzz smoke (crashes in tests/fuzz/crashes/)" >&2
        status=1
    fi
else
    step "fuzz smoke skipped (M2A_FUZZ_RUN=0)"
fi

if [ -s "$FAILURES" ]; then
    step "failed tests and assertions"
    cat "$FAILURES"
fi
step "done: $([ $status = 0 ] && echo 'all passed' || echo 'FAILURES above')"
exit $status
