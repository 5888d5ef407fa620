/* failover.c - the reconnect policy over a list of nodes: rounds through
 * the list, backing off only between rounds (see failover.h). Owned by the
 * thread that connects. */
#include "mqtt2amqp/failover.h"

/* splitmix64's finalizer: every bit of the seed moves every bit out. */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

void m2a_failover_init(struct m2a_failover *f, size_t n, uint32_t min_ms, uint32_t max_ms)
{
    m2a_backoff_init(&f->backoff, min_ms, max_ms);
    f->n = n ? n : 1;
    /* The backoff's seed (clock, pid, address) mixed: bridges started
     * together, or one restarted, pick their first node independently. */
    f->cur = (size_t)(mix(f->backoff.rng) % f->n);
    f->failed = 0;
}

size_t m2a_failover_node(const struct m2a_failover *f)
{
    return f->cur;
}

uint32_t m2a_failover_failed(struct m2a_failover *f, bool *round_over)
{
    f->cur = (f->cur + 1) % f->n;
    bool over = ++f->failed >= f->n;
    if (round_over)
        *round_over = over;
    if (!over)
        return 0;
    f->failed = 0;
    return m2a_backoff_next(&f->backoff);
}

void m2a_failover_connected(struct m2a_failover *f)
{
    f->failed = 0;
}

uint32_t m2a_failover_lost(struct m2a_failover *f, bool stable)
{
    if (stable)
        m2a_backoff_reset(&f->backoff);
    f->cur = (f->cur + 1) % f->n;
    f->failed = 0;
    return m2a_backoff_next(&f->backoff);
}
