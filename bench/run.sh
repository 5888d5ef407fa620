#!/usr/bin/env bash
# bench/run.sh - the benchmark of issue 4: how close the bridge gets to
# publishing straight into RabbitMQ, and what it costs.
#
# Builds the bridge and the bench programs (RelWithDebInfo, in build-bench/),
# starts a private RabbitMQ (scripts/test-rabbitmq.sh, under a temp dir) and,
# per scenario, a fresh Mosquitto from docker/mosquitto/mosquitto.conf on a
# free port and a fresh bridge with a fresh spool. Prints ONE table on
# stdout (progress goes to stderr):
#
#   scenario | messages | msg/s | x direct | p50 ms | p99 ms | bridge CPU us/msg
#   | bridge peak RSS | lost | duplicated | RabbitMQ CPU us/msg | Mosquitto CPU us/msg
#   | all processes CPU us/msg (bridge, brokers, load generator and consumer)
#
# Scenarios (keys for M2A_BENCH_ONLY):
#   direct100, direct1k   the baseline: m2a-bench-amqp-pub straight into RabbitMQ
#                         (confirm window 1000, persistent, durable classic queue
#                         with a consumer), as fast as confirmed
#   direct100h            the same with the properties and headers the bridge adds
#                         (message_id, timestamp, x-mqtt-*): RabbitMQ's share of the gap
#   batch100 interval100 never100, batch1k interval1k never1k
#                         MQTT QoS 1 -> Mosquitto -> bridge (spool fsync policy)
#                         -> RabbitMQ -> consumer, generator as fast as PUBACKed
#   batch100n             batch100 with amqp.mqtt_headers: none (no x-mqtt-* headers):
#                         what the headers cost RabbitMQ, seen from the bridge
#   rmqcost               what RabbitMQ pays for each of the bridge's habits (issue 12):
#                         the direct publisher at one fixed rate (RabbitMQ's CPU per
#                         message depends on its load, so every row gets the same):
#                         batch100's msg/s of the pass, else M2A_BENCH_RMQCOST_RATE; a
#                         control row as direct100 sends, then with, one at a time,
#                         message_id, timestamp, content_type, x-mqtt-topic, x-mqtt-qos,
#                         x-mqtt-retain, all of them; mandatory off; delivery_mode left
#                         out (transient, for scale); the bridge's frame layout (its
#                         encoder, one write per message and a burst of 64 per write);
#                         windows 100 and 10; and all the bridge does (its properties,
#                         headers and frames). A note gives each row's RabbitMQ CPU per
#                         message x the control's (and batch100's, same rate)
#   peers                 what users would pick instead, same load and consumer, 100 B,
#                         256 KiB and 4 MiB (the latter with big256k's/big4m's window and
#                         direct256k/direct4m as baseline; runs big256k, big4m too): MQTT
#                         QoS 1 straight into RabbitMQ's
#                         MQTT plugin (rabbitmq_mqtt, enabled on the private node; it
#                         publishes to amq.topic), and into a Mosquitto whose own bridge
#                         (`connection`, QoS 1 out, max_inflight_messages = the window)
#                         forwards to that plugin
#   big256k, big4m        direct AMQP and bridge (fsync batch) with 256 KiB and 4 MiB
#                         payloads (camera frames); a note per row gives MB/s and the
#                         bridge's CPU us per KiB of payload
#   routes10k             bridge 100 B fsync batch with 1, 1,000 and 10,000 routes, the
#                         matching one last (the others "fleet/siteI/+/temp" and
#                         "bench/xI/#"); a note from m2a-bench-routes (no broker): table
#                         compile and subscription reduction time, ns per mapped message,
#                         trie against the linear reference
#   share2                batch100 with 2 bridges in one mqtt.share_group (each its own
#                         client_id and spool, same routes and queue): bridge CPU is
#                         both bridges' together, RSS each one's peak; a note gives
#                         the split of the messages between them
#   latency               bridge (100 B, fsync batch) and direct at the same fixed
#                         rate: 50% of the bridge's measured maximum
#   drain                 RabbitMQ stopped (stop_app) while BACKLOG messages
#                         arrive; then started, and the backlog drains while live
#                         traffic continues (LIVE_PERCENT of the direct rate);
#                         msg/s is the drain rate, p50/p99 that of the live traffic
#   downlink              issue 11: AMQP publisher -> RabbitMQ -> bridge (a downlink,
#                         QoS 1) -> Mosquitto -> MQTT subscriber, against an MQTT
#                         publisher straight into Mosquitto -> the same subscriber
#                         ("direct MQTT"), same run, 100 B; x direct divides by that.
#                         Then the stages apart: the AMQP publisher alone into the
#                         queue (no consumer: RabbitMQ's intake, which bounds the
#                         live row), and the bridge draining that pre-filled queue
#                         to the subscriber ("downlink drain": msg/s is the drain
#                         rate, what the bridge and RabbitMQ's delivery sustain)
#   big                   RSS with a 10,000,000-message backlog in the spool
#                         (RabbitMQ stopped); lost = PUBACKed but not spooled; then
#                         the bridge is restarted on that spool: recovery time and RSS
#
# msg/s is end to end: distinct messages / (last delivery - first send). CPU
# is utime+stime from /proc/PID/stat over the scenario / messages; peak RSS
# is VmHWM from /proc/PID/status. The "x direct" ratio divides by the direct
# baseline of the same payload size measured in the same run.
#
# Environment (with M2A_BENCH_MESSAGES=100000 M2A_BENCH_MESSAGES_1K=50000
# M2A_BENCH_BIG=1 a full run took 25 minutes on 2 cores; the defaults send
# twice as many small messages):
#   M2A_BENCH_MESSAGES=200000       per 100 B scenario
#   M2A_BENCH_MESSAGES_1K=100000    per 1 KiB scenario
#   M2A_BENCH_MESSAGES_256K=4000    per 256 KiB scenario (1 GiB)
#   M2A_BENCH_MESSAGES_4M=256       per 4 MiB scenario (1 GiB)
#   M2A_BENCH_WINDOW_BIG=64         generator/publisher window and bridge confirm_window of
#                                   the big256k/big4m rows
#   M2A_BENCH_LATENCY_SECONDS=20    length of each fixed-rate latency run
#   M2A_BENCH_BACKLOG=1000000       messages sent while RabbitMQ is down
#   M2A_BENCH_LIVE_PERCENT=10       live traffic during the drain, % of direct 100 B
#   M2A_BENCH_BIG=auto              big scenario: 1 always, 0 never, auto = only if
#                                   the backlog ingest rate says it takes <= 3 min
#   M2A_BENCH_BIG_BACKLOG=10000000
#   M2A_BENCH_DL_PREFETCH=1000      the downlink scenario's prefetch
#   M2A_BENCH_DL_INFLIGHT=          the downlink scenario's Mosquitto (all its rows, the
#                                   direct one too): max_inflight_messages, the Receive
#                                   Maximum granted to the bridge's MQTT 5 session (empty:
#                                   the shipped config, Mosquitto's default 20)
#   M2A_BENCH_RMQCOST_RATE=5000     rmqcost's rate when batch100 does not run
#   M2A_BENCH_DEVICES=100           topics bench/dev/0..N-1
#   M2A_BENCH_WINDOW=1000           generator/publisher window (= bridge confirm_window)
#   M2A_BENCH_ONLY=key,key          run only these scenarios
#   M2A_BENCH_REPEAT=1              passes over the throughput scenarios (interleaved);
#                                   each row is then the median pass (3: about +3 min);
#                                   not the downlink, latency, drain or big scenarios:
#                                   run the script again for more of those
#   M2A_BENCH_BUILD=DIR             build directory (build-bench)
#   M2A_BENCH_KEEP=1                keep the temp dir (logs, configs) and say where
#   M2A_BENCH_BRIDGE2=PATH          a second bridge binary (say, main's build): every
#                                   bridge throughput row is run again with it, next to
#                                   it (before or after, alternately), as an extra row
#                                   "... [LABEL]" of the same pass
#   M2A_BENCH_BRIDGE2_LABEL=other   that LABEL
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${M2A_BENCH_BUILD:-$ROOT/build-bench}
N100=${M2A_BENCH_MESSAGES:-200000}
N1K=${M2A_BENCH_MESSAGES_1K:-100000}
N256K=${M2A_BENCH_MESSAGES_256K:-4000}
N4M=${M2A_BENCH_MESSAGES_4M:-256}
WINDOW_BIG=${M2A_BENCH_WINDOW_BIG:-64}
LAT_SECS=${M2A_BENCH_LATENCY_SECONDS:-20}
BACKLOG=${M2A_BENCH_BACKLOG:-1000000}
LIVE_PCT=${M2A_BENCH_LIVE_PERCENT:-10}
BIG=${M2A_BENCH_BIG:-auto}
BIG_N=${M2A_BENCH_BIG_BACKLOG:-10000000}
BIG_MAX_SECS=180
DEVICES=${M2A_BENCH_DEVICES:-100}
DL_PREFETCH=${M2A_BENCH_DL_PREFETCH:-1000}
DL_INFLIGHT=${M2A_BENCH_DL_INFLIGHT:-}
WINDOW=${M2A_BENCH_WINDOW:-1000}
ONLY=${M2A_BENCH_ONLY:-}
REPEAT=${M2A_BENCH_REPEAT:-1}
KEEP=${M2A_BENCH_KEEP:-0}
BRIDGE2=${M2A_BENCH_BRIDGE2:-}
BRIDGE2_LABEL=${M2A_BENCH_BRIDGE2_LABEL:-other}

