/* amqp_publish.h - the one way a message leaves for RabbitMQ: an envelope
 * becomes a basic.publish (mandatory) with the bridge's properties and
 * headers, encoded as frames into a buffer (amqp_frames.h), and the buffer
 * is written to the connection once per pass, on TCP and over TLS alike
 * (through the connection's TLS session: m2a_amqp_conn_wire).
 *
 * What a published message carries: message_id (given by the caller),
 * timestamp (when the bridge received it, in seconds), delivery_mode 2 or
 * 1, content_type if the route set one, the headers x-mqtt-topic,
 * x-mqtt-qos and x-mqtt-retain as amqp.mqtt_headers says (a dead letter
 * always keeps x-mqtt-topic), then the envelope's own headers, then what
 * its MQTT 5 properties map to (props.h: expiration with the remaining
 * time, none on a dead letter; correlation_id; content_type unless the
 * route set one; x-correlation-id, x-reply-to-topic and user properties,
 * unless a header of that name came before).
 *
 * Threads: a publisher belongs to the thread that owns the connection it
 * writes to. Steady state allocates nothing: its buffers only grow, except
 * that one grown past 1 MiB by a large message is released after the
 * write. */
#ifndef MQTT2AMQP_AMQP_PUBLISH_H
#define MQTT2AMQP_AMQP_PUBLISH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/amqp_conn.h"
#include "mqtt2amqp/config.h"
#include "mqtt2amqp/envelope.h"

struct m2a_amqp_publish;

struct m2a_amqp_publish *m2a_amqp_publish_new(void);
void m2a_amqp_publish_free(struct m2a_amqp_publish *p); /* NULL: no-op */

/* Encodes env as a publish on c's channel and appends it to what the next
 * flush writes. message_id is copied. Returns 0, or M2A_ERR_ARG when the
 * message cannot be published on c at all (exchange, routing key, content
 * type or a header name over 255 bytes, or properties and headers that do
 * not fit one frame of c's frame_max): nothing is appended, and publishing
 * it again would fail the same way. The body's bytes are borrowed, not
 * copied (body frames of 4 KiB or more are written from them): they must
 * stay unchanged until the next flush or discard. */
int m2a_amqp_publish_add(struct m2a_amqp_publish *p, const struct m2a_amqp_conn *c,
                         const struct m2a_envelope *env, enum m2a_mqtt_headers mqtt_headers,
                         const char *message_id, size_t message_id_len);

/* Bytes encoded and not written yet. */
size_t m2a_amqp_publish_pending(const struct m2a_amqp_publish *p);

/* Writes everything encoded to c (see m2a_amqp_frames_send): gives up when
 * the broker takes nothing for two heartbeat intervals (30 s without
 * heartbeats) or at deadline_ms. Returns 0, or M2A_ERR_TIMEOUT / M2A_ERR_IO
 * with a sentence in why: the connection is then unusable. */
int m2a_amqp_publish_flush(struct m2a_amqp_publish *p, const struct m2a_amqp_conn *c,
                           uint64_t deadline_ms, char *why, size_t whylen);

/* True when c's socket takes data now (a publish pass writes only then, so
 * that a broker applying flow control is not written into blindly). */
bool m2a_amqp_publish_writable(const struct m2a_amqp_conn *c);

/* Forgets what was encoded and not written (the connection is gone: the
 * caller publishes those messages again on the next one). */
void m2a_amqp_publish_discard(struct m2a_amqp_publish *p);

#endif
