# lib.sh - what the scripts that start brokers share. Sourced (bash), never run.
#
#   processes   m2a_alive PID                      running (a zombie counts as gone)
#               m2a_wait_dead PID SECONDS          1 if still running at the deadline
#               m2a_stop_pid PID SIGNAL SECONDS    signal, wait, SIGKILL at the deadline, reap
#   ports       m2a_port_in_use PORT               any TCP socket on 127.0.0.1:PORT
#               m2a_free_port VAR                  sets VAR to a free loopback port
#               m2a_wait_port PORT SECONDS PID     until PORT accepts, or PID exits
#   Mosquitto   m2a_mosquitto_conf KIND PORT DATA_DIR   the config, on stdout
#               m2a_mosquitto_start DIR [PORT]     from the shipped config; sets MOSQ_PID, MOSQ_PORT
#               m2a_mosquitto_restart DIR          same config, port and data (sessions kept)
#               m2a_mosquitto_stop [DIR]
#   RabbitMQ    m2a_rabbit VERB DIR [ARGS]         a private node (verbs: scripts/test-rabbitmq.sh);
#                                                  `start DIR mqtt` adds the MQTT plugin (MQTT_PORT)
#               m2a_rabbit cluster-start DIR [N]   a private cluster of N nodes (DIR/r1 ..; the
#                                                  node verbs work on DIR/rI), cluster-stop DIR
#   ejabberd    m2a_ejabberd_conf PORT             an ejabberd.yml for mod_mqtt, on stdout
#               m2a_ejabberd_exec DIR PORT         becomes a private ejabberd (exec)
#   aedes       m2a_aedes_install INSTALL          the pinned npm packages into INSTALL (once)
#               m2a_aedes_exec INSTALL DIR PORT [P] becomes a private aedes (exec)
#
# Sourced by scripts/run.sh, scripts/test-rabbitmq.sh, bench/lib.sh and
# bench/soak.sh. The C test harness (tests/support/harness.c, brokers.c) calls
# m2a_mosquitto_conf, m2a_aedes_install and the _exec functions through
# `bash -c` (an _exec function becomes the broker, so the harness's child is
# the broker itself and dies with the test), so the tests, the benchmarks and run.sh start Mosquitto from one
# transformation of docker/mosquitto/mosquitto.conf: what is tested is what
# is shipped, and what is benchmarked too.
#
# Every process started here is recorded by pid and stopped by that pid;
# nothing is ever matched by name. Functions return non-zero on failure and
# say why on stderr; they do not exit the caller.
# shellcheck shell=bash

M2A_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# ---- processes -----------------------------------------------------------------

m2a_alive() {
    local stat state
    [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
    # The state follows the command name, which may hold spaces and ")".
    read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
    state=${stat##*) }
    state=${state%% *}
    [ "$state" != Z ] && [ "$state" != X ]
}

m2a_wait_dead() {
    local end=$((SECONDS + $2))
    while m2a_alive "$1"; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.1
    done
}

# Reaps PID too when it is a child of this shell.
m2a_stop_pid() {
    local pid=$1 sig=$2 secs=$3
    [ -n "$pid" ] || return 0
    if m2a_alive "$pid"; then
        kill "-$sig" "$pid" 2>/dev/null || true
        if ! m2a_wait_dead "$pid" "$secs"; then
            echo "pid $pid still running ${secs}s after SIG$sig: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
            m2a_wait_dead "$pid" 10 || echo "pid $pid survived SIGKILL" >&2
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

# m2a_stop_recorded PIDFILE MARK: stops the process PIDFILE names, left behind
# by an earlier run, if its command line still holds MARK (a path of ours):
# a recycled pid belongs to somebody else.
m2a_stop_recorded() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    if m2a_alive "$pid" && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -qF -- "$2"; then
        echo "stopping pid $pid left behind by an earlier run ($1)" >&2
        m2a_stop_pid "$pid" TERM 15
    fi
    rm -f "$1"
}

# ---- ports ---------------------------------------------------------------------

m2a_port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Htan "sport = :$1" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# Ports handed out by m2a_free_port (or claimed with m2a_take_port) in this
# shell: never the same one twice, even before anything listens on it.
M2A_TAKEN_PORTS=" "
m2a_take_port() {
    M2A_TAKEN_PORTS="$M2A_TAKEN_PORTS$1 "
}

# Random, below the Linux ephemeral range (32768-), so outgoing connections
# never take the port between here and the bind.
m2a_free_port() {
    local _m2a_p
    for _ in $(seq 1 200); do
        _m2a_p=$((20000 + RANDOM % 12000))
        case $M2A_TAKEN_PORTS in *" $_m2a_p "*) continue ;; esac
        m2a_port_in_use "$_m2a_p" && continue
        m2a_take_port "$_m2a_p"
        printf -v "$1" '%s' "$_m2a_p"
        return 0
    done
    echo "no free loopback port found" >&2
    return 1
}

m2a_wait_port() {
    local end=$((SECONDS + $2))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        m2a_alive "$3" || return 1
        [ $SECONDS -lt $end ] || return 1
        sleep 0.05
    done
}

# ---- Mosquitto -----------------------------------------------------------------

# m2a_mosquitto_conf shipped|stock PORT DATA_DIR: a Mosquitto config on stdout.
#   shipped  docker/mosquitto/mosquitto.conf with what must differ per run
#            rewritten: every listener line becomes "listener PORT 127.0.0.1"
#            (the file has one; two would collide on one port and fail
#            loudly), persistence_location becomes DATA_DIR/, and user and
#            pid_file are commented out. Everything else as shipped.
#   stock    only the listener and allow_anonymous: Mosquitto's defaults (the
#            tests that show why the shipped limits are needed).
# As root Mosquitto would switch to the mosquitto user, who cannot write our
# dirs: "user root" keeps it as it is.
m2a_mosquitto_conf() {
    local kind=$1 port=$2 data
    # DATA_DIR as a sed replacement: escape \, & and the delimiter.
    data=$(printf '%s' "$3" | sed 's/[\\&|]/\\&/g')
    case $kind in
    shipped)
        sed -e "s|^[[:space:]]*listener\([[:space:]].*\)\{0,1\}$|listener $port 127.0.0.1|" \
            -e "s|^[[:space:]]*persistence_location\([[:space:]].*\)\{0,1\}$|persistence_location $data/|" \
            -e 's/^[[:space:]]*\(user\|pid_file\)\([[:space:]].*\)\{0,1\}$/# (local) &/' \
            "$M2A_ROOT/docker/mosquitto/mosquitto.conf" || return 1
        ;;
    stock)
        printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port"
        ;;
    *)
        echo "m2a_mosquitto_conf: KIND is shipped or stock, not '$kind'" >&2
        return 2
        ;;
    esac
    [ "$(id -u)" != 0 ] || echo "user root"
}

