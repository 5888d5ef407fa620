/* generation.h - one configuration as the bridge runs it: built once from a
 * loaded config (at start, and by each reload), immutable afterwards, and
 * shared by reference count between the threads that run it.
 *
 * A generation holds what it was built from (the config, freed with the
 * last reference) and what was compiled from it: the routes with their ids,
 * templates, policies and subscriptions; the topology to declare; the rules
 * for undeliverable messages (the dead_letter section, spool.max_age) and
 * amqp.mqtt_headers. Those last three, like every connection and spool
 * setting, are not applied by a reload: a generation built by a reload
 * takes them from the generation the process started with (copied, so no
 * generation keeps another alive).
 *
 * Threads: built on the main thread (it registers route ids). After that
 * nothing in it changes, so any thread may read it while it holds a
 * reference; references are taken and dropped from any thread. The main
 * thread, the AMQP thread and the MQTT thread each hold one to the
 * generation they run; adopting a new one drops the old one (reload.c). */
#ifndef MQTT2AMQP_GENERATION_H
#define MQTT2AMQP_GENERATION_H

#include <stdint.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/route_stats.h"
#include "mqtt2amqp/routes.h"

struct m2a_generation;

/* Builds a generation from cfg, which it takes (freed with the generation,
 * or at once on failure). start: NULL when starting, else the generation
 * the process started with, whose dead_letter, spool.max_age and
 * mqtt_headers stay. registry: where route ids come from (main thread;
 * NULL: route i has id i and no counters, for --check and --explain).
 * Returns 0 with *out holding the one reference, or an m2a_err with a
 * sentence in err. */
int m2a_generation_new(struct m2a_config *cfg, const struct m2a_generation *start,
                       struct m2a_route_stats *registry, struct m2a_generation **out, char *err,
                       size_t errlen);

/* Any thread. ref returns g; unref of the last reference frees g and the
 * config it was built from. NULL is a no-op for both. */
struct m2a_generation *m2a_generation_ref(struct m2a_generation *g);
void m2a_generation_unref(struct m2a_generation *g);

/* 1 for the first generation a process builds, then one more per build. */
uint64_t m2a_generation_number(const struct m2a_generation *g);
/* What it was built from; valid while the reference is held. */
const struct m2a_config *m2a_generation_config(const struct m2a_generation *g);
const struct m2a_routes *m2a_generation_routes(const struct m2a_generation *g);
/* The exchanges, queues and bindings to declare (the amqp section of its
 * config: only the topology of it is used). */
const struct m2a_conf_amqp *m2a_generation_topology(const struct m2a_generation *g);
/* The dead_letter section, NULL without one. */
const struct m2a_conf_dead_letter *m2a_generation_dead_letter(const struct m2a_generation *g);
uint64_t m2a_generation_max_age_ms(const struct m2a_generation *g); /* 0: off */
enum m2a_mqtt_headers m2a_generation_mqtt_headers(const struct m2a_generation *g);
/* The unroutable policy of the route with route_id; a route this
 * generation does not have (a record spooled before a reload removed it,
 * or of unknown route) gets the default, dead_letter. */
enum m2a_unroutable m2a_generation_unroutable(const struct m2a_generation *g, uint32_t route_id);

/* Process-wide: how many generations were built and how many are still
 * referenced. A running bridge keeps a small bounded number alive (the
 * start one, the running one, at most a few in flight) however many
 * reloads it takes; the reload log line shows it. */
void m2a_generation_counts(uint64_t *built, uint64_t *alive);

#endif
