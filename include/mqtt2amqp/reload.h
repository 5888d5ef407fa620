/* reload.h - a live reload (SIGHUP): builds the next generation from the
 * configuration file and hands it out, first to the AMQP thread, then,
 * once that thread runs it, to the MQTT thread; and what a reload may and
 * may not change.
 *
 * The handoff never blocks the main thread. m2a_reload_request() loads
 * and builds the generation and offers it to the AMQP thread (the newest
 * offer replaces one not taken yet: reloads arriving while one is in
 * flight are coalesced, newest wins). The AMQP thread declares its
 * topology (or takes it for the next connect) and answers through
 * m2a_reload_answer(), which queues the answer and makes m2a_reload_fd()
 * readable; the main loop polls that fd next to its signals and calls
 * m2a_reload_handle(), which hands the generation to the MQTT thread, or
 * logs the refusal. So the MQTT thread maps through a generation only
 * once the AMQP thread runs it (no record of a new route reaches RabbitMQ
 * before its exchange is declared), and a SIGTERM during a reload that
 * waits on RabbitMQ is handled at once.
 *
 * Applied on reload: routes (and the subscriptions they need), topology
 * additions (exchanges, queues and bindings declared; nothing is ever
 * deleted from RabbitMQ), each route's unroutable policy, log.level,
 * log.format, log.stats_interval and shutdown_timeout. Not applied: the
 * connection settings of either side (mqtt.*, amqp.* except
 * amqp.topology, both tls sections), spool.*, dead_letter.* and metrics.*;
 * they need a restart. m2a_reload_unapplied() names each such key whose
 * value differs, so the bridge can warn.
 *
 * Threads: everything here runs on the main thread except
 * m2a_reload_answer (the AMQP thread). */
#ifndef MQTT2AMQP_RELOAD_H
#define MQTT2AMQP_RELOAD_H

#include <stdbool.h>
#include <stddef.h>

#include "mqtt2amqp/amqp_out.h"
#include "mqtt2amqp/config.h"
#include "mqtt2amqp/generation.h"
#include "mqtt2amqp/mqtt_in.h"
#include "mqtt2amqp/route_stats.h"

struct m2a_reload;

/* start: the generation the process started with (a reference is taken):
 * what is running until a reload applies, and where the settings a reload
 * does not apply come from. registry: where route ids come from. NULL
 * with errno set if the eventfd cannot be created. */
struct m2a_reload *m2a_reload_new(struct m2a_generation *start, struct m2a_route_stats *registry);
/* NULL is a no-op. Drops every reference it holds. */
void m2a_reload_free(struct m2a_reload *r);

/* The AMQP thread's answer about an offered generation: the
 * on_generation callback of struct m2a_amqp_out_opts, with ud the
 * struct m2a_reload. Takes its own reference to gen. Any thread. */
void m2a_reload_answer(void *ud, struct m2a_generation *gen, int rc, const char *why);

/* Whom to hand generations to; both may be NULL (detached: at stop, before
 * the threads are stopped, so that nothing is handed to a thread that is
 * going away). */
void m2a_reload_attach(struct m2a_reload *r, struct m2a_amqp_out *ao, struct m2a_mqtt_in *mi);

/* SIGHUP: loads the configuration file again and offers the generation
 * built from it to the AMQP thread; a file that does not load is refused
 * (logged with its file:line:column) and the running one stays. Logs the
 * settings that changed but are not applied and the topology left behind.
 * Never waits for another thread. */
void m2a_reload_request(struct m2a_reload *r);

/* Readable (POLLIN) when answers from the AMQP thread wait. */
int m2a_reload_fd(const struct m2a_reload *r);

/* Takes the waiting answers, in order: a generation the AMQP thread runs
 * now is handed to the MQTT thread and becomes the running one ("reload
 * applied", and the log settings take effect); a refused one is logged.
 * Returns true if the running generation changed. */
bool m2a_reload_handle(struct m2a_reload *r);

/* The generation last applied (the start one until a reload applies):
 * its config has the settings the main thread uses (log, stats interval,
 * shutdown timeout). Valid until the next m2a_reload_handle. */
const struct m2a_generation *m2a_reload_running(const struct m2a_reload *r);

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