# m2a_mosquitto_start DIR [PORT]: Mosquitto from the shipped config on
# 127.0.0.1:PORT (a free port when PORT is empty or taken), config
# DIR/mosquitto.conf, data DIR/data/, log appended to DIR/mosquitto.log, pid
# in DIR/mosquitto.pid. Waits up to 15 s until it accepts connections. Sets
# MOSQ_PID and MOSQ_PORT. In a session of its own, so a Ctrl-C meant for the
# caller does not reach it: the caller stops it, after what depends on it.
m2a_mosquitto_start() {
    local dir=$1 port=${2:-}
    MOSQ_PID="" MOSQ_PORT=""
    mkdir -p "$dir/data" || return 1
    m2a_stop_recorded "$dir/mosquitto.pid" "$dir/mosquitto.conf"
    if [ -z "$port" ] || m2a_port_in_use "$port"; then
        m2a_free_port port || return 1
    fi
    m2a_mosquitto_conf shipped "$port" "$dir/data" >"$dir/mosquitto.conf" || return 1
    # shellcheck disable=SC2034 # for the caller
    MOSQ_PORT=$port
    m2a_mosquitto_launch "$dir" "$port"
}

# m2a_mosquitto_restart DIR: stops the Mosquitto m2a_mosquitto_start started
# in DIR (if it runs) and starts it again with the same config, port and data
# (its sessions survive); waits up to 15 s. Sets MOSQ_PID. The port is not
# probed first: the connections of the stopped broker linger on it (TIME_WAIT).
m2a_mosquitto_restart() {
    local dir=$1 port
    port=$(sed -n 's/^listener \([0-9]*\) .*/\1/p' "$dir/mosquitto.conf" | head -n 1)
    [ -n "$port" ] || {
        echo "m2a_mosquitto_restart: no listener in $dir/mosquitto.conf" >&2
        return 1
    }
    m2a_mosquitto_stop
    m2a_mosquitto_launch "$dir" "$port"
}

# m2a_mosquitto_launch DIR PORT: runs mosquitto -c DIR/mosquitto.conf in a
# session of its own, records MOSQ_PID, waits until PORT accepts.
m2a_mosquitto_launch() {
    local dir=$1 port=$2
    setsid mosquitto -c "$dir/mosquitto.conf" </dev/null >>"$dir/mosquitto.log" 2>&1 &
    MOSQ_PID=$!
    echo "$MOSQ_PID" >"$dir/mosquitto.pid"
    if ! m2a_wait_port "$port" 15 "$MOSQ_PID"; then
        echo "Mosquitto did not start on 127.0.0.1:$port; last lines of $dir/mosquitto.log:" >&2
        tail -n 20 "$dir/mosquitto.log" >&2
        m2a_mosquitto_stop "$dir"
        return 1
    fi
}

# SIGTERM (Mosquitto writes its persistence file), SIGKILL after 30 s.
m2a_mosquitto_stop() {
    m2a_stop_pid "${MOSQ_PID:-}" TERM 30
    MOSQ_PID=""
    [ -z "${1:-}" ] || rm -f "$1/mosquitto.pid"
}

# ---- ejabberd (mod_mqtt) -------------------------------------------------------

