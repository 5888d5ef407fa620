#!/usr/bin/env bash
# bench/soak.sh - the soak of issue 13: the bridge under steady traffic for a
# long time, with a fault every minute, watched for leaks.
#
# Builds like bench/run.sh (RelWithDebInfo, in build-bench/), starts a private
# RabbitMQ and a Mosquitto from the shipped config, measures the bridge's
# maximum rate briefly (50,000 messages as fast as PUBACKed, end to end),
# then runs for M2A_SOAK_SECONDS at half of it: m2a-soak (bench/soak.c)
# publishes numbered QoS 1 messages, consumes them from RabbitMQ and relays
# the bridge's MQTT link through the tests' fault proxy. Every
# M2A_SOAK_FAULT_EVERY seconds one fault, in turn:
#   bridge    SIGKILL, and started again on the same spool
#   rabbitmq  RabbitMQ restarted (stop, start; durable queue, persistent messages)
#   mosquitto Mosquitto restarted (SIGTERM: it saves the bridge's session)
#   link      the bridge<->Mosquitto link cut (connections reset, new ones
#             refused) for M2A_SOAK_CUT_SECONDS, then restored
# Every M2A_SOAK_SAMPLE_EVERY seconds one line on stdout: the bridge's RSS,
# open descriptors, threads, spool size on disk, and the traffic counters.
# At the end (it stops by itself): published, acknowledged, delivered, lost
# and duplicated by sequence number, and the least-squares slope of RSS and
# descriptors, over all samples and within each bridge process (a SIGKILL
# starts a new process; the within-process slope is the leak figure).
# Exit status 0 when nothing acknowledged was lost.
#
# Environment:
#   M2A_SOAK_SECONDS=1800      length of the faulted run
#   M2A_SOAK_RATE=             messages/s; default: half the measured maximum
#   M2A_SOAK_FAULT_EVERY=60    seconds between faults
#   M2A_SOAK_SAMPLE_EVERY=10   seconds between samples
#   M2A_SOAK_CUT_SECONDS=5     how long a link cut lasts
#   M2A_SOAK_FAULTS=bridge,rabbitmq,mosquitto,link   the rotation
#   M2A_SOAK_FSYNC=batch       the bridge's spool.fsync
#   M2A_BENCH_BUILD=DIR        build directory (build-bench)
#   M2A_BENCH_KEEP=1           keep the temp dir (logs, configs, samples)
#
# Loopback only. Every process is started here, recorded by pid and stopped
# by pid (bench/lib.sh, scripts/lib.sh).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${M2A_BENCH_BUILD:-$ROOT/build-bench}
DURATION=${M2A_SOAK_SECONDS:-1800}
RATE=${M2A_SOAK_RATE:-}
FAULT_EVERY=${M2A_SOAK_FAULT_EVERY:-60}
SAMPLE_EVERY=${M2A_SOAK_SAMPLE_EVERY:-10}
CUT_SECS=${M2A_SOAK_CUT_SECONDS:-5}
FSYNC=${M2A_SOAK_FSYNC:-batch}
IFS=, read -r -a FAULTS <<<"${M2A_SOAK_FAULTS:-bridge,rabbitmq,mosquitto,link}"
KEEP=${M2A_BENCH_KEEP:-0}
WINDOW=1000
MEASURE_N=50000

case ${1:-} in
-h | --help)
    sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
"") ;;
*)
    echo "usage: bench/soak.sh (settings in the environment; --help)" >&2
    exit 2
    ;;
esac

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

SOAK_PID=""
soak_cleanup() {
    local rc=$?
    set +e # a trap under errexit would stop at the first failure and leave processes behind
    stop_pid "$SOAK_PID" TERM 10
    (exit $rc)
    cleanup
}

bench_build
SOAK=$BUILD/bench/m2a-soak
bench_init
trap soak_cleanup EXIT

# ---- the maximum rate ----------------------------------------------------------------

