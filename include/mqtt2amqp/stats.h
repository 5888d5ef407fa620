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
#include <stddef.h>
#include <stdint.h>

struct m2a_route_stats;

/* A short text one thread writes and others read whole, without a lock:
 * a sequence lock over atomic bytes (a reader retries while a write is in
 * progress, so it never sees half of one). For the few facts that are text
 * (which subscriptions the broker refuses, for /readyz). */
#define M2A_STATS_NOTE_MAX 1024
struct m2a_stats_note {
    _Atomic uint32_t seq; /* odd while a write is in progress */
    _Atomic unsigned char text[M2A_STATS_NOTE_MAX];
};

/* One downlink's counters (downlink.c writes them, the stats line and
 * /metrics read them). */
struct m2a_downlink_counters {
    const char *name;           /* the config's downlink name, borrowed */
    _Atomic uint64_t received;  /* basic.deliver from its queue */
    _Atomic uint64_t published; /* handed to the MQTT session (again after a redelivery) */
    _Atomic uint64_t acked;     /* basic.ack sent after the broker's PUBACK (QoS 0: the write) */
    _Atomic uint64_t rejected; /* basic.reject without requeue: topic not formed, PUBLISH refused */
    _Atomic uint64_t inflight; /* gauge: published, not yet acknowledged */
};

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
    /* Retained messages acknowledged and not forwarded: a route's
     * retained: skip, and (MQTT 3.1.1) resends of retained state the session
     * already had (mqtt.retained_resend: skip). */
    _Atomic uint64_t retained_skipped;
    _Atomic uint64_t retained_resends;
    _Atomic uint64_t mqtt_reconnects;
    _Atomic uint64_t amqp_reconnects;
    _Atomic bool mqtt_connected;
    _Atomic bool amqp_connected;
    _Atomic bool amqp_blocked; /* connection.blocked in force */
    _Atomic bool mqtt_paused;  /* reading paused, spool full */
    /* The RabbitMQ node the AMQP side is connected to: 1 + its index in the
     * config's amqp endpoints; 0 while not connected. */
    _Atomic unsigned amqp_node;
    /* The MQTT side (mqtt_in.c): the broker in use, as 1 + its index in
     * mqtt.endpoints (0: none); SUBACK failures received, and how many
     * subscriptions the broker refuses now (named in mqtt_refused, one
     * "mqtt: ..." line each); connections lost to a suspected take-over
     * (another client with the same client id). */
    _Atomic uint32_t mqtt_endpoint;
    _Atomic uint64_t mqtt_subscribe_refusals;
    _Atomic uint32_t mqtt_subscriptions_refused;
    _Atomic uint64_t mqtt_takeovers;
    struct m2a_stats_note mqtt_refused;
    /* Per-route counters and confirm latency (route_stats.h), owned by the
     * bridge; NULL: not kept (unit tests). Set before any thread starts. */
    struct m2a_route_stats *routes;
    /* The downlinks (downlink.c), one per config downlink, in config
     * order; NULL / 0 without downlinks. Set before any thread starts. */
    struct m2a_downlink_counters *downlinks;
    size_t ndownlinks;
    _Atomic bool downlink_mqtt_connected;
    _Atomic bool downlink_amqp_connected;
};

#define M2A_STAT_ADD(st, field, n)                                                                 \
    atomic_fetch_add_explicit(&(st)->field, (n), memory_order_relaxed)
#define M2A_STAT_GET(st, field)    atomic_load_explicit(&(st)->field, memory_order_relaxed)
#define M2A_STAT_SET(st, field, v) atomic_store_explicit(&(st)->field, (v), memory_order_relaxed)

/* Writer (one thread per note): replaces the text (cut to fit). */
static inline void m2a_stats_note_set(struct m2a_stats_note *n, const char *text)
{
    uint32_t seq = atomic_load_explicit(&n->seq, memory_order_relaxed);
    atomic_store_explicit(&n->seq, seq + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    size_t i = 0;
    for (; text[i] && i + 1 < M2A_STATS_NOTE_MAX; i++)
        atomic_store_explicit(&n->text[i], (unsigned char)text[i], memory_order_relaxed);
    atomic_store_explicit(&n->text[i], 0, memory_order_relaxed);
    atomic_store_explicit(&n->seq, seq + 2, memory_order_release);
}

/* Any thread: copies the text into out (NUL-terminated; "" if a writer
 * kept changing it). */
static inline void m2a_stats_note_get(struct m2a_stats_note *n, char *out, size_t len)
{
    for (int tries = 0; len && tries < 100; tries++) {
        uint32_t before = atomic_load_explicit(&n->seq, memory_order_acquire);
        size_t i = 0;
        for (; i + 1 < len && i + 1 < M2A_STATS_NOTE_MAX; i++)
            if (!(out[i] = (char)atomic_load_explicit(&n->text[i], memory_order_relaxed)))
                break;
        out[i] = '\0';
        atomic_thread_fence(memory_order_acquire);
        if (!(before & 1) && atomic_load_explicit(&n->seq, memory_order_relaxed) == before)
            return;
    }
    if (len)
        out[0] = '\0';
}

#endif
