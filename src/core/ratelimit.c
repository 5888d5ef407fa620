/* ratelimit.c - one log line per interval, and the count of those swallowed. */
#include "mqtt2amqp/ratelimit.h"

#include "mqtt2amqp/util.h"

bool m2a_ratelimit_allow(struct m2a_ratelimit *r, uint64_t now_ms, uint64_t *suppressed)
{
    if (now_ms < r->next_ms) {
        r->suppressed++;
        return false;
    }
    *suppressed = r->suppressed;
    r->suppressed = 0;
    r->next_ms = now_ms + r->interval_ms;
    return true;
}

bool m2a_ratelimit_ok(struct m2a_ratelimit *r, uint64_t *suppressed)
{
    return m2a_ratelimit_allow(r, m2a_now_ms(), suppressed);
}
