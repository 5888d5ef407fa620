/* test_mqtt_side.c - the MQTT side against real Mosquitto and the real
 * binary (issue 9): a broker that never answers the CONNECT, a connect
 * that never completes and a SIGTERM meanwhile, a subscription the broker
 * refuses (/readyz, the metric, the retry), and a publish larger than the
 * bridge accepts (MQTT 5 Maximum Packet Size: the broker drops it, the
 * bridge's memory does not grow by it).
 *
 * Mosquitto 2.0.11's acl_file does not refuse subscriptions (it grants
 * them and filters what is delivered): the refusing broker uses its
 * dynamic security plugin, whose subscribePattern deny answers SUBACK 0x87,
 * and the test lifts the deny through the plugin's control topic (which
 * makes the plugin disconnect the bridge: the retries on the connection are
 * checked before, by the refusals counted). */
#include <check.h>
#include <glob.h>
#include <mosquitto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow.h"
#include "harness.h"
#include "http.h"
#include "mqtt2amqp/util.h"
#include "proxy.h"
#include "sink.h"
#include "check_main.h"

#define WAIT_MS 30000

/* A bridge of one route, "side/#" -> exchange it.side.NAME -> queue of the
 * same name; extra_mqtt goes into the mqtt mapping. */
static struct th_bridge *bridge_new(const struct th_mosq *mq, int mqtt_port, const char *name,
                                    const char *extra_mqtt, const char *extra_routes)
{
    struct th_bridge *b = th_bridge_new(mq);
    th_bridge_set(b, "MQTT_PORT", "%d", mqtt_port);
    th_bridge_set(b, "METRICS_PORT", "%d", th_free_port());
    char *yaml = xasprintf("mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-side-%s, "
                           "reconnect_max_ms: 1000%s}\n"
                           "amqp:\n"
                           "  port: ${AMQP_PORT}\n"
                           "  topology:\n"
                           "    exchanges: [{name: it.side.%s, type: topic}]\n"
                           "    queues: [{name: it.side.%s, bindings: [{exchange: it.side.%s}]}]\n"
                           "spool: {dir: ${SPOOL_DIR}}\n"
                           "routes:\n"
                           "  - {name: side, topic: \"side/#\", exchange: it.side.%s}\n%s"
                           "metrics: {listen: \"127.0.0.1:${METRICS_PORT}\"}\n"
                           "log: {stats_interval: 0}\n",
                           name, extra_mqtt ? extra_mqtt : "", name, name, name, name,
                           extra_routes ? extra_routes : "");
    ck_assert_int_eq(th_bridge_config(b, yaml), 0);
    free(yaml);
    return b;
}

static int metrics_port(struct th_bridge *b)
{
    for (char **v = b->vars; *v; v++)
        if (!strncmp(*v, "METRICS_PORT=", 13))
            return atoi(*v + 13);
    ck_abort_msg("no METRICS_PORT");
    return 0;
}

/* GET path on the bridge's metrics port: the status, the body in *body. */
static int get(struct th_bridge *b, const char *path, char **body)
{
    struct th_http_reply r;
    ck_assert_int_eq(th_http(metrics_port(b), "GET", path, 5000, &r), 0);
    int status = r.status;
    *body = r.body;
    r.body = NULL;
    th_http_reply_free(&r);
    return status;
}

static void on_published(struct mosquitto *m, void *ud, int mid, int rc,
                         const mosquitto_property *props)
{
    (void)m;
    (void)mid;
    (void)props;
    *(int *)ud = rc < 0x80 ? 1 : -1;
}

/* One message published with a libmosquitto client of its own (MQTT 5):
 * at QoS 1, acknowledged by Mosquitto; at QoS 0, written. 0 or -1. */