# m2a_ejabberd_conf PORT: an ejabberd.yml for a private MQTT broker on
# 127.0.0.1:PORT, on stdout. mod_mqtt needs a user name on every CONNECT:
# anonymous login (login_anon) takes any name and password. The mod_mqtt
# settings are those the README's "Brokers" section recommends:
#   session_expiry  the longest session a client may ask for (default 5
#                   minutes; the bridge asks for 7 days)
#   max_queue       messages kept for a client that is away (default 5000,
#                   then the oldest are dropped)
# mod_mqtt keeps sessions in RAM tables: a restart of ejabberd loses them
# (and what they held), whatever these say.
m2a_ejabberd_conf() {
    cat <<EOF
# private test broker, written by scripts/lib.sh m2a_ejabberd_conf
hosts: [localhost]
loglevel: info
log_rotate_count: 0
listen:
  - port: $1
    ip: 127.0.0.1
    module: mod_mqtt
    backlog: 1000
auth_method: [anonymous]
anonymous_protocol: login_anon
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: all
modules:
  mod_mqtt:
    session_expiry: 7 days
    max_queue: unlimited
EOF
}

# m2a_ejabberd_exec DIR PORT: becomes (exec) an ejabberd that serves MQTT on
# 127.0.0.1:PORT with config DIR/ejabberd.yml (written when missing), Mnesia
# in DIR/spool, log DIR/log/ejabberd.log: an Erlang VM without distribution,
# so no epmd and no node name to collide with. Not through ejabberdctl,
# which would switch to the ejabberd user and look for other nodes by name.
# SIGTERM stops it cleanly. The caller records the pid (it is the VM's).
m2a_ejabberd_exec() {
    local dir=$1 port=$2
    mkdir -p "$dir/spool" "$dir/log" || return 1
    [ -f "$dir/ejabberd.yml" ] || m2a_ejabberd_conf "$port" >"$dir/ejabberd.yml" || return 1
    printf '%s\n' '{lookup,["file","native"]}.' '{host,{127,0,0,1}, ["localhost"]}.' >"$dir/inetrc"
    local ebin="" d
    for d in /usr/lib/*/ejabberd-*/ebin; do
        if [ -d "$d" ]; then
            ebin=$d
            break
        fi
    done
    [ -n "$ebin" ] || {
        echo "ejabberd is not installed (scripts/deps.sh installs it)" >&2
        return 1
    }
    cd "$dir" || return 1
    HOME=$dir EJABBERD_CONFIG_PATH=$dir/ejabberd.yml EJABBERD_LOG_PATH=$dir/log/ejabberd.log \
        ERL_LIBS=$(dirname "$(dirname "$ebin")") ERL_INETRC=$dir/inetrc \
        ERL_CRASH_DUMP=$dir/log/erl_crash.dump \
        exec erl +K true -noinput -mnesia dir "\"$dir/spool\"" -s ejabberd
}

# ---- aedes (npm) ---------------------------------------------------------------

# m2a_aedes_install DIR: installs the npm packages tests/support/aedes/
# pins (package.json and its package-lock.json: aedes, aedes-persistence-level,
# level) into DIR/node_modules with `npm ci`, unless DIR already holds that
# lockfile's install, and copies broker.js beside them. Under a lock, so
# concurrent callers install once. Needs Node.js 20 or later and npm.
m2a_aedes_install() {
    local dir=$1 src=$M2A_ROOT/tests/support/aedes
    mkdir -p "$dir" || return 1
    command -v npm >/dev/null 2>&1 || {
        echo "m2a_aedes_install: npm not found (Node.js 20 or later is needed)" >&2
        return 1
    }
    (
        flock -w 300 9 || {
            echo "m2a_aedes_install: $dir/.lock busy for 300 s" >&2
            exit 1
        }
        cp "$src/broker.js" "$dir/broker.js" || exit 1
        if cmp -s "$src/package-lock.json" "$dir/installed-lock.json" &&
            [ -d "$dir/node_modules/aedes" ]; then
            exit 0
        fi
        rm -f "$dir/installed-lock.json"
        cp "$src/package.json" "$src/package-lock.json" "$dir/" || exit 1
        echo "m2a_aedes_install: npm ci in $dir" >&2
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error </dev/null >npm.log 2>&1) || {
            tail -n 20 "$dir/npm.log" >&2
            exit 1
        }
        cp "$src/package-lock.json" "$dir/installed-lock.json"
    ) 9>"$dir/.lock"
}

# m2a_aedes_exec INSTALL DIR PORT [memory|level]: becomes (exec) aedes on
# 127.0.0.1:PORT, from what m2a_aedes_install put in INSTALL. Sessions in
# memory (default: kept while aedes runs), or with `level` in the LevelDB
# DIR/db (kept across restarts, but it loses QoS 1 messages under a burst:
# README, "Brokers"). SIGTERM closes it cleanly.
m2a_aedes_exec() {
    local install=$1 dir=$2 port=$3 persistence=${4:-memory}
    [ -f "$install/broker.js" ] || {
        echo "m2a_aedes_exec: no install in $install (m2a_aedes_install)" >&2
        return 1
    }
    mkdir -p "$dir" && cd "$dir" || return 1
    exec node "$install/broker.js" "$port" "$dir/db" "$persistence"
}

