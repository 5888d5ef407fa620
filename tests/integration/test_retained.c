/* test_retained.c - retained messages handled right (issue 11, item 5):
 * exactly one copy in the queue per retained publish across bridge
 * restarts, a Mosquitto restart (session present), reloads that change the
 * subscriptions, and a retained publish while the bridge is away; a live
 * retained message says x-mqtt-retain: true (MQTT 5), a retained-delete
 * carries x-mqtt-retained-delete, and a route with retained: skip forwards
 * none. The restart, reload and away cases run with MQTT 5 (retain handling
 * "only if new") and MQTT 3.1.1 (mqtt.retained_resend: skip).
 *
 * Copies are counted by the seq in the payload. "No extra copy arrived" is
 * proved without a sleep: after the event a non-retained marker is
 * published on the same topic and waited for; Mosquitto delivers one
 * session's messages in order and the bridge keeps that order, so once the
 * marker is in the queue anything sent before it is there too.
 *
 * Real Mosquitto (the shipped config: persistence on) and RabbitMQ. */
#include <check.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow.h"
#include "harness.h"
#include "http.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define WAIT_MS 60000

static const int protocols[] = {5, 311};

struct setup {
    int protocol;
    const char *name;
    struct th_mosq *mq;
    struct th_bridge *b;
    struct th_amqp *c;
    char *queue;
    struct th_msgs got;
    size_t distinct; /* distinct seqs published so far (markers included) */
    int subacks;     /* "subscribed to" lines expected in this run's log */
    int metrics_port;
};

/* The config: routes for ret/a/# plus `more_routes`. */
static char *config(const struct setup *s, const char *more_routes)
{
    return xasprintf("mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-ret-%s-%d, "
                     "protocol: %d, reconnect_max_ms: 1000}\n"
                     "amqp:\n"
                     "  port: ${AMQP_PORT}\n"
                     "  reconnect_max_ms: 1000\n"
                     "  topology:\n"
                     "    exchanges: [{name: %s, type: topic}]\n"
                     "    queues: [{name: %s, bindings: [{exchange: %s}]}]\n"
                     "spool: {dir: ${SPOOL_DIR}}\n"
                     "metrics: {listen: \"127.0.0.1:${METRICS_PORT}\"}\n"
                     "routes:\n"
                     "  - {name: a, topic: \"ret/a/#\", exchange: %s}\n%s"
                     "log: {stats_interval: 0}\n",
                     s->name, s->protocol, s->protocol, s->queue, s->queue, s->queue, s->queue,
                     more_routes);
}

static void reconfigure(struct setup *s, const char *more_routes)
{
    char *yaml = config(s, more_routes);
    ck_assert_int_eq(th_bridge_config(s->b, yaml), 0);
    free(yaml);
}

static void setup_start(struct setup *s, const char *name, int protocol, const char *more_routes)
{
    s->name = name;
    s->protocol = protocol;
    s->queue = xasprintf("it.ret.%s.%d", name, protocol);
    s->mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(s->mq);
    s->b = th_bridge_new(s->mq);
    s->metrics_port = th_free_port();
    th_bridge_set(s->b, "METRICS_PORT", "%d", s->metrics_port);
    th_bridge_set(s->b, "Q", "%s", s->queue);
    reconfigure(s, more_routes);
    s->c = th_amqp_consumer(th_rabbit_port(), s->queue, s->queue, "#");
    ck_assert_ptr_nonnull(s->c);
    ck_assert_int_eq(th_bridge_start_ready(s->b, WAIT_MS), 0);
    s->subacks = 1;
}

static void setup_free(struct setup *s)
{
    th_msgs_free(&s->got);
    th_amqp_free(s->c);
    th_bridge_free(s->b);
    th_mosq_free(s->mq);
    free(s->queue);
}

static void on_published(struct mosquitto *m, void *ud, int mid, int rc,
                         const mosquitto_property *props)
{
    (void)m;
    (void)mid;
    (void)props;
    /* 16: no matching subscribers, a success (the message is retained) */
    *(int *)ud = rc == 0 || rc == MQTT_RC_NO_MATCHING_SUBSCRIBERS ? 1 : -1;
}

