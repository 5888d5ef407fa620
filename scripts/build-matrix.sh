#!/usr/bin/env bash
# build-matrix.sh - compiles the whole tree (bridge, tests, benchmarks) with
# gcc and clang in every CMake build type, warnings as errors: a user who
# types `cmake -DCMAKE_BUILD_TYPE=Release` with either compiler gets a build
# (users build without -Werror; if it passes with it, it passes without).
# Compile only: nothing runs. scripts/test.sh calls it; alone:
#
#   scripts/build-matrix.sh               all of them, in build-matrix/
#   MATRIX_DIR=dir                        where the build dirs go
#   MATRIX_CCS="gcc clang-14"             compilers (default gcc and clang-14 or clang)
#   MATRIX_TYPES="Release Debug"          build types (default all four)
#   JOBS=n                                parallelism (default nproc)
#
# Exit status non-zero if any build failed; one line per build either way.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DIR=${MATRIX_DIR:-build-matrix}
JOBS=${JOBS:-$(nproc)}
clang=$(command -v clang-14 || command -v clang || true)
read -r -a CCS <<<"${MATRIX_CCS:-gcc ${clang:+$(basename "$clang")}}"
read -r -a TYPES <<<"${MATRIX_TYPES:-Release Debug RelWithDebInfo MinSizeRel}"

mkdir -p "$DIR"
status=0
for cc in "${CCS[@]}"; do
    for type in "${TYPES[@]}"; do
        b=$DIR/$cc-$type
        t0=$SECONDS
        CC=$cc cmake -S "$ROOT" -B "$b" -DCMAKE_BUILD_TYPE="$type" -DM2A_WERROR=ON \
            >"$b.log" 2>&1 && cmake --build "$b" -j"$JOBS" >>"$b.log" 2>&1
        rc=$?
        if [ $rc = 0 ]; then
            echo "matrix: $cc $type: ok ($((SECONDS - t0)) s)"
        else
            echo "matrix: $cc $type: FAILED ($((SECONDS - t0)) s); the errors:"
            grep -E 'error|Error' "$b.log" | head -20
            status=1
        fi
    done
done
exit $status