# ---- RabbitMQ ------------------------------------------------------------------

# m2a_rabbit VERB DIR [ARGS]: runs scripts/test-rabbitmq.sh, in a process of
# its own: a node's environment (HOME, RABBITMQ_*, ERL_*) is exported for
# rabbitmq-server and rabbitmqctl and must not leak into the caller, and the
# node code relies on errexit, which bash ignores in a function called from
# an `||` list.
m2a_rabbit() {
    "$M2A_ROOT/scripts/test-rabbitmq.sh" "$@"
}

# What follows runs only inside that process (m2a_rabbit_main).
M2A_RMQ_BIN=/usr/lib/rabbitmq/bin # not /usr/sbin: that wrapper su's to the rabbitmq user

m2a_rabbit_die() {
    echo "test-rabbitmq: $*" >&2
    exit 1
}
m2a_rabbit_say() {
    echo "test-rabbitmq: $*" >&2
}

m2a_rabbit_load_env() {
    [ -f "$RMQ_ENV" ] || return 1
    # shellcheck disable=SC1090
    . "$RMQ_ENV"
}

# Everything rabbitmq-server and rabbitmqctl need to find this node and only this node.
m2a_rabbit_export_env() {
    export HOME="$RMQ_DIR/home"
    export RABBITMQ_NODENAME="$NODENAME"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$AMQP_PORT"
    export RABBITMQ_DIST_PORT="$DIST_PORT"
    export ERL_EPMD_PORT="$EPMD_PORT"
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_MNESIA_BASE="$RMQ_DIR/mnesia"
    export RABBITMQ_LOG_BASE="$RMQ_DIR/log"
    export RABBITMQ_PID_FILE="$RMQ_DIR/server.pid"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_DIR/enabled_plugins"
    export RABBITMQ_CONFIG_FILE="$RMQ_DIR/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$RMQ_DIR/advanced.config"
    export RABBITMQ_CONF_ENV_FILE="$RMQ_DIR/rabbitmq-env.conf"
    # The CLI is a distributed Erlang node too; port 0 lets the kernel pick, so two
    # concurrent rabbitmqctl runs (or another RabbitMQ's CLI) never collide.
    export RABBITMQ_CTL_DIST_PORT_MIN=0
    export RABBITMQ_CTL_DIST_PORT_MAX=0
}

m2a_rabbit_ctl() {
    m2a_rabbit_export_env
    "$M2A_RMQ_BIN/rabbitmqctl" -n "$NODENAME" "$@" </dev/null
}

m2a_rabbit_write_env() {
    {
        echo "# written by scripts/test-rabbitmq.sh; source it with: set -a; . $RMQ_ENV; set +a"
        printf 'RABBITMQ_DIR=%q\n' "$RMQ_DIR"
        printf 'NODENAME=%q\n' "$NODENAME"
        # a member of the cluster in CLUSTER_DIR (cluster-start), on its epmd
        printf 'CLUSTER_DIR=%q\n' "${CLUSTER_DIR:-}"
        printf 'EPMD_SHARED=%q\n' "${EPMD_SHARED:-}"
        printf 'AMQP_PORT=%q\n' "$AMQP_PORT"
        printf 'DIST_PORT=%q\n' "$DIST_PORT"
        printf 'EPMD_PORT=%q\n' "$EPMD_PORT"
        printf 'SERVER_PID=%q\n' "${SERVER_PID:-}"
        printf 'WRAPPER_PID=%q\n' "${WRAPPER_PID:-}"
        printf 'EPMD_PID=%q\n' "${EPMD_PID:-}"
        printf 'START_SECONDS=%q\n' "${START_SECONDS:-}"
        printf 'MQTT_PORT=%q\n' "${MQTT_PORT:-}"
        echo "# environment for rabbitmqctl against this node:"
        printf 'HOME=%q\n' "$RMQ_DIR/home"
        printf 'RABBITMQ_NODENAME=%q\n' "$NODENAME"
        printf 'ERL_EPMD_PORT=%q\n' "$EPMD_PORT"
        printf 'ERL_EPMD_ADDRESS=127.0.0.1\n'
        printf 'RABBITMQ_CONF_ENV_FILE=%q\n' "$RMQ_DIR/rabbitmq-env.conf"
        printf 'RABBITMQ_CTL_DIST_PORT_MIN=0\nRABBITMQ_CTL_DIST_PORT_MAX=0\n'
    } >"$RMQ_ENV.tmp"
    mv "$RMQ_ENV.tmp" "$RMQ_ENV"
}

