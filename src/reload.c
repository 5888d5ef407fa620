/* reload.c - the keys a live reload does not apply, and the topology it
 * leaves behind; see reload.h. Runs on the main thread, reads two configs. */
#include "mqtt2amqp/reload.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

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

size_t m2a_reload_unapplied(const struct m2a_config *running, const struct m2a_config *next,
                            void (*cb)(void *ud, const char *key), void *ud)
{
    struct diff d = {cb, ud, 0};
    const struct m2a_conf_mqtt *m = &running->mqtt, *mn = &next->mqtt;
    SAME_STR(&d, "mqtt.", m, mn, host);
    SAME_NUM(&d, "mqtt.", m, mn, port);
    SAME_STR(&d, "mqtt.", m, mn, client_id);
    SAME_NUM(&d, "mqtt.", m, mn, clean_session);
    SAME_NUM(&d, "mqtt.", m, mn, keepalive);
    SAME_NUM(&d, "mqtt.", m, mn, protocol);
    SAME_STR(&d, "mqtt.", m, mn, username);
    SAME_STR(&d, "mqtt.", m, mn, password);
    SAME_NUM(&d, "mqtt.", m, mn, receive_maximum);
    SAME_NUM(&d, "mqtt.", m, mn, session_expiry);
    SAME_STR(&d, "mqtt.", m, mn, share_group);
    SAME_NUM(&d, "mqtt.", m, mn, reconnect_min_ms);
    SAME_NUM(&d, "mqtt.", m, mn, reconnect_max_ms);
    diff_tls(&d, "mqtt.tls", &m->tls, &mn->tls);

    const struct m2a_conf_amqp *a = &running->amqp, *an = &next->amqp;
    SAME_STR(&d, "amqp.", a, an, host);
    SAME_NUM(&d, "amqp.", a, an, port);
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

    const struct m2a_conf_metrics *x = &running->metrics, *xn = &next->metrics;
    if (x->enabled != xn->enabled)
        report(&d, "metrics", "");
    else
        SAME_STR(&d, "metrics.", x, xn, listen);
    return d.n;
}

size_t m2a_reload_removed_topology(const struct m2a_config *running, const struct m2a_config *next,
                                   void (*cb)(void *ud, const char *what), void *ud)
{
    size_t n = 0;
    char what[300];
    for (size_t i = 0; i < running->amqp.nexchanges; i++) {
        const char *name = running->amqp.exchanges[i].name;
        bool kept = false;
        for (size_t j = 0; j < next->amqp.nexchanges && !kept; j++)
            kept = str_eq(name, next->amqp.exchanges[j].name);
        if (!kept) {
            snprintf(what, sizeof(what), "exchange %s", name);
            n++;
            if (cb)
                cb(ud, what);
        }
    }
    for (size_t i = 0; i < running->amqp.nqueues; i++) {
        const char *name = running->amqp.queues[i].name;
        bool kept = false;
        for (size_t j = 0; j < next->amqp.nqueues && !kept; j++)
            kept = str_eq(name, next->amqp.queues[j].name);
        if (!kept) {
            snprintf(what, sizeof(what), "queue %s", name);
            n++;
            if (cb)
                cb(ud, what);
        }
    }
    return n;
}
