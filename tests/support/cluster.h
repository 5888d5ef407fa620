/* cluster.h - the RabbitMQ cluster of the tests that need one: N nodes on
 * loopback, started once per ctest run by the "cluster" fixture
 * (scripts/test-rabbitmq.sh cluster-start M2A_TEST_STATE/rabbitmq-cluster 3,
 * about 21 s here), which only the tests that declare FIXTURES_REQUIRED
 * cluster pay for. Members are numbered 0 .. n-1 here (r1 .. rN on disk);
 * each has its own node name, AMQP port, dist port and data dirs, and all
 * share one epmd and one Erlang cookie.
 *
 * A member can be SIGKILLed and restarted (it rejoins the cluster with its
 * data), stopped, or have its app stopped, through th_cluster_do. Everything
 * goes through scripts/test-rabbitmq.sh, which acts by recorded pid only.
 * Functions returning int give 0 or a negative enum m2a_err and print why to
 * stderr. Call from one thread. */
#ifndef M2A_TEST_CLUSTER_H
#define M2A_TEST_CLUSTER_H

#include <stdbool.h>
#include <sys/types.h>

#include "harness.h"

#define TH_CLUSTER_MAX 7

struct th_cluster {
    int n;
    char *dir;                        /* M2A_TEST_STATE/rabbitmq-cluster */
    char *node_dir[TH_CLUSTER_MAX];   /* dir/r1 .. */
    char *nodename[TH_CLUSTER_MAX];   /* rI-PID@localhost */
    int amqp_port[TH_CLUSTER_MAX];    /* 127.0.0.1 */
    pid_t server_pid[TH_CLUSTER_MAX]; /* beam.smp; 0 when stopped or killed */
    int start_seconds;                /* how long cluster-start took */
};

/* Reads the cluster's files again (every call: the verbs change pids).
 * Returns a static struct, valid until the next call, or NULL if the
 * fixture did not run. */
const struct th_cluster *th_cluster(void);
/* The same, but aborts the test (check) when there is no cluster. */
const struct th_cluster *th_cluster_get(void);
/* The AMQP port of member i. */
int th_cluster_port(int i);
/* Runs scripts/test-rabbitmq.sh VERB on member i: "kill" (SIGKILL of its
 * beam.smp), "restart" (waits until it runs again), "stop", "stop_app",
 * "start_app". Prints how long it took. */
int th_cluster_do(int i, const char *verb);
/* Restarts every member that does not run (a test that failed half-way
 * leaves one killed), then waits until member 0 sees them all running. */
int th_cluster_heal(int timeout_ms);
/* rabbitmqctl ARGS (NULL-terminated) against member i, output in r. */
int th_cluster_ctl(int i, const char *const *args, struct th_run_result *r);
/* How many members member i sees running (cluster_status), or negative. */
int th_cluster_running(int i);
/* Waits until member i sees `want` running members. */
int th_cluster_wait_running(int i, int want, int timeout_ms);

/* A quorum queue as member i reports it (rabbitmqctl list_queues). */
struct th_quorum_info {
    char leader[128]; /* node name of the leader; "" if none */
    int members;      /* replicas */
    int online;       /* replicas online */
};
/* 0 if member i lists queue as a quorum queue; M2A_ERR_AMQP otherwise. */
int th_cluster_quorum_info(int i, const char *queue, struct th_quorum_info *q);
/* The member index whose node name is `nodename`, or -1. */
int th_cluster_member(const char *nodename);

#endif