/* Publishes "seq=<seq>" (seq < 0: an empty payload) at QoS 1 with MQTT 5
 * and waits for the PUBACK. */
static void publish(const struct setup *s, const char *topic, long seq, bool retain)
{
    int acked = 0;
    char payload[32] = "";
    if (seq >= 0)
        snprintf(payload, sizeof(payload), "seq=%ld", seq);
    struct mosquitto *m = mosquitto_new(NULL, true, &acked);
    ck_assert_ptr_nonnull(m);
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_publish_v5_callback_set(m, on_published);
    if (mosquitto_connect(m, "127.0.0.1", s->mq->port, 30) == MOSQ_ERR_SUCCESS &&
        mosquitto_publish(m, NULL, topic, (int)strlen(payload), payload, 1, retain) ==
            MOSQ_ERR_SUCCESS) {
        uint64_t end = m2a_now_ms() + WAIT_MS;
        while (!acked && m2a_now_ms() < end && mosquitto_loop(m, 50, 1) == MOSQ_ERR_SUCCESS)
            ;
    }
    mosquitto_disconnect(m);
    mosquitto_loop(m, 50, 1);
    mosquitto_destroy(m);
    ck_assert_msg(acked == 1, "publish of seq %ld to %s not acknowledged", seq, topic);
}

/* A retained publish of a new seq. */
static void publish_retained(struct setup *s, const char *topic, long seq)
{
    publish(s, topic, seq, true);
    s->distinct++;
}

/* Publishes the non-retained marker seq on topic and waits until it, and
 * so everything the broker sent the bridge before it, is in the queue. */
static void marker(struct setup *s, const char *topic, long seq)
{
    publish(s, topic, seq, false);
    s->distinct++;
    ck_assert_int_eq(th_amqp_collect(s->c, &s->got, s->distinct, WAIT_MS), 0);
}

static bool header_is(const struct th_msg *m, const char *key, const char *value)
{
    const char *v = th_msg_header(m, key);
    return v && strcmp(v, value) == 0;
}

static long copies(const struct setup *s, long seq)
{
    long n = 0;
    for (size_t i = 0; i < s->got.n; i++)
        n += s->got.v[i].seq == seq;
    return n;
}

static const struct th_msg *first_copy(const struct setup *s, long seq)
{
    for (size_t i = 0; i < s->got.n; i++)
        if (s->got.v[i].seq == seq)
            return &s->got.v[i];
    return NULL;
}

/* Every retained seq in [from, to] arrived exactly once. */
static void assert_once(const struct setup *s, long from, long to, const char *when)
{
    for (long q = from; q <= to; q++) {
        long n = copies(s, q);
        fprintf(stderr, "retained %s (MQTT %d): seq %ld, %ld copies\n", when, s->protocol, q, n);
        ck_assert_msg(n == 1, "%s (MQTT %d): retained seq %ld arrived %ld times", when, s->protocol,
                      q, n);
    }
}

static void wait_subacks(struct setup *s, int more)
{
    s->subacks += more;
    ck_assert_int_eq(th_bridge_wait_log_count(s->b, "mqtt: subscribed to", s->subacks, WAIT_MS), 0);
}

/* (a) and (h): three bridge restarts resend nothing; (e) the live copy
 * says x-mqtt-retain: true with MQTT 5. */
START_TEST(bridge_restarts_forward_a_retained_message_once)
{
    struct setup s = {0};
    setup_start(&s, "restart", protocols[_i], "");
    publish_retained(&s, "ret/a/state", 0);
    marker(&s, "ret/a/state", 100);
    for (long k = 1; k <= 3; k++) {
        ck_assert_int_eq(th_bridge_stop(s.b, WAIT_MS), 0);
        ck_assert_int_eq(th_bridge_start_ready(s.b, WAIT_MS), 0);
        s.subacks = 1;
        marker(&s, "ret/a/state", 100 + k);
    }
    assert_once(&s, 0, 0, "after 3 bridge restarts");
    const struct th_msg *live = first_copy(&s, 0);
    /* MQTT 3.1.1 has no Retain As Published: the broker clears the flag. */
    ck_assert_str_eq(th_msg_header(live, "x-mqtt-retain"), s.protocol == 5 ? "true" : "false");
    setup_free(&s);
}
END_TEST

