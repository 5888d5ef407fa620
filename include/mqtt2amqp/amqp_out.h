/* amqp_out.h - the AMQP side: one thread, with an event loop of its own
 * (loop.h), that owns the connection to RabbitMQ (amqp_conn.h), the
 * publisher (amqp_publish.h), the confirm window (confirm_window.h), the
 * spool reader and a reference to the generation it runs.
 *
 * It connects to a node of amqp.hosts (advertising connection.blocked),
 * declares its generation's topology, enables publisher confirms and
 * publishes spool records with a window of at most confirm_window
 * unconfirmed messages. basic.ack advances the spool's committed position
 * over the contiguous confirmed prefix; basic.nack re-publishes with
 * backoff; a nack, a basic.return, an expired or unpublishable record go
 * through the undeliverable-message policy (policy.h). Heartbeats are
 * serviced even when idle. On any connection error it moves on to the next
 * node (failover.h), backing off after a round of failures, and replays
 * every unconfirmed record. It never blocks the MQTT side: they share only
 * the spool. */
#ifndef MQTT2AMQP_AMQP_OUT_H
#define MQTT2AMQP_AMQP_OUT_H

#include <stddef.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/generation.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/stats.h"

struct m2a_amqp_out;

/* Borrowed pointers (but generation): all must outlive the m2a_amqp_out. */
struct m2a_amqp_out_opts {
    const struct m2a_conf_amqp *conf; /* connection settings: never reloaded */
    /* The generation to start with: the topology declared at connect and
     * the rules for undeliverable messages (a dead letter replaces the
     * record in its window slot and is published and confirmed before the
     * slot is committed; see amqp_out.c). The thread takes a reference. */
    struct m2a_generation *generation;
    struct m2a_spool *spool;
    struct m2a_stats *stats;
    /* Records with a sequence number from here on were written by this
     * process: their route ids are this process's. Older ones are resolved
     * by route name when read (m2a_spool_get_stats' next_seq at open). */
    uint64_t trusted_from_seq;
    /* Called on the AMQP thread for each offered generation it is done
     * with: rc 0 when it runs it now (topology declared, or taken for the
     * next connect while disconnected), M2A_ERR_AMQP when the broker
     * refused its topology (why says how; the running one stays). gen is
     * borrowed: take a reference to keep it. May be NULL. */
    void (*on_generation)(void *ud, struct m2a_generation *gen, int rc, const char *why);
    void *on_generation_ud;
};

int m2a_amqp_out_start(const struct m2a_amqp_out_opts *opts, struct m2a_amqp_out **out, char *err,
                       size_t errlen);

/* Live reload (any thread; never blocks): offers the next generation (a
 * reference is taken). Within a turn (~100 ms; longer while a connect is
 * in progress, and not before RabbitMQ unblocks a blocked connection) the
 * AMQP thread declares its topology on the live channel, or takes it for
 * the next connect when disconnected, runs it from then on and answers
 * through on_generation. An offer not taken yet is replaced: the newest
 * wins. Returns true if it replaced one (which is then never answered). */
bool m2a_amqp_out_offer(struct m2a_amqp_out *ao, struct m2a_generation *gen);

/* Stops publishing new records, waits up to timeout_ms for the outstanding
 * confirms, closes the connection (within 1 s more) and joins the thread:
 * one stop deadline bounds every blocking call the thread makes. What is
 * not confirmed stays in the spool. NULL is a no-op. */
void m2a_amqp_out_stop(struct m2a_amqp_out *ao, int timeout_ms);

#endif
