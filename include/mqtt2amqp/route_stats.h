/* route_stats.h - the process's registry of routes: one id per route name,
 * stable for the life of the process, with that route's counters; and the
 * confirm latency histogram. The figures behind the metrics endpoint that
 * the global counters (stats.h) cannot give.
 *
 * Ids: the main thread registers every route of a generation when it is
 * built (at start and on reload); a name keeps its id, and its counters,
 * for the life of the process even when a reload removes the route, so
 * counters never go back (Prometheus counters must not) and a record
 * spooled under a removed route still finds them. Ids are dense (0, 1, ...
 * in registration order) and are what envelopes carry: the AMQP thread
 * finds a record's counters by id without a lock or a hash. They are
 * process-local, so a record written by an earlier process is resolved by
 * name (m2a_route_stats_lookup), once, when it is read.
 *
 * Ids are not limited by the metrics: M2A_ROUTE_IDS_MAX names per process
 * (a reload renaming 10,000 routes 400 times would reach it); only the
 * first M2A_ROUTE_STATS_MAX names are exposed as metric series.
 *
 * Counting rules, one event once:
 *   matched        MQTT thread: the route matched a message (mapping errors included)
 *   published      AMQP thread: basic.publish sent (re-publishes included)
 *   confirmed      AMQP thread: basic.ack received
 *   returned       AMQP thread: basic.return received (also counted confirmed:
 *                  the broker acks a returned message)
 *   dead_lettered  a dead letter was made of one of the route's messages
 *   dropped        given up without a dead letter: no dead_letter section,
 *                  too large for the spool, unpublishable, drop policy
 *   retained_skipped  a retained message the route's retained: skip declined
 *                  (also counted matched; acknowledged, never sent) */
#ifndef MQTT2AMQP_ROUTE_STATS_H
#define MQTT2AMQP_ROUTE_STATS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/envelope.h" /* M2A_ROUTE_NONE: no route (never registered, or full) */

/* Routes beyond this many distinct names are bridged and counted, but have
 * no metric series. */
#define M2A_ROUTE_STATS_MAX 1024
/* Distinct route names one process can register. */
#define M2A_ROUTE_IDS_MAX (1u << 22)

struct m2a_route_counters {
    _Atomic uint64_t matched;
    _Atomic uint64_t published;
    _Atomic uint64_t confirmed;
    _Atomic uint64_t returned;
    _Atomic uint64_t dead_lettered;
    _Atomic uint64_t dropped;
    _Atomic uint64_t retained_skipped; /* MQTT thread: retained message skipped (retained: skip) */
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

/* Main thread only. The id of name (copied), registered if new;
 * M2A_ROUTE_NONE once M2A_ROUTE_IDS_MAX names are registered. */
uint32_t m2a_route_stats_register(struct m2a_route_stats *rs, const char *name);

/* Any thread (takes a mutex: for the rare record of an earlier process).
 * The id of name[0..len), or M2A_ROUTE_NONE if rs is NULL or the name was
 * never registered. */
uint32_t m2a_route_stats_lookup(struct m2a_route_stats *rs, const char *name, size_t len);

/* Any thread, lock-free. The counters and the name of route id, or NULL
 * when rs is NULL or id is not registered (M2A_ROUTE_NONE included). Both
 * stay valid and in place for the registry's life. */
struct m2a_route_counters *m2a_route_stats_at(struct m2a_route_stats *rs, uint32_t id);
const char *m2a_route_stats_name(const struct m2a_route_stats *rs, uint32_t id);

/* Any thread: how many routes have metric series, ids 0 .. count-1 (the
 * first M2A_ROUTE_STATS_MAX registered). */
size_t m2a_route_stats_count(const struct m2a_route_stats *rs);

/* Any thread (the AMQP thread in practice); rs may be NULL. */
void m2a_route_stats_observe_latency(struct m2a_route_stats *rs, uint64_t us);
void m2a_route_stats_latency(const struct m2a_route_stats *rs, struct m2a_latency_snapshot *out);

#endif