static int publish_one(int port, const char *topic, const void *payload, size_t len, int qos)
{
    int acked = 0;
    struct mosquitto *m = mosquitto_new(NULL, true, &acked);
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_publish_v5_callback_set(m, on_published);
    if (mosquitto_connect(m, "127.0.0.1", port, 30) == MOSQ_ERR_SUCCESS &&
        mosquitto_publish(m, NULL, topic, (int)len, payload, qos, false) == MOSQ_ERR_SUCCESS) {
        uint64_t end = m2a_now_ms() + WAIT_MS;
        while ((qos ? !acked : mosquitto_want_write(m)) && m2a_now_ms() < end &&
               mosquitto_loop(m, 50, 1) == MOSQ_ERR_SUCCESS)
            ;
        if (qos == 0)
            acked = mosquitto_want_write(m) ? -1 : 1;
    }
    mosquitto_disconnect(m);
    mosquitto_loop(m, 50, 1);
    mosquitto_destroy(m);
    return acked == 1 ? 0 : -1;
}

struct metric_wait {
    struct th_bridge *b;
    const char *series;
    double at_least;
};

static bool metric_reached(void *arg)
{
    struct metric_wait *w = arg;
    char *body = NULL;
    bool ok = get(w->b, "/metrics", &body) == 200 && th_metric(body, w->series) >= w->at_least;
    free(body);
    return ok;
}

/* --- a broker that never answers ------------------------------------------------- */

/* The CONNECT is held by a proxy that moves no byte: the log says that no
 * CONNACK came within mqtt.connect_timeout, not "keepalive timeout (no
 * PINGRESP read)" seconds later (what libmosquitto's keepalive check
 * reported before). */
START_TEST(a_broker_that_never_answers_is_reported_as_such)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_STOCK);
    ck_assert_ptr_nonnull(mq);
    struct th_proxy *px = th_proxy_new(mq->port);
    ck_assert_ptr_nonnull(px);
    ck_assert_int_eq(th_proxy_blackhole(px), 0);
    struct th_bridge *b =
        bridge_new(mq, th_proxy_port(px), "silent", ", keepalive: 5, connect_timeout: 1s", NULL);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_log(b,
                                        "no CONNACK within 1.0 s (TCP connected, CONNECT sent, "
                                        "no CONNACK)",
                                        10000),
                     0);
    ck_assert_int_eq(th_proc_log_count(&b->proc, "keepalive"), 0);
    /* Once the proxy forwards again, the bridge connects. */
    ck_assert_int_eq(th_proxy_resume(px), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "mqtt: subscribed to side/#", WAIT_MS), 0);
    ck_assert_int_eq(th_bridge_stop(b, 10000), 0);
    th_bridge_free(b);
    th_proxy_free(px);
    th_mosq_free(mq);
}
END_TEST

/* SYNs dropped: the TCP connect itself never completes. The deadline says
 * so, and a SIGTERM in the middle of such a connect stops the bridge at
 * once (libmosquitto's blocking connect used to need a signal for that). */
START_TEST(a_connect_that_never_completes_does_not_hold_up_the_stop)
{
    struct th_sink *sink = th_sink_new();
    ck_assert_ptr_nonnull(sink);
    struct th_bridge *b = bridge_new(NULL, sink->port, "sink", ", connect_timeout: 1s", NULL);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    ck_assert_int_eq(
        th_bridge_wait_log(b, "no CONNACK within 1.0 s (the TCP connection was not established)",
                           10000),
        0);
    /* The next attempt hangs the same way; stop in its middle. */
    ck_assert_int_eq(th_bridge_wait_log(b, "amqp: connected to", WAIT_MS), 0);
    uint64_t t0 = m2a_now_ms();
    ck_assert_int_eq(th_bridge_stop(b, 10000), 0);
    ck_assert_uint_lt(m2a_now_ms() - t0, 3000);
    th_bridge_free(b);
    th_sink_free(sink);
}
END_TEST

/* --- a refused subscription ------------------------------------------------------ */

/* Mosquitto with the dynamic security plugin: anonymous clients may do
 * anything but subscribe to secret/#, and may edit the rules. */
