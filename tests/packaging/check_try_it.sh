#!/usr/bin/env bash
# check_try_it.sh SOURCE_DIR WORK_DIR - runs the README's "Try it in one
# minute" (ctest -L packaging; issue 14): the commands between the markers
# <!-- try-it:begin --> and <!-- try-it:end --> of README.md, in order,
# against the brokers and the bridge `scripts/run.sh` starts, so the test
# and the text cannot drift apart.
#
# scripts/run.sh works in its own tree (.run/, the build dir), so it runs in
# a copy of SOURCE_DIR under WORK_DIR/src (build dirs, .run and .git left
# out), building into WORK_DIR/build (kept: a second run is incremental). It
# takes Mosquitto's 1883 and RabbitMQ's 5672 when free and other free ports
# otherwise, and says which; the metrics go to a free port. The commands
# get the ports run.sh took in place of 1883, 5672 and 9464.
#
# Checked: mosquitto_pub succeeds; amqp-get returns the published body
# (retried for up to 30 s: the message needs a moment to cross); the metrics
# show received 1 and confirmed 1 (retried likewise); Ctrl-C (SIGINT to
# run.sh) stops the bridge with exit 0 after a stats line saying
# received=1 and confirmed=1, and the brokers run.sh started are gone.
set -euo pipefail
SRC=${1:?usage: check_try_it.sh SOURCE_DIR WORK_DIR}
WORK=${2:?usage: check_try_it.sh SOURCE_DIR WORK_DIR}
SRC=$(cd "$SRC" && pwd)
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
COPY=$WORK/src
LOG=$WORK/run.log

