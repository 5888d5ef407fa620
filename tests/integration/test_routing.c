/* test_routing.c - routes deliver to bound queues with the exact routing
 * keys, properties and headers (issue 2 acceptance a), and overlapping routes
 * deliver exactly one copy per matching route (b). Real Mosquitto (shipped
 * config), real RabbitMQ (the fixture), the real bridge binary; every queue
 * is checked by sequence number for lost, duplicated and unexpected. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow.h"
#include "harness.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

static const char *const config_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-routing}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  topology:\n"
    "    exchanges:\n"
    "      - {name: it.routing, type: topic, durable: true}\n"
    "    queues:\n"
    "      - name: it.routing.temp\n"
    "        bindings: [{exchange: it.routing, routing_key: \"sensors.*.temperature\"}]\n"
    "      - name: it.routing.all\n"
    "        bindings: [{exchange: it.routing, routing_key: \"all.#\"}]\n"
    "      - name: it.routing.default\n"
    "        bindings: [{exchange: it.routing, routing_key: \"plant.#\"}]\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - name: temperature\n"
    "    topic: sensors/+/temp\n"
    "    exchange: it.routing\n"
    "    routing_key: \"sensors.{1}.temperature\"\n"
    "    content_type: application/json\n"
    "    headers: {device: \"{1}\", kind: temperature}\n"
    "    continue: true\n"
    "  - name: everything\n"
    "    topic: sensors/#\n"
    "    exchange: it.routing\n"
    "    routing_key: \"all.{1}\"\n"
    "    headers: {rest: \"{1}\"}\n"
    "  - name: never-reached\n"
    "    topic: sensors/+/+\n"
    "    exchange: it.routing\n"
    "    routing_key: \"all.never\"\n"
    "  - name: plant\n"
    "    topic: plant/#\n"
    "    exchange: it.routing\n"
    "    persistent: false\n"
    "log: {level: debug}\n";

/* seq s is published to topics[s % 4] */
static const char *const topics[] = {"sensors/dev1/temp", "sensors/dev.2/temp", "sensors/a/b/c",
                                     "plant/line.1/press"};
#define NTOPICS 4
#define N       2000

static long count_for_topic(long n, int t)
{
    return n / NTOPICS + (t < n % NTOPICS ? 1 : 0);
}

