/* downlink.h - the downlinks (AMQP -> MQTT): one thread that consumes the
 * configured queues from RabbitMQ and publishes each message to the MQTT
 * topic its downlink's template gives (downlink_topic.h).
 *
 * Its own connections: an AMQP connection (not the uplink's: a flood of
 * commands must not stall the uplink's publishing, nor the reverse) and an
 * MQTT session with a client id of its own (mqtt.downlink_client_id,
 * default client_id + "-down"; clean session), never the uplink's
 * libmosquitto handle, whose PUBACK ordering the uplink's guarantee needs.
 *
 * Guarantee: a message is acknowledged to RabbitMQ (basic.ack) only after
 * the MQTT broker PUBACKed it (QoS 1), or after it was written to the
 * socket (QoS 0). At least once; in order per downlink while nothing
 * fails. Each downlink's prefetch bounds what is in flight. A message whose
 * topic cannot be formed, or whose PUBLISH the broker refuses, is rejected
 * without requeue (basic.reject: to the queue's x-dead-letter-exchange, if
 * it has one), counted and logged. While the MQTT session is down nothing
 * is consumed: the AMQP connection is closed, and RabbitMQ redelivers what
 * was not acknowledged.
 *
 * Threads: start and stop run on the caller's (main) thread; everything
 * else on the downlink thread. The config must outlive the downlink; the
 * counters are stats->downlinks. */
#ifndef MQTT2AMQP_DOWNLINK_H
#define MQTT2AMQP_DOWNLINK_H

#include <stddef.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/stats.h"

struct m2a_downlink;

/* Starts the thread for cfg's downlinks (cfg->ndownlinks > 0; borrowed,
 * as is stats, whose downlinks array has cfg->ndownlinks entries). Returns
 * 0 or an m2a_err with a sentence in err. */
int m2a_downlink_start(const struct m2a_config *cfg, struct m2a_stats *stats,
                       struct m2a_downlink **out, char *err, size_t errlen);

/* Asks the thread to stop (no wait): it consumes nothing more, waits up to
 * timeout_ms for the PUBACKs of what is in flight, acknowledges those and
 * closes both connections. NULL is a no-op. */
void m2a_downlink_request_stop(struct m2a_downlink *d, int timeout_ms);

/* Requests a stop (if not requested yet), waits for the thread and frees.
 * NULL is a no-op. */
void m2a_downlink_stop(struct m2a_downlink *d, int timeout_ms);

#endif
