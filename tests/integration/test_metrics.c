/* test_metrics.c - /metrics, /healthz and /readyz over HTTP (issue 5, item
 * 5): scraped while traffic flows, the per-route counters grow; once it
 * stops they equal what the consumer counted by sequence number. /readyz
 * follows a side going down and coming back. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow.h"
#include "harness.h"
#include "http.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define TIMEOUT_MS 5000

/* Routes ra and rb: seq s goes to topics[s % 2]. */
static const char *const topics[] = {"metrics/a/1", "metrics/b/2"};

struct setup {
    struct th_mosq *mq;
    struct th_bridge *b;
    struct th_amqp *c;
    int http_port;
};

static void setup_start(struct setup *s)
{
    s->mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(s->mq);
    s->b = th_bridge_new(s->mq);
    s->http_port = th_free_port();
    th_bridge_set(s->b, "METRICS_PORT", "%d", s->http_port);
    ck_assert_int_eq(th_bridge_config(s->b, "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, "
                                            "client_id: it-metrics, reconnect_max_ms: 500}\n"
                                            "amqp:\n"
                                            "  port: ${AMQP_PORT}\n"
                                            "  topology:\n"
                                            "    exchanges: [{name: it.metrics, type: topic}]\n"
                                            "    queues:\n"
                                            "      - name: it.metrics\n"
                                            "        bindings: [{exchange: it.metrics}]\n"
                                            "spool: {dir: ${SPOOL_DIR}}\n"
                                            "routes:\n"
                                            "  - {name: ra, topic: \"metrics/a/#\", "
                                            "exchange: it.metrics}\n"
                                            "  - {name: rb, topic: \"metrics/b/#\", "
                                            "exchange: it.metrics}\n"
                                            "metrics: {listen: \"127.0.0.1:${METRICS_PORT}\"}\n"
                                            "log: {stats_interval: 0}\n"),
                     0);
    s->c = th_amqp_consumer(th_rabbit_port(), "it.metrics", "it.metrics", "#");
    ck_assert_ptr_nonnull(s->c);
    ck_assert_int_eq(th_bridge_start_ready(s->b, 60000), 0);
}

static void setup_free(struct setup *s)
{
    th_amqp_free(s->c);
    th_bridge_free(s->b);
    th_mosq_free(s->mq);
}

/* Scrapes /metrics; the body is the caller's. */
static char *scrape(int port)
{
    struct th_http_reply r;
    ck_assert_int_eq(th_http(port, "GET", "/metrics", TIMEOUT_MS, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(r.ctype);
    ck_assert_ptr_nonnull(strstr(r.ctype, "version=0.0.4"));
    char *body = r.body;
    r.body = NULL;
    th_http_reply_free(&r);
    return body;
}

static double metric(int port, const char *series)
{
    char *body = scrape(port);
    double v = th_metric(body, series);
    free(body);
    return v;
}

struct metric_wait {
    int port;
    const char *series;
    double at_least;
};

static bool metric_reached(void *arg)
{
    struct metric_wait *w = arg;
    return metric(w->port, w->series) >= w->at_least;
}

static int wait_metric(int port, const char *series, double at_least, int timeout_ms)
{
    struct metric_wait w = {port, series, at_least};
    return th_poll_until(metric_reached, &w, timeout_ms);
}

static int status_of(int port, const char *method, const char *path, char **body)
{
    struct th_http_reply r;
    ck_assert_int_eq(th_http(port, method, path, TIMEOUT_MS, &r), 0);
    int st = r.status;
    if (body) {
        *body = r.body;
        r.body = NULL;
    }
    th_http_reply_free(&r);
    return st;
}

struct status_wait {
    int port;
    const char *path;
    int want;
};

static bool status_is(void *arg)
{
    struct status_wait *w = arg;
    return status_of(w->port, "GET", w->path, NULL) == w->want;
}

static int wait_status(int port, const char *path, int want, int timeout_ms)
{
    struct status_wait w = {port, path, want};
    return th_poll_until(status_is, &w, timeout_ms);
}

START_TEST(counters_grow_during_traffic_and_equal_deliveries_after)
{
    struct setup s = {0};
    setup_start(&s);
    ck_assert_int_eq(wait_status(s.http_port, "/readyz", 200, 10000), 0);

    struct th_flow f = {
        .port = s.mq->port, .topics = topics, .ntopics = 2, .chunk = 500, .max = 400000};
    th_flow_start(&f);
    struct th_msgs got = {0};
    ck_assert_int_eq(th_amqp_collect(s.c, &got, 1000, 60000), 0);
    /* During traffic: each route's confirmed count goes up between scrapes.
     * RabbitMQ delivers a persistent message before it confirms it (after
     * its message store syncs), so the first confirms may trail the
     * consumer: wait for them rather than expect them. */
    const char *ca = "mqtt2amqp_route_confirmed_total{route=\"ra\"}";
    const char *cb = "mqtt2amqp_route_confirmed_total{route=\"rb\"}";
    ck_assert_int_eq(wait_metric(s.http_port, ca, 1, 60000), 0);
    ck_assert_int_eq(wait_metric(s.http_port, cb, 1, 60000), 0);
    double a0 = metric(s.http_port, ca), b0 = metric(s.http_port, cb);
    ck_assert(a0 > 0 && b0 > 0);
    ck_assert_int_eq(wait_metric(s.http_port, ca, a0 + 500, 60000), 0);
    ck_assert_int_eq(wait_metric(s.http_port, cb, b0 + 500, 60000), 0);
    ck_assert_int_eq(th_flow_wait_published(&f, atomic_load(&f.published) + 1000, 60000), 0);
    long n = th_flow_stop(&f);
    ck_assert(!atomic_load(&f.failed));

    int rc = th_amqp_collect(s.c, &got, (size_t)n, 120000);
    th_amqp_drain(s.c, &got, 300);
    struct th_delivery d = th_check_msgs(0, n, &got);
    ck_assert_int_eq(rc, 0);
    TH_ASSERT_EXACT(d);
    long na = 0, nb = 0; /* per route, from the consumer's side */
    for (size_t i = 0; i < got.n; i++) {
        const char *t = th_msg_header(&got.v[i], "x-mqtt-topic");
        na += t && strcmp(t, topics[0]) == 0;
        nb += t && strcmp(t, topics[1]) == 0;
    }
    ck_assert_int_eq(na + nb, n);

    /* After traffic: the confirms of the last messages may trail the
     * consumer by a moment; then every counter equals the deliveries. */
    ck_assert_int_eq(wait_metric(s.http_port, "mqtt2amqp_confirmed_total", (double)n, 30000), 0);
    char *m = scrape(s.http_port);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_received_total"), n);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_confirmed_total"), n);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_unmatched_total"), 0);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_route_matched_total{route=\"ra\"}"), na);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_route_matched_total{route=\"rb\"}"), nb);
    ck_assert_int_eq((long)th_metric(m, ca), na);
    ck_assert_int_eq((long)th_metric(m, cb), nb);
    /* no reconnect happened, so nothing was published twice */
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_route_published_total{route=\"ra\"}"), na);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_route_published_total{route=\"rb\"}"), nb);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_route_returned_total{route=\"ra\"}"), 0);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_route_dropped_total{route=\"rb\"}"), 0);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_confirm_latency_seconds_count"), n);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_confirm_latency_seconds_bucket{le=\"+Inf\"}"),
                     n);
    ck_assert(th_metric(m, "mqtt2amqp_confirm_latency_seconds_sum") > 0);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_connected{side=\"mqtt\"}"), 1);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_connected{side=\"amqp\"}"), 1);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_reconnects_total{side=\"amqp\"}"), 0);
    free(m);
    ck_assert_int_eq(wait_metric(s.http_port, "mqtt2amqp_spool_messages", 0, 1000), 0);
    ck_assert_int_eq((long)metric(s.http_port, "mqtt2amqp_spool_messages"), 0);
    fprintf(stderr, "metrics: %ld delivered, ra=%ld rb=%ld, counters match\n", n, na, nb);

    th_msgs_free(&got);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

