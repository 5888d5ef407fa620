/* failover.c - the reconnect policy over a list of nodes: rounds through
 * the list, backing off only between rounds (see failover.h). Owned by the
 * thread that connects. */
#include "mqtt2amqp/failover.h"

void m2a_failover_init(struct m2a_failover *f, size_t n, uint32_t min_ms, uint32_t max_ms)
{
    m2a_backoff_init(&f->backoff, min_ms, max_ms);
    f->n = n ? n : 1;
    /* The backoff's seed is random enough to spread bridges over the list. */
    f->cur = (size_t)(f->backoff.rng >> 11) % f->n;
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
