/* reload.c - a live reload: builds the next generation and hands it out
 * (AMQP thread first, MQTT thread once the AMQP thread runs it), and the
 * keys a reload does not apply; see reload.h.
 *
 * Threads: the main thread owns struct m2a_reload, except the answer
 * queue, which the AMQP thread fills (m2a_reload_answer) under `mu` and
 * signals through the eventfd the main loop polls. The main thread never
 * waits for the AMQP thread: it offers, goes back to its loop, and acts on
 * the answer when it comes. */
#include "mqtt2amqp/reload.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/util.h"

#define COMPONENT "bridge"

struct answer {
    struct answer *next;
    struct m2a_generation *gen; /* a reference */
    int rc;
    char why[512];
};

struct m2a_reload {
    struct m2a_generation *start;   /* settings a reload does not apply */
    struct m2a_generation *running; /* last applied */
    struct m2a_route_stats *registry;
    struct m2a_amqp_out *ao;
    struct m2a_mqtt_in *mi;
    int fd;             /* eventfd: answers wait */
    pthread_mutex_t mu; /* the answer queue */
    struct answer *head, *tail;
};

static void warn_unapplied(void *ud, const char *key)
{
    (void)ud;
    m2a_warn(COMPONENT,
             "reload: %s changed, but connection, spool and policy settings are not "
             "applied until a restart; the running value stays",
             key);
}

static void note_removed(void *ud, const char *what)
{
    (void)ud;
    m2a_info(COMPONENT,
             "reload: %s is no longer in the configuration; left in RabbitMQ (the "
             "bridge never deletes)",
             what);
}

/* Routes whose names came after the first M2A_ROUTE_STATS_MAX: bridged and
 * counted, but without metric series. */
static void warn_uncounted(const struct m2a_generation *g)
{
    const struct m2a_routes *rt = m2a_generation_routes(g);
    size_t n = 0;
    const char *first = NULL;
    for (size_t i = 0; i < m2a_routes_count(rt); i++) {
        if (m2a_routes_id(rt, i) < M2A_ROUTE_STATS_MAX)
            continue;
        first = first ? first : m2a_routes_name(rt, i);
        n++;
    }
    if (n)
        m2a_warn(COMPONENT,
                 "%zu routes (%s first) have no metric series: more than %d route names "
                 "since start",
                 n, first, M2A_ROUTE_STATS_MAX);
}

struct m2a_reload *m2a_reload_new(struct m2a_generation *start, struct m2a_route_stats *registry)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0)
        return NULL;
    struct m2a_reload *r = xcalloc(1, sizeof(*r));
    r->fd = fd;
    r->start = m2a_generation_ref(start);
    r->running = m2a_generation_ref(start);
    r->registry = registry;
    pthread_mutex_init(&r->mu, NULL);
    warn_uncounted(start);
    return r;
}

static struct answer *take_answers(struct m2a_reload *r)
{
    pthread_mutex_lock(&r->mu);
    struct answer *a = r->head;
    r->head = r->tail = NULL;
    pthread_mutex_unlock(&r->mu);
    return a;
}

void m2a_reload_free(struct m2a_reload *r)
{
    if (!r)
        return;
    for (struct answer *a = take_answers(r), *next; a; a = next) {
        next = a->next;
        m2a_generation_unref(a->gen);
        free(a);
    }
    m2a_generation_unref(r->running);
    m2a_generation_unref(r->start);
    pthread_mutex_destroy(&r->mu);
    close(r->fd);
    free(r);
}

void m2a_reload_answer(void *ud, struct m2a_generation *gen, int rc, const char *why)
{
    struct m2a_reload *r = ud;
    struct answer *a = xcalloc(1, sizeof(*a));
    a->gen = m2a_generation_ref(gen);
    a->rc = rc;
    snprintf(a->why, sizeof(a->why), "%s", why ? why : "");
    pthread_mutex_lock(&r->mu);
    if (r->tail)
        r->tail->next = a;
    else
        r->head = a;
    r->tail = a;
    pthread_mutex_unlock(&r->mu);
    uint64_t one = 1;
    (void)!write(r->fd, &one, sizeof(one));
}