case ${1:-} in
-h | --help)
    sed -n '2,/^set -euo/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
"") ;;
*)
    echo "run.sh: no arguments (see --help; settings come from the environment)" >&2
    exit 2
    ;;
esac

want() {
    [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]
}
# peers needs the MQTT plugin on the private node (bench_init).
! want peers || BENCH_RABBIT_MQTT=1

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_build

# --- results -------------------------------------------------------------------

ROWS=()
NOTES=()
# row SCENARIO MESSAGES RATE RATIO P50 P99 CPU RSS LOST DUP RMQ MOSQ ALL
row() {
    local IFS='|'
    ROWS+=("$*")
    say "result: $*"
}

# Snapshot of the CPU counters before a scenario.
cpu_begin() {
    R0=$(cpu_ticks "$RABBIT_PID")
    B0=0 M0=0
    [ -z "$BRIDGE_PID" ] || B0=$(cpu_ticks "$BRIDGE_PID")
    [ -z "$MOSQ_PID" ] || M0=$(cpu_ticks "$MOSQ_PID")
}
# cpu_end MESSAGES CLIENT_CPU_SECONDS: sets CPU_B, CPU_R, CPU_M and CPU_ALL (us/msg; ALL adds
# the load generator's and the consumer's own CPU) and RSS_B (MiB) over MESSAGES.
cpu_end() {
    local n=$1 client=${2:-0} tb=0 tr tm=0
    tr=$(($(cpu_ticks "$RABBIT_PID") - R0))
    CPU_R=$(us_per_msg "$tr" "$n")
    CPU_B="-" CPU_M="-" RSS_B="-"
    if [ -n "$BRIDGE_PID" ]; then
        tb=$(($(cpu_ticks "$BRIDGE_PID") - B0))
        CPU_B=$(us_per_msg "$tb" "$n")
        RSS_B=$(awk -v k="$(status_kb VmHWM "$BRIDGE_PID")" 'BEGIN { printf "%.1f MiB", k / 1024 }')
    fi
    if [ -n "$MOSQ_PID" ]; then
        tm=$(($(cpu_ticks "$MOSQ_PID") - M0))
        CPU_M=$(us_per_msg "$tm" "$n")
    fi
    CPU_ALL=$(awk -v t=$((tb + tr + tm)) -v c="$client" -v n="$n" -v hz="$HZ" \
        'BEGIN { if (n > 0) printf "%.1f", (t / hz + c) * 1e6 / n; else print "-" }')
}
sum() { # numbers; an empty one counts as 0
    local s=0 x
    for x in "$@"; do
        s=$(awk -v a="$s" -v b="${x:-0}" 'BEGIN { print a + b }')
    done
    echo "$s"
}

# --- scenarios -----------------------------------------------------------------

