/* stats.h - the bridge's counters, shared by every thread as relaxed atomics.
 *
 * Written by the thread that owns the event (MQTT thread: received,
 * unmatched, spooled; AMQP thread: published, confirmed, returned, nacked;
 * either, through policy.c: route errors, dead letters, drops, expiries);
 * read by the stats logger and the metrics endpoint. */
#ifndef MQTT2AMQP_STATS_H
#define MQTT2AMQP_STATS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct m2a_route_stats;

struct m2a_stats {
    _Atomic uint64_t received;      /* MQTT messages received */
    _Atomic uint64_t unmatched;     /* received messages no route matched */
    _Atomic uint64_t route_errors;  /* template / routing-key failures */
    _Atomic uint64_t spooled;       /* records appended to the spool */
    _Atomic uint64_t spooled_bytes; /* their encoded size */
    _Atomic uint64_t spool_errors;  /* append/flush failures (batch not acked) */
    _Atomic uint64_t published;     /* basic.publish sent (retries included) */
    _Atomic uint64_t confirmed;     /* basic.ack received */
    _Atomic uint64_t returned;      /* basic.return received (unroutable) */
    _Atomic uint64_t nacked;        /* basic.nack received */
    /* Policies (both threads): dead_lettered counts dead letters made (sent
     * to the dead_letter exchange); dropped counts messages whose content is
     * delivered nowhere (unroutable: drop, no dead_letter section, too large
     * for the spool, spool overflow drop_oldest, expired without a dead_letter
     * section); expired counts records older than spool.max_age (each also in
     * dead_lettered or dropped). */
    _Atomic uint64_t dead_lettered;
    _Atomic uint64_t dropped;
    _Atomic uint64_t expired;
    _Atomic uint64_t mqtt_reconnects;
    _Atomic uint64_t amqp_reconnects;
    _Atomic bool mqtt_connected;
    _Atomic bool amqp_connected;
    _Atomic bool amqp_blocked; /* connection.blocked in force */
    _Atomic bool mqtt_paused;  /* reading paused, spool full */
    /* The RabbitMQ node the AMQP side is connected to: 1 + its index in the
     * config's amqp endpoints; 0 while not connected. */
    _Atomic unsigned amqp_node;
    /* Per-route counters and confirm latency (route_stats.h), owned by the
     * bridge; NULL: not kept (unit tests). Set before any thread starts. */
    struct m2a_route_stats *routes;
};

#define M2A_STAT_ADD(st, field, n)                                                                 \
    atomic_fetch_add_explicit(&(st)->field, (n), memory_order_relaxed)
#define M2A_STAT_GET(st, field)    atomic_load_explicit(&(st)->field, memory_order_relaxed)
#define M2A_STAT_SET(st, field, v) atomic_store_explicit(&(st)->field, (v), memory_order_relaxed)

#endif
