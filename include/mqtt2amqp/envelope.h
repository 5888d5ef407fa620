/* envelope.h - a message after routing: where it goes in RabbitMQ and what
 * it carries, plus its compact binary encoding (the payload of a spool
 * record).
 *
 * An envelope never owns its strings: they point into the routes' scratch
 * buffers (when produced by m2a_routes_map) or into a decode buffer (when
 * read back from the spool).
 *
 * The route travels as an id (route_stats.h), which is what the two threads
 * join on, and as a name, which is what a record written by an earlier
 * process can be resolved by (ids are process-local) and what dead letters
 * and log lines show. */
#ifndef MQTT2AMQP_ENVELOPE_H
#define MQTT2AMQP_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/util.h"

#define M2A_MAX_ROUTING_KEY 255
/* The route id of an envelope whose route is not known (yet): a record of
 * an earlier process before it is resolved, or a route never registered. */
#define M2A_ROUTE_NONE UINT32_MAX

struct m2a_str {
    const char *ptr;
    size_t len;
};

struct m2a_header {
    struct m2a_str key;
    struct m2a_str value;
};

struct m2a_envelope {
    uint32_t route_id;     /* the route's id in this process, or M2A_ROUTE_NONE */
    uint64_t timestamp_ms; /* when the bridge received the MQTT message (wall clock) */
    struct m2a_str route;  /* route name */
    struct m2a_str exchange;
    struct m2a_str routing_key;
    struct m2a_str content_type; /* len 0: none */
    struct m2a_str topic;        /* original MQTT topic */
    uint8_t qos;
    bool retain;
    bool persistent;
    bool dead_letter; /* a dead letter (carries x-death-reason): never dead-lettered again */
    size_t nheaders;
    const struct m2a_header *headers; /* the route's templated headers */
    /* Reserved for the MQTT 5 properties of issue 11: carried through the
     * spool (and into dead letters) unchanged, never interpreted here; len
     * 0 (the only value written today): none. */
    struct m2a_str properties;
    struct m2a_str body;
};

/* Appends the encoding of env (the current version, 2) to out. */
void m2a_envelope_encode(const struct m2a_envelope *env, struct m2a_buf *out);

/* Appends the encoding of env but for the body's bytes, which follow it
 * (env->body.len of them; the body is the last field): the spool writes a
 * large body from where it is. */
void m2a_envelope_encode_head(const struct m2a_envelope *env, struct m2a_buf *out);
/* Encoded size of env, without encoding it. */
size_t m2a_envelope_encoded_size(const struct m2a_envelope *env);

/* Decodes data[0..len), version 2 or 1 (written before route ids: route_id
 * is M2A_ROUTE_NONE and dead_letter is read from the x-death-reason
 * header), into env; strings point into data and headers into
 * *headers_buf, which is grown as needed (xrealloc; caller frees) with its
 * capacity in *headers_cap. Returns 0 or M2A_ERR_CORRUPT on any malformed,
 * truncated or over-long input (never reads outside data). */
int m2a_envelope_decode(const void *data, size_t len, struct m2a_envelope *env,
                        struct m2a_header **headers_buf, size_t *headers_cap);

/* Rewrites the route id of an encoded envelope in place: 0, or
 * M2A_ERR_CORRUPT when data is not a version 2 encoding (re-encode a
 * version 1 one instead). Nothing else is checked or changed. */
int m2a_envelope_set_route_id(void *data, size_t len, uint32_t route_id);

#endif
