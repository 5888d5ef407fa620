#!/usr/bin/env bash
# test-rabbitmq.sh - a private RabbitMQ node for the tests, scripts/run.sh and
# the benchmarks (the code is m2a_rabbit_main in scripts/lib.sh).
#
# Usage: test-rabbitmq.sh VERB DIR [ARGS...]
#   start [mqtt]  fresh node: stop whatever DIR recorded, wipe DIR, pick free loopback ports,
#              start epmd + rabbitmq-server, wait until it accepts work, write DIR/env;
#              with `mqtt`, also the MQTT plugin on a port of its own (MQTT_PORT in DIR/env,
#              settings: m2a_rabbit_mqtt_conf in lib.sh), kept by restart
#   stop       graceful `rabbitmqctl stop`, wait for the pid, stop epmd (no-op if stopped)
#   restart    stop (if running), then start again with the SAME node name, ports and
#              mnesia dir, so durable queues and persistent messages survive
#   kill       SIGKILL the server (fault tests); `restart` brings it back
#   stop_app   rabbitmqctl stop_app (node stays up, AMQP port closes)
#   start_app  rabbitmqctl start_app
#   ctl ARGS   run rabbitmqctl ARGS against this node
#   status     exit 0 if the recorded server pid is alive
#   cluster-start [N]  a fresh cluster of N nodes (default 3) in DIR: members DIR/r1 .. DIR/rN
#              (node names rI-PID@localhost, ports of their own, one epmd, one Erlang cookie)
#              start in parallel, then r2 .. rN `join_cluster` r1; waits until r1 sees N running
#              members; writes DIR/cluster.env (NODES, NODE_DIRS, NODENAMES, AMQP_PORTS,
#              EPMD_PORT, EPMD_PID, START_SECONDS). The verbs above work on one member:
#              `kill DIR/r2`, `restart DIR/r2` (it rejoins), `ctl DIR/r1 ARGS`.
#   cluster-stop       stop every member, then the cluster's epmd
#   cluster-status     rabbitmqctl cluster_status on r1
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
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
m2a_rabbit_main "$@"
