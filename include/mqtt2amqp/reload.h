/* reload.h - what a live reload (SIGHUP) may change, and what it may not.
 *
 * Applied on reload: routes (and the subscriptions they need), topology
 * additions (exchanges, queues and bindings declared; nothing is ever
 * deleted from RabbitMQ), log.level, log.format, log.stats_interval and
 * shutdown_timeout. Not applied: the connection settings of either side
 * (mqtt.*, amqp.* except amqp.topology, both tls sections), spool.*,
 * dead_letter.* and metrics.*; they need a restart. m2a_reload_unapplied()
 * names each such key whose value differs, so the bridge can warn.
 *
 * Pure functions over two loaded configs; no state. */
#ifndef MQTT2AMQP_RELOAD_H
#define MQTT2AMQP_RELOAD_H

#include <stddef.h>

#include "mqtt2amqp/config.h"

/* Calls cb once per key ("mqtt.port", "amqp.tls.ca_file", ...) that differs
 * between the running config and the new one and that a reload does not
 * apply, in schema order. Secrets are compared but never passed on: only
 * the key names. Returns how many keys differ. */
size_t m2a_reload_unapplied(const struct m2a_config *running, const struct m2a_config *next,
                            void (*cb)(void *ud, const char *key), void *ud);

/* Calls cb once per exchange or queue of the running topology that the new
 * one no longer declares ("exchange it.old", "queue it.old"): a reload
 * leaves them in RabbitMQ. Returns how many. */
size_t m2a_reload_removed_topology(const struct m2a_config *running, const struct m2a_config *next,
                                   void (*cb)(void *ud, const char *what), void *ud);

#endif