/* (b): Mosquitto restarts (persistence: the bridge's session is present). */
START_TEST(a_mosquitto_restart_forwards_a_retained_message_once)
{
    struct setup s = {0};
    setup_start(&s, "mosq", protocols[_i], "");
    publish_retained(&s, "ret/a/state", 0);
    marker(&s, "ret/a/state", 100);
    ck_assert_int_eq(th_mosq_restart(s.mq), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "session present: yes", WAIT_MS), 0);
    wait_subacks(&s, 1);
    marker(&s, "ret/a/state", 101);
    assert_once(&s, 0, 0, "after a Mosquitto restart");
    setup_free(&s);
}
END_TEST

/* (c): reloads that add a filter (its retained message arrives once), add
 * one while Mosquitto is down (at the reconnect every filter is
 * resubscribed: only the new one's retained message is news), and remove
 * one. */
START_TEST(reloads_forward_each_retained_message_once)
{
    static const char *const route_b = "  - {name: b, topic: \"ret/b/#\", exchange: ${Q}}\n";
    static const char *const route_bc = "  - {name: b, topic: \"ret/b/#\", exchange: ${Q}}\n"
                                        "  - {name: c, topic: \"ret/c/#\", exchange: ${Q}}\n";
    struct setup s = {0};
    setup_start(&s, "reload", protocols[_i], "");
    publish_retained(&s, "ret/a/state", 0);
    publish_retained(&s, "ret/b/state", 1); /* no route yet */
    publish_retained(&s, "ret/c/state", 2); /* no route yet */
    s.distinct -= 2;
    marker(&s, "ret/a/state", 100);
    ck_assert_int_eq(copies(&s, 1) + copies(&s, 2), 0);

    /* 1: a new filter: its retained message once, nothing else again */
    reconfigure(&s, route_b);
    ck_assert_int_eq(th_bridge_signal(s.b, SIGHUP), 0);
    wait_subacks(&s, 1);
    s.distinct++;
    marker(&s, "ret/b/state", 101);
    marker(&s, "ret/a/state", 102);
    assert_once(&s, 0, 1, "after a reload adding a filter");

    /* 2: another one added while Mosquitto is down */
    ck_assert_int_eq(th_mosq_stop(s.mq), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "mqtt: disconnected from", WAIT_MS), 0);
    reconfigure(&s, route_bc);
    ck_assert_int_eq(th_bridge_signal(s.b, SIGHUP), 0);
    ck_assert_int_eq(th_bridge_wait_log_count(s.b, "mqtt: routes reloaded", 2, WAIT_MS), 0);
    ck_assert_int_eq(th_mosq_restart(s.mq), 0);
    wait_subacks(&s, 3);
    s.distinct++;
    marker(&s, "ret/c/state", 103);
    marker(&s, "ret/b/state", 104);
    marker(&s, "ret/a/state", 105);
    assert_once(&s, 0, 2, "after a reload while Mosquitto was down");

    /* 3: one removed */
    reconfigure(&s, route_b);
    ck_assert_int_eq(th_bridge_signal(s.b, SIGHUP), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "unsubscribed from ret/c/#", WAIT_MS), 0);
    marker(&s, "ret/b/state", 106);
    marker(&s, "ret/a/state", 107);
    assert_once(&s, 0, 2, "after a reload removing a filter");
    setup_free(&s);
}
END_TEST

/* (d): published while the bridge was away: queued in its session, and
 * resent by the resubscription on main; once only. */
