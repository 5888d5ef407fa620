/* topic_trie.h - a tree of topic levels over a set of MQTT topic filters,
 * each filter carrying a uint32_t value: which filters match a topic, and
 * which may overlap a filter, in time that depends on the topic and the
 * shape of the tree, not on the number of filters.
 *
 * A trie is built with _add and then only read: any number of threads may
 * query it, each with its own scratch (the values found go there; a query
 * allocates nothing once the scratch has grown). It applies the rules of
 * m2a_topic_match (topic.h): '+' is one level, '#' the remaining levels
 * including none ("a/#" matches "a"), a filter starting with a wildcard does
 * not match a topic starting with '$'. */
#ifndef MQTT2AMQP_TOPIC_TRIE_H
#define MQTT2AMQP_TOPIC_TRIE_H

#include <stddef.h>
#include <stdint.h>

struct m2a_topic_trie;
struct m2a_topic_trie_scratch;

/* An empty trie (caller frees with m2a_topic_trie_free). */
struct m2a_topic_trie *m2a_topic_trie_new(void);
void m2a_topic_trie_free(struct m2a_topic_trie *t);

/* Adds filter (a valid filter, m2a_topic_filter_validate; copied) with its
 * value. A filter may be added more than once, with different values. */
void m2a_topic_trie_add(struct m2a_topic_trie *t, const char *filter, uint32_t value);

/* Per-thread query state (caller frees with m2a_topic_trie_scratch_free). */
struct m2a_topic_trie_scratch *m2a_topic_trie_scratch_new(void);
void m2a_topic_trie_scratch_free(struct m2a_topic_trie_scratch *s);

/* The values of the filters that match topic[0..len), in ascending order
 * (a value added twice on matching filters appears twice). *values points
 * into s, valid until its next query. Returns their number. */
size_t m2a_topic_trie_match(const struct m2a_topic_trie *t, const char *topic, size_t len,
                            struct m2a_topic_trie_scratch *s, const uint32_t **values);

/* The values of every filter that overlaps filter (a valid filter), and
 * possibly of some that do not: callers confirm with
 * m2a_topic_filters_overlap. Unordered; *values points into s as above. */
size_t m2a_topic_trie_overlapping(const struct m2a_topic_trie *t, const char *filter,
                                  struct m2a_topic_trie_scratch *s, const uint32_t **values);

#endif
