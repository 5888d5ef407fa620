/* test_reload.c - live reload on SIGHUP (issue 5, item 6): under traffic, a
 * config adding a route to a new queue (new exchange, queue and binding)
 * and raising the log level takes effect with nothing lost or duplicated
 * on the original queue; a changed connection setting is named and not
 * applied; a bad file, or a topology RabbitMQ refuses, is refused and the
 * old configuration keeps running. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow.h"
#include "harness.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

static const char *const load_topics[] = {"reload/a", "reload/b/c"};
static const char *const extra_topics[] = {"extra/x"};

/* The running config; `more` adds topology, routes and settings. */
static char *config(const char *name, const char *keepalive, const char *level, const char *more_x,
                    const char *more_q, const char *more_routes)
{
    return xasprintf("mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-reload-%s, "
                     "keepalive: %s}\n"
                     "amqp:\n"
                     "  port: ${AMQP_PORT}\n"
                     "  reconnect_max_ms: 1000\n"
                     "  topology:\n"
                     "    exchanges: [{name: it.reload.%s, type: topic}%s]\n"
                     "    queues:\n"
                     "      - {name: it.reload.%s, bindings: [{exchange: it.reload.%s}]}\n%s"
                     "spool: {dir: ${SPOOL_DIR}}\n"
                     "routes:\n"
                     "  - {name: all, topic: \"reload/#\", exchange: it.reload.%s}\n%s"
                     "log: {level: %s, stats_interval: 0}\n",
                     name, keepalive, name, more_x, name, name, more_q, name, more_routes, level);
}

struct setup {
    struct th_mosq *mq;
    struct th_bridge *b;
    struct th_amqp *c;
    char *queue;
};

static void setup_start(struct setup *s, const char *name)
{
    s->mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(s->mq);
    s->b = th_bridge_new(s->mq);
    char *yaml = config(name, "30", "info", "", "", "");
    ck_assert_int_eq(th_bridge_config(s->b, yaml), 0);
    free(yaml);
    s->queue = xasprintf("it.reload.%s", name);
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

/* 1-based number of the line of text holding needle (0: none). */
static int line_of(const char *text, const char *needle)
{
    const char *at = strstr(text, needle);
    int line = 1;
    for (const char *p = text; at && p < at; p++)
        line += *p == '\n';
    return at ? line : 0;
}

/* Publishes seqs [first, first+n) on topics and checks they all reach c. */
static void publish_and_collect(struct setup *s, struct th_amqp *c, const char *const *topics,
                                size_t ntopics, long n)
{
    struct th_pub p = {.port = s->mq->port,
                       .topics = topics,
                       .ntopics = ntopics,
                       .count = n,
                       .payload_size = 50,
                       .qos = 1,
                       .timeout_ms = 60000};
    ck_assert_int_eq(th_mqtt_publish(&p), n);
    struct th_msgs got = {0};
    int rc = th_amqp_collect(c, &got, (size_t)n, 60000);
    th_amqp_drain(c, &got, 300);
    struct th_delivery d = th_check_msgs(0, n, &got);
    ck_assert_int_eq(rc, 0);
    TH_ASSERT_EXACT(d);
    th_msgs_free(&got);
}

START_TEST(reload_under_traffic_adds_a_route_to_a_new_queue_losing_nothing)
{
    struct setup s = {0};
    setup_start(&s, "traffic");
    struct th_amqp *cn = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(cn);
    th_amqp_delete(cn, "it.reload.new"); /* declared by the bridge on reload */

    struct th_flow f = {
        .port = s.mq->port, .topics = load_topics, .ntopics = 2, .chunk = 500, .max = 400000};
    th_flow_start(&f);
    struct th_msgs got = {0};
    ck_assert_int_eq(th_amqp_collect(s.c, &got, 3000, 60000), 0);

    /* New exchange, queue and route; two routes whose filters merge into
     * one subscription (so a message can match it and neither route: a
     * debug line); log level debug; a connection setting that must not
     * apply. */
    char *yaml = config("traffic", "45", "debug", ", {name: it.reload.new, type: topic}",
                        "      - {name: it.reload.new, bindings: [{exchange: it.reload.new}]}\n",
                        "  - {name: new, topic: \"extra/#\", exchange: it.reload.new}\n"
                        "  - {name: p1, topic: \"probe/+/a\", exchange: it.reload.new}\n"
                        "  - {name: p2, topic: \"probe/b/+\", exchange: it.reload.new}\n");
    ck_assert_int_eq(th_bridge_config(s.b, yaml), 0);
    free(yaml);
    long at_reload = atomic_load(&f.published);
    ck_assert_int_eq(th_bridge_signal(s.b, SIGHUP), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "bridge: reload applied: 4 routes", 30000), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "mqtt: routes reloaded", 10000), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "mqtt: subscribed to extra/#", 10000), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "reload: mqtt.keepalive changed", 1000), 0);
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "reload: mqtt.keepalive"), 1);
    fprintf(stderr, "reload: SIGHUP with %ld published\n", at_reload);

    /* The new route delivers to the new queue while the old traffic flows. */
    ck_assert_int_eq(th_amqp_consume(cn, "it.reload.new"), 0);
    publish_and_collect(&s, cn, extra_topics, 1, 500);
    /* The log level took: a message that matches the merged subscription
     * but no route is now reported at debug. */
    const char *const probe[] = {"probe/c/c"};
    struct th_pub p = {.port = s.mq->port,
                       .topics = probe,
                       .ntopics = 1,
                       .count = 1,
                       .qos = 1,
                       .timeout_ms = 10000};
    ck_assert_int_eq(th_mqtt_publish(&p), 1);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "no route matches topic probe/c/c", 10000), 0);

    ck_assert_int_eq(th_flow_wait_published(&f, atomic_load(&f.published) + 3000, 60000), 0);
    long n = th_flow_stop(&f);
    ck_assert(!atomic_load(&f.failed));
    ck_assert_int_gt(n, at_reload);
    int rc = th_amqp_collect(s.c, &got, (size_t)n, 120000);
    th_amqp_drain(s.c, &got, 500);
    struct th_delivery d = th_check_msgs(0, n, &got);
    fprintf(stderr, "reload: original queue across the reload: sent=%ld lost=%ld dup=%ld\n", n,
            d.lost, d.duplicated);
    ck_assert_int_eq(rc, 0);
    TH_ASSERT_EXACT(d);
    /* one connection each side all along: the reload reconnected nothing */
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "mqtt: connected to"), 1);
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "amqp: connected to"), 1);
    th_msgs_free(&got);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    th_amqp_delete(cn, "it.reload.new");
    th_amqp_free(cn);
    setup_free(&s);
}
END_TEST

