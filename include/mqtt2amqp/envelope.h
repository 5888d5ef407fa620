/* envelope.h - a message after routing: where it goes in RabbitMQ and what
 * it carries, plus its compact binary encoding (the payload of a spool
 * record).
 *
 * An envelope never owns its strings: they point into the routes' scratch
 * buffers (when produced by m2a_routes_map) or into a decode buffer (when
 * read back from the spool). */
#ifndef MQTT2AMQP_ENVELOPE_H
#define MQTT2AMQP_ENVELOPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/util.h"

#define M2A_MAX_ROUTING_KEY 255

struct m2a_str {
    const char *ptr;
    size_t len;
};

struct m2a_header {
    struct m2a_str key;
    struct m2a_str value;
};

struct m2a_envelope {
    uint64_t timestamp_ms; /* when the bridge received the MQTT message (wall clock) */
    struct m2a_str route;  /* route name */
    struct m2a_str exchange;
    struct m2a_str routing_key;
    struct m2a_str content_type; /* len 0: none */
    struct m2a_str topic;        /* original MQTT topic */
    uint8_t qos;
    bool retain;
    bool persistent;
    size_t nheaders;
    const struct m2a_header *headers; /* the route's templated headers */
    struct m2a_str body;
};

/* Appends the encoding of env to out. */
void m2a_envelope_encode(const struct m2a_envelope *env, struct m2a_buf *out);

/* Encoded size of env, without encoding it. */
size_t m2a_envelope_encoded_size(const struct m2a_envelope *env);

/* Decodes data[0..len) into env; strings point into data and headers into
 * *headers_buf, which is grown as needed (xrealloc; caller frees) with its
 * capacity in *headers_cap. Returns 0 or M2A_ERR_CORRUPT on any malformed,
 * truncated or over-long input (never reads outside data). */
int m2a_envelope_decode(const void *data, size_t len, struct m2a_envelope *env,
                        struct m2a_header **headers_buf, size_t *headers_cap);

#endif
