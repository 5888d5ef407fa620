/* policy.c - the rules for undeliverable messages, the dead-letter envelope,
 * and their counting and log lines; see policy.h.
 *
 * Used by the MQTT thread (routing errors, messages too large for the
 * spool) and by the AMQP thread (returns, nacks, expired and unpublishable
 * records), each with its own struct m2a_policy. Dead-lettering is rare, so
 * the routing key template is interpreted on every build rather than
 * compiled. */
#include "mqtt2amqp/policy.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/ratelimit.h"
#include "mqtt2amqp/route_stats.h"
#include "mqtt2amqp/util.h"

#define NEXTRA  5   /* x-death-reason, x-original-{route,exchange,routing-key,body-bytes} */
#define LOG_STR 200 /* a topic, exchange or routing key is cut to this in log lines */

static const char *const reason_names[M2A_POLICY_NEVENTS] = {
    [M2A_POLICY_RETURNED] = "returned",   [M2A_POLICY_ROUTING_ERROR] = "routing_error",
    [M2A_POLICY_NACKED] = "max_retries",  [M2A_POLICY_EXPIRED] = "expired",
    [M2A_POLICY_TOO_LARGE] = "too_large", [M2A_POLICY_UNPUBLISHABLE] = "unpublishable",
};

struct m2a_policy {
    struct m2a_policy_opts o;
    struct m2a_buf key;
    char size[24];
    struct m2a_header *headers;
    size_t headers_cap;
    /* One limiter per kind of line: event x fate x (dead letter or not). */
    struct m2a_ratelimit rl[M2A_POLICY_NEVENTS][M2A_POLICY_NFATES][2];
};

const char *m2a_policy_reason(enum m2a_policy_event event)
{
    if ((unsigned)event < M2A_POLICY_NEVENTS)
        return reason_names[event];
    return "unknown";
}

/* --- the dead-letter routing key template ------------------------------------------- */

static bool is_placeholder(const char *p, const char *name, size_t *len)
{
    size_t n = strlen(name);
    if (p[0] != '{' || strncmp(p + 1, name, n) != 0 || p[1 + n] != '}')
        return false;
    *len = n + 2;
    return true;
}

/* Expands tmpl into out (when out is not NULL); M2A_ERR_TEMPLATE at the first
 * thing that is neither text, a known placeholder nor an escaped brace. */
static int expand(const char *tmpl, struct m2a_str route, const char *reason, struct m2a_buf *out,
                  char *err, size_t errlen)
{
    for (const char *p = tmpl; *p;) {
        size_t n;
        if ((p[0] == '{' && p[1] == '{') || (p[0] == '}' && p[1] == '}')) {
            if (out)
                m2a_buf_append_char(out, p[0]);
            p += 2;
        } else if (is_placeholder(p, "route", &n)) {
            if (out)
                m2a_buf_append(out, route.ptr, route.len);
            p += n;
        } else if (is_placeholder(p, "reason", &n)) {
            if (out)
                m2a_buf_append_str(out, reason);
            p += n;
        } else if (*p == '{' || *p == '}') {
            if (err && errlen)
                snprintf(err, errlen,
                         "'%.40s': only {route} and {reason} may be used (and {{, }} for braces)",
                         p);
            return M2A_ERR_TEMPLATE;
        } else {
            if (out)
                m2a_buf_append_char(out, *p);
            p++;
        }
    }
    return 0;
}

int m2a_policy_key_check(const char *tmpl, char *err, size_t errlen)
{
    if (!tmpl) {
        if (err && errlen)
            snprintf(err, errlen, "template is missing");
        return M2A_ERR_TEMPLATE;
    }
    return expand(tmpl, (struct m2a_str){"", 0}, "", NULL, err, errlen);
}

/* --- the rules ------------------------------------------------------------------------ */

