/* metrics.h - the operators' HTTP endpoint: Prometheus text on /metrics,
 * liveness on /healthz, readiness on /readyz.
 *
 * Served by libmicrohttpd from a thread of its own; it only reads what the
 * other threads publish (the counters in struct m2a_stats and the
 * per-route registry, the spool's stats under its lock, the main loop's
 * heartbeat). Started after the signal mask is set, like every thread.
 *
 *   /healthz  200 "ok" while the main loop turns (heartbeat newer than
 *             M2A_HEALTH_STALL_MS), else 503 naming the stall.
 *   /readyz   200 "ready" when both sides are connected, the MQTT broker
 *             grants every subscription and the spool is below its
 *             high-water mark (90% of max_bytes, where MQTT reads pause),
 *             else 503 with one reason a line.
 *   /metrics  the exposition (m2a_metrics_render). */
#ifndef MQTT2AMQP_METRICS_H
#define MQTT2AMQP_METRICS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/stats.h"
#include "mqtt2amqp/util.h"

#define M2A_HEALTH_STALL_MS 10000

/* The HTTP server's connection limit (the README's Health endpoints say
 * it), lowered so that M2A_METRICS_FD_RESERVE descriptors of RLIMIT_NOFILE
 * stay for the spool, the brokers' sockets and TLS files. */
#define M2A_METRICS_MAX_CONNECTIONS 512
#define M2A_METRICS_FD_RESERVE      128

/* Borrowed pointers: all must outlive the m2a_metrics. */
struct m2a_metrics_opts {
    const char *listen;      /* "HOST:PORT", HOST a name or address ([v6] in brackets) */
    struct m2a_stats *stats; /* with ->routes for the per-route series */
    struct m2a_spool *spool;
    uint64_t spool_max_bytes;
    _Atomic uint64_t *heartbeat_ms; /* m2a_now_ms() of the main loop's last turn */
    /* The brokers of each side's list (stats->mqtt_endpoint and
     * stats->amqp_node index them): mqtt2amqp_broker_connected has a series
     * for each. NULL / 0: none. */
    const struct m2a_conf_endpoint *mqtt_endpoints;
    size_t mqtt_nendpoints;
    const struct m2a_conf_endpoint *amqp_nodes;
    size_t namqp_nodes;
};

struct m2a_metrics;

/* Binds opts->listen (so a taken port fails the start with a sentence in
 * err) and starts serving. */
int m2a_metrics_start(const struct m2a_metrics_opts *opts, struct m2a_metrics **out, char *err,
                      size_t errlen);
/* Stops serving and closes the socket. NULL is a no-op. */
void m2a_metrics_stop(struct m2a_metrics *m);

/* The connection limit for an open-file limit of nofile (UINT64_MAX: none):
 * M2A_METRICS_MAX_CONNECTIONS when it leaves M2A_METRICS_FD_RESERVE spare,
 * else what does, and a quarter of nofile (at least 4) when even that
 * cannot be had. */
unsigned m2a_metrics_connection_limit(uint64_t nofile);

/* Any thread: appends the Prometheus text exposition (format 0.0.4). */
void m2a_metrics_render(const struct m2a_metrics_opts *opts, struct m2a_buf *out);
/* Any thread: true when ready; else false with the reasons, one a line. */
bool m2a_metrics_ready(const struct m2a_metrics_opts *opts, char *why, size_t len);

#endif