void m2a_reload_attach(struct m2a_reload *r, struct m2a_amqp_out *ao, struct m2a_mqtt_in *mi)
{
    r->ao = ao;
    r->mi = mi;
}

int m2a_reload_fd(const struct m2a_reload *r)
{
    return r->fd;
}

const struct m2a_generation *m2a_reload_running(const struct m2a_reload *r)
{
    return r->running;
}

void m2a_reload_request(struct m2a_reload *r)
{
    char err[1024];
    struct m2a_config *cfg = NULL;
    struct m2a_generation *next = NULL;
    const char *path = m2a_generation_config(r->start)->path;
    m2a_info(COMPONENT, "SIGHUP received: reloading %s", path);
    if (m2a_config_load(path, &cfg, err, sizeof(err)) != 0 ||
        m2a_generation_new(cfg, r->start, r->registry, &next, err, sizeof(err)) != 0) {
        m2a_error(COMPONENT, "reload refused, the running configuration stays: %s", err);
        return;
    }
    const struct m2a_config *now = m2a_generation_config(next);
    m2a_reload_unapplied(m2a_generation_config(r->start), now, warn_unapplied, NULL);
    m2a_reload_removed_topology(m2a_generation_config(r->running), now, note_removed, NULL);
    warn_uncounted(next);
    if (!r->ao) {
        m2a_generation_unref(next);
        return;
    }
    if (m2a_amqp_out_offer(r->ao, next))
        m2a_info(COMPONENT,
                 "reload: generation %" PRIu64 " replaces an earlier one the AMQP side had not "
                 "taken yet (connecting, or blocked by RabbitMQ)",
                 m2a_generation_number(next));
    else
        m2a_debug(COMPONENT,
                  "reload: generation %" PRIu64 " offered to the AMQP side, which declares "
                  "its topology before the MQTT side takes its routes",
                  m2a_generation_number(next));
    m2a_generation_unref(next); /* the AMQP side holds it now */
}

static void applied(struct m2a_reload *r, struct m2a_generation *g)
{
    if (r->mi)
        m2a_mqtt_in_set_generation(r->mi, g);
    m2a_generation_unref(r->running);
    r->running = m2a_generation_ref(g);
    const struct m2a_config *cfg = m2a_generation_config(g);
    const struct m2a_routes *rt = m2a_generation_routes(g);
    m2a_log_set_level((enum m2a_log_level)cfg->log.level);
    m2a_log_set_format((enum m2a_log_format)cfg->log.format);
    m2a_info(COMPONENT,
             "reload applied: %zu routes, %zu subscriptions, %zu exchanges and %zu "
             "queues declared (generation %" PRIu64 ")",
             m2a_routes_count(rt), m2a_routes_nsubscriptions(rt), cfg->amqp.nexchanges,
             cfg->amqp.nqueues, m2a_generation_number(g));
}

bool m2a_reload_handle(struct m2a_reload *r)
{
    uint64_t v;
    bool changed = false;
    (void)!read(r->fd, &v, sizeof(v));
    for (struct answer *a = take_answers(r), *next; a; a = next) {
        next = a->next;
        if (a->rc == 0) {
            applied(r, a->gen);
            changed = true;
        } else {
            m2a_error(COMPONENT,
                      "reload refused, the running configuration stays: RabbitMQ refused "
                      "the new topology: %s",
                      a->why);
        }
        m2a_generation_unref(a->gen);
        free(a);
    }
    if (changed) {
        uint64_t built, alive;
        m2a_generation_counts(&built, &alive);
        m2a_debug(COMPONENT, "%" PRIu64 " configuration generations built, %" PRIu64 " in memory",
                  built, alive);
    }
    return changed;
}

struct diff {
    void (*cb)(void *ud, const char *key);
    void *ud;
    size_t n;
};

