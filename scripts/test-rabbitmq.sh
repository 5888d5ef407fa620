#!/usr/bin/env bash
# test-rabbitmq.sh - a private RabbitMQ node for the tests (and for scripts/run.sh).
#
# Usage: test-rabbitmq.sh VERB DIR [ARGS...]
#   start      fresh node: stop whatever DIR recorded, wipe DIR, pick free loopback ports,
#              start epmd + rabbitmq-server, wait until it accepts work, write DIR/env
#   stop       graceful `rabbitmqctl stop`, wait for the pid, stop epmd (no-op if stopped)
#   restart    stop (if running), then start again with the SAME node name, ports and
#              mnesia dir, so durable queues and persistent messages survive
#   kill       SIGKILL the server (fault tests); `restart` brings it back
#   stop_app   rabbitmqctl stop_app (node stays up, AMQP port closes)
#   start_app  rabbitmqctl start_app
#   ctl ARGS   run rabbitmqctl ARGS against this node
#   status     exit 0 if the recorded server pid is alive
#
# DIR/env holds shell-sourceable KEY=VALUE lines: AMQP_PORT, NODENAME, SERVER_PID, EPMD_PID,
# the ports, and the environment rabbitmqctl needs (HOME, RABBITMQ_NODENAME, ERL_EPMD_PORT, ...).
# Environment knobs: M2A_RABBIT_AMQP_PORT (preferred AMQP port, used if free),
# M2A_RABBIT_TIMEOUT (readiness deadline in seconds, default 120), M2A_RABBIT_EXTRA_CONF (a file
# of rabbitmq.conf lines, e.g. a TLS listener, copied into DIR at start and appended on every
# start and restart).
#
# Everything is killed by recorded pid; nothing is matched by name.
set -euo pipefail

RMQ_BIN=/usr/lib/rabbitmq/bin # not /usr/sbin: that wrapper su's to the rabbitmq user
TIMEOUT=${M2A_RABBIT_TIMEOUT:-120}

die() {
    echo "test-rabbitmq: $*" >&2
    exit 1
}
say() {
    echo "test-rabbitmq: $*" >&2
}

[ $# -ge 2 ] || die "usage: $0 start|stop|restart|kill|stop_app|start_app|status|ctl DIR [ARGS]"
VERB=$1
DIR=$2
shift 2
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
ENV_FILE=$DIR/env

# A zombie still answers kill -0; treat it as dead (our parent may not reap it).
alive() {
    local pid=$1 state
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [ "$state" != Z ] && [ "$state" != X ]
}

# wait_dead PID SECONDS: poll until PID is gone; 1 if still alive at the deadline.
wait_dead() {
    local pid=$1 end=$((SECONDS + $2))
    while alive "$pid"; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.1
    done
    return 0
}

port_in_use() {
    local port=$1
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Htan "sport = :$port" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
    fi
}

# Random ports below the Linux ephemeral range, so outgoing connections never take them.
TAKEN=" "
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000))
        case $TAKEN in *" $p "*) continue ;; esac
        if ! port_in_use "$p"; then
            TAKEN="$TAKEN$p "
            echo "$p"
            return 0
        fi
    done
    die "no free port found"
}

load_env() {
    [ -f "$ENV_FILE" ] || return 1
    # shellcheck disable=SC1090
    . "$ENV_FILE"
}

# Everything rabbitmq-server and rabbitmqctl need to find this node and only this node.
export_node_env() {
    export HOME="$DIR/home"
    export RABBITMQ_NODENAME="$NODENAME"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$AMQP_PORT"
    export RABBITMQ_DIST_PORT="$DIST_PORT"
    export ERL_EPMD_PORT="$EPMD_PORT"
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_MNESIA_BASE="$DIR/mnesia"
    export RABBITMQ_LOG_BASE="$DIR/log"
    export RABBITMQ_PID_FILE="$DIR/server.pid"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
    export RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config"
    export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
    # The CLI is a distributed Erlang node too; port 0 lets the kernel pick, so two
    # concurrent rabbitmqctl runs (or another RabbitMQ's CLI) never collide.
    export RABBITMQ_CTL_DIST_PORT_MIN=0
    export RABBITMQ_CTL_DIST_PORT_MAX=0
}

ctl() {
    export_node_env
    "$RMQ_BIN/rabbitmqctl" -n "$NODENAME" "$@" </dev/null
}