START_TEST(a_retained_message_published_while_away_arrives_once)
{
    struct setup s = {0};
    setup_start(&s, "away", protocols[_i], "");
    marker(&s, "ret/a/state", 100);
    ck_assert_int_eq(th_bridge_stop(s.b, WAIT_MS), 0);
    publish_retained(&s, "ret/a/state", 0);
    ck_assert_int_eq(th_bridge_start_ready(s.b, WAIT_MS), 0);
    marker(&s, "ret/a/state", 101);
    assert_once(&s, 0, 0, "published while the bridge was away");
    setup_free(&s);
}
END_TEST

/* (f): a retained-delete says so; an ordinary empty message does not. */
START_TEST(a_retained_delete_carries_a_header)
{
    struct setup s = {0};
    setup_start(&s, "delete", 5, "");
    publish_retained(&s, "ret/a/state", 0);
    publish(&s, "ret/a/state", -1, true); /* the delete */
    publish(&s, "ret/a/other", -1, false);
    marker(&s, "ret/a/state", 100);
    marker(&s, "ret/a/other", 101);
    const struct th_msg *del = NULL, *empty = NULL;
    for (size_t i = 0; i < s.got.n; i++) {
        const struct th_msg *m = &s.got.v[i];
        if (m->body_len == 0 && header_is(m, "x-mqtt-topic", "ret/a/state"))
            del = m;
        if (m->body_len == 0 && header_is(m, "x-mqtt-topic", "ret/a/other"))
            empty = m;
    }
    ck_assert_ptr_nonnull(del);
    ck_assert_ptr_nonnull(empty);
    ck_assert_str_eq(th_msg_header(del, "x-mqtt-retain"), "true");
    ck_assert_pstr_eq(th_msg_header(del, "x-mqtt-retained-delete"), "true");
    ck_assert_ptr_null(th_msg_header(empty, "x-mqtt-retained-delete"));
    setup_free(&s);
}
END_TEST

/* (g): retained: skip forwards no retained message, deletes included, and
 * counts them; ordinary messages on the route go through. */
START_TEST(a_route_with_retained_skip_forwards_none)
{
    struct setup s = {0};
    setup_start(&s, "skip", 5,
                "  - {name: s, topic: \"ret/s/#\", exchange: ${Q}, retained: skip}\n");
    publish(&s, "ret/s/state", 0, true);
    publish(&s, "ret/s/state", -1, true); /* a delete */
    marker(&s, "ret/s/state", 100);
    ck_assert_int_eq(copies(&s, 0), 0);
    ck_assert_uint_eq(s.got.n, 1); /* the marker alone: no delete either */
    struct th_http_reply r = {0};
    ck_assert_int_eq(th_http(s.metrics_port, "GET", "/metrics", WAIT_MS, &r), 0);
    ck_assert_double_eq(th_metric(r.body, "mqtt2amqp_retained_skipped_total"), 2);
    ck_assert_double_eq(th_metric(r.body, "mqtt2amqp_route_retained_skipped_total{route=\"s\"}"),
                        2);
    ck_assert_double_eq(th_metric(r.body, "mqtt2amqp_route_matched_total{route=\"s\"}"), 3);
    th_http_reply_free(&r);
    setup_free(&s);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("retained");
    TCase *tc = tcase_create("retained");
    tcase_set_timeout(tc, 300);
    int np = (int)(sizeof(protocols) / sizeof(protocols[0]));
    tcase_add_loop_test(tc, bridge_restarts_forward_a_retained_message_once, 0, np);
    tcase_add_loop_test(tc, a_mosquitto_restart_forwards_a_retained_message_once, 0, np);
    tcase_add_loop_test(tc, reloads_forward_each_retained_message_once, 0, np);
    tcase_add_loop_test(tc, a_retained_message_published_while_away_arrives_once, 0, np);
    tcase_add_test(tc, a_retained_delete_carries_a_header);
    tcase_add_test(tc, a_route_with_retained_skip_forwards_none);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    mosquitto_lib_init();
    return m2a_check_run(suite());
}
