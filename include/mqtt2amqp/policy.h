/* policy.h - what happens to a message that cannot go where its route
 * sends it: the README's "Undeliverable messages" table, once, for both
 * threads.
 *
 * An undeliverable message is an event (why it cannot be delivered) about
 * an envelope. The rules turn event x the route's unroutable policy x the
 * dead_letter section (x how often it happened) into a fate: send a dead
 * letter in its place, drop it, or retry it. The caller applies the fate
 * the way its side can (the MQTT thread appends the dead letter to the
 * spool in the message's batch; the AMQP thread puts it in the message's
 * confirm-window slot), then reports what it did, and this module counts it
 * (global stats and per-route counters) and logs one line (rate-limited).
 *
 * A dead letter is an ordinary envelope, flagged as one: the dead_letter
 * exchange and routing key, the original topic, body and properties, the
 * route's headers, plus headers saying why and where it was going:
 *   x-death-reason          returned | routing_error | max_retries | expired |
 *                           too_large | unpublishable
 *   x-original-route        the route's name
 *   x-original-exchange     the route's exchange
 *   x-original-routing-key  the routing key it was published with (absent
 *                           when mapping failed to produce one)
 *   x-original-body-bytes   too_large only: the body is not carried
 * (x-mqtt-topic is added to every publish by amqp_out from the envelope.)
 * A dead letter is never dead-lettered again: returned or nacked, it is
 * retried (and logged as an error); it never expires.
 *
 * Threads: the rules are pure functions. A struct m2a_policy (scratch for
 * dead letters, rate limits) belongs to one thread; the counters it adds
 * to are atomics. */
#ifndef MQTT2AMQP_POLICY_H
#define MQTT2AMQP_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/generation.h"
#include "mqtt2amqp/stats.h"

/* Why a message cannot be delivered. */
enum m2a_policy_event {
    M2A_POLICY_RETURNED,      /* basic.return: no queue bound for the routing key */
    M2A_POLICY_ROUTING_ERROR, /* the routing key template failed (longer than 255 bytes) */
    M2A_POLICY_NACKED,        /* basic.nack (a dead letter past dead_letter.max_retries) */
    M2A_POLICY_EXPIRED,       /* older than spool.max_age when read from the spool */
    M2A_POLICY_TOO_LARGE,     /* larger than the spool can hold: its dead letter has no body */
    M2A_POLICY_UNPUBLISHABLE, /* cannot be published (headers over one AMQP frame): its dead
                                 letter has none of the route's headers */
};
#define M2A_POLICY_NEVENTS 6

enum m2a_fate {
    M2A_FATE_DEAD_LETTER, /* a dead letter goes in its place */
    M2A_FATE_DROP,        /* given up: counted, logged */
    M2A_FATE_RETRY,       /* published again later (with backoff) */
};
#define M2A_POLICY_NFATES 3

/* The x-death-reason its dead letter carries ("returned", ...; "max_retries"
 * for M2A_POLICY_NACKED); never NULL. */
const char *m2a_policy_reason(enum m2a_policy_event event);

/* 0 if tmpl is a valid dead-letter routing key template: text with
 * "{route}" and "{reason}" placeholders, "{{" and "}}" for literal braces.
 * Otherwise M2A_ERR_TEMPLATE with a sentence in err. */
int m2a_policy_key_check(const char *tmpl, char *err, size_t errlen);

/* The rules. dl: the dead_letter section (NULL: none). unroutable: the
 * route's policy (only read for M2A_POLICY_RETURNED). attempts: how many
 * times this message was nacked, this nack included (only read for
 * M2A_POLICY_NACKED).
 *
 *   dead letter, returned or nacked   retry          (never dropped)
 *   dead letter, unpublishable        drop
 *   returned                          unroutable: dead_letter -> dead letter
 *                                     (drop without dl), drop -> drop,
 *                                     retry -> retry
 *   nacked                            dead letter once attempts > max_retries
 *                                     (with dl) and the destination is not
 *                                     `unready` (max_retries 0: at once),
 *                                     else retry
 *   routing error, expired, too large, unpublishable
 *                                     dead letter with dl, else drop */
enum m2a_fate m2a_policy_fate(enum m2a_policy_event event, bool dead_letter,
                              enum m2a_unroutable unroutable, const struct m2a_conf_dead_letter *dl,
                              uint32_t attempts);

/* spool.max_age: true if env (not a dead letter) is older than g's max_age
 * at wall-clock now_ms. */
bool m2a_policy_expired(const struct m2a_generation *g, const struct m2a_envelope *env,
                        uint64_t now_ms);

/* One undeliverable message, as the caller saw it. */
struct m2a_policy_case {
    enum m2a_policy_event event;
    const struct m2a_envelope *env; /* the message (maybe a dead letter already) */
    uint64_t seq;                   /* its spool sequence number; 0 before it is spooled */
    uint32_t attempts;              /* RETURNED, NACKED: times so far, this one included */
    /* NACKED: nothing of the message's route has been confirmed on this
     * connection yet, so the nack says that its destination is not ready
     * (a quorum queue without a leader), not that it refuses the message:
     * retried, not dead-lettered, however often (unless max_retries is 0). */
    bool unready;
    const char *detail; /* what happened, for the log line; may be NULL */
};

struct m2a_policy;

struct m2a_policy_opts {
    struct m2a_stats *stats; /* borrowed; stats->routes (may be NULL) has the route counters */
    const char *component;   /* of the log lines: "mqtt", "amqp" */
    /* Message ids are "<spool_id>-<seq>" (the AMQP side names messages by
     * them); NULL: name them by topic (the MQTT side, before spooling). */
    const char *spool_id;
    uint64_t log_interval_ms; /* at most one line of a kind per this */
};

/* Owned by one thread. opts->stats and the strings must outlive it. */
struct m2a_policy *m2a_policy_new(const struct m2a_policy_opts *opts);
void m2a_policy_free(struct m2a_policy *p); /* NULL: no-op */

/* Applies the rules to c under generation g (its dead_letter section and
 * the route's policy). For M2A_FATE_DEAD_LETTER, *dead_letter is the
 * envelope to send in the message's place: its strings point into c->env
 * and into p, valid until the next call with p or until c->env's storage
 * goes. Counts and logs nothing: apply the fate, then m2a_policy_account. */
enum m2a_fate m2a_policy_decide(struct m2a_policy *p, const struct m2a_generation *g,
                                const struct m2a_policy_case *c, struct m2a_envelope *dead_letter);

/* What the caller did with c: decided is what m2a_policy_decide said, done
 * what happened (M2A_FATE_DROP after M2A_FATE_DEAD_LETTER when the dead
 * letter itself could not be spooled); retry_ms the delay of a retry.
 * Counts it (dead_lettered, dropped, expired, route_errors, the route's
 * dead_lettered / dropped / returned) and logs one rate-limited line
 * naming the message, its route, exchange and routing key, what happened
 * and what was done; an error when the message is dropped for a reason
 * that is not its route's choice, or is a dead letter. */
void m2a_policy_account(struct m2a_policy *p, const struct m2a_generation *g,
                        const struct m2a_policy_case *c, enum m2a_fate decided, enum m2a_fate done,
                        uint32_t retry_ms);

#endif
