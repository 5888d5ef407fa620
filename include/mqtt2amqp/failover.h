/* failover.h - which node of a side's list to connect to next, and how long
 * to wait before: the reconnect policy of a side with several brokers
 * (amqp.hosts; one node is a list of one).
 *
 * The first attempt goes to a random node, so that bridges sharing a list
 * spread over it. A failed attempt moves to the next node in list order;
 * within a round (every node tried once) the next one is tried at once,
 * and only a whole round of failures backs off (exponential with full
 * jitter, backoff.h) before the next round. A connection that was up and is
 * lost also moves on to the next node, after one backoff delay (reset
 * first if the connection had worked: stable). With a single node this is
 * the plain backoff.
 *
 * Not thread-safe: belongs to the thread that connects. */
#ifndef MQTT2AMQP_FAILOVER_H
#define MQTT2AMQP_FAILOVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/backoff.h"

struct m2a_failover {
    size_t n;      /* nodes, >= 1 */
    size_t cur;    /* the node to try next, or connected to */
    size_t failed; /* failed attempts in the current round */
    struct m2a_backoff backoff;
};

/* n nodes (0 is taken as 1); delays between min_ms and max_ms. */
void m2a_failover_init(struct m2a_failover *f, size_t n, uint32_t min_ms, uint32_t max_ms);

/* The node to try now (or connected to): 0..n-1. */
size_t m2a_failover_node(const struct m2a_failover *f);

/* The attempt on the current node failed: moves to the next node. Returns
 * the delay before trying it: 0 while the round lasts; once every node has
 * failed in a row, a backoff delay, and a new round begins. *round_over (if
 * not NULL) says which. */
uint32_t m2a_failover_failed(struct m2a_failover *f, bool *round_over);

/* Connected to the current node: the next failure starts a new round. */
void m2a_failover_connected(struct m2a_failover *f);

/* The connection to the current node, once up, was lost. stable: it had
 * worked (the backoff starts over). Moves to the next node and returns the
 * delay before trying it. */
uint32_t m2a_failover_lost(struct m2a_failover *f, bool stable);

#endif