mkdir -p "$TMP/measure" "$TMP/soak"
if [ -z "$RATE" ]; then
    say "measuring the maximum rate: $MEASURE_N messages as fast as PUBACKed"
    m2a_mosquitto_start "$TMP/measure/mosquitto" || die "Mosquitto did not start"
    bridge_start measure "$FSYNC"
    cons_start measure -n "$MEASURE_N"
    fg_run "$TMP/measure/gen.out" "$GEN" -p "$MOSQ_PORT" -n "$MEASURE_N" -w "$WINDOW" -t bench/dev ||
        die "generator failed: $(cat "$TMP/measure/gen.out.err")"
    cons_wait
    bridge_stop
    m2a_mosquitto_stop "$TMP/measure/mosquitto" # and the measuring bridge's session with it
    MAX=$(kv "$CONS_LINE0" rate)
    [ -n "$MAX" ] || die "no rate measured: $CONS_LINE0"
    RATE=$(awk -v m="$MAX" 'BEGIN { printf "%d", m / 2 }')
    say "maximum $MAX msg/s end to end; soaking at $RATE msg/s"
fi
MOSQ_DIR=$TMP/soak/mosquitto
m2a_mosquitto_start "$MOSQ_DIR" || die "Mosquitto did not start"
MOSQ_REAL_PORT=$MOSQ_PORT

# ---- the soak ------------------------------------------------------------------------

STATUS=$TMP/soak/status
"$SOAK" -m "$MOSQ_REAL_PORT" -a "$AMQP_PORT" -q bench.soak -r "$RATE" -S "$STATUS" \
    -c "$CUT_SECS" >"$TMP/soak/driver.out" 2>"$TMP/soak/driver.err" &
SOAK_PID=$!
wait_for "$TMP/soak/driver.out" "proxy on" 30 "$SOAK_PID" || die "m2a-soak did not start"
PROXY_PORT=$(sed -n 's/.*proxy on 127.0.0.1:\([0-9]*\).*/\1/p' "$TMP/soak/driver.out")

# The bridge reads MQTT through the proxy (bridge_start takes MOSQ_PORT).
MOSQ_PORT=$PROXY_PORT
bridge_start soak "$FSYNC"
MOSQ_PORT=$MOSQ_REAL_PORT
kill -USR2 "$SOAK_PID" # publish from now on: the bridge's session exists
say "soak: ${DURATION}s at $RATE msg/s, a fault every ${FAULT_EVERY}s (${FAULTS[*]}), samples every ${SAMPLE_EVERY}s"

# The same bridge again after a SIGKILL, its log appended; waits until it
# subscribed again.
subscribed_count() {
    grep -c "mqtt: subscribed to" "$BRIDGE_LOG" || true
}
bridge_restart() {
    local n end=$((SECONDS + 60))
    n=$(subscribed_count)
    "$BRIDGE" -c "$TMP/soak/bridge.yaml" >>"$BRIDGE_LOG" 2>&1 &
    BRIDGE_PID=$!
    while [ "$(subscribed_count)" -le "$n" ]; do
        alive "$BRIDGE_PID" || die "bridge exited after its restart: $(tail -n 5 "$BRIDGE_LOG")"
        [ $SECONDS -lt $end ] || die "bridge not subscribed 60 s after its restart"
        sleep 0.1
    done
}

fault() { # NAME
    case $1 in
    bridge)
        kill -KILL "$BRIDGE_PID"
        wait "$BRIDGE_PID" 2>/dev/null || true
        bridge_restart
        ;;
    rabbitmq)
        rabbit restart || die "RabbitMQ did not restart: $(tail -n 20 "$TMP/rabbitmq.log")"
        ;;
    mosquitto)
        m2a_mosquitto_restart "$MOSQ_DIR" || die "Mosquitto did not restart"
        ;;
    link)
        kill -USR1 "$SOAK_PID"
        ;;
    *) die "unknown fault '$1' (bridge, rabbitmq, mosquitto, link)" ;;
    esac
}

