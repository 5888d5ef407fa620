/* ratelimit.h - at most one log line per interval for a repeating event,
 * counting what it swallowed so the next line can say so. The one rate
 * limiter of the tree; not thread-safe: each limiter belongs to the thread
 * that logs through it. */
#ifndef MQTT2AMQP_RATELIMIT_H
#define MQTT2AMQP_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

struct m2a_ratelimit {
    uint64_t interval_ms;
    uint64_t next_ms;    /* monotonic: no line before this */
    uint64_t suppressed; /* events swallowed since the last line */
};

#define M2A_RATELIMIT_INIT(ms)                                                                     \
    {                                                                                              \
        .interval_ms = (ms)                                                                        \
    }

/* True when a line may be written now (monotonic now_ms): *suppressed gets
 * how many events were swallowed since the last allowed one. False counts
 * this event as swallowed. */
bool m2a_ratelimit_allow(struct m2a_ratelimit *r, uint64_t now_ms, uint64_t *suppressed);

/* The same with the clock read here. */
bool m2a_ratelimit_ok(struct m2a_ratelimit *r, uint64_t *suppressed);

#endif