# Ports, dirs, an empty enabled-plugins file (no management plugin: a
# private node starts in seconds), and DIR/extra.conf appended if present.
m2a_rabbit_write_config() {
    mkdir -p "$RMQ_DIR/home" "$RMQ_DIR/mnesia" "$RMQ_DIR/log"
    : >"$RMQ_DIR/enabled_plugins"
    : >"$RMQ_DIR/rabbitmq-env.conf"
    echo "[]." >"$RMQ_DIR/advanced.config"
    cat >"$RMQ_DIR/rabbitmq.conf" <<EOF
# private test node; guest/guest may log in because it listens on 127.0.0.1 only
listeners.tcp.default = 127.0.0.1:$AMQP_PORT
log.console = false
log.file.level = info
EOF
    if [ -n "${MQTT_PORT:-}" ]; then
        echo "[rabbitmq_mqtt]." >"$RMQ_DIR/enabled_plugins"
        m2a_rabbit_mqtt_conf "$MQTT_PORT" >>"$RMQ_DIR/rabbitmq.conf"
    fi
    if [ -f "$RMQ_DIR/extra.conf" ]; then
        cat "$RMQ_DIR/extra.conf" >>"$RMQ_DIR/rabbitmq.conf"
    fi
    # The Erlang cookie must be private to HOME or erl refuses it. The nodes
    # of a cluster share one (CLUSTER_DIR/cookie), or they cannot talk.
    if [ ! -f "$RMQ_DIR/home/.erlang.cookie" ]; then
        if [ -n "${CLUSTER_DIR:-}" ]; then
            (umask 077 && cp "$CLUSTER_DIR/cookie" "$RMQ_DIR/home/.erlang.cookie")
        else
            (umask 077 && printf 'm2a%s%s' "$RANDOM$RANDOM" "$$" >"$RMQ_DIR/home/.erlang.cookie")
        fi
    fi
}

m2a_rabbit_start_epmd() {
    EPMD_PID=""
    setsid epmd -port "$EPMD_PORT" -address 127.0.0.1 </dev/null >"$RMQ_DIR/log/epmd.log" 2>&1 &
    EPMD_PID=$!
    echo "$EPMD_PID" >"$RMQ_DIR/epmd.pid"
    local end=$((SECONDS + 15))
    until m2a_port_in_use "$EPMD_PORT"; do
        m2a_alive "$EPMD_PID" || m2a_rabbit_die "epmd exited: $(cat "$RMQ_DIR/log/epmd.log")"
        [ $SECONDS -lt $end ] || m2a_rabbit_die "epmd did not listen on $EPMD_PORT"
        sleep 0.05
    done
}

# m2a_rabbit_mqtt_conf PORT: the rabbitmq.conf lines of the MQTT plugin, as the
# README's "Brokers" section recommends them (RabbitMQ 3.10: MQTT 3.1.1 only).
#   prefetch          QoS 1 messages in flight to one subscriber (the plugin's
#                     default 10 caps a bridge at one round trip per 10 messages)
#   subscription_ttl  how long the session queue of a client that is away lives;
#                     the default is 24 h, here 7 days, the bridge's session_expiry
#   allow_anonymous   on a loopback test node; give the bridge a user elsewhere
m2a_rabbit_mqtt_conf() {
    printf '%s\n' "mqtt.listeners.tcp.default = 127.0.0.1:$1" \
        "mqtt.allow_anonymous = true" \
        "mqtt.prefetch = ${M2A_RABBIT_MQTT_PREFETCH:-1000}" \
        "mqtt.subscription_ttl = 604800000"
}

# Starts the node with the ports in the current variables and waits until it is ready.
m2a_rabbit_start_node() {
    local t0=$SECONDS end pid=""
    m2a_rabbit_write_config
    m2a_rabbit_export_env
    if [ -n "${EPMD_SHARED:-}" ]; then
        # The cluster's epmd (cluster-start started it; stopped by cluster-stop).
        m2a_port_in_use "$EPMD_PORT" || m2a_rabbit_die "the cluster's epmd is not listening on $EPMD_PORT"
    else
        m2a_rabbit_start_epmd
    fi
    rm -f "$RMQ_DIR/server.pid"
    # rabbitmq-server (without RABBITMQ_ALLOW_INPUT) is a sh wrapper that runs erl in the
    # background and turns SIGTERM into a clean stop; erl execs into beam.smp, whose pid
    # RabbitMQ writes to RABBITMQ_PID_FILE. We record both and signal beam.smp.
    setsid "$M2A_RMQ_BIN/rabbitmq-server" </dev/null >>"$RMQ_DIR/log/server.stdout" 2>&1 &
    WRAPPER_PID=$!
    echo "$WRAPPER_PID" >"$RMQ_DIR/wrapper.pid"
    SERVER_PID=""
    m2a_rabbit_write_env
    end=$((SECONDS + RMQ_TIMEOUT))
    while :; do
        if ! m2a_alive "$WRAPPER_PID"; then
            tail -n 30 "$RMQ_DIR/log/server.stdout" >&2 || true
            m2a_rabbit_die "rabbitmq-server exited during start (logs in $RMQ_DIR/log)"
        fi
        [ -z "$pid" ] && [ -s "$RMQ_DIR/server.pid" ] && pid=$(cat "$RMQ_DIR/server.pid")
        if [ -n "$pid" ]; then
            local left=$((end - SECONDS))
            [ $left -gt 0 ] || break
            # Returns as soon as the rabbit app runs; fails fast while the node is not
            # yet registered in epmd, so the loop retries until the deadline.
            if m2a_rabbit_ctl -q await_startup --timeout "$left" >>"$RMQ_DIR/log/ctl.log" 2>&1; then
                SERVER_PID=$pid
                break
            fi
        fi
        [ $SECONDS -lt $end ] || break
        sleep 0.2
    done
    if [ -z "$SERVER_PID" ]; then
        tail -n 30 "$RMQ_DIR/log/server.stdout" >&2 || true
        m2a_rabbit_stop
        m2a_rabbit_die "RabbitMQ not ready within ${RMQ_TIMEOUT}s (logs in $RMQ_DIR/log)"
    fi
    START_SECONDS=$((SECONDS - t0))
    m2a_rabbit_write_env
    m2a_rabbit_say "node $NODENAME ready on 127.0.0.1:$AMQP_PORT${MQTT_PORT:+ (MQTT on $MQTT_PORT)} (pid $SERVER_PID) in ${START_SECONDS}s"
}

