# bench/lib.sh - what bench/run.sh and bench/profile.sh share: building,
# the brokers, the bridge, the consumer, CPU and memory figures. Sourced,
# not run. Every process started here is recorded by pid and stopped by pid
# (never by name); bench_init sets the EXIT trap that stops them.
#
# Callers set ROOT and BUILD first, then call bench_build and bench_init.
# shellcheck shell=bash disable=SC2034 # variables set here are used by the callers

# Processes, ports, Mosquitto and RabbitMQ: the same code as scripts/run.sh
# and the tests.
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

T0=$SECONDS
say() {
    printf '[bench %4ds] %s\n' $((SECONDS - T0)) "$*" >&2
}
die() {
    say "ERROR: $*"
    exit 1
}

bench_build() {
    "$ROOT/scripts/deps.sh" </dev/null >&2
    say "building in $BUILD (RelWithDebInfo)"
    mkdir -p "$BUILD"
    local log=$BUILD/bench-build.log
    if ! { cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DM2A_BUILD_TESTS=OFF &&
        cmake --build "$BUILD" -j"$(nproc)" --target bench; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        die "build failed (log: $log)"
    fi
    BRIDGE=$BUILD/mqtt2amqp
    GEN=$BUILD/bench/m2a-bench-mqtt-pub
    CONS=$BUILD/bench/m2a-bench-amqp-consume
    MSUB=$BUILD/bench/m2a-bench-mqtt-sub
    APUB=$BUILD/bench/m2a-bench-amqp-pub
    MALLOC_COUNT=$BUILD/bench/libm2a-bench-malloc-count.so
    HZ=$(getconf CLK_TCK)
}

# Temp dir, cleanup trap, private RabbitMQ (AMQP_PORT, RABBIT_PID); with BENCH_RABBIT_MQTT=1
# also its MQTT plugin (MQTT_PORT).
bench_init() {
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/m2a-bench.XXXXXX")
    RABBIT_DIR=$TMP/rabbitmq
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    say "temp dir $TMP"
    say "starting RabbitMQ"
    rabbit start ${BENCH_RABBIT_MQTT:+mqtt} || die "RabbitMQ did not start: $(tail -n 20 "$TMP/rabbitmq.log")"
    # Only what we need from the env file: it also sets HOME and friends for rabbitmqctl.
    AMQP_PORT=$(sed -n 's/^AMQP_PORT=//p' "$RABBIT_DIR/env")
    RABBIT_PID=$(sed -n 's/^SERVER_PID=//p' "$RABBIT_DIR/env")
    MQTT_PORT=$(sed -n 's/^MQTT_PORT=//p' "$RABBIT_DIR/env")
    say "RabbitMQ on 127.0.0.1:$AMQP_PORT${MQTT_PORT:+ (its MQTT plugin on $MQTT_PORT)} (pid $RABBIT_PID)"
}

MOSQ_PID="" BRIDGE_PID="" CONS_PID="" GEN_PID="" PERF_PID="" FG_PID=""
BRIDGE_MORE_PIDS=() # bridges running besides BRIDGE_PID (a scenario with several), stopped too
BRIDGE_WRAP=() # e.g. (env LD_PRELOAD=...) or (valgrind --tool=callgrind ...)

alive() {
    m2a_alive "$@"
}

# stop_pid PID SIGNAL SECONDS: signal, wait (we are the parent), SIGKILL at the deadline.
stop_pid() {
    m2a_stop_pid "$@"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    for pid in "$PERF_PID" "$FG_PID" "$GEN_PID" "$CONS_PID" "$BRIDGE_PID" "${BRIDGE_MORE_PIDS[@]}" \
        "$MOSQ_PID"; do
        alive "$pid" && stop_pid "$pid" TERM 15
    done
    m2a_rabbit stop "$RABBIT_DIR" >/dev/null 2>&1 || true
    if [ "$KEEP" = 1 ] || [ $rc -ne 0 ]; then
        say "logs and configs kept in $TMP"
    else
        rm -rf "$TMP"
    fi
    exit $rc
}

# fg_run OUT CMD...: runs CMD with stdout to OUT and stderr appended to OUT.err, and waits
# for it; returns its status. In the background so that a signal to this script is acted
# on at once (bash runs traps only between foreground commands) and the trap stops it.
fg_run() {
    local out=$1 rc=0
    shift
    "$@" >"$out" 2>>"$out.err" &
    FG_PID=$!
    wait "$FG_PID" || rc=$?
    FG_PID=""
    return $rc
}

# wait_for FILE REGEX SECONDS PID: until a line of FILE matches, PID dies, or the deadline.
wait_for() {
    local end=$((SECONDS + $3))
    until grep -qE "$2" "$1" 2>/dev/null; do
        alive "$4" || return 1
        [ $SECONDS -lt $end ] || return 1
        sleep 0.05
    done
}

cpu_ticks() { # utime + stime
    sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
status_kb() { # FIELD PID
    awk -v f="$1:" '$1 == f {print $2}' "/proc/$2/status"
}
kv() { # LINE KEY
    sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1" | head -n1
}
# us_per_msg TICKS MESSAGES
us_per_msg() {
    awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { if (n > 0) printf "%.1f", t * 1e6 / hz / n; else print "-" }'
}
n0() { # a number, or 0 when empty
    echo "${1:-0}"
}
div() { # A / B with 2 decimals, or -
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0 && a != "" && a != "-") printf "%.2f", a / b; else print "-" }'
}