static struct th_mosq *start_refusing_broker(char **dir)
{
    glob_t g;
    if (glob("/usr/lib/*/mosquitto_dynamic_security.so", 0, NULL, &g) != 0) {
        ck_abort_msg("Mosquitto's dynamic security plugin is not installed");
        return NULL;
    }
    *dir = th_tmpdir_new("dynsec");
    char *json = xasprintf("%s/dynsec.json", *dir);
    const char *rules =
        "{\"defaultACLAccess\": {\"publishClientSend\": true, \"publishClientReceive\": true, "
        "\"subscribe\": true, \"unsubscribe\": true},\n"
        " \"clients\": [], \"anonymousGroup\": \"anon\",\n"
        " \"groups\": [{\"groupname\": \"anon\", \"roles\": [{\"rolename\": \"r\"}]}],\n"
        " \"roles\": [{\"rolename\": \"r\", \"acls\": [\n"
        "   {\"acltype\": \"subscribePattern\", \"topic\": \"secret/#\", \"allow\": false},\n"
        "   {\"acltype\": \"publishClientSend\", \"topic\": \"$CONTROL/dynamic-security/#\", "
        "\"allow\": true}]}]}\n";
    ck_assert_int_eq(th_write_file(json, rules), 0);
    char *extra = xasprintf("plugin %s\nplugin_opt_config_file %s\n", g.gl_pathv[0], json);
    globfree(&g);
    struct th_mosq *mq = th_mosq_start_with(TH_MOSQ_STOCK, extra, 0);
    free(extra);
    free(json);
    return mq;
}

struct ready_wait {
    struct th_bridge *b;
    int status;
    const char *phrase;
};

static bool ready_is(void *arg)
{
    struct ready_wait *w = arg;
    char *body = NULL;
    int st = get(w->b, "/readyz", &body);
    bool ok = st == w->status && (!w->phrase || (body && strstr(body, w->phrase)));
    free(body);
    return ok;
}

/* The broker refuses secret/#: /readyz answers 503 naming the filter and
 * the broker's reason, the refusals are counted, the subscription is
 * retried with backoff on the same connection, and once the broker allows
 * it the bridge subscribes, /readyz is 200 again and messages flow. Before,
 * one log line and nothing else until the next reconnect. */
START_TEST(a_refused_subscription_fails_readiness_and_is_retried)
{
    char *dir = NULL;
    struct th_mosq *mq = start_refusing_broker(&dir);
    ck_assert_ptr_nonnull(mq);
    struct th_bridge *b =
        bridge_new(mq, mq->port, "refused", NULL,
                   "  - {name: secret, topic: \"secret/#\", exchange: it.side.refused}\n");
    struct th_amqp *c =
        th_amqp_consumer(th_rabbit_port(), "it.side.refused", "it.side.refused", "#");
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    ck_assert_int_eq(
        th_bridge_wait_log(b, "the broker refused the subscription to secret/#: Not authorized",
                           WAIT_MS),
        0);
    ck_assert_int_eq(th_bridge_wait_log(b, "amqp: connected to", WAIT_MS), 0);
    struct ready_wait w = {b, 503,
                           "mqtt: subscription to secret/# refused by the broker: Not authorized"};
    ck_assert_int_eq(th_poll_until(ready_is, &w, WAIT_MS), 0);
    char *body = NULL;
    ck_assert_int_eq(get(b, "/metrics", &body), 200);
    ck_assert_double_ge(th_metric(body, "mqtt2amqp_mqtt_subscribe_refusals_total"), 1);
    ck_assert_double_eq(th_metric(body, "mqtt2amqp_mqtt_subscriptions_refused"), 1);
    free(body);

    /* Retried with backoff (1 s, 2 s, ...) on the same connection. */
    struct metric_wait mw = {b, "mqtt2amqp_mqtt_subscribe_refusals_total", 2};
    ck_assert_int_eq(th_poll_until(metric_reached, &mw, WAIT_MS), 0);
    ck_assert_int_eq(th_proc_log_count(&b->proc, "mqtt: connected to"), 1);
    const char *lift = "{\"commands\": [{\"command\": \"removeRoleACL\", \"rolename\": \"r\", "
                       "\"acltype\": \"subscribePattern\", \"topic\": \"secret/#\"}]}";
    /* Lifting the deny: the plugin then disconnects every client of the
     * role ("administrative action"), the publisher of the command too, so
     * it goes at QoS 0; the bridge reconnects and subscribes. */
    ck_assert_int_eq(publish_one(mq->port, "$CONTROL/dynamic-security/v1", lift, strlen(lift), 0),
                     0);
    ck_assert_int_eq(th_bridge_wait_log(b, "mqtt: subscribed to secret/# (QoS 1) after", WAIT_MS),
                     0);
    w = (struct ready_wait){b, 200, "ready"};
    ck_assert_int_eq(th_poll_until(ready_is, &w, WAIT_MS), 0);

    const char *msg = "seq=0 secret";
    ck_assert_int_eq(publish_one(mq->port, "secret/1", msg, strlen(msg), 1), 0);
    struct th_msgs got = {0};
    ck_assert_int_eq(th_amqp_collect(c, &got, 1, WAIT_MS), 0);
    th_msgs_free(&got);
    ck_assert_int_eq(th_bridge_stop(b, 10000), 0);
    th_amqp_free(c);
    th_bridge_free(b);
    th_mosq_free(mq);
    th_rmtree(dir);
    free(dir);
}
END_TEST