m2a_rabbit_start_fresh() {
    if m2a_rabbit_load_env && [ -n "${CLUSTER_DIR:-}" ]; then
        m2a_rabbit_die "$RMQ_DIR is a member of the cluster in $CLUSTER_DIR: restart it, or cluster-start $CLUSTER_DIR"
    fi
    # Wipe only a directory this script made (or an empty one).
    if [ ! -f "$RMQ_ENV" ] && [ -n "$(ls -A "$RMQ_DIR")" ]; then
        m2a_rabbit_die "$RMQ_DIR is not empty and has no env file: refusing to wipe it"
    fi
    m2a_rabbit_stop
    rm -rf "$RMQ_DIR"
    mkdir -p "$RMQ_DIR"
    if [ -n "${M2A_RABBIT_EXTRA_CONF:-}" ]; then
        cp "$M2A_RABBIT_EXTRA_CONF" "$RMQ_DIR/extra.conf"
    fi
    NODENAME="m2a-test-$$@localhost"
    AMQP_PORT=""
    if [ -n "${M2A_RABBIT_AMQP_PORT:-}" ] && ! m2a_port_in_use "$M2A_RABBIT_AMQP_PORT"; then
        AMQP_PORT=$M2A_RABBIT_AMQP_PORT
        m2a_take_port "$AMQP_PORT"
    fi
    [ -n "$AMQP_PORT" ] || m2a_free_port AMQP_PORT || m2a_rabbit_die "no free port"
    m2a_free_port DIST_PORT || m2a_rabbit_die "no free port"
    m2a_free_port EPMD_PORT || m2a_rabbit_die "no free port"
    MQTT_PORT=""
    local opt
    for opt in "$@"; do
        case $opt in
        mqtt) m2a_free_port MQTT_PORT || m2a_rabbit_die "no free port" ;;
        *) m2a_rabbit_die "start: unknown option '$opt' (known: mqtt)" ;;
        esac
    done
    m2a_rabbit_start_node
}

# By recorded pid only; never by name.
m2a_rabbit_stop() {
    m2a_rabbit_load_env || return 0
    local spid=${SERVER_PID:-} wpid=${WRAPPER_PID:-} epid=${EPMD_PID:-}
    [ -z "$spid" ] && [ -s "$RMQ_DIR/server.pid" ] && spid=$(cat "$RMQ_DIR/server.pid")
    if m2a_alive "$spid" || m2a_alive "$wpid"; then
        if m2a_alive "$spid"; then
            m2a_rabbit_ctl stop >>"$RMQ_DIR/log/ctl.log" 2>&1 ||
                m2a_rabbit_say "rabbitmqctl stop failed; killing"
        else
            kill -TERM "$wpid" 2>/dev/null || true
        fi
        if ! m2a_wait_dead "$spid" 60; then
            m2a_rabbit_say "server pid $spid still alive; SIGKILL"
            kill -KILL "$spid" 2>/dev/null || true
            m2a_wait_dead "$spid" 10 || true
        fi
        if ! m2a_wait_dead "$wpid" 10; then
            kill -KILL "$wpid" 2>/dev/null || true
        fi
    fi
    m2a_stop_pid "$epid" TERM 10
    SERVER_PID="" WRAPPER_PID="" EPMD_PID=""
    m2a_rabbit_write_env
    rm -f "$RMQ_DIR/epmd.pid" "$RMQ_DIR/wrapper.pid"
}

m2a_rabbit_kill() {
    m2a_rabbit_load_env || m2a_rabbit_die "no node recorded in $RMQ_DIR"
    m2a_alive "${SERVER_PID:-}" || m2a_rabbit_die "server not running"
    kill -KILL "$SERVER_PID"
    m2a_wait_dead "$SERVER_PID" 30 || m2a_rabbit_die "pid $SERVER_PID survived SIGKILL"
    # The wrapper exits once beam.smp is gone; epmd stays for the restart.
    m2a_wait_dead "${WRAPPER_PID:-}" 10 || true
    m2a_rabbit_say "killed server pid $SERVER_PID"
}