SAMPLES=$TMP/soak/samples.tsv # t, bridge pid, rss kB, fds, threads, spool bytes
: >"$SAMPLES"
sample() {
    local t=$1 rss fds thr spool st
    rss=$(status_kb VmRSS "$BRIDGE_PID" 2>/dev/null || echo 0)
    thr=$(status_kb Threads "$BRIDGE_PID" 2>/dev/null || echo 0)
    fds=$(find "/proc/$BRIDGE_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    spool=$(du -sb "$BRIDGE_SPOOL" 2>/dev/null | cut -f1)
    st=$(cat "$STATUS" 2>/dev/null || true)
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$BRIDGE_PID" "$rss" "$fds" "$thr" "${spool:-0}" >>"$SAMPLES"
    printf 't=%5ds rss=%6d kB fds=%3d threads=%2d spool=%10d B  published=%s acked=%s delivered=%s duplicated=%s\n' \
        "$t" "$rss" "$fds" "$thr" "${spool:-0}" "$(kv " $st" published)" "$(kv " $st" acked)" \
        "$(kv " $st" delivered)" "$(kv " $st" duplicated)"
}

start=$SECONDS
next_sample=0 next_fault=$FAULT_EVERY k=0
FAULT_LOG=$TMP/soak/faults.txt
: >"$FAULT_LOG"
while :; do
    t=$((SECONDS - start))
    [ $t -lt "$DURATION" ] || break
    alive "$SOAK_PID" || die "m2a-soak exited: $(tail -n 5 "$TMP/soak/driver.err")"
    if [ $t -ge $next_sample ]; then
        sample "$t"
        # A fault that took long (RabbitMQ's restart) delays a sample; none is made up for.
        next_sample=$(((t / SAMPLE_EVERY + 1) * SAMPLE_EVERY))
    fi
    if [ $t -ge "$next_fault" ]; then
        f=${FAULTS[$((k % ${#FAULTS[@]}))]}
        k=$((k + 1))
        t0=$SECONDS
        fault "$f"
        echo "fault $k at ${t}s: $f (took $((SECONDS - t0))s)" | tee -a "$FAULT_LOG" >&2
        next_fault=$((next_fault + FAULT_EVERY))
    fi
    sleep 0.5
done
sample "$((SECONDS - start))"

# ---- the end -------------------------------------------------------------------------

say "stopping the traffic; waiting for every acknowledged message"
kill -TERM "$SOAK_PID"
wait "$SOAK_PID" && drc=0 || drc=$?
SOAK_PID=""
RESULT=$(grep '^soak: published=' "$TMP/soak/driver.out" || true)
bridge_stop

# Least squares of y on t: over all samples, and pooled within bridge processes.
slopes() { # COLUMN (3 rss, 4 fds)
    awk -F'\t' -v c="$1" '
        { t[NR] = $1; p[NR] = $2; y[NR] = $c; n++; st[$2] += $1; sy[$2] += $c; np[$2]++;
          sx += $1; sY += $c }
        END {
            if (n < 2) { print "- -"; exit }
            mx = sx / n; my = sY / n
            for (i = 1; i <= n; i++) { sxy += (t[i] - mx) * (y[i] - my); sxx += (t[i] - mx) ^ 2 }
            for (i = 1; i <= n; i++) {
                q = p[i]; if (np[q] < 2) continue
                dx = t[i] - st[q] / np[q]; wxy += dx * (y[i] - sy[q] / np[q]); wxx += dx * dx
            }
            printf "%s %s\n", (sxx > 0 ? sprintf("%.4f", sxy / sxx) : "-"),
                              (wxx > 0 ? sprintf("%.4f", wxy / wxx) : "-")
        }' "$SAMPLES"
}
read -r rss_all rss_within <<<"$(slopes 3)"
read -r fd_all fd_within <<<"$(slopes 4)"
nproc_bridge=$(cut -f2 "$SAMPLES" | sort -u | wc -l)
echo
how="half the measured maximum of ${MAX:-} msg/s"
[ -n "${MAX:-}" ] || how="M2A_SOAK_RATE"
echo "soak: ${DURATION}s at $RATE msg/s ($how), fsync $FSYNC, $k faults:$(cut -d: -f2 "$FAULT_LOG" | awk '{print $1}' | sort | uniq -c | awk '{printf " %s %s", $1, $2}')"
echo "${RESULT:-soak: no result from m2a-soak (exit $drc)}"
echo "slope RSS: $rss_all kB/s over the run, $rss_within kB/s within a bridge process ($nproc_bridge processes)"
echo "slope descriptors: $fd_all /s over the run, $fd_within /s within a bridge process"
[ "$KEEP" != 1 ] || echo "samples: $SAMPLES (t, pid, rss kB, fds, threads, spool bytes)"
[ "$drc" = 0 ]
