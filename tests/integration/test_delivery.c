/* test_delivery.c - nothing acknowledged is lost (issue 2 acceptance c, d,
 * e): a 100,000-message burst against a Mosquitto with stock settings,
 * RabbitMQ stopped for 10 s mid-stream, and the bridge SIGKILLed mid-stream
 * and restarted. Each run is checked by sequence number; duplicates are
 * allowed across a crash (at-least-once) and reported. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "flow.h"
#include "harness.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

/* QUEUE and EXCHANGE differ per test so tests never see each other's data. */
static char *config_for(const char *name, const char *extra_mqtt)
{
    return xasprintf("mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-%s%s}\n"
                     "amqp:\n"
                     "  port: ${AMQP_PORT}\n"
                     "  reconnect_max_ms: 1000\n"
                     "  topology:\n"
                     "    exchanges: [{name: it.%s, type: topic}]\n"
                     "    queues:\n"
                     "      - name: it.%s\n"
                     "        bindings: [{exchange: it.%s, routing_key: \"#\"}]\n"
                     "spool: {dir: ${SPOOL_DIR}}\n"
                     "routes:\n"
                     "  - {name: all, topic: \"load/#\", exchange: it.%s}\n"
                     "log: {stats_interval: 1}\n"
                     "shutdown_timeout: 10\n",
                     name, extra_mqtt, name, name, name, name);
}

static const char *const load_topics[] = {"load/a", "load/b/c", "load/d.e", "load/f"};

struct setup {
    struct th_mosq *mq;
    struct th_bridge *b;
    struct th_amqp *c;
    char *queue;
};

static void setup_start(struct setup *s, const char *name, enum th_mosq_conf mconf)
{
    s->mq = th_mosq_start(mconf);
    ck_assert_ptr_nonnull(s->mq);
    s->b = th_bridge_new(s->mq);
    char *yaml = config_for(name, "");
    ck_assert_int_eq(th_bridge_config(s->b, yaml), 0);
    free(yaml);
    s->queue = xasprintf("it.%s", name); /* and the exchange */
    s->c = th_amqp_consumer(th_rabbit_port(), s->queue, s->queue, "#");
    ck_assert_ptr_nonnull(s->c);
    ck_assert_int_eq(th_bridge_start_ready(s->b, 60000), 0);
}

static void setup_free(struct setup *s)
{
    th_amqp_free(s->c);
    th_bridge_free(s->b);
    th_mosq_free(s->mq);
    free(s->queue);
}