m2a_rabbit_restart() {
    m2a_rabbit_load_env || m2a_rabbit_die "no node recorded in $RMQ_DIR; use start"
    m2a_rabbit_stop
    m2a_rabbit_load_env
    m2a_port_in_use "$AMQP_PORT" && m2a_rabbit_die "AMQP port $AMQP_PORT taken by someone else"
    m2a_rabbit_start_node
}

# ---- a RabbitMQ cluster --------------------------------------------------------
#
# DIR/cluster.env (NODES, NODE_DIRS, NODENAMES, AMQP_PORTS, EPMD_PORT, EPMD_PID,
# START_SECONDS) and one node dir per member, DIR/r1 .. DIR/rN, each an
# ordinary node dir (its own env file): `kill DIR/r2`, `restart DIR/r2`,
# `stop DIR/r2`, `ctl DIR/r1 ARGS` work on one member. The members share one
# epmd (started here, on a port of its own: nodes find each other through
# it) and one Erlang cookie (DIR/cookie, copied into every member's HOME,
# which rabbitmqctl uses too).

m2a_rabbit_cluster_load() {
    [ -f "$CLU_DIR/cluster.env" ] || return 1
    # shellcheck disable=SC1091
    . "$CLU_DIR/cluster.env"
}

m2a_rabbit_cluster_write() {
    {
        echo "# written by scripts/test-rabbitmq.sh cluster-start; members in r1 .. r$NODES"
        printf 'NODES=%q\n' "$NODES"
        printf 'NODE_DIRS=%q\n' "$NODE_DIRS"
        printf 'NODENAMES=%q\n' "$NODENAMES"
        printf 'AMQP_PORTS=%q\n' "$AMQP_PORTS"
        printf 'EPMD_PORT=%q\n' "$EPMD_PORT"
        printf 'EPMD_PID=%q\n' "${EPMD_PID:-}"
        printf 'START_SECONDS=%q\n' "${START_SECONDS:-}"
    } >"$CLU_DIR/cluster.env.tmp"
    mv "$CLU_DIR/cluster.env.tmp" "$CLU_DIR/cluster.env"
}

# Runs in a subshell of its own (the node's exported environment stays there).
m2a_rabbit_cluster_member() {
    RMQ_DIR=$1 NODENAME=$2 AMQP_PORT=$3 DIST_PORT=$4
    RMQ_ENV=$RMQ_DIR/env
    CLUSTER_DIR=$CLU_DIR EPMD_SHARED=1 EPMD_PID=""
    mkdir -p "$RMQ_DIR"
    m2a_rabbit_start_node
}

# Runs rabbitmqctl against member dir $1 (in a subshell: the exports stay there).
m2a_rabbit_cluster_ctl() {
    (
        RMQ_DIR=$1 RMQ_ENV=$1/env
        shift
        m2a_rabbit_load_env
        m2a_rabbit_ctl "$@"
    )
}

# The members rabbitmqctl cluster_status on member dir $1 lists as running.
m2a_rabbit_cluster_running() {
    m2a_rabbit_cluster_ctl "$1" -q cluster_status --formatter json 2>/dev/null |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("running_nodes", [])))' \
            2>/dev/null || echo 0
}