START_TEST(bad_config_is_refused_with_its_position_and_the_old_one_keeps_running)
{
    struct setup s = {0};
    setup_start(&s, "bad");
    /* Invalid YAML: an unclosed flow mapping on line 2. */
    ck_assert_int_eq(th_bridge_config(s.b, "routes:\n  - {name: x, topic: \"reload/#\"\n"), 0);
    ck_assert_int_eq(th_bridge_signal(s.b, SIGHUP), 0);
    char *want = xasprintf("reload refused, the running configuration stays: %s:3:1: invalid YAML",
                           s.b->config_path);
    ck_assert_int_eq(th_bridge_wait_log(s.b, want, 10000), 0);
    free(want);
    /* Valid YAML, bad meaning: a route to an exchange nobody declares. */
    char *yaml = config("bad", "30", "info", "", "",
                        "  - {name: lost, topic: \"elsewhere/#\", exchange: it.undeclared}\n");
    ck_assert_int_eq(th_bridge_config(s.b, yaml), 0);
    int line = line_of(yaml, "exchange: it.undeclared");
    ck_assert_int_gt(line, 0);
    free(yaml);
    ck_assert_int_eq(th_bridge_signal(s.b, SIGHUP), 0);
    want = xasprintf("reload refused, the running configuration stays: %s:%d:", s.b->config_path,
                     line);
    ck_assert_int_eq(th_bridge_wait_log(s.b, want, 10000), 0);
    free(want);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "it.undeclared", 1000), 0);
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "reload applied"), 0);
    /* The old routes still run. */
    publish_and_collect(&s, s.c, load_topics, 2, 1000);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

START_TEST(topology_refused_by_rabbitmq_keeps_the_old_configuration)
{
    struct setup s = {0};
    setup_start(&s, "refused");
    /* Same queue name, other arguments: RabbitMQ answers PRECONDITION_FAILED. */
    char *yaml = config("refused", "30", "info", "",
                        "      - {name: it.reload.refused.q, arguments: {x-max-length: 5}, "
                        "bindings: [{exchange: it.reload.refused}]}\n",
                        "");
    struct th_amqp *c2 = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(c2);
    th_amqp_delete(c2, "it.reload.refused.q");
    ck_assert_int_eq(th_amqp_declare(c2, "it.reload.refused.q", true, false), 0);
    ck_assert_int_eq(th_bridge_config(s.b, yaml), 0);
    free(yaml);
    ck_assert_int_eq(th_bridge_signal(s.b, SIGHUP), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "RabbitMQ refused the new topology", 30000), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "PRECONDITION_FAILED", 1000), 0);
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "reload applied"), 0);
    /* The refusal closed the channel: the AMQP side reconnects with the old
     * topology and delivery goes on. */
    ck_assert_int_eq(th_bridge_wait_log_count(s.b, "amqp: connected to", 2, 30000), 0);
    publish_and_collect(&s, s.c, load_topics, 2, 1000);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    th_amqp_delete(c2, "it.reload.refused.q");
    th_amqp_free(c2);
    setup_free(&s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("reload");
    TCase *tc = tcase_create("reload");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, reload_under_traffic_adds_a_route_to_a_new_queue_losing_nothing);
    tcase_add_test(tc, bad_config_is_refused_with_its_position_and_the_old_one_keeps_running);
    tcase_add_test(tc, topology_refused_by_rabbitmq_keeps_the_old_configuration);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
