#!/usr/bin/env bash
# run.sh - build and run the bridge.
#
#   scripts/run.sh               start a local Mosquitto (the shipped
#                                docker/mosquitto/mosquitto.conf, port 1883 if
#                                free) and a local RabbitMQ (port 5672 if free)
#                                under .run/, then run the bridge with
#                                config/mqtt2amqp.yaml against them
#   scripts/run.sh -c CONFIG     run the bridge with CONFIG against your brokers
#   ... -- ARGS                  extra arguments for mqtt2amqp
#
# The bridge runs in the foreground; Ctrl-C or SIGTERM stops it gracefully,
# then the brokers this script started are stopped (by pid). BUILD_DIR
# overrides build/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-build}
CONFIG=""
EXTRA=()
while [ $# -gt 0 ]; do
    case $1 in
    -c | --config)
        [ $# -ge 2 ] || { echo "run.sh: $1 needs a file" >&2; exit 2; }
        CONFIG=$2
        shift 2
        ;;
    -h | --help)
        sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    --)
        shift
        EXTRA=("$@")
        break
        ;;
    *)
        echo "run.sh: unknown argument $1 (see --help)" >&2
        exit 2
        ;;
    esac
done

say() {
    echo "run.sh: $*" >&2
}

scripts/deps.sh </dev/null
say "building $BUILD_DIR (Release)"
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)" --target mqtt2amqp
BIN=$ROOT/$BUILD_DIR/mqtt2amqp
[[ $BUILD_DIR = /* ]] && BIN=$BUILD_DIR/mqtt2amqp

if [ -n "$CONFIG" ]; then
    exec "$BIN" -c "$CONFIG" "${EXTRA[@]}"
fi

# shellcheck source=scripts/lib.sh
. scripts/lib.sh
RUN=$ROOT/.run
MOSQ_DIR=$RUN/mosquitto
RABBIT_DIR=$RUN/rabbitmq
mkdir -p "$RUN/spool"

MOSQ_PID=""
BRIDGE_PID=""
RABBIT_STARTED=0
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    m2a_stop_pid "$BRIDGE_PID" TERM 60
    if m2a_alive "$MOSQ_PID"; then
        say "stopping Mosquitto (pid $MOSQ_PID)"
    fi
    m2a_mosquitto_stop "$MOSQ_DIR"
    if [ "$RABBIT_STARTED" = 1 ]; then
        say "stopping RabbitMQ"
        m2a_rabbit stop "$RABBIT_DIR" || true
    fi
    exit "$rc"
}
trap cleanup EXIT
# Forward a stop request to the bridge and let it shut down gracefully; the
# EXIT trap then stops the brokers.
trap 'say "stopping the bridge"; m2a_alive "$BRIDGE_PID" && kill -TERM "$BRIDGE_PID"' INT TERM

# Port 1883 if free. A Mosquitto left behind by an earlier run of this
# script is stopped first (by the pid it recorded).
m2a_mosquitto_start "$MOSQ_DIR" 1883 || { say "Mosquitto did not start"; exit 1; }
MQTT_PORT=$MOSQ_PORT
say "Mosquitto on 127.0.0.1:$MQTT_PORT (pid $MOSQ_PID, log $MOSQ_DIR/mosquitto.log)"

RABBIT_STARTED=1
M2A_RABBIT_AMQP_PORT=5672 m2a_rabbit start "$RABBIT_DIR"
AMQP_PORT=$(sed -n 's/^AMQP_PORT=//p' "$RABBIT_DIR/env")
say "RabbitMQ on 127.0.0.1:$AMQP_PORT (logs $RABBIT_DIR/log; rabbitmqctl: scripts/test-rabbitmq.sh ctl $RABBIT_DIR ARGS)"

export MQTT_HOST=127.0.0.1 MQTT_PORT AMQP_HOST=127.0.0.1 AMQP_PORT SPOOL_DIR=$RUN/spool
say "running $BIN -c config/mqtt2amqp.yaml (MQTT_PORT=$MQTT_PORT AMQP_PORT=$AMQP_PORT SPOOL_DIR=$SPOOL_DIR); Ctrl-C to stop"
"$BIN" -c config/mqtt2amqp.yaml "${EXTRA[@]}" &
BRIDGE_PID=$!
# wait returns early when a trapped signal arrives: wait again until the
# bridge is gone, then once more for its saved exit status.
while m2a_alive "$BRIDGE_PID"; do
    wait "$BRIDGE_PID" || true
done
rc=0
wait "$BRIDGE_PID" || rc=$?
say "bridge exited with status $rc"
exit $rc