/* Seqs expected in a queue: those published to the given topics. */
static struct th_delivery check_queue(const char *queue, const struct th_msgs *ms,
                                      const int *topic_idx, size_t ntopic)
{
    struct th_delivery d = {0};
    unsigned char *seen = xcalloc(N, 1);
    long expected = 0;
    for (size_t k = 0; k < ntopic; k++)
        expected += count_for_topic(N, topic_idx[k]);
    d.sent = expected;
    for (size_t i = 0; i < ms->n; i++) {
        long s = ms->v[i].seq;
        bool wanted = false;
        for (size_t k = 0; k < ntopic; k++)
            wanted |= s >= 0 && s < N && s % NTOPICS == topic_idx[k];
        d.received++;
        if (!wanted)
            d.unexpected++;
        else if (seen[s]++)
            d.duplicated++;
    }
    for (long s = 0; s < N; s++)
        for (size_t k = 0; k < ntopic; k++)
            if (s % NTOPICS == topic_idx[k] && !seen[s])
                d.lost++;
    free(seen);
    fprintf(stderr, "delivery %s: sent=%ld received=%ld lost=%ld duplicated=%ld unexpected=%ld\n",
            queue, d.sent, d.received, d.lost, d.duplicated, d.unexpected);
    return d;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool same(const char *a, const char *b)
{
    return a && b && strcmp(a, b) == 0;
}

/* Declares the exchange as the bridge's topology does (whoever is first
 * creates it) and the queue, which the bridge binds. */
static struct th_amqp *consumer(const char *queue)
{
    struct th_amqp *c = th_amqp_consumer(th_rabbit_port(), queue, "it.routing", NULL);
    ck_assert_ptr_nonnull(c);
    return c;
}

START_TEST(routes_deliver_exact_keys_headers_and_one_copy_per_route)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_bridge *b = th_bridge_new(mq);
    ck_assert_int_eq(th_bridge_config(b, config_yaml), 0);
    struct th_amqp *ct = consumer("it.routing.temp");
    struct th_amqp *ca = consumer("it.routing.all");
    struct th_amqp *cd = consumer("it.routing.default");
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);

    struct th_pub p = {.port = mq->port,
                       .topics = topics,
                       .ntopics = NTOPICS,
                       .first = 0,
                       .count = N,
                       .payload_size = 64,
                       .qos = 1,
                       .timeout_ms = 60000};
    ck_assert_int_eq(th_mqtt_publish(&p), N);

    struct th_msgs temp = {0}, all = {0}, plant = {0};
    long n_temp = count_for_topic(N, 0) + count_for_topic(N, 1);
    long n_all = N - count_for_topic(N, 3);
    th_amqp_collect(ct, &temp, (size_t)n_temp, 60000);
    th_amqp_collect(ca, &all, (size_t)n_all, 60000);
    th_amqp_collect(cd, &plant, (size_t)count_for_topic(N, 3), 60000);
    /* Anything extra (a second copy) would arrive right behind: drain. */
    th_amqp_drain(ct, &temp, 500);
    th_amqp_drain(ca, &all, 500);
    th_amqp_drain(cd, &plant, 500);

    TH_ASSERT_EXACT(check_queue("it.routing.temp", &temp, (const int[]){0, 1}, 2));
    TH_ASSERT_EXACT(check_queue("it.routing.all", &all, (const int[]){0, 1, 2}, 3));
    TH_ASSERT_EXACT(check_queue("it.routing.default", &plant, (const int[]){3}, 1));

    /* One assertion per property over all messages (check's runner chokes on
     * thousands of passing assertions): count and show the first mismatch. */
    long bad = 0;
    for (size_t i = 0; i < temp.n; i++) {
        const struct th_msg *m = &temp.v[i];
        bool dot = m->seq % NTOPICS == 1;
        const char *want_rk = dot ? "sensors.dev/2.temperature" : "sensors.dev1.temperature";
        const char *dev = th_msg_header(m, "device"), *kind = th_msg_header(m, "kind");
        const char *topic = th_msg_header(m, "x-mqtt-topic");
        const char *qos = th_msg_header(m, "x-mqtt-qos"), *ret = th_msg_header(m, "x-mqtt-retain");
        bool ok = same(m->routing_key, want_rk) && same(dev, dot ? "dev/2" : "dev1") &&
                  same(kind, "temperature") && same(topic, topics[m->seq % NTOPICS]) &&
                  same(qos, "1") && same(ret, "false") &&
                  same(m->content_type, "application/json") && m->delivery_mode == 2 &&
                  m->timestamp > 1700000000 && m->message_id;
        if (!ok && bad++ == 0)
            fprintf(stderr,
                    "first bad message in it.routing.temp: seq=%ld rk=%s device=%s kind=%s "
                    "topic=%s qos=%s retain=%s content_type=%s mode=%d ts=%lld id=%s\n",
                    m->seq, m->routing_key, dev, kind, topic, qos, ret, m->content_type,
                    m->delivery_mode, (long long)m->timestamp, m->message_id);
    }
    ck_assert_int_eq(bad, 0);
    for (size_t i = 0; i < all.n; i++) {
        const struct th_msg *m = &all.v[i];
        static const char *const keys[] = {"all.dev1.temp", "all.dev/2.temp", "all.a.b.c"};
        static const char *const rest[] = {"dev1.temp", "dev/2.temp", "a.b.c"};
        bool ok = m->seq % NTOPICS < 3 && same(m->routing_key, keys[m->seq % NTOPICS]) &&
                  same(th_msg_header(m, "rest"), rest[m->seq % NTOPICS]) && !m->content_type &&
                  m->message_id;
        if (!ok && bad++ == 0)
            fprintf(stderr, "first bad message in it.routing.all: seq=%ld rk=%s rest=%s\n", m->seq,
                    m->routing_key, th_msg_header(m, "rest"));
    }
    ck_assert_int_eq(bad, 0);
    for (size_t i = 0; i < plant.n; i++) {
        /* no routing_key: the topic converted as RabbitMQ's MQTT plugin does */
        bool ok =
            same(plant.v[i].routing_key, "plant.line/1.press") && plant.v[i].delivery_mode == 1;
        if (!ok && bad++ == 0)
            fprintf(stderr, "first bad message in it.routing.default: rk=%s mode=%d\n",
                    plant.v[i].routing_key, plant.v[i].delivery_mode);
    }
    ck_assert_int_eq(bad, 0);

    /* message ids are unique per published message */
    size_t total = temp.n + all.n;
    char **ids = xcalloc(total, sizeof(char *));
    for (size_t i = 0; i < temp.n; i++)
        ids[i] = temp.v[i].message_id;
    for (size_t i = 0; i < all.n; i++)
        ids[temp.n + i] = all.v[i].message_id;
    qsort(ids, total, sizeof(char *), cmp_str);
    size_t repeats = 0;
    for (size_t i = 1; i < total; i++)
        repeats += strcmp(ids[i - 1], ids[i]) == 0;
    ck_assert_uint_eq(repeats, 0);
    free(ids);

    /* graceful stop */
    ck_assert_int_eq(th_bridge_signal(b, SIGTERM), 0);
    int code = -1;
    ck_assert_int_eq(th_bridge_wait_exit(b, 30000, &code), 0);
    ck_assert_int_eq(code, 0);

    th_msgs_free(&temp);
    th_msgs_free(&all);
    th_msgs_free(&plant);
    th_amqp_free(ct);
    th_amqp_free(ca);
    th_amqp_free(cd);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* amqp.mqtt_headers: none leaves the three x-mqtt-* headers out; the
 * route's own headers and the properties stay. */
