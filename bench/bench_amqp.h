/* bench_amqp.h - what the two AMQP bench programs (amqp_pub, amqp_consume)
 * share: the broker options (-H -p -u -P -v), connecting as far as an open
 * channel, and reporting a failed RPC. */
#ifndef M2A_BENCH_AMQP_H
#define M2A_BENCH_AMQP_H

#include <stdbool.h>
#include <stdint.h>

#include <amqp.h>

struct bench_amqp_target {
    const char *host, *user, *pass, *vhost;
    int port; /* 0 until -p: required */
};

/* 127.0.0.1, guest/guest, vhost "/". */
#define BENCH_AMQP_TARGET_DEFAULTS                                                                 \
    {                                                                                              \
        .host = "127.0.0.1", .user = "guest", .pass = "guest", .vhost = "/"                        \
    }
/* The getopt letters it takes, to put in an optstring. */
#define BENCH_AMQP_TARGET_OPTS "H:p:u:P:v:"

/* Takes option c (one of BENCH_AMQP_TARGET_OPTS) into t; false for others. */
bool bench_amqp_target_opt(struct bench_amqp_target *t, int c, const char *arg);

/* Connects, logs in and opens channel; NULL on failure (said why on stderr,
 * prefixed with prog, unless quiet). */
amqp_connection_state_t bench_amqp_open(const struct bench_amqp_target *t, uint16_t channel,
                                        const char *prog, bool quiet);

/* true if the last RPC on conn succeeded; else says why on stderr. */
bool bench_amqp_rpc_ok(amqp_connection_state_t conn, const char *prog, const char *what);

#endif
