/* backoff.c - exponential reconnect delays with jitter, so that many bridges
 * restarting together do not hammer a broker in lockstep. */
#include "mqtt2amqp/backoff.h"

#include <time.h>
#include <unistd.h>

static uint64_t xorshift(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

void m2a_backoff_init(struct m2a_backoff *b, uint32_t min_ms, uint32_t max_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    b->min_ms = min_ms ? min_ms : 1;
    b->max_ms = max_ms < b->min_ms ? b->min_ms : max_ms;
    b->attempt = 0;
    b->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)b;
    if (b->rng == 0)
        b->rng = 0x9e3779b97f4a7c15ull;
}

uint32_t m2a_backoff_next(struct m2a_backoff *b)
{
    uint64_t ceil = b->min_ms;
    for (uint32_t i = 0; i < b->attempt && ceil < b->max_ms; i++)
        ceil *= 2;
    if (ceil > b->max_ms)
        ceil = b->max_ms;
    if (b->attempt < 64)
        b->attempt++;
    uint64_t half = ceil / 2;
    return (uint32_t)(half + xorshift(&b->rng) % (ceil - half + 1));
}

void m2a_backoff_reset(struct m2a_backoff *b)
{
    b->attempt = 0;
}