say() { echo "check_try_it: $*"; }
fail() {
    echo "check_try_it: FAIL: $*" >&2
    if [ -f "$LOG" ]; then
        echo "--- last lines of scripts/run.sh's output ($LOG):" >&2
        tail -n 40 "$LOG" >&2
    fi
    exit 1
}
alive() {
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for tool in mosquitto_pub amqp-get curl; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool not installed (scripts/deps.sh installs it)"
done

# The commands, from the README.
mapfile -t CMDS < <(awk '/<!-- try-it:begin -->/ { on = 1; next } /<!-- try-it:end -->/ { on = 0 }
    on && !/^```/ && !/^[[:space:]]*#/ && NF' "$SRC/README.md")
[ ${#CMDS[@]} -eq 3 ] || fail "expected 3 commands between the try-it markers of README.md, found ${#CMDS[@]}"
case "${CMDS[0]}" in mosquitto_pub*) ;; *) fail "the first command is not mosquitto_pub: ${CMDS[0]}" ;; esac
case "${CMDS[1]}" in amqp-get*) ;; *) fail "the second command is not amqp-get: ${CMDS[1]}" ;; esac
case "${CMDS[2]}" in curl*) ;; *) fail "the third command is not curl: ${CMDS[2]}" ;; esac
body=$(sed -n "s/.* -m '\\([^']*\\)'.*/\\1/p" <<<"${CMDS[0]}")
[ -n "$body" ] || fail "no -m '...' payload in: ${CMDS[0]}"

# A fresh copy of the tree, mtimes kept so WORK/build rebuilds only what changed.
rm -rf "$COPY"
mkdir -p "$COPY"
tar -C "$SRC" --exclude='./build*' --exclude=./.run --exclude=./.git -cf - . | tar -C "$COPY" -xf -

METRICS_PORT=""
for _ in $(seq 1 100); do
    p=$((20000 + RANDOM % 12000))
    port_open "$p" || { METRICS_PORT=$p; break; }
done
[ -n "$METRICS_PORT" ] || fail "no free port for the metrics"

RUN_PID=""
cleanup() {
    if alive "$RUN_PID"; then
        kill -INT "$RUN_PID" 2>/dev/null || true
        for _ in $(seq 1 600); do alive "$RUN_PID" || break; sleep 0.1; done
        alive "$RUN_PID" && kill -KILL "$RUN_PID" 2>/dev/null
    fi
    # run.sh stops its RabbitMQ on exit; if it was killed, stop it here.
    if [ -f "$COPY/.run/rabbitmq/env" ]; then
        "$COPY/scripts/test-rabbitmq.sh" stop "$COPY/.run/rabbitmq" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

say "scripts/run.sh in $COPY (build dir $WORK/build, output in $LOG)"
: >"$LOG"
(cd "$COPY" && BUILD_DIR=$WORK/build METRICS_LISTEN=127.0.0.1:$METRICS_PORT \
    exec scripts/run.sh </dev/null >>"$LOG" 2>&1) &
RUN_PID=$!

# wait_log PATTERN SECONDS: until run.sh's output has a line matching PATTERN.
wait_log() {
    local end=$((SECONDS + $2))
    until grep -q -- "$1" "$LOG"; do
        alive "$RUN_PID" || fail "scripts/run.sh exited before printing '$1'"
        [ $SECONDS -lt $end ] || fail "no '$1' from scripts/run.sh within $2 s"
        sleep 0.2
    done
}
wait_log 'run.sh: Mosquitto on 127.0.0.1:' 600
wait_log 'run.sh: RabbitMQ on 127.0.0.1:' 180
wait_log 'amqp: connected to' 60
wait_log 'mqtt: subscribed to sensors/#' 60
MQTT_PORT=$(sed -n 's/^run.sh: Mosquitto on 127.0.0.1:\([0-9]*\).*/\1/p' "$LOG" | head -n 1)
AMQP_PORT=$(sed -n 's/^run.sh: RabbitMQ on 127.0.0.1:\([0-9]*\).*/\1/p' "$LOG" | head -n 1)
say "run.sh took Mosquitto on $MQTT_PORT, RabbitMQ on $AMQP_PORT; metrics on $METRICS_PORT"
subst() {
    sed -e "s/\\b1883\\b/$MQTT_PORT/g" -e "s/\\b5672\\b/$AMQP_PORT/g" -e "s/\\b9464\\b/$METRICS_PORT/g" <<<"$1"
}

# retry SECONDS CMD: runs CMD (bash, pipefail) until it exits 0; its output in $out.
out=""
retry() {
    local end=$((SECONDS + $1)) cmd=$2
    while :; do
        if out=$(bash -o pipefail -c "$cmd" 2>&1); then
            return 0
        fi
        [ $SECONDS -lt $end ] || return 1
        sleep 0.5
    done
}

cmd=$(subst "${CMDS[0]}")
say "\$ $cmd"
out=$(bash -o pipefail -c "$cmd" 2>&1) || fail "mosquitto_pub failed: $out"

cmd=$(subst "${CMDS[1]}")
say "\$ $cmd"
retry 30 "$cmd" || fail "amqp-get found no message in 30 s: $out"
echo "$out"
[ "$out" = "$body" ] || fail "amqp-get printed '$out', not the published '$body'"

cmd=$(subst "${CMDS[2]}")
say "\$ $cmd"
retry 30 "$cmd | grep -qx 'mqtt2amqp_confirmed_total 1' && $cmd" ||
    fail "the metrics do not show the message confirmed: $out"
echo "$out"
grep -qx 'mqtt2amqp_received_total 1' <<<"$out" || fail "the metrics do not show 1 received: $out"

say "Ctrl-C (SIGINT to run.sh, pid $RUN_PID)"
kill -INT "$RUN_PID"
rc=0
wait "$RUN_PID" || rc=$?
RUN_PID=""
[ $rc = 0 ] || fail "scripts/run.sh exited with $rc after Ctrl-C"
grep -q 'bridge exited with status 0' "$LOG" || fail "the bridge did not exit 0"
stats=$(grep 'stats: received=' "$LOG" | tail -n 1)
grep -q 'received=1 ' <<<"$stats" && grep -q 'confirmed=1 ' <<<"$stats" ||
    fail "the last stats line does not say received=1 and confirmed=1: $stats"
say "${stats#*info  }"
mosq_pid=$(sed -n 's/.*Mosquitto on .*(pid \([0-9]*\),.*/\1/p' "$LOG" | head -n 1)
! alive "$mosq_pid" || fail "Mosquitto (pid $mosq_pid) still runs after run.sh exited"
if [ -f "$COPY/.run/rabbitmq/env" ]; then
    rabbit_pid=$(sed -n 's/^SERVER_PID=//p' "$COPY/.run/rabbitmq/env")
    ! alive "$rabbit_pid" || fail "RabbitMQ (pid $rabbit_pid) still runs after run.sh exited"
fi
say "the README's walk-through works"
