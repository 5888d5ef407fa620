/* flow.c - publisher thread and readiness helpers for fault tests; see flow.h. */
#include "flow.h"

#include <stdio.h>
#include <stdlib.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

static void *flow_main(void *arg)
{
    struct th_flow *f = arg;
    uint64_t t0 = m2a_now_ms();
    while (!atomic_load(&f->stop) && atomic_load(&f->published) < f->max) {
        if (f->rate > 0) {
            /* Pacing, not synchronisation: no earlier than the rate allows. */
            uint64_t due = t0 + (uint64_t)(atomic_load(&f->published) * 1000 / f->rate);
            uint64_t now = m2a_now_ms();
            if (due > now) {
                th_sleep_ms((int)(due - now));
                continue;
            }
        }
        long first = atomic_load(&f->published);
        long n = f->chunk;
        if (first + n > f->max)
            n = f->max - first;
        struct th_pub p = {.port = f->port,
                           .topics = f->topics,
                           .ntopics = f->ntopics,
                           .first = first,
                           .count = n,
                           .payload_size = 100,
                           .qos = 1,
                           .protocol = f->protocol,
                           .username = f->username,
                           .password = f->password,
                           .timeout_ms = 60000,
                           .quiet = true};
        long acked = th_mqtt_publish(&p);
        if (acked != n) {
            /* Seqs past `first + acked` may or may not have reached the
             * broker: stop here so the expected range stays exact. */
            fprintf(stderr, "flow: chunk at %ld incomplete (%ld/%ld)\n", first, acked, n);
            atomic_store(&f->failed, true);
            break;
        }
        atomic_fetch_add(&f->published, acked);
    }
    return NULL;
}

void th_flow_start(struct th_flow *f)
{
    atomic_store(&f->published, 0);
    atomic_store(&f->stop, false);
    atomic_store(&f->failed, false);
    if (pthread_create(&f->thread, NULL, flow_main, f) != 0)
        abort();
}

long th_flow_stop(struct th_flow *f)
{
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    long n = atomic_load(&f->published);
    fprintf(stderr, "flow: published %ld messages\n", n);
    return n;
}

struct flow_wait {
    struct th_flow *f;
    long n;
};

static bool flow_reached(void *arg)
{
    struct flow_wait *w = arg;
    return atomic_load(&w->f->published) >= w->n || atomic_load(&w->f->failed);
}

int th_flow_wait_published(struct th_flow *f, long n, int timeout_ms)
{
    struct flow_wait w = {f, n};
    int rc = th_poll_until(flow_reached, &w, timeout_ms);
    return rc == 0 && atomic_load(&f->published) >= n ? 0 : M2A_ERR_TIMEOUT;
}

int th_bridge_start_ready(struct th_bridge *b, int timeout_ms)
{
    int rc = th_bridge_start(b, NULL);
    if (rc == 0)
        rc = th_bridge_wait_log(b, "mqtt: subscribed to", timeout_ms);
    if (rc == 0)
        rc = th_bridge_wait_log(b, "amqp: connected to", timeout_ms);
    return rc;
}

int th_amqp_collect_reconnecting_to(struct th_amqp **c, const int *ports, size_t nports,
                                    const char *queue, struct th_msgs *out, size_t want,
                                    int timeout_ms)
{
    uint64_t deadline = m2a_now_ms() + (uint64_t)timeout_ms;
    size_t cur = 0; /* the port to (re)connect to; the next one after a failure */
    while (m2a_now_ms() < deadline) {
        int left = (int)(deadline - m2a_now_ms());
        if (!*c) {
            *c = th_amqp_connect(ports[cur], left < 2000 ? left : 2000, true);
            if (!*c || th_amqp_consume(*c, queue) != 0) {
                th_amqp_free(*c);
                *c = NULL;
                cur = (cur + 1) % nports;
                /* the broker is still starting: poll again, bounded by deadline */
                th_sleep_ms(200);
                continue;
            }
        }
        int rc = th_amqp_collect(*c, out, want, left);
        if (rc == 0)
            return 0;
        if (rc != M2A_ERR_AMQP)
            return rc;
        th_amqp_free(*c);
        *c = NULL;
        cur = (cur + 1) % nports;
        fprintf(stderr, "collect: consumer connection lost after %zu distinct; reconnecting\n",
                th_msgs_distinct(out));
    }
    return M2A_ERR_TIMEOUT;
}

int th_amqp_collect_reconnecting(struct th_amqp **c, const char *queue, struct th_msgs *out,
                                 size_t want, int timeout_ms)
{
    int port = th_rabbit_port();
    return th_amqp_collect_reconnecting_to(c, &port, 1, queue, out, want, timeout_ms);
}
