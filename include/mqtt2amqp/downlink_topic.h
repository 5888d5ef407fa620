/* downlink_topic.h - the topic template of a downlink (AMQP -> MQTT): which
 * MQTT topic a message consumed from RabbitMQ is published to, made from its
 * routing key and headers; and the x-mqtt-retain header's answer.
 *
 * Template syntax (the routes' routing_key templates' braces):
 *   {1}..{9}        the routing key's words (split on '.'), each converted
 *                   as RabbitMQ's MQTT plugin converts ('/' -> '.'), so a
 *                   word is always exactly one topic level
 *   {routing_key}   the whole key converted ('.' -> '/', '/' -> '.')
 *   {header:NAME}   an AMQP header's value as text (amqp_value.h, byte
 *                   arrays included)
 *   "{{" and "}}"   one literal brace
 * The literal text may not hold '+', '#' or a NUL, and must be UTF-8.
 *
 * A message whose topic cannot be formed (a word or header it lacks, an
 * empty value, a result that is not a valid MQTT topic name, longer than
 * 65535 bytes) gets M2A_ERR_TEMPLATE or M2A_ERR_TOPIC and a sentence.
 *
 * Pure: a compiled template is immutable, any thread may render with it
 * (into its own buffer). */
#ifndef MQTT2AMQP_DOWNLINK_TOPIC_H
#define MQTT2AMQP_DOWNLINK_TOPIC_H

#include <stdbool.h>
#include <stddef.h>

#include <amqp.h>

#include "mqtt2amqp/util.h"

struct m2a_downlink_topic;

/* Compiles tmpl (copied). Returns 0 and *out, or M2A_ERR_TEMPLATE /
 * M2A_ERR_TOPIC with a sentence in err (NUL-terminated) and *out NULL. */
int m2a_downlink_topic_compile(const char *tmpl, struct m2a_downlink_topic **out, char *err,
                               size_t errlen);
/* NULL is a no-op. */
void m2a_downlink_topic_free(struct m2a_downlink_topic *t);

/* The topic for a message with routing key key[0..key_len) and headers
 * (NULL: none), into out (reset first, NUL-terminated, not counted in
 * out->len). Returns 0, or M2A_ERR_TEMPLATE (a word or header the message
 * lacks, or an empty one) / M2A_ERR_TOPIC (the result is no valid topic
 * name) with a sentence in why. The headers are only read. */
int m2a_downlink_topic_render(const struct m2a_downlink_topic *t, const char *key, size_t key_len,
                              const amqp_table_t *headers, struct m2a_buf *out, char *why,
                              size_t whylen);

/* The value of header x-mqtt-retain in headers (NULL: none): a boolean, an
 * integer (non-zero: true) or the strings "true"/"1" and "false"/"0".
 * Absent or of another form: dflt. */
bool m2a_downlink_topic_retain_header(const amqp_table_t *headers, bool dflt);

#endif
