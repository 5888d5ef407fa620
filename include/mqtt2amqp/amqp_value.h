/* amqp_value.h - an AMQP 0-9-1 field value (a header's value) as text: the
 * one rule for the two places a header becomes text, a downlink topic's
 * {header:NAME} (downlink_topic.c) and an MQTT 5 User Property (props.c).
 *
 * Pure: no state, any thread. */
#ifndef MQTT2AMQP_AMQP_VALUE_H
#define MQTT2AMQP_AMQP_VALUE_H

#include <stdbool.h>

#include <amqp.h>

#include "mqtt2amqp/util.h"

/* Byte arrays ('x') as their bytes; otherwise they have no text (RabbitMQ's
 * MQTT plugin drops them from User Properties). */
#define M2A_AMQP_VALUE_BYTES 0x1

/* Appends the text of v to out and returns true: strings as they are,
 * integers and timestamps in decimal, booleans "true"/"false", floats with
 * enough digits to read back the same value (%.9g, %.17g), void as ""; byte
 * arrays only with M2A_AMQP_VALUE_BYTES. False, with nothing appended, for
 * what has no text (arrays, tables, decimals, byte arrays without the flag).
 * The text is not checked (it may hold a NUL or invalid UTF-8): the caller
 * applies its own rules. */
bool m2a_amqp_value_text(const amqp_field_value_t *v, unsigned flags, struct m2a_buf *out);

#endif
