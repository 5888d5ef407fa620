/* route_stats.h - per-route counters and the confirm latency histogram: the
 * figures behind the metrics endpoint that the global counters (stats.h)
 * cannot give.
 *
 * A registry maps route names to blocks of relaxed atomic counters. The main
 * thread registers every route of a config before the routes reach the MQTT
 * thread (at start and on reload); a route keeps its block for the life of
 * the process even when a reload removes it, so its counters never go back
 * (Prometheus counters must not). Lookups by name are lock-free from any
 * thread (the envelope, and so the spool record, carries the route's name):
 * blocks never move and are published with release stores.
 *
 * Counting rules, one event once:
 *   matched        MQTT thread: the route matched a message (mapping errors included)
 *   published      AMQP thread: basic.publish sent (re-publishes included)
 *   confirmed      AMQP thread: basic.ack received
 *   returned       AMQP thread: basic.return received (also counted confirmed:
 *                  the broker acks a returned message)
 *   dead_lettered  a dead letter was made of one of the route's messages
 *   dropped        given up without a dead letter: mapping error, too large
 *                  for the spool, unpublishable, drop policy */
#ifndef MQTT2AMQP_ROUTE_STATS_H
#define MQTT2AMQP_ROUTE_STATS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

/* Routes beyond this many distinct names are bridged but not counted. */
#define M2A_ROUTE_STATS_MAX 1024

struct m2a_route_counters {
    _Atomic uint64_t matched;
    _Atomic uint64_t published;
    _Atomic uint64_t confirmed;
    _Atomic uint64_t returned;
    _Atomic uint64_t dead_lettered;
    _Atomic uint64_t dropped;
};

/* Adds n to field of a block that may be NULL (route not counted). */
#define M2A_ROUTE_ADD(ctr, field, n)                                                               \
    do {                                                                                           \
        if (ctr)                                                                                   \
            atomic_fetch_add_explicit(&(ctr)->field, (n), memory_order_relaxed);                   \
    } while (0)

/* Confirm latency (basic.publish to basic.ack) histogram: upper bounds in
 * seconds of the finite buckets; one more bucket counts the rest (+Inf). */
#define M2A_LATENCY_BUCKETS 14
extern const double m2a_latency_bounds_s[M2A_LATENCY_BUCKETS];

/* A consistent-enough copy for exposition (each field read atomically). */
struct m2a_latency_snapshot {
    uint64_t bucket[M2A_LATENCY_BUCKETS + 1]; /* per bucket, not cumulative */
    uint64_t count;
    uint64_t sum_us;
};

struct m2a_route_stats;

struct m2a_route_stats *m2a_route_stats_new(void);
/* NULL is a no-op. No thread may use it any more. */
void m2a_route_stats_free(struct m2a_route_stats *rs);

/* Main thread only. The block for name, registered if new (name is
 * copied); NULL when M2A_ROUTE_STATS_MAX names are registered. */
struct m2a_route_counters *m2a_route_stats_register(struct m2a_route_stats *rs, const char *name);

/* Any thread. The block for name[0..len), or NULL if rs is NULL or the name
 * is not registered. */
struct m2a_route_counters *m2a_route_stats_find(struct m2a_route_stats *rs, const char *name,
                                                size_t len);

/* Any thread: the registered names in registration order, for exposition.
 * Entries below the count returned stay valid and never change. */
size_t m2a_route_stats_count(const struct m2a_route_stats *rs);
const char *m2a_route_stats_name(const struct m2a_route_stats *rs, size_t i);
struct m2a_route_counters *m2a_route_stats_at(struct m2a_route_stats *rs, size_t i);

/* Any thread (the AMQP thread in practice); rs may be NULL. */
void m2a_latency_observe(struct m2a_route_stats *rs, uint64_t us);
void m2a_latency_get(const struct m2a_route_stats *rs, struct m2a_latency_snapshot *out);

#endif
