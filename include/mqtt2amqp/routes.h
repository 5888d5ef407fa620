/* routes.h - the mapping engine: compiled routes (ids, templates, each
 * route's unroutable policy) and the subscriptions they need.
 *
 * m2a_routes_compile() turns the config's routes into an immutable table,
 * shared read-only; it is part of a generation (generation.h), which a
 * reload replaces as a whole. Mapping a message uses a per-thread scratch
 * (struct m2a_routes_scratch) so the hot path allocates nothing once the scratch
 * has grown.
 *
 * Templates: "{topic}" is the whole topic converted like the default routing
 * key ('/' -> '.', '.' -> '/'); "{1}".."{9}" are the levels the route's
 * wildcards matched, converted the same way (a '#' capture joins its levels
 * with '.'). "{{" and "}}" are literal braces. */
#ifndef MQTT2AMQP_ROUTES_H
#define MQTT2AMQP_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/route_stats.h"

struct m2a_routes;
struct m2a_routes_scratch;

/* An MQTT message as received. Nothing is copied. */
struct m2a_mqtt_msg {
    const char *topic;
    size_t topic_len;
    const void *payload;
    size_t payload_len;
    int qos;
    bool retain;
    uint64_t timestamp_ms; /* wall clock */
};

/* Validates a template against a filter with ncaptures wildcards: 0, or
 * M2A_ERR_TEMPLATE with a sentence in err (unknown placeholder, capture
 * number above ncaptures, unbalanced brace). */
int m2a_routes_template_check(const char *tmpl, int ncaptures, char *err, size_t errlen);

/* Builds the table from a validated config. Copies what it needs: cfg may be
 * freed afterwards. With a registry (main thread only) every route name is
 * registered there once the table compiled, and each route carries its id
 * and its counters; without one (--check, --explain, tests) route i has id
 * i and no counters. Returns 0 or an m2a_err with a sentence in err. */
int m2a_routes_compile(const struct m2a_config *cfg, struct m2a_route_stats *registry,
                       struct m2a_routes **out, char *err, size_t errlen);
void m2a_routes_free(struct m2a_routes *routes);

size_t m2a_routes_count(const struct m2a_routes *routes);
/* Route i (i < count): its name, id, counters (NULL: not counted) and its
 * answer to basic.return. */
const char *m2a_routes_name(const struct m2a_routes *routes, size_t i);
uint32_t m2a_routes_id(const struct m2a_routes *routes, size_t i);
struct m2a_route_counters *m2a_routes_counters(const struct m2a_routes *routes, size_t i);
enum m2a_unroutable m2a_routes_unroutable(const struct m2a_routes *routes, size_t i);
/* The index of the route with id route_id, or -1 when no route of this
 * table has it (removed by a reload, or M2A_ROUTE_NONE). O(1). */
long m2a_routes_find(const struct m2a_routes *routes, uint32_t route_id);

/* The filters to subscribe to: the routes' filters reduced to a set in which
 * no two overlap (a filter covered by another is dropped; two partially
 * overlapping filters are replaced by one that covers both), so that the
 * broker delivers each message once even with overlapping routes. */
size_t m2a_routes_nsubscriptions(const struct m2a_routes *routes);
const char *m2a_routes_subscription(const struct m2a_routes *routes, size_t i);

struct m2a_routes_scratch *m2a_routes_scratch_new(void);
void m2a_routes_scratch_free(struct m2a_routes_scratch *s);

/* err of a route that skips retained messages (retained: skip) for a
 * message with the retain flag: env is complete, nothing is to be sent; the
 * caller counts it and acknowledges the message. Positive: not an m2a_err. */
#define M2A_ROUTES_SKIPPED 1

/* Called once per matching route, in route order. On success err is 0 and
 * env is complete (M2A_ROUTES_SKIPPED: see above). On a mapping failure
 * err is M2A_ERR_KEY_TOO_LONG or M2A_ERR_TEMPLATE and env has route (id and
 * name), exchange, topic, body and flags set but routing_key/headers may be
 * partial. env and its strings are valid only during the call. */
typedef void (*m2a_route_cb)(void *ud, size_t route_index, const struct m2a_envelope *env, int err);

/* Maps msg through the routes: first match wins unless that route has
 * continue: true. Returns the number of routes that matched (0: none). */
size_t m2a_routes_map(const struct m2a_routes *routes, const struct m2a_mqtt_msg *msg,
                      struct m2a_routes_scratch *scratch, m2a_route_cb cb, void *ud);

/* The reference for m2a_routes_map: the same contract, computed by trying
 * every route's filter in order (cost grows with the number of routes).
 * Kept for the differential tests and the fuzz target; not for the hot path. */
size_t m2a_routes_map_linear(const struct m2a_routes *routes, const struct m2a_mqtt_msg *msg,
                             struct m2a_routes_scratch *scratch, m2a_route_cb cb, void *ud);

#endif