write_env() {
    {
        echo "# written by scripts/test-rabbitmq.sh; source it with: set -a; . $ENV_FILE; set +a"
        printf 'RABBITMQ_DIR=%q\n' "$DIR"
        printf 'NODENAME=%q\n' "$NODENAME"
        printf 'AMQP_PORT=%q\n' "$AMQP_PORT"
        printf 'DIST_PORT=%q\n' "$DIST_PORT"
        printf 'EPMD_PORT=%q\n' "$EPMD_PORT"
        printf 'SERVER_PID=%q\n' "${SERVER_PID:-}"
        printf 'WRAPPER_PID=%q\n' "${WRAPPER_PID:-}"
        printf 'EPMD_PID=%q\n' "${EPMD_PID:-}"
        printf 'START_SECONDS=%q\n' "${START_SECONDS:-}"
        echo "# environment for rabbitmqctl against this node:"
        printf 'HOME=%q\n' "$DIR/home"
        printf 'RABBITMQ_NODENAME=%q\n' "$NODENAME"
        printf 'ERL_EPMD_PORT=%q\n' "$EPMD_PORT"
        printf 'ERL_EPMD_ADDRESS=127.0.0.1\n'
        printf 'RABBITMQ_CONF_ENV_FILE=%q\n' "$DIR/rabbitmq-env.conf"
        printf 'RABBITMQ_CTL_DIST_PORT_MIN=0\nRABBITMQ_CTL_DIST_PORT_MAX=0\n'
    } >"$ENV_FILE.tmp"
    mv "$ENV_FILE.tmp" "$ENV_FILE"
}

write_config() {
    mkdir -p "$DIR/home" "$DIR/mnesia" "$DIR/log"
    : >"$DIR/enabled_plugins"
    : >"$DIR/rabbitmq-env.conf"
    echo "[]." >"$DIR/advanced.config"
    cat >"$DIR/rabbitmq.conf" <<EOF
# private test node; guest/guest may log in because it listens on 127.0.0.1 only
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
log.console = false
log.file.level = info
EOF
    if [ -f "$DIR/extra.conf" ]; then
        cat "$DIR/extra.conf" >>"$DIR/rabbitmq.conf"
    fi
    # The Erlang cookie must be private to HOME or erl refuses it.
    if [ ! -f "$DIR/home/.erlang.cookie" ]; then
        (umask 077 && printf 'm2a%s%s' "$RANDOM$RANDOM" "$$" >"$DIR/home/.erlang.cookie")
    fi
}

start_epmd() {
    EPMD_PID=""
    setsid epmd -port "$EPMD_PORT" -address 127.0.0.1 </dev/null >"$DIR/log/epmd.log" 2>&1 &
    EPMD_PID=$!
    echo "$EPMD_PID" >"$DIR/epmd.pid"
    local end=$((SECONDS + 15))
    until port_in_use "$EPMD_PORT"; do
        alive "$EPMD_PID" || die "epmd exited: $(cat "$DIR/log/epmd.log")"
        [ $SECONDS -lt $end ] || die "epmd did not listen on $EPMD_PORT"
        sleep 0.05
    done
}

# Start the node with the ports in the current variables and wait until it is ready.
start_node() {
    local t0=$SECONDS end pid=""
    write_config
    export_node_env
    start_epmd
    rm -f "$DIR/server.pid"
    # rabbitmq-server (without RABBITMQ_ALLOW_INPUT) is a sh wrapper that runs erl in the
    # background and turns SIGTERM into a clean stop; erl execs into beam.smp, whose pid
    # RabbitMQ writes to RABBITMQ_PID_FILE. We record both and signal beam.smp.
    setsid "$RMQ_BIN/rabbitmq-server" </dev/null >>"$DIR/log/server.stdout" 2>&1 &
    WRAPPER_PID=$!
    echo "$WRAPPER_PID" >"$DIR/wrapper.pid"
    SERVER_PID=""
    write_env
    end=$((SECONDS + TIMEOUT))
    while :; do
        if ! alive "$WRAPPER_PID"; then
            tail -n 30 "$DIR/log/server.stdout" >&2 || true
            die "rabbitmq-server exited during start (logs in $DIR/log)"
        fi
        [ -z "$pid" ] && [ -s "$DIR/server.pid" ] && pid=$(cat "$DIR/server.pid")
        if [ -n "$pid" ]; then
            local left=$((end - SECONDS))
            [ $left -gt 0 ] || break
            # Returns as soon as the rabbit app runs; fails fast while the node is not
            # yet registered in epmd, so the loop retries until the deadline.
            if ctl -q await_startup --timeout "$left" >>"$DIR/log/ctl.log" 2>&1; then
                SERVER_PID=$pid
                break
            fi
        fi
        [ $SECONDS -lt $end ] || break
        sleep 0.2
    done
    if [ -z "$SERVER_PID" ]; then
        tail -n 30 "$DIR/log/server.stdout" >&2 || true
        do_stop
        die "RabbitMQ not ready within ${TIMEOUT}s (logs in $DIR/log)"
    fi
    START_SECONDS=$((SECONDS - t0))
    write_env
    say "node $NODENAME ready on 127.0.0.1:$AMQP_PORT (pid $SERVER_PID) in ${START_SECONDS}s"
}

