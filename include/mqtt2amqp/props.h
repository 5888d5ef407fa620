/* props.h - MQTT 5 properties <-> AMQP 0-9-1 properties and headers: the one
 * place the mapping lives, both directions, following RabbitMQ's MQTT
 * plugin (rabbitmq-server deps/rabbitmq_mqtt/src/mc_mqtt.erl) so that
 * workers written for the plugin work unchanged. README "MQTT 5 properties"
 * has the table and where we differ.
 *
 * Uplink (MQTT -> AMQP) in three steps, because the properties cross the
 * spool between the two threads:
 *   1. m2a_props_from_mqtt (MQTT thread): the mappable properties of a
 *      PUBLISH, already filtered and canonical, as a compact versioned blob
 *      (the envelope's `properties`, envelope.h);
 *   2. m2a_props_decode (AMQP thread): the blob read back, trusting no
 *      length (it comes from disk);
 *   3. m2a_props_to_amqp: what the publish carries (expiration with the
 *      remaining time, correlation_id, content_type, headers).
 * Downlink (AMQP -> MQTT): m2a_props_to_mqtt.
 *
 * Pure functions: no logging, no I/O, no shared state. */
#ifndef MQTT2AMQP_PROPS_H
#define MQTT2AMQP_PROPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <mosquitto.h>

#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/util.h"

/* m2a_props.present bits */
#define M2A_PROPS_EXPIRY         0x01 /* Message Expiry Interval */
#define M2A_PROPS_CONTENT_TYPE   0x02 /* Content Type (ASCII, <= 255 bytes) */
#define M2A_PROPS_RESPONSE_TOPIC 0x04 /* Response Topic (MQTT form) */
#define M2A_PROPS_CORRELATION    0x08 /* Correlation Data (any bytes) */

/* The largest AMQP expiration RabbitMQ accepts (its Erlang timer limit,
 * about 49.7 days): a larger one is a channel error, so it is clamped. */
#define M2A_PROPS_EXPIRATION_MAX_MS 4294967295u

/* The mappable MQTT 5 properties of one message, decoded. Strings point into
 * the blob they were decoded from; user properties into the caller's
 * array (m2a_props_decode). */
struct m2a_props {
    unsigned present; /* M2A_PROPS_* */
    uint32_t expiry_s;
    struct m2a_str content_type;
    struct m2a_str response_topic;
    struct m2a_str correlation;
    size_t nuser;
    const struct m2a_header *user; /* names < 256 bytes, sorted bytewise, unique */
};

/* Appends to out the blob of the mappable properties in list (NULL: none)
 * and returns its length; 0 (nothing appended) when none is mappable, so
 * that a message without properties costs nothing further. What is kept
 * (the plugin's filters, applied once here): Message Expiry Interval;
 * Content Type when ASCII and <= 255 bytes; Response Topic; Correlation
 * Data; User Properties whose name is < 256 bytes, duplicate names removed
 * (the first wins) and sorted by name. list is not changed. */
size_t m2a_props_from_mqtt(const mosquitto_property *list, struct m2a_buf *out);

/* Appends the blob of p (which must be as m2a_props_decode returns it:
 * sorted, unique user property names; strings <= 65535 bytes, at most
 * 65535 user properties) to out; nothing when p has nothing. For tests and
 * the fuzzer's round trip. */
void m2a_props_encode(const struct m2a_props *p, struct m2a_buf *out);

/* Decodes a blob: 0, or M2A_ERR_CORRUPT when it is malformed, truncated,
 * has trailing bytes, an unknown version or flag, or user properties not
 * sorted and unique (never reads outside data). Strings point into data;
 * the user properties into *buf, grown as needed (xrealloc; caller frees)
 * with its capacity in *cap. */
int m2a_props_decode(const void *data, size_t len, struct m2a_props *p, struct m2a_header **buf,
                     size_t *cap);

/* What an uplink publish carries for p. Owns its scratch (headers array and
 * the response topic in AMQP form); reuse it across messages, free with
 * m2a_props_amqp_free. All strings are valid until the next
 * m2a_props_to_amqp on it or until p's blob goes away. */
struct m2a_props_amqp {
    struct m2a_str content_type;   /* len 0: none */
    bool has_correlation_id;       /* correlation_id set (may be empty) */
    struct m2a_str correlation_id; /* a valid shortstr */
    bool has_expiration;
    char expiration[24]; /* decimal milliseconds, NUL-terminated */
    size_t nheaders;     /* longstr headers, sorted by name, unique */
    struct m2a_header *headers;
    size_t headers_cap;
    struct m2a_buf topic; /* x-reply-to-topic's value */
};

void m2a_props_amqp_free(struct m2a_props_amqp *a); /* its scratch; a itself is the caller's */

/* Maps p for a publish at now_ms (wall clock) of a message received at
 * received_ms (wall clock): expiration = the REMAINING time of the Message
 * Expiry Interval, "0" when it already ran out in the spool (RabbitMQ then
 * hands it only to a consumer waiting right now, else discards it or
 * dead-letters it with reason `expired`), clamped to
 * M2A_PROPS_EXPIRATION_MAX_MS; none when with_expiry is false (dead
 * letters must not expire). correlation_id when the Correlation Data is a
 * valid shortstr (< 256 bytes of UTF-8 without NUL), else header
 * x-correlation-id; Response Topic -> header x-reply-to-topic ('/' <-> '.');
 * user properties -> headers (x-reply-to-topic and x-correlation-id win a
 * name clash). */
void m2a_props_to_amqp(const struct m2a_props *p, uint64_t received_ms, uint64_t now_ms,
                       bool with_expiry, struct m2a_props_amqp *out);

/* The MQTT 5 properties of a downlink message with AMQP properties p (NULL:
 * none): content_type -> Content Type; correlation_id, else header
 * x-correlation-id (longstr) -> Correlation Data; header x-reply-to-topic
 * (longstr, '.' <-> '/') -> Response Topic when it is a valid topic name;
 * expiration (decimal ms) -> Message Expiry Interval, ms div 1000 but at
 * least 1 (0 would mean "never" to an MQTT broker); every other header ->
 * a User Property, as a string: longstr when UTF-8, integers, floats
 * (%.17g), booleans ("true"/"false"), void (""); byte arrays, arrays,
 * tables and decimals dropped, and so are the bridge's own x-mqtt-*
 * headers and RabbitMQ's dead-lettering ones (x-death*, x-first-death-*,
 * x-last-death-*). A value MQTT cannot carry (not UTF-8, control
 * characters, over 65535 bytes) is dropped. Returns a list the caller frees
 * with mosquitto_property_free_all, or NULL for none. */
mosquitto_property *m2a_props_to_mqtt(const amqp_basic_properties_t *p);

#endif
