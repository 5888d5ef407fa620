/* topic.h - MQTT topic names and filters: validation, matching with
 * captures, and the RabbitMQ MQTT plugin's topic -> routing key conversion.
 *
 * Pure functions, no allocation except into a caller's m2a_buf. */
#ifndef MQTT2AMQP_TOPIC_H
#define MQTT2AMQP_TOPIC_H

#include <stdbool.h>
#include <stddef.h>

#include "mqtt2amqp/util.h"

#define M2A_MAX_CAPTURES 9

/* What the wildcards of a filter matched, in order. Each capture points into
 * the topic string passed to m2a_topic_match (not copied). A '+' capture is
 * one level; a '#' capture spans the remaining levels, '/' included (it may
 * be empty when "a/#" matches "a"). */
struct m2a_captures {
    int n;
    struct {
        const char *ptr;
        size_t len;
    } cap[M2A_MAX_CAPTURES];
};

/* 0 if filter is a valid MQTT topic filter ('+' alone in its level, '#' alone
 * and last, non-empty, at most 65535 bytes, at most 9 wildcards, no "$share/"
 * prefix); otherwise M2A_ERR_TOPIC with a sentence in err. */
int m2a_topic_filter_validate(const char *filter, char *err, size_t errlen);

/* Number of wildcards ('+' and '#') in a valid filter. */
int m2a_topic_filter_wildcards(const char *filter);

/* 0 if topic is a valid topic name (non-empty, no wildcard, no NUL). */
int m2a_topic_validate(const char *topic, size_t len);

/* true if topic (len bytes, not necessarily NUL-terminated) matches filter.
 * Fills caps (may be NULL). Follows MQTT: a filter starting with a wildcard
 * does not match a topic starting with '$'; "a/#" matches "a". */
bool m2a_topic_match(const char *filter, const char *topic, size_t len, struct m2a_captures *caps);

/* true if some topic matches both filters. */
bool m2a_topic_filters_overlap(const char *a, const char *b);

/* Appends the RabbitMQ MQTT plugin conversion of s[0..len) to out:
 * '/' becomes '.', '.' becomes '/'. */
void m2a_topic_to_routing_key(const char *s, size_t len, struct m2a_buf *out);

#endif
