/* amqp_out.h - the AMQP side: one thread that owns the rabbitmq-c
 * connection, the confirm window and the spool reader.
 *
 * It connects (advertising connection.blocked), declares the topology,
 * enables publisher confirms and publishes spool records with a window of
 * at most confirm_window unconfirmed messages. basic.ack advances the
 * spool's committed position over the contiguous confirmed prefix;
 * basic.nack re-publishes with backoff; basic.return is counted and logged.
 * Heartbeats are serviced even when idle. On any connection error it
 * reconnects with backoff and jitter and replays every unconfirmed record.
 * It never blocks the MQTT side: they share only the spool. */
#ifndef MQTT2AMQP_AMQP_OUT_H
#define MQTT2AMQP_AMQP_OUT_H

#include <stddef.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/stats.h"

struct m2a_amqp_out;

/* Borrowed pointers: all must outlive the m2a_amqp_out. */
struct m2a_amqp_out_opts {
    const struct m2a_conf_amqp *conf;
    struct m2a_spool *spool;
    struct m2a_stats *stats;
    /* Policies; zero: no dead_letter section, every route unroutable:
     * dead_letter (so dropped), records never expire. A dead letter replaces
     * the record in its window slot and is published and confirmed before
     * the slot is committed (see amqp_out.c). */
    const struct m2a_conf_dead_letter *dead_letter; /* NULL or !enabled: none */
    const struct m2a_conf_route *routes;            /* for each route's unroutable policy */
    size_t nroutes;
    uint64_t max_age_ms; /* spool.max_age; 0: off */
};

int m2a_amqp_out_start(const struct m2a_amqp_out_opts *opts, struct m2a_amqp_out **out, char *err,
                       size_t errlen);

/* Live reload (main thread): the topology of `topology` (its exchanges,
 * queues and bindings; its connection settings are ignored) and the
 * routes' unroutable policies. At its next turn (within ~100 ms) the AMQP
 * thread declares the topology on the live channel, or takes it for the
 * next connect when disconnected, and uses both from then on; a refused
 * topology is not taken. Borrowed: both must outlive the m2a_amqp_out.
 * Returns a ticket for m2a_amqp_out_reload_result. */
uint64_t m2a_amqp_out_reload(struct m2a_amqp_out *ao, const struct m2a_conf_amqp *topology,
                             const struct m2a_conf_route *routes, size_t nroutes);
/* M2A_ERR_AGAIN until the thread took the reload `ticket`; then 0, or
 * M2A_ERR_AMQP with the broker's refusal in err (the previous topology and
 * policies stay; the refusal closed the channel, so it reconnects). */
int m2a_amqp_out_reload_result(struct m2a_amqp_out *ao, uint64_t ticket, char *err, size_t errlen);

/* Stops publishing new records, waits up to timeout_ms for the outstanding
 * confirms, closes the connection and joins the thread. What is not
 * confirmed stays in the spool. NULL is a no-op. */
void m2a_amqp_out_stop(struct m2a_amqp_out *ao, int timeout_ms);

#endif