run_direct() { # KEY SIZE COUNT LABEL RATE [publisher options]
    local key=$1$PASS_SUFFIX size=$2 n=$3 label=$4 rate=$5
    shift 5
    mkdir -p "$TMP/$key"
    say "$label: $n messages"
    cons_start "$key" -n "$n"
    cpu_begin
    local out
    fg_run "$TMP/$key/publisher.out" "$APUB" -p "$AMQP_PORT" -x "bench.$key" -Q "bench.$key" \
        -n "$n" -s "$size" -d "$DEVICES" -w "$WINDOW" -r "$rate" "$@" ||
        say "publisher: $(tail -n 3 "$TMP/$key/publisher.out.err")"
    out=$(cat "$TMP/$key/publisher.out")
    cons_wait
    local l=$CONS_LINE0 ratio=1.00
    cpu_end "$n" "$(sum "$(kv "$out" cpu_s)" "$(kv "$l" cpu_s)")"
    [ "$rate" = 0 ] || ratio="-"
    RATE=$(kv "$l" rate)
    [ $# = 0 ] || ratio=$(div "$RATE" "${BASE100:-0}")
    row "$label" "$n" "$RATE" "$ratio" "$(kv "$l" p50_ms)" "$(kv "$l" p99_ms)" "-" "-" \
        "$(kv "$l" lost)" "$(kv "$l" duplicated)" "$CPU_R" "-" "$CPU_ALL"
}

# run_peer KEY SIZE COUNT LABEL VIA: the generator's MQTT QoS 1 load into RabbitMQ's MQTT
# plugin, straight (VIA plugin) or through Mosquitto's own bridge (VIA mosquitto); topics
# KEY/dev/N, which the plugin publishes to amq.topic as KEY.dev.N; the consumer's queue
# bench.KEY is bound to amq.topic with KEY.#.
run_peer() {
    local key=$1$PASS_SUFFIX size=$2 n=$3 label=$4 via=$5 port
    mkdir -p "$TMP/$key"
    say "$label: $n messages"
    [ -n "$MQTT_PORT" ] || die "peers: RabbitMQ's MQTT plugin is not running"
    port=$MQTT_PORT
    if [ "$via" = mosquitto ]; then
        mosq_start_bridged "$key" "$key/#" "$MQTT_PORT"
        port=$MOSQ_PORT
    fi
    cons_start "$key" -n "$n" -x amq.topic -k "$key.#"
    cpu_begin
    local out
    fg_run "$TMP/$key/generator.out" "$GEN" -p "$port" -n "$n" -s "$size" -d "$DEVICES" \
        -t "$key/dev" -w "$WINDOW" -i "bench-gen-$key" ||
        say "generator: $(tail -n 3 "$TMP/$key/generator.out.err")"
    out=$(cat "$TMP/$key/generator.out")
    cons_wait
    local l=$CONS_LINE0
    cpu_end "$n" "$(sum "$(kv "$out" cpu_s)" "$(kv "$l" cpu_s)")"
    [ -z "$MOSQ_PID" ] || mosq_stop
    RATE=$(kv "$l" rate)
    row "$label" "$n" "$RATE" "-" "$(kv "$l" p50_ms)" "$(kv "$l" p99_ms)" "-" "-" \
        "$(kv "$l" lost)" "$(kv "$l" duplicated)" "$CPU_R" "$CPU_M" "$CPU_ALL"
}

run_bridge() { # KEY SIZE FSYNC COUNT LABEL BASE_RATE [RATE]
    local key=$1$PASS_SUFFIX size=$2 fsync=$3 n=$4 label=$5 base=$6 rate=${7:-0}
    mkdir -p "$TMP/$key"
    say "$label: $n messages"
    mosq_start "$key"
    bridge_start "$key" "$fsync"
    cons_start "$key" -n "$n"
    cpu_begin
    local out
    fg_run "$TMP/$key/generator.out" "$GEN" -p "$MOSQ_PORT" -n "$n" -s "$size" -d "$DEVICES" \
        -w "$WINDOW" -r "$rate" -i "bench-gen-$key" ||
        say "generator: $(tail -n 3 "$TMP/$key/generator.out.err")"
    out=$(cat "$TMP/$key/generator.out")
    INGEST=$(kv "$out" rate)
    cons_wait
    local l=$CONS_LINE0 ratio
    cpu_end "$n" "$(sum "$(kv "$out" cpu_s)" "$(kv "$l" cpu_s)")"
    cp "/proc/$BRIDGE_PID/status" "$TMP/$key/bridge.status" # RssAnon vs RssFile, for a look
    bridge_stop
    mosq_stop
    RATE=$(kv "$l" rate)
    ratio=$(div "$RATE" "$base")
    [ "$rate" = 0 ] || ratio="-"
    row "$label" "$n" "$RATE" "$ratio" "$(kv "$l" p50_ms)" "$(kv "$l" p99_ms)" "$CPU_B" \
        "$RSS_B" "$(kv "$l" lost)" "$(kv "$l" duplicated)" "$CPU_R" "$CPU_M" "$CPU_ALL"
    say "  (generator ingest $INGEST msg/s)"
}

# run_share2 KEY SIZE FSYNC COUNT LABEL BASE_RATE: run_bridge with 2 bridges in one share
# group; Mosquitto hands the messages to them in turn.
run_share2() {
    local key=$1$PASS_SUFFIX size=$2 fsync=$3 n=$4 label=$5 base=$6 i
    local logs=() rss=() t0=() tb=0
    mkdir -p "$TMP/$key"
    say "$label: $n messages"
    mosq_start "$key"
    for i in 1 2; do
        BRIDGE_SHARE_GROUP=bench bridge_start "$key" "$fsync" "$i"
        logs+=("$BRIDGE_LOG")
        BRIDGE_MORE_PIDS+=("$BRIDGE_PID")
        BRIDGE_PID=""
    done
    cons_start "$key" -n "$n"
    cpu_begin # the bridges' CPU is counted here, not by cpu_end (BRIDGE_PID is empty)
    for i in 0 1; do
        t0+=("$(cpu_ticks "${BRIDGE_MORE_PIDS[$i]}")")
    done
    local out
    fg_run "$TMP/$key/generator.out" "$GEN" -p "$MOSQ_PORT" -n "$n" -s "$size" -d "$DEVICES" \
        -w "$WINDOW" -i "bench-gen-$key" || say "generator: $(tail -n 3 "$TMP/$key/generator.out.err")"
    out=$(cat "$TMP/$key/generator.out")
    INGEST=$(kv "$out" rate)
    cons_wait
    local l=$CONS_LINE0
    for i in 0 1; do
        tb=$((tb + $(cpu_ticks "${BRIDGE_MORE_PIDS[$i]}") - t0[i]))
        rss+=("$(awk -v k="$(status_kb VmHWM "${BRIDGE_MORE_PIDS[$i]}")" 'BEGIN { printf "%.1f", k / 1024 }')")
        cp "/proc/${BRIDGE_MORE_PIDS[$i]}/status" "$TMP/$key/bridge-$((i + 1)).status"
    done
    cpu_end "$n" "$(sum "$(kv "$out" cpu_s)" "$(kv "$l" cpu_s)" "$(awk -v t="$tb" -v hz="$HZ" 'BEGIN { print t / hz }')")"
    CPU_B=$(us_per_msg "$tb" "$n")
    RSS_B="${rss[0]} + ${rss[1]} MiB"
    for i in 0 1; do
        stop_pid "${BRIDGE_MORE_PIDS[$i]}" TERM 30
    done
    BRIDGE_MORE_PIDS=()
    mosq_stop
    RATE=$(kv "$l" rate)
    row "$label" "$n" "$RATE" "$(div "$RATE" "$base")" "$(kv "$l" p50_ms)" "$(kv "$l" p99_ms)" \
        "$CPU_B" "$RSS_B" "$(kv "$l" lost)" "$(kv "$l" duplicated)" "$CPU_R" "$CPU_M" "$CPU_ALL"
    say "  (generator ingest $INGEST msg/s)"
    # The split, from each bridge's last stats line (logged again when it stops).
    local split="" r c
    for i in 0 1; do
        r=$(bridge_stat received "${logs[$i]}")
        c=$(bridge_stat confirmed "${logs[$i]}")
        split+="${split:+; }bridge $((i + 1)) received ${r:-?} ($(awk -v a="${r:-0}" -v n="$n" \
            'BEGIN { printf "%.1f", (n > 0 ? 100 * a / n : 0) }')%), confirmed ${c:-?}"
    done
    NOTES+=("$key: ${split} (of $n sent)")
}

run_drain() { # BASE_RATE
    local key=drain base=$1
    local live_rate
    live_rate=$(awk -v b="$base" -v p="$LIVE_PCT" 'BEGIN { printf "%d", b * p / 100 }')
    [ "$live_rate" -gt 0 ] || live_rate=1000
    mkdir -p "$TMP/$key"
    say "drain: RabbitMQ down while $BACKLOG messages arrive"
    mosq_start "$key"
    bridge_start "$key" batch
    rabbit stop_app
    cpu_begin
    local out
    fg_run "$TMP/$key/backlog.out" "$GEN" -p "$MOSQ_PORT" -n "$BACKLOG" -d "$DEVICES" -w "$WINDOW" \
        -i "bench-gen-backlog" || say "generator: $(tail -n 3 "$TMP/$key/backlog.out.err")"
    out=$(cat "$TMP/$key/backlog.out")
    BACKLOG_INGEST=$(kv "$out" rate)
    say "  backlog spooled at $BACKLOG_INGEST msg/s; RabbitMQ up, live traffic at $live_rate msg/s"
    rabbit start_app
    local stop_file=$TMP/$key/live.count
    cons_start "$key" -n "$BACKLOG" -L "$BACKLOG" -S "$stop_file" -W 60 -C 60
    "$GEN" -p "$MOSQ_PORT" -n 1000000000 -f "$BACKLOG" -d "$DEVICES" -w "$WINDOW" -r "$live_rate" \
        -i "bench-gen-live" >"$TMP/$key/live.out" 2>"$TMP/$key/live.err" &
    GEN_PID=$!
    wait_for "$CONS_OUT" "class0 complete" 3600 "$CONS_PID" || say "backlog not drained"
    stop_pid "$GEN_PID" INT 30
    GEN_PID=""
    local live_out live_n
    live_out=$(cat "$TMP/$key/live.out")
    live_n=$(kv "$live_out" acked)
    echo "${live_n:-0}" >"$stop_file.tmp"
    mv "$stop_file.tmp" "$stop_file"
    cons_wait
    local total=$((BACKLOG + ${live_n:-0}))
    local l0=$CONS_LINE0 l1=$CONS_LINE1 drain
    cpu_end "$total" "$(sum "$(kv "$out" cpu_s)" "$(kv "$live_out" cpu_s)" "$(kv "$l0" cpu_s)")"
    bridge_stop
    mosq_stop
    drain=$(kv "$l0" drain_rate)
    row "drain ${BACKLOG} backlog + live ${live_rate}/s" "$total" "$drain" "$(div "$drain" "$base")" \
        "$(kv "$l1" p50_ms)" "$(kv "$l1" p99_ms)" "$CPU_B" "$RSS_B" \
        "$(($(n0 "$(kv "$l0" lost)") + $(n0 "$(kv "$l1" lost)")))" \
        "$(($(n0 "$(kv "$l0" duplicated)") + $(n0 "$(kv "$l1" duplicated)")))" "$CPU_R" "$CPU_M" \
        "$CPU_ALL"
    NOTES+=("drain: backlog spooled at ${BACKLOG_INGEST} msg/s with RabbitMQ down; ${live_n:-0} live messages during the drain; msg/s = backlog / (its last delivery - its first); p50/p99 = live traffic")
}

# The subscriber of the downlink scenario: MSUB on bench/dev/# of the current Mosquitto.
msub_start() { # NAME COUNT
    CONS_OUT=$TMP/$1/subscriber.out
    "$MSUB" -p "$MOSQ_PORT" -t "bench/dev/#" -n "$2" -i "bench-sub-$1" >"$CONS_OUT" \
        2>"$CONS_OUT.err" &
    CONS_PID=$!
    wait_for "$CONS_OUT" "ready" 30 "$CONS_PID" || die "subscriber not ready: $(cat "$CONS_OUT.err")"
}

# The Mosquitto of the downlink rows (M2A_BENCH_DL_INFLIGHT).
dl_mosq_start() { # NAME
    if [ -n "$DL_INFLIGHT" ]; then mosq_start_inflight "$1" "$DL_INFLIGHT"; else mosq_start "$1"; fi
}

# The bridge of a downlink row: a downlink "bench" on queue bench.KEY (the queue and its
# exchange in its topology), topic bench/dev/{2}; sets BRIDGE_PID and BRIDGE_LOG.
downlink_bridge_start() { # KEY BINARY
    local key=$1 bin=$2
    BRIDGE_LOG=$TMP/$key/bridge.log
    cat >"$TMP/$key/bridge.yaml" <<EOF
mqtt: {host: 127.0.0.1, port: $MOSQ_PORT, client_id: bench-$key}
amqp:
  port: $AMQP_PORT
  topology:
    exchanges: [{name: bench.$key, type: topic}]
    queues:
      - name: bench.$key
        bindings: [{exchange: bench.$key, routing_key: "#"}]
spool: {dir: $TMP/$key/spool}
downlinks:
  - {name: bench, queue: bench.$key, topic: "bench/dev/{2}", qos: 1, prefetch: $DL_PREFETCH}
log: {stats_interval: 1}
shutdown_timeout: 5
EOF
    "${BRIDGE_WRAP[@]}" "$bin" -c "$TMP/$key/bridge.yaml" >"$BRIDGE_LOG" 2>&1 &
    BRIDGE_PID=$!
}

# The AMQP publisher of the downlink rows: COUNT messages into exchange/queue bench.KEY.
downlink_publish() { # KEY COUNT
    fg_run "$TMP/$1/publisher.out" "$APUB" -p "$AMQP_PORT" -x "bench.$1" -Q "bench.$1" \
        -n "$2" -s 100 -d "$DEVICES" -k bench -w "$WINDOW" -r 0 ||
        say "publisher: $(tail -n 3 "$TMP/$1/publisher.out.err")"
}

# downlink_bridge KEY LABEL COUNT BASE_RATE [BINARY]: the downlink row with this tree's
# bridge, or with BINARY (M2A_BENCH_BRIDGE2) and LABEL after the row's name.
downlink_bridge() {
    local key=$1 label=$2 n=$3 base=$4 bin=${5:-$BRIDGE} out l
    mkdir -p "$TMP/$key"
    say "downlink 100 B$label: $n messages"
    dl_mosq_start "$key"
    downlink_bridge_start "$key" "$bin"
    wait_for "$BRIDGE_LOG" "consuming 1 queue" 60 "$BRIDGE_PID" ||
        die "bridge did not start: $(tail -n 5 "$BRIDGE_LOG")"
    msub_start "$key" "$n"
    cpu_begin
    downlink_publish "$key" "$n"
    out=$(cat "$TMP/$key/publisher.out")
    cons_wait
    l=$(grep "class=0" "$CONS_OUT" || true)
    cpu_end "$n" "$(sum "$(kv "$out" cpu_s)" "$(kv "$l" cpu_s)")"
    bridge_stop
    mosq_stop
    row "downlink 100 B (AMQP -> bridge -> MQTT, prefetch $DL_PREFETCH)$label" "$n" "$(kv "$l" rate)" \
        "$(div "$(kv "$l" rate)" "$base")" "$(kv "$l" p50_ms)" "$(kv "$l" p99_ms)" "$CPU_B" \
        "$RSS_B" "$(kv "$l" lost)" "$(kv "$l" duplicated)" "$CPU_R" "$CPU_M" "$CPU_ALL"
}

# downlink_drain KEY LABEL COUNT BASE_RATE [BINARY]: the AMQP publisher alone fills queue
# bench.KEY (no consumer; its own row, without LABEL only), then the bridge drains it to the
# subscriber. msg/s is the subscriber's drain rate (distinct / (last delivery - first
# delivery)); no latency (every message waited in the queue).
downlink_drain() {
    local key=$1 label=$2 n=$3 base=$4 bin=${5:-$BRIDGE} out l
    mkdir -p "$TMP/$key"
    say "downlink drain 100 B$label: filling the queue with $n messages (no consumer)"
    cpu_begin
    downlink_publish "$key" "$n"
    out=$(cat "$TMP/$key/publisher.out")
    cpu_end "$n" "$(kv "$out" cpu_s)"
    [ -n "$label" ] ||
        row "AMQP publisher alone into the downlink's queue (no consumer)" "$n" \
            "$(kv "$out" rate)" "$(div "$(kv "$out" rate)" "$base")" "-" "-" "-" "-" "-" "-" \
            "$CPU_R" "-" "$CPU_ALL"
    say "downlink drain 100 B$label: draining $n messages"
    dl_mosq_start "$key"
    msub_start "$key" "$n"
    downlink_bridge_start "$key" "$bin"
    cpu_begin
    cons_wait
    l=$(grep "class=0" "$CONS_OUT" || true)
    cpu_end "$n" "$(kv "$l" cpu_s)"
    bridge_stop
    mosq_stop
    row "downlink drain 100 B (pre-filled queue -> bridge -> MQTT, prefetch $DL_PREFETCH)$label" \
        "$n" "$(kv "$l" drain_rate)" "$(div "$(kv "$l" drain_rate)" "$base")" "-" "-" "$CPU_B" \
        "$RSS_B" "$(kv "$l" lost)" "$(kv "$l" duplicated)" "$CPU_R" "$CPU_M" "$CPU_ALL"
}

# Downlinks (issue 11): direct MQTT (publisher -> Mosquitto -> subscriber) as the baseline,
# then AMQP publisher -> RabbitMQ -> bridge -> Mosquitto -> the same kind of subscriber; then
# the stages apart: the AMQP publisher alone into the queue, and the bridge draining it.
run_downlink() {
    local n=$N100 key=dmqtt out l base
    mkdir -p "$TMP/$key"
    say "direct MQTT 100 B (downlink baseline): $n messages"
    dl_mosq_start "$key"
    msub_start "$key" "$n"
    cpu_begin
    fg_run "$TMP/$key/generator.out" "$GEN" -p "$MOSQ_PORT" -n "$n" -s 100 -d "$DEVICES" \
        -w "$WINDOW" -r 0 -i "bench-gen-$key" ||
        say "generator: $(tail -n 3 "$TMP/$key/generator.out.err")"
    out=$(cat "$TMP/$key/generator.out")
    cons_wait
    l=$(grep "class=0" "$CONS_OUT" || true)
    cpu_end "$n" "$(sum "$(kv "$out" cpu_s)" "$(kv "$l" cpu_s)")"
    mosq_stop
    base=$(kv "$l" rate)
    row "direct MQTT 100 B (downlink baseline)" "$n" "$base" "1.00" "$(kv "$l" p50_ms)" \
        "$(kv "$l" p99_ms)" "-" "-" "$(kv "$l" lost)" "$(kv "$l" duplicated)" "-" "$CPU_M" \
        "$CPU_ALL"

    downlink_bridge downlink "" "$n" "$base"
    [ -z "$BRIDGE2" ] || downlink_bridge downlink-b2 " [$BRIDGE2_LABEL]" "$n" "$base" "$BRIDGE2"
    downlink_drain ddrain "" "$n" "$base"
    [ -z "$BRIDGE2" ] || downlink_drain ddrain-b2 " [$BRIDGE2_LABEL]" "$n" "$base" "$BRIDGE2"
    NOTES+=("downlink: x direct = its msg/s / direct MQTT msg/s (publisher -> Mosquitto -> subscriber, same run); the drain row divides the subscriber's drain rate by it, the publisher-alone row the publisher's confirmed rate")
    NOTES+=("downlink rows: Mosquitto max_inflight_messages ${DL_INFLIGHT:-1000 (shipped config)}")
}

run_big() {
    local key=big
    mkdir -p "$TMP/$key"
    say "big: RabbitMQ down while $BIG_N messages go into the spool"
    mosq_start "$key"
    bridge_start "$key" batch
    rabbit stop_app
    cpu_begin
    "$GEN" -p "$MOSQ_PORT" -n "$BIG_N" -d "$DEVICES" -w "$WINDOW" -i "bench-gen-big" \
        >"$TMP/$key/gen.out" 2>"$TMP/$key/gen.err" &
    GEN_PID=$!
    local samples="" next=$((BIG_N / 10)) spooled
    while alive "$GEN_PID"; do
        sleep 1
        spooled=$(bridge_stat spooled)
        if [ -n "$spooled" ] && [ "$spooled" -ge "$next" ]; then
            samples="$samples $((spooled / 1000))k:$(($(status_kb VmRSS "$BRIDGE_PID") / 1024))MiB"
            next=$((next + BIG_N / 10))
        fi
    done
    wait "$GEN_PID" || say "generator: $(tail -n 3 "$TMP/$key/gen.err")"
    GEN_PID=""
    local out acked
    out=$(cat "$TMP/$key/gen.out")
    acked=$(kv "$out" acked)
    local rss_end=$(($(status_kb VmRSS "$BRIDGE_PID") / 1024))
    cpu_end "$acked" "$(sum "$(kv "$out" cpu_s)")"
    local spool_mib
    spool_mib=$(du -sm "$BRIDGE_SPOOL" | cut -f1)
    bridge_stop
    spooled=$(bridge_stat spooled)
    # A restart on that backlog (RabbitMQ still down): recovery scans every segment.
    mv "$BRIDGE_LOG" "$BRIDGE_LOG.first"
    BRIDGE_WAIT_AMQP=0 bridge_start "$key" batch
    local rss_restart recovery
    rss_restart=$(($(status_kb VmHWM "$BRIDGE_PID") / 1024))
    recovery=$(awk '/ bridge: mqtt2amqp .* starting/ { t0 = $1 } / spool: opened/ { t1 = $1 }
        function s(t) { split(substr(t, 12, 12), a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
        END { if (t0 && t1) printf "%.1f", s(t1) - s(t0); else print "?" }' "$BRIDGE_LOG")
    bridge_stop
    mosq_stop
    rabbit start_app
    rm -rf "$BRIDGE_SPOOL"
    row "spool ${BIG_N} backlog (RabbitMQ down)" "$acked" "$(kv "$out" rate)" "-" "-" "-" \
        "$CPU_B" "$RSS_B" "$((acked - ${spooled:-0}))" "-" "$CPU_R" "$CPU_M" "$CPU_ALL"
    NOTES+=("big: bridge RSS (VmRSS) as the spool grew:${samples}; at the end ${rss_end} MiB; spool ${spool_mib} MiB on disk; msg/s is the ingest rate into the spool; lost = PUBACKed - spooled")
    row "restart on that backlog (recovery ${recovery} s)" "$acked" "-" "-" "-" "-" "-" \
        "$rss_restart.0 MiB" "-" "-" "-" "-" "-"
}

# --- main ----------------------------------------------------------------------

bench_init

# Throughput scenarios: REPEAT interleaved passes (so that a busy spell of the machine
# hits every scenario alike); each row is the pass with the median msg/s, and the
# ratios divide medians by medians.
declare -A PASS_ROWS
THROUGHPUT_KEYS=()
# keep_row KEY: moves the row just added to ROWS into KEY's passes.
keep_row() {
    local last=$((${#ROWS[@]} - 1))
    [[ " ${THROUGHPUT_KEYS[*]} " == *" $1 "* ]] || THROUGHPUT_KEYS+=("$1")
    PASS_ROWS[$1]+="${ROWS[$last]}"$'\n'
    unset "ROWS[$last]"
}
# median_row KEY: the row of KEY's median pass (by msg/s, field 3).
median_row() {
    printf '%s' "${PASS_ROWS[$1]}" | sort -t'|' -k3,3n | awk -v n="$REPEAT" 'NR == int((n + 1) / 2)'
}
rate_of() { # ROW
    cut -d'|' -f3 <<<"$1"
}

# bridge_rows KEY SIZE FSYNC COUNT LABEL BASE_RATE: the scenario with this tree's bridge
# and (M2A_BENCH_BRIDGE2) with the other binary, each kept as a throughput row; which
# goes first alternates from pass to pass, so that neither always follows the other.
bridge_rows() {
    local key=$1 label=$5
    if [ -z "$BRIDGE2" ]; then
        run_bridge "$@"
        keep_row "$key"
        return
    fi
    local mine=$BRIDGE first=0
    [ $((pass % 2)) = 1 ] || first=1
    for which in $first $((1 - first)); do
        if [ "$which" = 0 ]; then
            BRIDGE=$mine
            run_bridge "$@"
            keep_row "$key"
        else
            BRIDGE=$BRIDGE2
            run_bridge "$key-b2" "$2" "$3" "$4" "$label [$BRIDGE2_LABEL]" "$6"
            keep_row "$key-b2"
        fi
    done
    BRIDGE=$mine
}

[ -z "$BRIDGE2" ] || [ -x "$BRIDGE2" ] || die "M2A_BENCH_BRIDGE2=$BRIDGE2 is not an executable"
BASE100=0 BASE1K=0 PASS_SUFFIX=""
for pass in $(seq 1 "$REPEAT"); do
    # Every pass gets fresh directories, spools, sessions and queues.
    [ "$pass" = 1 ] || PASS_SUFFIX=-p$pass
    [ "$REPEAT" = 1 ] || say "throughput pass $pass of $REPEAT"
    if want direct100; then
        run_direct direct100 100 "$N100" "direct AMQP 100 B (baseline)" 0
        BASE100=$RATE
        keep_row direct100
    fi
    if want direct100h; then
        run_direct direct100h 100 "$N100" "direct AMQP 100 B + the bridge's headers" 0 -B
        keep_row direct100h
    fi
    BATCH100_RATE=""
    for f in batch interval never; do
        if want "${f}100"; then
            bridge_rows "${f}100" 100 "$f" "$N100" "bridge 100 B fsync $f" "$BASE100"
            [ "$f" != batch ] || BATCH100_RATE=$RATE
        fi
    done
    if want rmqcost; then
        RMQCOST_RATE=${BATCH100_RATE:-${M2A_BENCH_RMQCOST_RATE:-5000}}
        # KEY|LABEL|publisher options
        while IFS='|' read -r k label opts; do
            # shellcheck disable=SC2086 # opts are words
            run_direct "rmqcost-$k" 100 "$N100" "rmqcost at $RMQCOST_RATE/s: direct 100 B$label" \
                "$RMQCOST_RATE" $opts
            keep_row "rmqcost-$k"
        done <<'EOF'
base|, as direct100 (the control)|
mid| + message_id|-A message_id
ts| + timestamp|-A timestamp
ct| + content_type|-A content_type
topic| + x-mqtt-topic|-A x-mqtt-topic
qos| + x-mqtt-qos|-A x-mqtt-qos
retain| + x-mqtt-retain|-A x-mqtt-retain
all| + all of them|-A all
nomand|, mandatory off|-M
nodm|, no delivery_mode (transient, for scale)|-A no_delivery_mode
f1|, the bridge's frames, 1 publish per write|-F 1
f64|, the bridge's frames, 64 publishes per write|-F 64
w100|, window 100|-w 100
w10|, window 10|-w 10
bridge| + the bridge's properties, headers and frames|-A bridge -F 64
EOF
    fi
    if want peers; then
        run_peer peers-plugin100 100 "$N100" "peers: MQTT -> RabbitMQ MQTT plugin 100 B" plugin
        keep_row peers-plugin100
        run_peer peers-mosq100 100 "$N100" \
            "peers: MQTT -> Mosquitto -> its bridge -> RabbitMQ MQTT plugin 100 B" mosquitto
        keep_row peers-mosq100
    fi
    if want batch100n; then
        BRIDGE_MQTT_HEADERS=none bridge_rows batch100n 100 batch "$N100" \
            "bridge 100 B fsync batch, mqtt_headers: none" "$BASE100"
    fi
    if want routes10k; then
        for nr in 1 1000 10000; do
            BRIDGE_ROUTES=$nr bridge_rows "routes$nr" 100 batch "$N100" \
                "bridge 100 B fsync batch, $nr routes (match last)" "$BASE100"
        done
    fi
    for big in 256k:262144:$N256K 4m:4194304:$N4M; do
        IFS=: read -r tag size count <<<"$big"
        want "big$tag" || want peers || continue
        WINDOW0=$WINDOW
        WINDOW=$WINDOW_BIG
        run_direct "direct$tag" "$size" "$count" "direct AMQP $tag (baseline)" 0
        keep_row "direct$tag"
        bridge_rows "big$tag" "$size" batch "$count" "bridge $tag fsync batch" "$RATE"
        if want peers; then
            run_peer "peers-plugin$tag" "$size" "$count" "peers: MQTT -> RabbitMQ MQTT plugin $tag" \
                plugin
            keep_row "peers-plugin$tag"
            run_peer "peers-mosq$tag" "$size" "$count" \
                "peers: MQTT -> Mosquitto -> its bridge -> RabbitMQ MQTT plugin $tag" mosquitto
            keep_row "peers-mosq$tag"
        fi
        WINDOW=$WINDOW0
    done
    if want share2; then
        run_share2 share2 100 batch "$N100" "2 bridges, one share group, 100 B fsync batch" \
            "$BASE100"
        keep_row share2
    fi
    if want direct1k; then
        run_direct direct1k 1024 "$N1K" "direct AMQP 1 KiB (baseline)" 0
        BASE1K=$RATE
        keep_row direct1k
    fi
    for f in batch interval never; do
        if want "${f}1k"; then
            bridge_rows "${f}1k" 1024 "$f" "$N1K" "bridge 1 KiB fsync $f" "$BASE1K"
        fi
    done
done
BASE100=0 BASE1K=0 MAX100=0 PASS_SUFFIX=""
[ -z "${PASS_ROWS[direct100]:-}" ] || BASE100=$(rate_of "$(median_row direct100)")
[ -z "${PASS_ROWS[direct1k]:-}" ] || BASE1K=$(rate_of "$(median_row direct1k)")
[ -z "${PASS_ROWS[batch100]:-}" ] || MAX100=$(rate_of "$(median_row batch100)")
# rmq_vs_control KEY: KEY's RabbitMQ CPU per message / the rmqcost control's of the same
# pass, the median over the passes (each pass's list: "ratio,ratio,..").
rmq_vs_control() {
    paste -d'|' <(printf '%s' "${PASS_ROWS[$1]}") <(printf '%s' "${PASS_ROWS[rmqcost-base]}") |
        awk -F'|' '$11 + 0 > 0 && $24 + 0 > 0 { r[n++] = $11 / $24 }
        END {
            if (n == 0) { print "-"; exit }
            for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (r[j] < r[i]) { t = r[i]; r[i] = r[j]; r[j] = t }
            m = n % 2 ? r[(n - 1) / 2] : (r[n / 2 - 1] + r[n / 2]) / 2
            printf "%.2f", m
            if (n > 1) { printf " ("; for (i = 0; i < n; i++) printf "%s%.2f", i ? " " : "", r[i]; printf ")" }
        }'
}
RMQ_X="" RMQ_BASE=0 # RabbitMQ CPU per message x direct100's
RMQ_XC="" RMQ_CTRL=0 # and x rmqcost's control's
[ -z "${PASS_ROWS[direct100]:-}" ] || RMQ_BASE=$(median_row direct100 | cut -d'|' -f11)
[ -z "${PASS_ROWS[rmqcost-base]:-}" ] || RMQ_CTRL=$(median_row rmqcost-base | cut -d'|' -f11)
for key in "${THROUGHPUT_KEYS[@]}"; do
    r=$(median_row "$key")
    case $key in
    direct100 | direct1k | direct256k | direct4m) ratio=1.00 ;;
    big256k | big256k-b2 | peers-*256k) ratio=$(div "$(rate_of "$r")" "$(rate_of "$(median_row direct256k)")") ;;
    big4m | big4m-b2 | peers-*4m) ratio=$(div "$(rate_of "$r")" "$(rate_of "$(median_row direct4m)")") ;;
    *1k | *1k-b2) ratio=$(div "$(rate_of "$r")" "$BASE1K") ;;
    *) ratio=$(div "$(rate_of "$r")" "$BASE100") ;;
    esac
    IFS='|' read -r -a c <<<"$r"
    c[3]=$ratio
    ROWS+=("$(IFS='|' && echo "${c[*]}")")
    case $key in
    big256k* | direct256k | big4m* | direct4m | peers-*256k | peers-*4m)
        kib=256
        [[ $key != *4m* ]] || kib=4096
        NOTES+=("$(awk -v k="${c[0]}" -v r="${c[2]}" -v cpu="${c[6]}" -v kib="$kib" 'BEGIN {
            printf "%s: %.1f MB/s", k, r * kib * 1024 / 1e6
            if (cpu + 0 > 0) printf ", bridge CPU %.2f us per KiB", cpu / kib }')")
        ;;
    esac
    case $key in
    direct100h | batch100* | rmqcost-* | peers-*100)
        RMQ_X+="${RMQ_X:+, }$key $(div "${c[10]}" "$RMQ_BASE")"
        RMQ_XC+="${RMQ_XC:+, }$key $(rmq_vs_control "$key")"
        ;;
    esac
    if [ "$REPEAT" != 1 ]; then
        NOTES+=("$key: msg/s over $REPEAT passes: $(printf '%s' "${PASS_ROWS[$key]}" | cut -d'|' -f3 | sort -n | paste -sd' ')")
    fi