enum m2a_fate m2a_policy_fate(enum m2a_policy_event event, bool dead_letter,
                              enum m2a_unroutable unroutable, const struct m2a_conf_dead_letter *dl,
                              uint32_t attempts)
{
    if (dead_letter) /* never dead-lettered again, never dropped while it can be retried */
        return event == M2A_POLICY_RETURNED || event == M2A_POLICY_NACKED ? M2A_FATE_RETRY
                                                                          : M2A_FATE_DROP;
    switch (event) {
    case M2A_POLICY_RETURNED:
        if (unroutable == M2A_UNROUTABLE_RETRY)
            return M2A_FATE_RETRY;
        if (unroutable == M2A_UNROUTABLE_DROP || !dl)
            return M2A_FATE_DROP;
        return M2A_FATE_DEAD_LETTER;
    case M2A_POLICY_NACKED:
        /* Without a dead_letter section nacks are retried for ever. */
        return dl && attempts > (uint32_t)dl->max_retries ? M2A_FATE_DEAD_LETTER : M2A_FATE_RETRY;
    case M2A_POLICY_ROUTING_ERROR:
    case M2A_POLICY_EXPIRED:
    case M2A_POLICY_TOO_LARGE:
    case M2A_POLICY_UNPUBLISHABLE:
        break;
    }
    return dl ? M2A_FATE_DEAD_LETTER : M2A_FATE_DROP;
}

bool m2a_policy_expired(const struct m2a_generation *g, const struct m2a_envelope *env,
                        uint64_t now_ms)
{
    uint64_t max = m2a_generation_max_age_ms(g);
    return max && !env->dead_letter && env->timestamp_ms < now_ms &&
           now_ms - env->timestamp_ms > max;
}

/* --- the dead letter ------------------------------------------------------------------ */

static struct m2a_str cstr(const char *s)
{
    return (struct m2a_str){s, strlen(s)};
}

/* A route header that would shadow one of ours is left out: the reader of
 * a dead letter must be able to trust x-death-reason and x-original-*. */
