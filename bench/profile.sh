#!/usr/bin/env bash
# bench/profile.sh - where the bridge's CPU goes, per message, in the 100 B
# QoS 1 scenario of bench/run.sh (fsync batch by default). Three passes, each
# with a fresh Mosquitto, bridge and spool against one private RabbitMQ:
#
#   1. system calls, context switches and CPU per message and per thread
#      (perf stat on the syscall tracepoints; strace -c -f when perf cannot)
#   2. allocations per message (bench/malloc_count.c preloaded into the
#      bridge, counters read before and after the messages)
#   3. CPU profile (perf record --call-graph dwarf, summarised by thread,
#      system call and function by bench/perf_summary.py); when perf cannot
#      sample, valgrind --tool=callgrind on a shorter run
#
# Environment: M2A_PROFILE_MESSAGES (200000), M2A_PROFILE_SIZE (100),
# M2A_PROFILE_FSYNC (batch), M2A_BENCH_BUILD, M2A_BENCH_KEEP=1 (keep the raw
# perf data and logs). Output on stdout.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${M2A_BENCH_BUILD:-$ROOT/build-bench}
N=${M2A_PROFILE_MESSAGES:-200000}
SIZE=${M2A_PROFILE_SIZE:-100}
FSYNC=${M2A_PROFILE_FSYNC:-batch}
DEVICES=${M2A_BENCH_DEVICES:-100}
WINDOW=${M2A_BENCH_WINDOW:-1000}
KEEP=${M2A_BENCH_KEEP:-0}
SUMMARY=$ROOT/bench/perf_summary.py

case ${1:-} in
-h | --help)
    sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
"") ;;
*)
    echo "profile.sh: no arguments (see --help)" >&2
    exit 2
    ;;
esac

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_build
command -v python3 >/dev/null || die "python3 is needed to summarise perf output"

can_perf_stat=0 can_perf_record=0
if command -v perf >/dev/null; then
    perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1 && can_perf_stat=1
    perf record -e cpu-clock -o /dev/null true >/dev/null 2>&1 && can_perf_record=1
fi

bench_init

# Starts a Mosquitto, a bridge (under BRIDGE_WRAP) and the consumer for pass KEY.
pass_start() {
    mkdir -p "$TMP/$1"
    mosq_start "$1"
    bridge_start "$1" "$FSYNC"
    cons_start "$1" -n "$2" -W 60
}

# Publishes COUNT messages and waits for the consumer.
pass_load() {
    fg_run "$TMP/$2/generator.out" "$GEN" -p "$MOSQ_PORT" -n "$1" -s "$SIZE" -d "$DEVICES" \
        -w "$WINDOW" -i "bench-gen-$2" || say "generator: $(tail -n 3 "$TMP/$2/generator.out.err")"
    cons_wait
    say "  $(kv "$CONS_LINE0" distinct) delivered at $(kv "$CONS_LINE0" rate) msg/s, lost $(kv "$CONS_LINE0" lost)"
}

pass_stop() {
    bridge_stop
    mosq_stop
}

echo "# mqtt2amqp profile: $N messages of $SIZE B, QoS 1, fsync $FSYNC, $(nproc) cores, $(uname -r)"
echo

# --- 1. system calls per message ----------------------------------------------
say "pass 1: system calls per message"
pass_start syscalls "$N"
if [ $can_perf_stat = 1 ]; then
    ev=raw_syscalls:sys_enter,context-switches,cpu-clock
    for s in read write sendto recvfrom poll ppoll epoll_wait fdatasync fsync pwrite64 pread64 \
        futex openat renameat; do
        ev=$ev,syscalls:sys_enter_$s
    done
    perf stat -e "$ev" --per-thread -p "$BRIDGE_PID" -o "$TMP/syscalls/perf-stat.txt" &
    PERF_PID=$!
    sleep 0.5
    pass_load "$N" syscalls
    stop_pid "$PERF_PID" INT 30
    PERF_PID=""
    echo "## 1. System calls, context switches and CPU per message (perf stat, per thread)"
    echo '```'
    python3 "$SUMMARY" stat "$TMP/syscalls/perf-stat.txt" "$N" "$BRIDGE_PID"
    echo '```'
else
    strace -c -f -p "$BRIDGE_PID" -o "$TMP/syscalls/strace.txt" &
    PERF_PID=$!
    sleep 0.5
    pass_load "$N" syscalls
    stop_pid "$PERF_PID" INT 30
    PERF_PID=""
    echo "## 1. System calls (strace -c -f; divide calls by $N; strace slows the bridge)"
    echo '```'
    cat "$TMP/syscalls/strace.txt"
    echo '```'
fi
pass_stop

# --- 2. allocations per message -------------------------------------------------
say "pass 2: allocations per message"
BRIDGE_WRAP=(env "LD_PRELOAD=$MALLOC_COUNT")
pass_start allocs "$N"
BRIDGE_WRAP=()
kill -USR2 "$BRIDGE_PID"
wait_for "$BRIDGE_LOG" "malloc-count \(SIGUSR2\)" 5 "$BRIDGE_PID" || say "malloc counter silent"
pass_load "$N" allocs
kill -USR2 "$BRIDGE_PID"
sleep 0.5 # the counter's thread prints within 20 ms
pass_stop
echo
echo "## 2. Allocations per message (LD_PRELOAD counter, all threads)"
echo '```'
grep "malloc-count (SIGUSR2)" "$BRIDGE_LOG" | tail -n 2 | awk -v n="$N" '
    { for (i = 3; i <= NF; i++) { split($i, kv, "="); v[NR, kv[1]] = kv[2]; k[i] = kv[1] } }
    END {
        if (NR < 2) { print "counter did not report"; exit }
        for (i = 3; i <= 7; i++) printf "%-9s %7.3f per message\n", k[i], (v[2, k[i]] - v[1, k[i]]) / n
    }'
echo '```'

# --- 3. CPU profile ---------------------------------------------------------------
echo
if [ $can_perf_record = 1 ]; then
    say "pass 3: perf record --call-graph dwarf"
    pass_start cpu "$N"
    perf record -F 1000 -e cpu-clock --call-graph dwarf,16384 -p "$BRIDGE_PID" \
        -o "$TMP/cpu/perf.data" >"$TMP/cpu/perf-record.log" 2>&1 &
    PERF_PID=$!
    sleep 0.5
    pass_load "$N" cpu
    stop_pid "$PERF_PID" INT 60
    PERF_PID=""
    pid=$BRIDGE_PID
    pass_stop
    say "  summarising"
    perf script -i "$TMP/cpu/perf.data" -F comm,tid,ip,sym,dso 2>/dev/null >"$TMP/cpu/script.txt"
    echo "## 3. Where the CPU goes (perf record -e cpu-clock --call-graph dwarf, 1 kHz)"
    echo '```'
    python3 "$SUMMARY" record "$TMP/cpu/script.txt" "$pid"
    echo '```'
else
    n=$((N / 10))
    say "pass 3: valgrind --tool=callgrind, $n messages"
    BRIDGE_WRAP=(valgrind --tool=callgrind "--callgrind-out-file=$TMP/cpu/callgrind.out")
    mkdir -p "$TMP/cpu"
    pass_start cpu "$n"
    BRIDGE_WRAP=()
    pass_load "$n" cpu
    pass_stop
    echo "## 3. Where the instructions go (callgrind, $n messages; inclusive, top 40)"
    echo '```'
    callgrind_annotate --inclusive=yes "$TMP/cpu/callgrind.out" 2>/dev/null | head -n 60
    echo '```'
fi
say "done in $((SECONDS - T0)) s"