static void report(struct diff *d, const char *prefix, const char *key)
{
    char name[96];
    snprintf(name, sizeof(name), "%s%s", prefix, key);
    d->n++;
    if (d->cb)
        d->cb(d->ud, name);
}

static bool str_eq(const char *a, const char *b)
{
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

#define SAME_STR(d, p, a, b, f)                                                                    \
    do {                                                                                           \
        if (!str_eq((a)->f, (b)->f))                                                               \
            report(d, p, #f);                                                                      \
    } while (0)
#define SAME_NUM(d, p, a, b, f)                                                                    \
    do {                                                                                           \
        if ((a)->f != (b)->f)                                                                      \
            report(d, p, #f);                                                                      \
    } while (0)

static void diff_tls(struct diff *d, const char *p, const struct m2a_conf_tls *a,
                     const struct m2a_conf_tls *b)
{
    if (a->enabled != b->enabled) {
        report(d, p, "");
        return;
    }
    char sub[32];
    snprintf(sub, sizeof(sub), "%s.", p);
    SAME_STR(d, sub, a, b, ca_file);
    SAME_STR(d, sub, a, b, cert_file);
    SAME_STR(d, sub, a, b, key_file);
    SAME_NUM(d, sub, a, b, verify_hostname);
}

/* The brokers of a side: named as the user wrote them ("host", "port" for
 * the shorthand, else "hosts"). */
static void diff_endpoints(struct diff *d, const char *p, const struct m2a_conf_endpoint *a,
                           size_t na, bool a_list, const struct m2a_conf_endpoint *b, size_t nb,
                           bool b_list)
{
    if (!a_list && !b_list) {
        SAME_STR(d, p, a, b, host);
        SAME_NUM(d, p, a, b, port);
        return;
    }
    bool same = na == nb;
    for (size_t i = 0; same && i < na; i++)
        same = a[i].port == b[i].port && !strcmp(a[i].host, b[i].host);
    if (!same)
        report(d, p, "hosts");
}

size_t m2a_reload_unapplied(const struct m2a_config *running, const struct m2a_config *next,
                            void (*cb)(void *ud, const char *key), void *ud)
{
    struct diff d = {cb, ud, 0};
    const struct m2a_conf_mqtt *m = &running->mqtt, *mn = &next->mqtt;
    diff_endpoints(&d, "mqtt.", m->endpoints, m->nendpoints, m->nhosts > 0, mn->endpoints,
                   mn->nendpoints, mn->nhosts > 0);
    SAME_STR(&d, "mqtt.", m, mn, client_id);
    SAME_NUM(&d, "mqtt.", m, mn, clean_session);
    SAME_NUM(&d, "mqtt.", m, mn, retained_resend);
    SAME_NUM(&d, "mqtt.", m, mn, keepalive);
    SAME_NUM(&d, "mqtt.", m, mn, protocol);
    SAME_STR(&d, "mqtt.", m, mn, username);
    SAME_STR(&d, "mqtt.", m, mn, password);
    SAME_NUM(&d, "mqtt.", m, mn, receive_maximum);
    SAME_NUM(&d, "mqtt.", m, mn, session_expiry);
    SAME_STR(&d, "mqtt.", m, mn, share_group);
    SAME_NUM(&d, "mqtt.", m, mn, reconnect_min_ms);
    SAME_NUM(&d, "mqtt.", m, mn, reconnect_max_ms);
    if (m->connect_timeout_ms != mn->connect_timeout_ms)
        report(&d, "mqtt.", "connect_timeout");
    SAME_NUM(&d, "mqtt.", m, mn, max_message_bytes);
    SAME_STR(&d, "mqtt.", m, mn, downlink_client_id);
    diff_tls(&d, "mqtt.tls", &m->tls, &mn->tls);

    const struct m2a_conf_amqp *a = &running->amqp, *an = &next->amqp;
    diff_endpoints(&d, "amqp.", a->endpoints, a->nendpoints, a->nhosts > 0, an->endpoints,
                   an->nendpoints, an->nhosts > 0);
    SAME_STR(&d, "amqp.", a, an, vhost);
    SAME_STR(&d, "amqp.", a, an, username);
    SAME_STR(&d, "amqp.", a, an, password);
    SAME_NUM(&d, "amqp.", a, an, heartbeat);
    SAME_NUM(&d, "amqp.", a, an, confirm_window);
    SAME_NUM(&d, "amqp.", a, an, reconnect_min_ms);
    SAME_NUM(&d, "amqp.", a, an, reconnect_max_ms);
    SAME_NUM(&d, "amqp.", a, an, mqtt_headers);
    diff_tls(&d, "amqp.tls", &a->tls, &an->tls);

    const struct m2a_conf_spool *s = &running->spool, *sn = &next->spool;
    SAME_STR(&d, "spool.", s, sn, dir);
    SAME_NUM(&d, "spool.", s, sn, max_bytes);
    SAME_NUM(&d, "spool.", s, sn, segment_bytes);
    SAME_NUM(&d, "spool.", s, sn, fsync);
    SAME_NUM(&d, "spool.", s, sn, overflow);
    if (s->max_age_ms != sn->max_age_ms)
        report(&d, "spool.", "max_age");

    const struct m2a_conf_dead_letter *l = &running->dead_letter, *ln = &next->dead_letter;
    if (l->enabled != ln->enabled) {
        report(&d, "dead_letter", "");
    } else {
        SAME_STR(&d, "dead_letter.", l, ln, exchange);
        SAME_STR(&d, "dead_letter.", l, ln, routing_key);
        SAME_NUM(&d, "dead_letter.", l, ln, max_retries);
    }

    /* The downlinks run the start config (downlink.h). */
    bool same = running->ndownlinks == next->ndownlinks;
    for (size_t i = 0; same && i < running->ndownlinks; i++) {
        const struct m2a_conf_downlink *o = &running->downlinks[i], *nw = &next->downlinks[i];
        same = str_eq(o->name, nw->name) && str_eq(o->queue, nw->queue) &&
               str_eq(o->topic, nw->topic) && o->qos == nw->qos && o->retain == nw->retain &&
               o->prefetch == nw->prefetch;
    }
    if (!same)
        report(&d, "", "downlinks");

    const struct m2a_conf_metrics *x = &running->metrics, *xn = &next->metrics;
    if (x->enabled != xn->enabled)
        report(&d, "metrics", "");
    else
        SAME_STR(&d, "metrics.", x, xn, listen);
    return d.n;
}

/* Names in `running` (n of them, each `stride` bytes apart, the name
 * first) that `next` lacks: reported as "KIND name". */
_Static_assert(offsetof(struct m2a_conf_exchange, name) == 0, "name first");
_Static_assert(offsetof(struct m2a_conf_queue, name) == 0, "name first");
static size_t removed_names(const char *kind, const void *running, size_t nrunning,
                            const void *next, size_t nnext, size_t stride,
                            void (*cb)(void *ud, const char *what), void *ud)
{
    size_t n = 0;
    char what[300];
    for (size_t i = 0; i < nrunning; i++) {
        const char *name = *(char *const *)((const char *)running + i * stride);
        bool kept = false;
        for (size_t j = 0; j < nnext && !kept; j++)
            kept = str_eq(name, *(char *const *)((const char *)next + j * stride));
        if (!kept) {
            snprintf(what, sizeof(what), "%s %s", kind, name);
            n++;
            if (cb)
                cb(ud, what);
        }
    }
    return n;
}

size_t m2a_reload_removed_topology(const struct m2a_config *running, const struct m2a_config *next,
                                   void (*cb)(void *ud, const char *what), void *ud)
{
    const struct m2a_conf_amqp *r = &running->amqp, *x = &next->amqp;
    return removed_names("exchange", r->exchanges, r->nexchanges, x->exchanges, x->nexchanges,
                         sizeof(*r->exchanges), cb, ud) +
           removed_names("queue", r->queues, r->nqueues, x->queues, x->nqueues, sizeof(*r->queues),
                         cb, ud);
}