/* c) 100,000 QoS 1 messages as fast as a stock Mosquitto takes them. */
START_TEST(burst_of_100k_against_stock_mosquitto_arrives_complete)
{
    struct setup s = {0};
    setup_start(&s, "burst", TH_MOSQ_STOCK);
    const long n = 100000;
    struct th_pub p = {.port = s.mq->port,
                       .topics = load_topics,
                       .ntopics = 4,
                       .count = n,
                       .payload_size = 100,
                       .qos = 1,
                       .window = 1000,
                       .timeout_ms = 120000};
    ck_assert_int_eq(th_mqtt_publish(&p), n);

    struct th_msgs got = {0};
    int rc = th_amqp_collect(s.c, &got, (size_t)n, 180000);
    th_amqp_drain(s.c, &got, 300);
    struct th_delivery d = th_check_msgs(0, n, &got);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(d.lost, 0);
    ck_assert_int_eq(d.unexpected, 0);
    /* no fault: no redelivery either */
    ck_assert_int_eq(d.duplicated, 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    th_msgs_free(&got);
    setup_free(&s);
}
END_TEST

/* d) RabbitMQ stopped for 10 s while messages keep coming, then started. */
START_TEST(rabbitmq_stopped_10s_mid_stream_loses_nothing)
{
    struct setup s = {0};
    setup_start(&s, "outage", TH_MOSQ_SHIPPED);
    struct th_flow f = {
        .port = s.mq->port, .topics = load_topics, .ntopics = 4, .chunk = 500, .max = 400000};
    th_flow_start(&f);

    struct th_msgs got = {0};
    ck_assert_int_eq(th_amqp_collect(s.c, &got, 2000, 60000), 0);
    fprintf(stderr, "outage: stopping RabbitMQ after %zu messages delivered\n", got.n);
    th_amqp_free(s.c);
    s.c = NULL;
    ck_assert_int_eq(th_rabbit_do("stop"), 0);
    long at_stop = atomic_load(&f.published);
    /* The fault lasts 10 s by definition; traffic keeps flowing meanwhile. */
    struct timespec outage = {10, 0};
    nanosleep(&outage, NULL);
    long during = atomic_load(&f.published) - at_stop;
    ck_assert_int_eq(th_rabbit_do("restart"), 0);
    ck_assert_int_gt(during, 0); /* the bridge kept taking MQTT while RabbitMQ was down */
    ck_assert_int_eq(th_flow_wait_published(&f, atomic_load(&f.published) + 2000, 60000), 0);
    long n = th_flow_stop(&f);
    ck_assert(!atomic_load(&f.failed));

    int rc = th_amqp_collect_reconnecting(&s.c, s.queue, &got, (size_t)n, 240000);
    th_amqp_drain(s.c, &got, 300);
    struct th_delivery d = th_check_msgs(0, n, &got);
    fprintf(stderr, "outage: %ld published while RabbitMQ was down; duplicated=%ld\n", during,
            d.duplicated);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(d.lost, 0);
    ck_assert_int_eq(d.unexpected, 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "amqp: connected to", 1000), 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    th_msgs_free(&got);
    setup_free(&s);
}
END_TEST

/* e) The bridge SIGKILLed mid-stream, three times, restarted each time. */
START_TEST(bridge_sigkilled_mid_stream_loses_nothing)
{
    struct setup s = {0};
    setup_start(&s, "crash", TH_MOSQ_SHIPPED);
    struct th_flow f = {
        .port = s.mq->port, .topics = load_topics, .ntopics = 4, .chunk = 500, .max = 400000};
    th_flow_start(&f);

    struct th_msgs got = {0};
    for (int k = 1; k <= 3; k++) {
        ck_assert_int_eq(th_amqp_collect(s.c, &got, (size_t)(3000 * k), 120000), 0);
        th_bridge_kill(s.b);
        fprintf(stderr, "crash %d: bridge SIGKILLed with %ld published, %zu delivered\n", k,
                atomic_load(&f.published), got.n);
        ck_assert_int_eq(th_bridge_start_ready(s.b, 60000), 0);
    }
    ck_assert_int_eq(th_flow_wait_published(&f, atomic_load(&f.published) + 2000, 60000), 0);
    long n = th_flow_stop(&f);
    ck_assert(!atomic_load(&f.failed));

    int rc = th_amqp_collect(s.c, &got, (size_t)n, 180000);
    th_amqp_drain(s.c, &got, 500);
    struct th_delivery d = th_check_msgs(0, n, &got);
    fprintf(stderr, "crash: 3 SIGKILLs, %ld sent, %ld duplicated (at-least-once across a crash)\n",
            n, d.duplicated);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(d.lost, 0);
    ck_assert_int_eq(d.unexpected, 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    th_msgs_free(&got);
    setup_free(&s);
}
END_TEST

/* SIGTERM stops the bridge promptly even while its MQTT connect hangs
 * (a broker host that drops SYNs): libmosquitto connects synchronously,
 * and the kernel would retry the SYN for about two minutes. On loopback, a
 * listener whose accept queue is full drops SYNs like such a host. */
START_TEST(stop_is_prompt_while_the_mqtt_connect_hangs)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    ck_assert_int_eq(bind(l, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(l, 0), 0);
    ck_assert_int_eq(getsockname(l, (struct sockaddr *)&a, &alen), 0);
    int filler = socket(AF_INET, SOCK_STREAM, 0); /* fills the queue, never accepted */
    ck_assert_int_eq(connect(filler, (struct sockaddr *)&a, sizeof(a)), 0);

    struct th_bridge *b = th_bridge_new(NULL);
    th_bridge_set(b, "MQTT_PORT", "%d", ntohs(a.sin_port));
    ck_assert_int_eq(
        th_bridge_config(b, "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-hang}\n"
                            "amqp: {port: ${AMQP_PORT}}\n"
                            "spool: {dir: ${SPOOL_DIR}}\n"
                            "routes: [{name: r, topic: \"x/#\", exchange: amq.topic}]\n"
                            "log: {level: debug}\n"),
        0);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    /* The MQTT thread tries to connect as it starts; by the time the AMQP
     * side is up it has long been inside connect(). */
    ck_assert_int_eq(th_bridge_wait_log(b, "amqp: connected to", 30000), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "mqtt: connecting", 30000), 0);
    ck_assert_int_eq(th_bridge_signal(b, SIGTERM), 0);
    int code = -1;
    int rc = th_bridge_wait_exit(b, 10000, &code);
    if (rc != 0)
        th_dump_tail("bridge", b->proc.log_path, 20);
    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(code, 0);
    th_bridge_free(b);
    close(filler);
    close(l);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("delivery");
    TCase *tc = tcase_create("delivery");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, burst_of_100k_against_stock_mosquitto_arrives_complete);
    tcase_add_test(tc, rabbitmq_stopped_10s_mid_stream_loses_nothing);
    tcase_add_test(tc, bridge_sigkilled_mid_stream_loses_nothing);
    tcase_add_test(tc, stop_is_prompt_while_the_mqtt_connect_hangs);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