m2a_rabbit_cluster_start() {
    local n=${1:-3} i t0=$SECONDS pids=() first rc=0 dir end
    case $n in '' | *[!0-9]* | 0 | 1) m2a_rabbit_die "cluster-start: N is 2 or more, not '$n'" ;; esac
    if [ ! -f "$CLU_DIR/cluster.env" ] && [ -n "$(ls -A "$CLU_DIR")" ]; then
        m2a_rabbit_die "$CLU_DIR is not empty and has no cluster.env: refusing to wipe it"
    fi
    m2a_rabbit_cluster_stop
    rm -rf "$CLU_DIR"
    mkdir -p "$CLU_DIR"
    (umask 077 && printf 'm2a%s%s' "$RANDOM$RANDOM$RANDOM" "$$" >"$CLU_DIR/cookie")
    NODES=$n NODE_DIRS="" NODENAMES="" AMQP_PORTS=""
    # Every port is picked here, before the members start in parallel
    # subshells that would not see each other's picks.
    local amqp=() dist=()
    m2a_free_port EPMD_PORT || m2a_rabbit_die "no free port"
    for i in $(seq 1 "$n"); do
        m2a_free_port "amqp[$i]" || m2a_rabbit_die "no free port"
        m2a_free_port "dist[$i]" || m2a_rabbit_die "no free port"
        NODE_DIRS="$NODE_DIRS${NODE_DIRS:+ }$CLU_DIR/r$i"
        NODENAMES="$NODENAMES${NODENAMES:+ }r$i-$$@localhost"
        AMQP_PORTS="$AMQP_PORTS${AMQP_PORTS:+ }${amqp[$i]}"
    done
    RMQ_DIR=$CLU_DIR
    mkdir -p "$CLU_DIR/log"
    m2a_rabbit_start_epmd
    mv "$CLU_DIR/epmd.pid" "$CLU_DIR/cluster-epmd.pid"
    m2a_rabbit_cluster_write
    # All members start at once (standalone), then r2..rN join r1: on two
    # cores three nodes start in about the time of two one after the other.
    for i in $(seq 1 "$n"); do
        (m2a_rabbit_cluster_member "$CLU_DIR/r$i" "r$i-$$@localhost" "${amqp[$i]}" "${dist[$i]}") &
        pids+=($!)
    done
    for i in "${!pids[@]}"; do
        wait "${pids[$i]}" || rc=1
    done
    if [ $rc != 0 ]; then
        m2a_rabbit_cluster_stop
        m2a_rabbit_die "cluster-start: a member did not start (logs in $CLU_DIR/r*/log)"
    fi
    first="r1-$$@localhost"
    for i in $(seq 2 "$n"); do
        dir=$CLU_DIR/r$i
        if ! { m2a_rabbit_cluster_ctl "$dir" stop_app &&
            m2a_rabbit_cluster_ctl "$dir" join_cluster "$first" &&
            m2a_rabbit_cluster_ctl "$dir" start_app &&
            m2a_rabbit_cluster_ctl "$dir" -q await_startup --timeout 120; } >>"$dir/log/ctl.log" 2>&1; then
            tail -n 20 "$dir/log/ctl.log" >&2 || true
            m2a_rabbit_cluster_stop
            m2a_rabbit_die "cluster-start: r$i did not join $first (logs in $dir/log)"
        fi
    done
    end=$((SECONDS + 60))
    until [ "$(m2a_rabbit_cluster_running "$CLU_DIR/r1")" = "$n" ]; do
        if [ $SECONDS -ge $end ]; then
            m2a_rabbit_cluster_ctl "$CLU_DIR/r1" cluster_status >&2 || true
            m2a_rabbit_cluster_stop
            m2a_rabbit_die "cluster-start: r1 does not see $n running members"
        fi
        sleep 0.2
    done
    START_SECONDS=$((SECONDS - t0))
    m2a_rabbit_cluster_write
    m2a_rabbit_say "cluster of $n ready in ${START_SECONDS}s: $NODENAMES on 127.0.0.1 ports $AMQP_PORTS"
}

# Stops every member (in parallel), then the epmd. No-op when nothing runs.
m2a_rabbit_cluster_stop() {
    local d pids=()
    m2a_rabbit_cluster_load || return 0
    for d in $NODE_DIRS; do
        [ -f "$d/env" ] || continue
        (RMQ_DIR=$d RMQ_ENV=$d/env && m2a_rabbit_stop) &
        pids+=($!)
    done
    for d in "${pids[@]}"; do
        wait "$d" || true
    done
    m2a_stop_pid "${EPMD_PID:-}" TERM 10
    EPMD_PID=""
    rm -f "$CLU_DIR/cluster-epmd.pid"
    m2a_rabbit_cluster_write
}

# m2a_rabbit_main VERB DIR [ARGS]: the body of scripts/test-rabbitmq.sh.
m2a_rabbit_main() {
    [ $# -ge 2 ] ||
        m2a_rabbit_die "usage: test-rabbitmq.sh start|stop|restart|kill|stop_app|start_app|status|ctl DIR [ARGS]"
    local verb=$1
    RMQ_TIMEOUT=${M2A_RABBIT_TIMEOUT:-120}
    mkdir -p "$2"
    RMQ_DIR=$(cd "$2" && pwd)
    RMQ_ENV=$RMQ_DIR/env
    shift 2
    case $verb in
    start) m2a_rabbit_start_fresh "$@" ;;
    stop) m2a_rabbit_stop ;;
    restart) m2a_rabbit_restart ;;
    kill) m2a_rabbit_kill ;;
    stop_app | start_app)
        m2a_rabbit_load_env || m2a_rabbit_die "no node recorded in $RMQ_DIR"
        m2a_rabbit_ctl "$verb"
        ;;
    ctl)
        m2a_rabbit_load_env || m2a_rabbit_die "no node recorded in $RMQ_DIR"
        m2a_rabbit_ctl "$@"
        ;;
    status)
        m2a_rabbit_load_env || exit 1
        m2a_alive "${SERVER_PID:-}"
        ;;
    cluster-start | cluster-stop | cluster-status)
        # DIR holds the cluster: cluster.env, the cookie, the epmd, r1 .. rN.
        CLU_DIR=$RMQ_DIR
        case $verb in
        cluster-start) m2a_rabbit_cluster_start "$@" ;;
        cluster-stop) m2a_rabbit_cluster_stop ;;
        cluster-status)
            m2a_rabbit_cluster_load || m2a_rabbit_die "no cluster recorded in $CLU_DIR"
            m2a_rabbit_cluster_ctl "$CLU_DIR/r1" cluster_status
            ;;
        esac
        ;;
    *) m2a_rabbit_die "unknown verb $verb" ;;
    esac
}