do_start_fresh() {
    # Wipe only a directory this script made (or an empty one).
    if [ ! -f "$ENV_FILE" ] && [ -n "$(ls -A "$DIR")" ]; then
        die "$DIR is not empty and has no env file: refusing to wipe it"
    fi
    do_stop
    rm -rf "$DIR"
    mkdir -p "$DIR"
    if [ -n "${M2A_RABBIT_EXTRA_CONF:-}" ]; then
        cp "$M2A_RABBIT_EXTRA_CONF" "$DIR/extra.conf"
    fi
    NODENAME="m2a-test-$$@localhost"
    AMQP_PORT=""
    if [ -n "${M2A_RABBIT_AMQP_PORT:-}" ] && ! port_in_use "$M2A_RABBIT_AMQP_PORT"; then
        AMQP_PORT=$M2A_RABBIT_AMQP_PORT
        TAKEN=" $AMQP_PORT "
    fi
    if [ -z "$AMQP_PORT" ]; then
        AMQP_PORT=$(free_port)
        TAKEN="$TAKEN$AMQP_PORT "
    fi
    DIST_PORT=$(free_port)
    TAKEN="$TAKEN$DIST_PORT "
    EPMD_PORT=$(free_port)
    start_node
}

# Kill by recorded pid only; never by name.
do_stop() {
    load_env || return 0
    local spid=${SERVER_PID:-} wpid=${WRAPPER_PID:-} epid=${EPMD_PID:-}
    [ -z "$spid" ] && [ -s "$DIR/server.pid" ] && spid=$(cat "$DIR/server.pid")
    if alive "$spid" || alive "$wpid"; then
        if alive "$spid"; then
            ctl stop >>"$DIR/log/ctl.log" 2>&1 || say "rabbitmqctl stop failed; killing"
        else
            kill -TERM "$wpid" 2>/dev/null || true
        fi
        if ! wait_dead "$spid" 60; then
            say "server pid $spid still alive; SIGKILL"
            kill -KILL "$spid" 2>/dev/null || true
            wait_dead "$spid" 10 || true
        fi
        if ! wait_dead "$wpid" 10; then
            kill -KILL "$wpid" 2>/dev/null || true
        fi
    fi
    if alive "$epid"; then
        kill -TERM "$epid" 2>/dev/null || true
        wait_dead "$epid" 10 || kill -KILL "$epid" 2>/dev/null || true
    fi
    SERVER_PID="" WRAPPER_PID="" EPMD_PID=""
    write_env
    rm -f "$DIR/epmd.pid" "$DIR/wrapper.pid"
}

do_kill() {
    load_env || die "no node recorded in $DIR"
    alive "${SERVER_PID:-}" || die "server not running"
    kill -KILL "$SERVER_PID"
    wait_dead "$SERVER_PID" 30 || die "pid $SERVER_PID survived SIGKILL"
    # The wrapper exits once beam.smp is gone; epmd stays for the restart.
    wait_dead "${WRAPPER_PID:-}" 10 || true
    say "killed server pid $SERVER_PID"
}

do_restart() {
    load_env || die "no node recorded in $DIR; use start"
    do_stop
    load_env
    port_in_use "$AMQP_PORT" && die "AMQP port $AMQP_PORT taken by someone else"
    start_node
}

case $VERB in
start) do_start_fresh ;;
stop) do_stop ;;
restart) do_restart ;;
kill) do_kill ;;
stop_app | start_app)
    load_env || die "no node recorded in $DIR"
    ctl "$VERB"
    ;;
ctl)
    load_env || die "no node recorded in $DIR"
    ctl "$@"
    ;;
status)
    load_env || exit 1
    alive "${SERVER_PID:-}"
    ;;
*) die "unknown verb $VERB" ;;
esac