START_TEST(mqtt_headers_none_leaves_out_the_mqtt_headers)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_bridge *b = th_bridge_new(mq);
    ck_assert_int_eq(
        th_bridge_config(b, "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-hdr}\n"
                            "amqp:\n"
                            "  port: ${AMQP_PORT}\n"
                            "  mqtt_headers: none\n"
                            "  topology:\n"
                            "    exchanges: [{name: it.hdr, type: topic}]\n"
                            "    queues: [{name: it.hdr, bindings: [{exchange: it.hdr}]}]\n"
                            "spool: {dir: ${SPOOL_DIR}}\n"
                            "routes:\n"
                            "  - {name: h, topic: \"sensors/#\", exchange: it.hdr, "
                            "headers: {device: \"{1}\"}}\n"),
        0);
    struct th_amqp *c = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(th_amqp_declare_exchange(c, "it.hdr", "topic", true), 0);
    ck_assert_int_eq(th_amqp_declare(c, "it.hdr", true, false), 0);
    ck_assert_int_eq(th_amqp_bind(c, "it.hdr", "it.hdr", "#"), 0);
    ck_assert_int_eq(th_amqp_purge(c, "it.hdr"), 0);
    ck_assert_int_eq(th_amqp_consume(c, "it.hdr"), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);

    enum { n = 200 };
    struct th_pub p = {.port = mq->port,
                       .topics = topics,
                       .ntopics = 1,
                       .count = n,
                       .payload_size = 64,
                       .qos = 1,
                       .timeout_ms = 60000};
    ck_assert_int_eq(th_mqtt_publish(&p), n);
    struct th_msgs got = {0};
    int rc = th_amqp_collect(c, &got, n, 60000);
    th_amqp_drain(c, &got, 300);
    struct th_delivery d = th_check_msgs(0, n, &got);
    ck_assert_int_eq(rc, 0);
    TH_ASSERT_EXACT(d);
    long bad = 0;
    for (size_t i = 0; i < got.n; i++) {
        const struct th_msg *m = &got.v[i];
        bool ok = m->nheaders == 1 && same(th_msg_header(m, "device"), "dev1.temp") &&
                  !th_msg_header(m, "x-mqtt-topic") && !th_msg_header(m, "x-mqtt-qos") &&
                  !th_msg_header(m, "x-mqtt-retain") && m->message_id && m->delivery_mode == 2;
        if (!ok && bad++ == 0)
            fprintf(stderr, "first bad message in it.hdr: seq=%ld nheaders=%zu device=%s\n", m->seq,
                    m->nheaders, th_msg_header(m, "device"));
    }
    ck_assert_int_eq(bad, 0);
    th_msgs_free(&got);
    th_amqp_free(c);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("routing");
    TCase *tc = tcase_create("routing");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, routes_deliver_exact_keys_headers_and_one_copy_per_route);
    tcase_add_test(tc, mqtt_headers_none_leaves_out_the_mqtt_headers);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
