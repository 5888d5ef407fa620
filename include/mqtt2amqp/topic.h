/* topic.h - MQTT topic names and filters: validation, matching with
 * captures, the algebra of filters (overlap, cover, generalisation, the
 * subscription reduction) and the RabbitMQ MQTT plugin's topic -> routing
 * key conversion.
 *
 * Pure functions with no shared state. Matching allocates nothing; the
 * algebra allocates the filters it returns (caller frees). */
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

/* true if some topic matches both filters (valid filters). */
bool m2a_topic_filters_overlap(const char *a, const char *b);

/* true if every topic matched by filter b is matched by filter a. */
bool m2a_topic_filter_covers(const char *a, const char *b);

/* The most specific filter of this form that covers both a and b: equal
 * levels are kept, differing levels become '+', and a '#' or a difference
 * in length ends it with '#'. Returns a new string (xmalloc; caller frees). */
char *m2a_topic_filter_generalise(const char *a, const char *b);

/* Reduces f[0..n) (strings from xmalloc, owned by the array) in place to a
 * set in which no two filters overlap and which matches every topic the
 * input matched: a filter covered by another is dropped, two partially
 * overlapping ones are replaced by their generalisation. Returns the new
 * count; the dropped strings are freed, the order of the kept ones is
 * stable. The broker sends one copy of a message per matching
 * subscription, so subscribing to this set delivers each message once. */
size_t m2a_topic_filters_reduce(char **f, size_t n);

/* The reference for m2a_topic_filters_reduce: the same result, found by
 * scanning all pairs after each merge (cubic in the worst case). Kept for the
 * differential tests and the fuzz target. */
size_t m2a_topic_filters_reduce_linear(char **f, size_t n);

/* Appends the RabbitMQ MQTT plugin conversion of s[0..len) to out:
 * '/' becomes '.', '.' becomes '/'. */
void m2a_topic_to_routing_key(const char *s, size_t len, struct m2a_buf *out);

#endif
