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
};

int m2a_amqp_out_start(const struct m2a_amqp_out_opts *opts, struct m2a_amqp_out **out, char *err,
                       size_t errlen);

/* Stops publishing new records, waits up to timeout_ms for the outstanding
 * confirms, closes the connection and joins the thread. What is not
 * confirmed stays in the spool. NULL is a no-op. */
void m2a_amqp_out_stop(struct m2a_amqp_out *ao, int timeout_ms);

#endif