done

[ -z "$RMQ_X" ] || NOTES+=("RabbitMQ CPU per message x direct100's ($RMQ_BASE us, full speed): $RMQ_X")
[ "$RMQ_CTRL" = 0 ] ||
    NOTES+=("RabbitMQ CPU per message x rmqcost's control's (direct at batch100's rate; per pass, median and the passes' values): $RMQ_XC")

if want latency; then
    [ "$MAX100" != 0 ] || MAX100=${M2A_BENCH_LATENCY_MAX_RATE:-$BASE100}
    if [ "${MAX100:-0}" = 0 ]; then
        say "latency: no maximum rate measured (run batch100 or set M2A_BENCH_LATENCY_MAX_RATE); skipped"
    else
        LRATE=$((MAX100 / 2))
        LN=$((LRATE * LAT_SECS))
        run_direct latdirect 100 "$LN" "direct AMQP 100 B at ${LRATE}/s" "$LRATE"
        run_bridge latbridge 100 batch "$LN" "bridge 100 B batch at ${LRATE}/s (50%)" "$BASE100" "$LRATE"
        NOTES+=("latency: both at ${LRATE} msg/s = 50% of the bridge's measured maximum (fsync batch, 100 B)")
    fi
fi

want downlink && run_downlink

if want routes10k; then
    while read -r l; do
        NOTES+=("routes (m2a-bench-routes, no broker): $l")
    done < <("$BUILD/bench/m2a-bench-routes" 1 1000 10000)
