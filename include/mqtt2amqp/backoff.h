/* backoff.h - reconnect delays: exponential with full jitter, capped. */
#ifndef MQTT2AMQP_BACKOFF_H
#define MQTT2AMQP_BACKOFF_H

#include <stdint.h>

struct m2a_backoff {
    uint32_t min_ms;
    uint32_t max_ms;
    uint32_t attempt;
    uint64_t rng; /* xorshift state; seeded by m2a_backoff_init */
};

void m2a_backoff_init(struct m2a_backoff *b, uint32_t min_ms, uint32_t max_ms);
/* Delay before the next attempt: uniform in [ceil/2, ceil] where
 * ceil = min(max_ms, min_ms * 2^attempt); then attempt++. */
uint32_t m2a_backoff_next(struct m2a_backoff *b);
/* After a successful connection. */
void m2a_backoff_reset(struct m2a_backoff *b);

#endif
