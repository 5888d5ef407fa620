/* flow.h - traffic that keeps flowing while a test injects a fault: a
 * publisher thread sending numbered QoS 1 messages in chunks until told to
 * stop, and a bridge start that waits until both sides are up.
 *
 * The publisher thread owns its own libmosquitto handles (one connection per
 * chunk); the test thread only reads its counters. */
#ifndef M2A_TEST_FLOW_H
#define M2A_TEST_FLOW_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "harness.h"

struct th_flow {
    int port;
    const char *const *topics;
    size_t ntopics;
    long chunk;                      /* messages per chunk */
    long max;                        /* never publish more than this many in total */
    int protocol;                    /* 0/4: 3.1.1, 5: MQTT 5 */
    const char *username, *password; /* NULL: none; not copied */
    long rate; /* at most this many messages a second; 0: as fast as acknowledged */
    /* state, read by the test thread */
    _Atomic long published; /* acknowledged by Mosquitto: seqs 0 .. published-1 */
    _Atomic bool stop;
    _Atomic bool failed; /* a chunk came back incomplete */
    pthread_t thread;
};

/* Starts publishing chunk after chunk (seq 0, 1, 2 ...), paced to `rate`
 * if set (a broker that delivers slower than it accepts would otherwise
 * build a backlog the test then waits for). */
void th_flow_start(struct th_flow *f);
/* Asks the thread to finish its current chunk and joins it. Returns the
 * number of messages Mosquitto acknowledged (all of seq 0 .. n-1). */
long th_flow_stop(struct th_flow *f);
/* Waits until at least n messages were acknowledged. */
int th_flow_wait_published(struct th_flow *f, long n, int timeout_ms);

/* th_bridge_start, then waits for "mqtt: subscribed to" and
 * "amqp: connected to" in this run's log. */
int th_bridge_start_ready(struct th_bridge *b, int timeout_ms);

/* Collects messages from c into out until `want` distinct seqs are present,
 * reconnecting (and re-consuming queue) when the connection drops, e.g.
 * while RabbitMQ restarts. *c may be replaced. */
int th_amqp_collect_reconnecting(struct th_amqp **c, const char *queue, struct th_msgs *out,
                                 size_t want, int timeout_ms);
/* The same against one of several nodes (a cluster): a lost connection is
 * made again to the next port of ports[0 .. nports), in turn. */
int th_amqp_collect_reconnecting_to(struct th_amqp **c, const int *ports, size_t nports,
                                    const char *queue, struct th_msgs *out, size_t want,
                                    int timeout_ms);

#endif