fi

BACKLOG_INGEST=""
want drain && run_drain "$BASE100"

if want big; then
    run=0
    case $BIG in
    1) run=1 ;;
    auto)
        if [ -n "$BACKLOG_INGEST" ] && [ "${BACKLOG_INGEST:-0}" -gt 0 ]; then
            est=$((BIG_N / BACKLOG_INGEST))
            if [ $est -le $BIG_MAX_SECS ]; then
                run=1
            else
                NOTES+=("big: skipped, ~${est} s estimated at ${BACKLOG_INGEST} msg/s (> ${BIG_MAX_SECS} s); run with M2A_BENCH_BIG=1")
            fi
        else
            NOTES+=("big: skipped (no backlog ingest rate measured to estimate its length); run with M2A_BENCH_BIG=1")
        fi
        ;;
    esac
    [ $run = 0 ] || run_big
fi

# --- the table -----------------------------------------------------------------

{
    echo
    echo "mqtt2amqp benchmark, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)," \
        "tree $(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)" \
        "${BRIDGE2:+(rows marked [$BRIDGE2_LABEL]: $BRIDGE2)}"
    echo
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' scenario \
        messages "msg/s" "x direct" "p50 ms" "p99 ms" "bridge CPU us/msg" "bridge peak RSS" lost \
        duplicated "RabbitMQ CPU us/msg" "Mosquitto CPU us/msg" "all processes CPU us/msg"
    echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r -a c <<<"$r"
        printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${c[@]}"
    done
    echo
    for n in "${NOTES[@]}"; do
        echo "- $n"
    done
    echo "- total run time $((SECONDS - T0)) s"
}