rabbit() { # VERB [ARGS]
    local verb=$1
    shift
    m2a_rabbit "$verb" "$RABBIT_DIR" "$@" >>"$TMP/rabbitmq.log" 2>&1
}

# A fresh Mosquitto from the shipped config on a free port (MOSQ_PORT, MOSQ_PID).
mosq_start() { # NAME
    local dir=$TMP/$1/mosquitto
    m2a_mosquitto_start "$dir" || die "Mosquitto did not start (log $dir/mosquitto.log)"
}

# mosq_start_bridged NAME TOPIC_FILTER REMOTE_PORT: mosq_start's Mosquitto, plus Mosquitto's
# own bridge (a `connection`) forwarding TOPIC_FILTER at QoS 1 to the MQTT broker on
# 127.0.0.1:REMOTE_PORT (MQTT 3.1.1, guest/guest). max_inflight_messages is raised to
# WINDOW (the default, 20, also holds a bridge's outgoing QoS 1 messages).
mosq_start_bridged() { # NAME TOPIC_FILTER REMOTE_PORT
    local dir=$TMP/$1/mosquitto port
    mkdir -p "$dir/data"
    m2a_free_port port || die "no free port"
    {
        m2a_mosquitto_conf shipped "$port" "$dir/data"
        printf '%s\n' "max_inflight_messages $WINDOW" "connection bench-$1" \
            "address 127.0.0.1:$3" "topic $2 out 1" "bridge_protocol_version mqttv311" \
            "remote_clientid bench-$1-bridge" "remote_username guest" "remote_password guest" \
            "cleansession true" "try_private false" "restart_timeout 1"
    } >"$dir/mosquitto.conf" || die "mosquitto.conf"
    MOSQ_PORT=$port
    m2a_mosquitto_launch "$dir" "$port" || die "Mosquitto did not start (log $dir/mosquitto.log)"
    # Until RabbitMQ's log says it accepted the bridge (Mosquitto logs no CONNACK).
    local end=$((SECONDS + 60))
    until grep -qs "accepting MQTT connection .*client id: bench-$1-bridge)" \
        "$RABBIT_DIR"/log/*.log; do
        [ $SECONDS -lt $end ] || die "Mosquitto's bridge did not connect (log $dir/mosquitto.log)"
        sleep 0.2
    done
}

# mosq_start_inflight NAME N: mosq_start's Mosquitto with max_inflight_messages N (QoS 1
# messages in flight per client both ways; also the Receive Maximum it grants MQTT 5 clients).
mosq_start_inflight() { # NAME N
    local dir=$TMP/$1/mosquitto port
    mkdir -p "$dir/data"
    m2a_free_port port || die "no free port"
    {
        m2a_mosquitto_conf shipped "$port" "$dir/data"
        printf '%s\n' "max_inflight_messages $2"
    } >"$dir/mosquitto.conf" || die "mosquitto.conf"
    MOSQ_PORT=$port
    m2a_mosquitto_launch "$dir" "$port" || die "Mosquitto did not start (log $dir/mosquitto.log)"
}

mosq_stop() {
    m2a_mosquitto_stop
}

# bridge_start NAME FSYNC [INSTANCE]: config, spool and log under $TMP/NAME; waits until it
# subscribed and (unless BRIDGE_WAIT_AMQP=0) connected to RabbitMQ. BRIDGE_MQTT_HEADERS sets
# amqp.mqtt_headers (default all), BRIDGE_SHARE_GROUP mqtt.share_group (default none).
# INSTANCE (1, 2, ...: several bridges in one scenario) gives each its own client_id
# bench-NAME-INSTANCE, config, log and spool (bridge-INSTANCE.yaml, bridge-INSTANCE.log,
# spool-INSTANCE); they share the exchange and queue bench.NAME. Sets BRIDGE_PID, BRIDGE_LOG
# and BRIDGE_SPOOL to this bridge's.
bridge_start() { # NAME FSYNC [INSTANCE]
    local dir=$TMP/$1 sfx=${3:+-$3}
    BRIDGE_LOG=$dir/bridge$sfx.log
    BRIDGE_SPOOL=$dir/spool$sfx
    cat >"$dir/bridge$sfx.yaml" <<EOF
mqtt: {host: 127.0.0.1, port: $MOSQ_PORT, client_id: bench-$1$sfx${BRIDGE_SHARE_GROUP:+, share_group: $BRIDGE_SHARE_GROUP}}
amqp:
  port: $AMQP_PORT
  reconnect_max_ms: 500
  confirm_window: $WINDOW
  mqtt_headers: ${BRIDGE_MQTT_HEADERS:-all}
  topology:
    exchanges: [{name: bench.$1, type: topic}]
    queues:
      - name: bench.$1
        bindings: [{exchange: bench.$1, routing_key: "#"}]
spool: {dir: $BRIDGE_SPOOL, max_bytes: 64GiB, segment_bytes: 64MiB, fsync: $2}
routes:
EOF
    # BRIDGE_ROUTES=N (routes10k): N-1 routes that do not match, then the one that does.
    awk -v n="${BRIDGE_ROUTES:-1}" -v ex="bench.$1" 'BEGIN {
        for (i = 0; i < n - 1; i++)
            if (i % 2) printf "  - {name: r%d, topic: \"bench/x%d/#\", exchange: %s}\n", i, i, ex
            else printf "  - {name: r%d, topic: \"fleet/site%d/+/temp\", exchange: %s}\n", i, i, ex
    }' >>"$dir/bridge$sfx.yaml"
    cat >>"$dir/bridge$sfx.yaml" <<EOF
  - {name: bench, topic: "bench/#", exchange: bench.$1}
log: {stats_interval: 1}
shutdown_timeout: 5
EOF
    "${BRIDGE_WRAP[@]}" "$BRIDGE" -c "$dir/bridge$sfx.yaml" >"$BRIDGE_LOG" 2>&1 &
    BRIDGE_PID=$!
    # "bench/# (QoS": the bench route's filter, alone or in the share group.
    if ! wait_for "$BRIDGE_LOG" "bench/# \(QoS" 600 "$BRIDGE_PID" ||
        { [ "${BRIDGE_WAIT_AMQP:-1}" = 1 ] &&
            ! wait_for "$BRIDGE_LOG" "amqp: connected to" 60 "$BRIDGE_PID"; }; then
        die "bridge did not start: $(tail -n 5 "$BRIDGE_LOG")"
    fi
}

bridge_stop() {
    stop_pid "$BRIDGE_PID" TERM 30
    BRIDGE_PID=""
}

# The last value of a counter in the bridge's stats lines (of LOG, default BRIDGE_LOG's).
bridge_stat() { # KEY [LOG]
    { grep -o " $1=[0-9]*" "${2:-$BRIDGE_LOG}" || true; } | tail -n1 | cut -d= -f2
}

cons_start() { # NAME ARGS...
    local name=$1
    shift
    CONS_OUT=$TMP/$name/consumer.out
    "$CONS" -p "$AMQP_PORT" -Q "bench.$name" -x "bench.$name" "$@" >"$CONS_OUT" 2>"$CONS_OUT.err" &
    CONS_PID=$!
    wait_for "$CONS_OUT" "ready" 90 "$CONS_PID" || die "consumer not ready: $(cat "$CONS_OUT.err")"
}

cons_wait() {
    wait "$CONS_PID" || say "consumer: $(tail -n 3 "$CONS_OUT.err" | tr '\n' ' ')"
    CONS_PID=""
    CONS_LINE0=$(grep "class=0" "$CONS_OUT" || true)
    CONS_LINE1=$(grep "class=1" "$CONS_OUT" || true)
}