/* --- a publish larger than the bridge accepts ------------------------------------ */

/* VmHWM (peak resident set) of pid, in KiB; -1 if unreadable. */
static long peak_rss_kib(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    char *text = th_read_file(path, NULL);
    const char *p = text ? strstr(text, "VmHWM:") : NULL;
    long v = p ? strtol(p + 6, NULL, 10) : -1;
    free(text);
    return v;
}

/* mqtt.max_message_bytes 1 MiB: the CONNECT says Maximum Packet Size
 * 1 MiB + 128 KiB, so Mosquitto drops a 48 MiB publish for the bridge
 * (and logs it) instead of sending it; the bridge's peak memory does not
 * grow by the payload, and the next message arrives. Before, the bridge
 * read the whole packet into memory only to refuse it. */
START_TEST(a_publish_above_the_limit_never_reaches_the_bridge)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_STOCK);
    ck_assert_ptr_nonnull(mq);
    struct th_bridge *b = bridge_new(mq, mq->port, "big", ", max_message_bytes: 1MiB", NULL);
    struct th_amqp *c = th_amqp_consumer(th_rabbit_port(), "it.side.big", "it.side.big", "#");
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(th_bridge_start_ready(b, WAIT_MS), 0);
    long before = peak_rss_kib(b->proc.pid);
    ck_assert_int_gt(before, 0);

    size_t big = 48u << 20;
    char *payload = xmalloc(big);
    memset(payload, 'x', big);
    memcpy(payload, "seq=0 big", 9);
    ck_assert_int_eq(publish_one(mq->port, "side/big", payload, big, 1), 0);
    free(payload);
    const char *small = "seq=1 small";
    ck_assert_int_eq(publish_one(mq->port, "side/small", small, strlen(small), 1), 0);

    struct th_msgs got = {0};
    ck_assert_int_eq(th_amqp_collect(c, &got, 1, WAIT_MS), 0);
    th_amqp_drain(c, &got, 500);
    ck_assert_int_eq(got.n, 1);
    ck_assert_int_eq(got.v[0].seq, 1);
    th_msgs_free(&got);
    long after = peak_rss_kib(b->proc.pid);
    fprintf(stderr, "bridge peak RSS %ld KiB before, %ld KiB after a 48 MiB publish\n", before,
            after);
    ck_assert_int_lt(after - before, 8 * 1024);
    ck_assert_int_ge(th_proc_log_count(&mq->proc, "Dropping too large outgoing PUBLISH"), 1);
    ck_assert_int_eq(th_bridge_stop(b, 10000), 0);
    th_amqp_free(c);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("mqtt_side");
    TCase *tc = tcase_create("mqtt_side");
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, a_broker_that_never_answers_is_reported_as_such);
    tcase_add_test(tc, a_connect_that_never_completes_does_not_hold_up_the_stop);
    tcase_add_test(tc, a_refused_subscription_fails_readiness_and_is_retried);
    tcase_add_test(tc, a_publish_above_the_limit_never_reaches_the_bridge);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    mosquitto_lib_init();
    return m2a_check_run(suite());
}