static bool ours(struct m2a_str key)
{
    static const char *const names[] = {"x-death-reason", "x-original-route", "x-original-exchange",
                                        "x-original-routing-key", "x-original-body-bytes"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (key.len == strlen(names[i]) && memcmp(key.ptr, names[i], key.len) == 0)
            return true;
    return false;
}

/* Fills out with the dead letter of orig for event. A routing key over 255
 * bytes is cut to 255: a dead letter must always be publishable. */
static void build_dead_letter(struct m2a_policy *p, const struct m2a_conf_dead_letter *dl,
                              const struct m2a_envelope *orig, enum m2a_policy_event event,
                              struct m2a_envelope *out)
{
    const char *why = m2a_policy_reason(event);
    bool keep_headers = event != M2A_POLICY_UNPUBLISHABLE; /* they made it unpublishable */
    m2a_buf_reset(&p->key);
    /* The template was checked when the config was loaded. */
    (void)expand(dl->routing_key ? dl->routing_key : "{route}", orig->route, why, &p->key, NULL, 0);
    if (p->key.len > M2A_MAX_ROUTING_KEY)
        p->key.len = M2A_MAX_ROUTING_KEY;
    m2a_buf_cstr(&p->key);

    size_t want = (keep_headers ? orig->nheaders : 0) + NEXTRA;
    if (want > p->headers_cap) {
        p->headers = xrealloc(p->headers, want * sizeof(*p->headers));
        p->headers_cap = want;
    }
    size_t n = 0;
    for (size_t i = 0; keep_headers && i < orig->nheaders; i++)
        if (!ours(orig->headers[i].key))
            p->headers[n++] = orig->headers[i];
    p->headers[n++] = (struct m2a_header){cstr("x-death-reason"), cstr(why)};
    p->headers[n++] = (struct m2a_header){cstr("x-original-route"), orig->route};
    p->headers[n++] = (struct m2a_header){cstr("x-original-exchange"), orig->exchange};
    /* After a routing error the key is a useless fragment of an over-long one. */
    if (event != M2A_POLICY_ROUTING_ERROR)
        p->headers[n++] = (struct m2a_header){cstr("x-original-routing-key"), orig->routing_key};
    if (event == M2A_POLICY_TOO_LARGE) {
        snprintf(p->size, sizeof(p->size), "%zu", orig->body.len);
        p->headers[n++] = (struct m2a_header){cstr("x-original-body-bytes"), cstr(p->size)};
    }

    *out = *orig;
    out->dead_letter = true;
    out->exchange = cstr(dl->exchange ? dl->exchange : "");
    out->routing_key = (struct m2a_str){(const char *)p->key.data, p->key.len};
    out->nheaders = n;
    out->headers = p->headers;
    if (event == M2A_POLICY_TOO_LARGE)
        out->body = (struct m2a_str){"", 0};
    if (!keep_headers) /* its MQTT 5 properties become headers too (props.h) */
        out->properties = (struct m2a_str){"", 0};
}

/* --- the policy object ---------------------------------------------------------------- */

struct m2a_policy *m2a_policy_new(const struct m2a_policy_opts *opts)
{
    struct m2a_policy *p = xcalloc(1, sizeof(*p));
    p->o = *opts;
    for (size_t e = 0; e < M2A_POLICY_NEVENTS; e++)
        for (size_t f = 0; f < M2A_POLICY_NFATES; f++)
            for (size_t d = 0; d < 2; d++)
                p->rl[e][f][d] = (struct m2a_ratelimit)M2A_RATELIMIT_INIT(opts->log_interval_ms);
    return p;
}

void m2a_policy_free(struct m2a_policy *p)
{
    if (!p)
        return;
    m2a_buf_free(&p->key);
    free(p->headers);
    free(p);
}

enum m2a_fate m2a_policy_decide(struct m2a_policy *p, const struct m2a_generation *g,
                                const struct m2a_policy_case *c, struct m2a_envelope *dead_letter)
{
    const struct m2a_conf_dead_letter *dl = m2a_generation_dead_letter(g);
    enum m2a_unroutable unroutable = c->event == M2A_POLICY_RETURNED
                                         ? m2a_generation_unroutable(g, c->env->route_id)
                                         : M2A_UNROUTABLE_DEAD_LETTER;
    enum m2a_fate fate =
        m2a_policy_fate(c->event, c->env->dead_letter, unroutable, dl, c->attempts);
    if (fate == M2A_FATE_DEAD_LETTER && c->event == M2A_POLICY_NACKED && c->unready &&
        dl->max_retries > 0)
        fate = M2A_FATE_RETRY; /* the destination is not ready: see policy.h */
    if (fate == M2A_FATE_DEAD_LETTER)
        build_dead_letter(p, dl, c->env, c->event, dead_letter);
    return fate;
}

static int cut(size_t len)
{
    return (int)(len > LOG_STR ? LOG_STR : len);
}

/* What was done, in words. */
static const char *fate_words(const struct m2a_policy_case *c, const struct m2a_generation *g,
                              enum m2a_fate decided, enum m2a_fate done, uint32_t retry_ms,
                              char *buf, size_t len)
{
    enum m2a_policy_event ev = c->event;
    bool dead = c->env->dead_letter;
    const struct m2a_conf_dead_letter *dl = m2a_generation_dead_letter(g);
    switch (done) {
    case M2A_FATE_DEAD_LETTER:
        if (ev == M2A_POLICY_TOO_LARGE)
            return "dropped, a dead letter without the body sent";
        if (ev == M2A_POLICY_UNPUBLISHABLE)
            return "dead-lettered without the route's headers";
        if (ev == M2A_POLICY_NACKED) {
            snprintf(buf, len, "dead-lettered after %" PRIu32 " nacks (max_retries %d)",
                     c->attempts, dl ? dl->max_retries : 0);
            return buf;
        }
        return "dead-lettered";
    case M2A_FATE_DROP:
        if (decided == M2A_FATE_DEAD_LETTER)
            return "its dead letter does not fit in the spool either: dropped";
        if (dead)
            return "dropped: a dead letter is not dead-lettered again";
        if (ev == M2A_POLICY_RETURNED && dl)
            return "dropped (unroutable: drop)";
        return "dropped (no dead_letter section)";
    case M2A_FATE_RETRY:
        if (ev == M2A_POLICY_RETURNED)
            return dead ? "it is a dead letter: retrying; bind a queue to the dead-letter exchange"
                        : "retrying with backoff until a queue is bound";
        snprintf(buf, len, "%sretrying in %" PRIu32 " ms%s", dead ? "it is a dead letter: " : "",
                 retry_ms,
                 dead  ? "; check the queues bound to the dead-letter exchange"
                 : !dl ? " (no dead_letter section: retried for ever)"
                       : "");
        return buf;
    }
    return "?";
}

/* The event, in words: what the broker or the bridge said. */
static const char *event_words(const struct m2a_policy_case *c, char *buf, size_t len)
{
    const struct m2a_envelope *e = c->env;
    const char *detail = c->detail ? c->detail : "";
    switch (c->event) {
    case M2A_POLICY_RETURNED:
        snprintf(buf, len, "returned unroutable (%s)", detail);
        break;
    case M2A_POLICY_NACKED:
        /* A basic.nack carries a delivery tag and nothing else: which queue
         * refused the message is not known to a publisher. */
        snprintf(buf, len,
                 "nacked by the broker (%" PRIu32 " time%s%s; exchange '%.*s', routing key "
                 "'%.*s'; a nack does not name the queue: look for one bound there that "
                 "refuses messages)",
                 c->attempts, c->attempts == 1 ? "" : "s",
                 c->unready ? ", nothing of the route confirmed on this connection yet" : "",
                 cut(e->exchange.len), e->exchange.ptr, cut(e->routing_key.len),
                 e->routing_key.ptr);
        break;
    case M2A_POLICY_EXPIRED:
        snprintf(buf, len, "expired (%s)", detail);
        break;
    case M2A_POLICY_UNPUBLISHABLE:
        snprintf(buf, len, "cannot be published (%s)", detail);
        break;
    case M2A_POLICY_ROUTING_ERROR:
    case M2A_POLICY_TOO_LARGE:
        snprintf(buf, len, "%s", detail);
        break;
    }
    return buf;
}

static void count(struct m2a_policy *p, const struct m2a_policy_case *c, enum m2a_fate done)
{
    struct m2a_stats *st = p->o.stats;
    struct m2a_route_counters *rc = m2a_route_stats_at(st->routes, c->env->route_id);
    if (c->event == M2A_POLICY_ROUTING_ERROR)
        M2A_STAT_ADD(st, route_errors, 1);
    if (c->event == M2A_POLICY_RETURNED && !c->env->dead_letter)
        M2A_ROUTE_ADD(rc, returned, 1);
    if (c->event == M2A_POLICY_EXPIRED && done != M2A_FATE_RETRY)
        M2A_STAT_ADD(st, expired, 1);
    /* A too-large message's dead letter carries no body: the content is
     * delivered nowhere, so it is dropped as well. */
    if (done == M2A_FATE_DEAD_LETTER) {
        M2A_STAT_ADD(st, dead_lettered, 1);
        M2A_ROUTE_ADD(rc, dead_lettered, 1);
    }
    if (done == M2A_FATE_DROP ||
        (done == M2A_FATE_DEAD_LETTER && c->event == M2A_POLICY_TOO_LARGE)) {
        M2A_STAT_ADD(st, dropped, 1);
        M2A_ROUTE_ADD(rc, dropped, 1);
    }
}

void m2a_policy_account(struct m2a_policy *p, const struct m2a_generation *g,
                        const struct m2a_policy_case *c, enum m2a_fate decided, enum m2a_fate done,
                        uint32_t retry_ms)
{
    count(p, c, done);
    const struct m2a_envelope *e = c->env;
    bool dead = e->dead_letter;
    /* An error when the message is dropped for a reason that is not its
     * route's choice, or when it is a dead letter (its exchange needs a
     * bound queue that takes it); otherwise the configured policy at work. */
    bool error = dead || (done == M2A_FATE_DROP && c->event != M2A_POLICY_RETURNED &&
                          c->event != M2A_POLICY_EXPIRED);
    uint64_t sup;
    if (!m2a_ratelimit_ok(&p->rl[c->event][done][dead], &sup))
        return;
    char wbuf[768], fbuf[256], id[160];
    const char *what = event_words(c, wbuf, sizeof(wbuf));
    const char *fate = fate_words(c, g, decided, done, retry_ms, fbuf, sizeof(fbuf));
    if (p->o.spool_id) {
        snprintf(id, sizeof(id), "%s %s-%" PRIu64, dead ? "dead letter" : "message", p->o.spool_id,
                 c->seq);
        M2A_LOG(error ? M2A_LOG_ERROR : M2A_LOG_WARN, p->o.component,
                "%s of route %.*s %s: %s (%" PRIu64 " similar suppressed)", id, cut(e->route.len),
                e->route.ptr, what, fate, sup);
    } else {
        M2A_LOG(error ? M2A_LOG_ERROR : M2A_LOG_WARN, p->o.component,
                "route %.*s: topic %.*s: %s; %s (x-death-reason %s) (%" PRIu64
                " similar suppressed)",
                cut(e->route.len), e->route.ptr, cut(e->topic.len), e->topic.ptr, what, fate,
                m2a_policy_reason(c->event), sup);
    }
}
