/* mqtt_sub.c - the downlink tests' MQTT subscriber; see mqtt_sub.h. */
#include "mqtt_sub.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "harness.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

struct rec {
    long seq;
    char *topic;
};

struct th_sub {
    struct mosquitto *mosq;
    char *filter;
    int qos;
    pthread_mutex_t mu;
    struct rec *v;
    size_t n, cap;
    unsigned char *seen; /* by seq, grown */
    size_t seen_cap, distinct;
    bool subscribed;
};

static void on_connect(struct mosquitto *m, void *ud, int rc, int flags,
                       const mosquitto_property *p)
{
    (void)flags, (void)p;
    struct th_sub *s = ud;
    if (rc == 0)
        mosquitto_subscribe_v5(m, NULL, s->filter, s->qos, 0, NULL);
}

static void on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *granted,
                         const mosquitto_property *p)
{
    (void)m, (void)mid, (void)n, (void)granted, (void)p;
    struct th_sub *s = ud;
    pthread_mutex_lock(&s->mu);
    s->subscribed = true;
    pthread_mutex_unlock(&s->mu);
}

static long parse_seq(const struct mosquitto_message *msg)
{
    const char *p = msg->payload;
    if (msg->payloadlen < 5 || memcmp(p, "seq=", 4))
        return -1;
    long v = 0;
    for (int i = 4; i < msg->payloadlen && p[i] >= '0' && p[i] <= '9'; i++)
        v = v * 10 + (p[i] - '0');
    return v;
}

static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg,
                       const mosquitto_property *p)
{
    (void)m, (void)p;
    struct th_sub *s = ud;
    long seq = parse_seq(msg);
    pthread_mutex_lock(&s->mu);
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 1024;
        s->v = xrealloc(s->v, s->cap * sizeof(*s->v));
    }
    s->v[s->n++] = (struct rec){seq, xstrdup(msg->topic)};
    if (seq >= 0) {
        if ((size_t)seq >= s->seen_cap) {
            size_t nc = ((size_t)seq + 1) * 2;
            s->seen = xrealloc(s->seen, nc);
            memset(s->seen + s->seen_cap, 0, nc - s->seen_cap);
            s->seen_cap = nc;
        }
        if (!s->seen[seq]++)
            s->distinct++;
    }
    pthread_mutex_unlock(&s->mu);
}

struct th_sub *th_sub_new(int port, const char *client_id, const char *filter, int qos)
{
    mosquitto_lib_init();
    struct th_sub *s = xcalloc(1, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    s->filter = xstrdup(filter);
    s->qos = qos;
    s->mosq = mosquitto_new(client_id, false, s);
    if (!s->mosq)
        goto fail;
    mosquitto_int_option(s->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_connect_v5_callback_set(s->mosq, on_connect);
    mosquitto_subscribe_v5_callback_set(s->mosq, on_subscribe);
    mosquitto_message_v5_callback_set(s->mosq, on_message);
    mosquitto_reconnect_delay_set(s->mosq, 100, 1000, true);
    mosquitto_property *props = NULL;
    mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, 3600);
    int rc = mosquitto_connect_bind_v5(s->mosq, "127.0.0.1", port, 30, NULL, props);
    mosquitto_property_free_all(&props);
    if (rc != MOSQ_ERR_SUCCESS || mosquitto_loop_start(s->mosq) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "th_sub: cannot connect to port %d: %s\n", port, mosquitto_strerror(rc));
        goto fail;
    }
    for (int i = 0; i < 1000; i++) {
        pthread_mutex_lock(&s->mu);
        bool ok = s->subscribed;
        pthread_mutex_unlock(&s->mu);
        if (ok)
            return s;
        th_sleep_ms(10);
    }
    fprintf(stderr, "th_sub: no SUBACK for %s within 10 s\n", filter);
fail:
    th_sub_free(s);
    return NULL;
}

void th_sub_disconnect(struct th_sub *s)
{
    if (!s || !s->mosq)
        return;
    mosquitto_disconnect(s->mosq);
    mosquitto_loop_stop(s->mosq, false); /* after the DISCONNECT went out */
    mosquitto_destroy(s->mosq);
    s->mosq = NULL;
}

void th_sub_free(struct th_sub *s)
{
    if (!s)
        return;
    th_sub_disconnect(s);
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].topic);
    free(s->v);
    free(s->seen);
    free(s->filter);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

size_t th_sub_count(struct th_sub *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->n;
    pthread_mutex_unlock(&s->mu);
    return n;
}

size_t th_sub_distinct(struct th_sub *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->distinct;
    pthread_mutex_unlock(&s->mu);
    return n;
}

struct want {
    struct th_sub *s;
    size_t n;
};

static bool reached(void *arg)
{
    struct want *w = arg;
    return th_sub_distinct(w->s) >= w->n;
}

int th_sub_wait_distinct(struct th_sub *s, size_t n, int timeout_ms)
{
    struct want w = {s, n};
    int rc = th_poll_until(reached, &w, timeout_ms);
    if (rc)
        fprintf(stderr, "th_sub: %zu of %zu distinct seqs after %d ms\n", th_sub_distinct(s), n,
                timeout_ms);
    return rc;
}

long *th_sub_seqs(struct th_sub *s, size_t *n)
{
    pthread_mutex_lock(&s->mu);
    long *out = xcalloc(s->n + 1, sizeof(*out));
    for (size_t i = 0; i < s->n; i++)
        out[i] = s->v[i].seq;
    *n = s->n;
    pthread_mutex_unlock(&s->mu);
    return out;
}

bool th_sub_topic(struct th_sub *s, size_t i, char *buf, size_t len)
{
    pthread_mutex_lock(&s->mu);
    bool ok = i < s->n;
    if (ok)
        snprintf(buf, len, "%s", s->v[i].topic);
    pthread_mutex_unlock(&s->mu);
    return ok;
}

size_t th_sub_wrong_topics(struct th_sub *s, const char *prefix, size_t ndev, const char *suffix)
{
    size_t wrong = 0;
    char want[256];
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i].seq < 0)
            continue;
        snprintf(want, sizeof(want), "%s/dev%ld/%s", prefix, s->v[i].seq % (long)ndev, suffix);
        wrong += strcmp(want, s->v[i].topic) != 0;
    }
    pthread_mutex_unlock(&s->mu);
    return wrong;
}