START_TEST(health_and_readiness_follow_the_connections)
{
    struct setup s = {0};
    setup_start(&s);
    char *body = NULL;
    ck_assert_int_eq(status_of(s.http_port, "GET", "/healthz", &body), 200);
    ck_assert_str_eq(body, "ok\n");
    free(body);
    ck_assert_int_eq(wait_status(s.http_port, "/readyz", 200, 10000), 0);

    /* MQTT side down: not ready, and the reason says which side. */
    ck_assert_int_eq(th_mosq_stop(s.mq), 0);
    ck_assert_int_eq(wait_status(s.http_port, "/readyz", 503, 30000), 0);
    ck_assert_int_eq(status_of(s.http_port, "GET", "/readyz", &body), 503);
    ck_assert_str_eq(body, "mqtt: not connected\n");
    free(body);
    ck_assert_int_eq((long)metric(s.http_port, "mqtt2amqp_connected{side=\"mqtt\"}"), 0);
    ck_assert_int_eq(status_of(s.http_port, "GET", "/healthz", NULL), 200); /* alive all along */

    ck_assert_int_eq(th_mosq_restart(s.mq), 0);
    ck_assert_int_eq(wait_status(s.http_port, "/readyz", 200, 30000), 0);
    ck_assert_int_ge((long)metric(s.http_port, "mqtt2amqp_reconnects_total{side=\"mqtt\"}"), 1);

    ck_assert_int_eq(status_of(s.http_port, "GET", "/nothing", NULL), 404);
    ck_assert_int_eq(status_of(s.http_port, "POST", "/metrics", NULL), 405);
    ck_assert_int_eq(status_of(s.http_port, "HEAD", "/healthz", NULL), 200);

    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    ck_assert(!th_port_open(s.http_port)); /* the socket went with the process */
    setup_free(&s);
}
END_TEST

START_TEST(a_taken_metrics_port_fails_the_start)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_STOCK);
    ck_assert_ptr_nonnull(mq);
    struct th_bridge *b = th_bridge_new(mq);
    /* Mosquitto's own port is certainly taken. */
    th_bridge_set(b, "METRICS_PORT", "%d", mq->port);
    ck_assert_int_eq(th_bridge_config(b, "mqtt: {port: ${MQTT_PORT}, client_id: it-metrics-taken}\n"
                                         "amqp: {port: ${AMQP_PORT}}\n"
                                         "spool: {dir: ${SPOOL_DIR}}\n"
                                         "routes: [{name: r, topic: \"x/#\", exchange: \"\"}]\n"
                                         "metrics: {listen: \"127.0.0.1:${METRICS_PORT}\"}\n"),
                     0);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    int code = -1;
    ck_assert_int_eq(th_bridge_wait_exit(b, 30000, &code), 0);
    ck_assert_int_eq(code, 1);
    ck_assert_int_eq(th_bridge_wait_log(b, "Address already in use", 1000), 0);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, counters_grow_during_traffic_and_equal_deliveries_after);
    tcase_add_test(tc, health_and_readiness_follow_the_connections);
    tcase_add_test(tc, a_taken_metrics_port_fails_the_start);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
