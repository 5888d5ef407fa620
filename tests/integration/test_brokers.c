/* test_brokers.c - the delivery checks against every MQTT broker we can run
 * here (issue 13, item 2): Mosquitto (the reference), RabbitMQ's MQTT
 * plugin, ejabberd's mod_mqtt and aedes (brokers.h), each with the settings
 * the README's "Brokers" section recommends. Per broker:
 *
 *   burst           20,000 QoS 1 messages as fast as the broker takes them:
 *                   nothing lost, duplicated or unexpected
 *   bridge SIGKILL  the bridge killed three times under traffic and
 *                   restarted: nothing lost (duplicates reported)
 *   broker restart  the broker restarted twice: once while the bridge is
 *                   away with messages queued in its session, once while
 *                   the bridge drains a backlog. Where the broker keeps
 *                   sessions, nothing is lost. Where it does not (ejabberd:
 *                   mod_mqtt's sessions are RAM tables), exactly what it
 *                   held for the bridge is lost, the bridge says so
 *                   ("the broker had no session"), resubscribes, and loses
 *                   nothing published after.
 *
 * Each message is checked by sequence number. Run for one broker with
 * `test_brokers KIND` (ctest runs one entry per broker). M2A_BROKERS_N
 * changes the burst size. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "brokers.h"
#include "flow.h"
#include "harness.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define WAIT_MS    60000
#define COLLECT_MS 180000

static const char *const topics[] = {"load/a", "load/b/c", "load/d.e", "load/f"};

struct setup {
    struct th_broker *br;
    struct th_bridge *b;
    struct th_amqp *c;
    char *queue; /* and the exchange */
    struct th_msgs got;
};

/* The bridge's config for broker br: the protocol the broker speaks best,
 * its user name if it wants one. */
static char *config_for(const struct th_broker *br, const char *queue)
{
    char *user = br->username
                     ? xasprintf(", username: %s, password: %s", br->username, br->password)
                     : xstrdup("");
    char *yaml =
        xasprintf("mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: %s, protocol: %s,"
                  " reconnect_max_ms: 1000%s}\n"
                  "amqp:\n"
                  "  port: ${AMQP_PORT}\n"
                  "  reconnect_max_ms: 1000\n"
                  "  topology:\n"
                  "    exchanges: [{name: %s, type: topic}]\n"
                  "    queues:\n"
                  "      - name: %s\n"
                  "        bindings: [{exchange: %s, routing_key: \"#\"}]\n"
                  "spool: {dir: ${SPOOL_DIR}}\n"
                  "routes:\n"
                  "  - {name: all, topic: \"load/#\", exchange: %s}\n"
                  "log: {stats_interval: 1}\n"
                  "shutdown_timeout: 10\n",
                  queue, br->t->protocol == 5 ? "5" : "311", user, queue, queue, queue, queue);
    free(user);
    return yaml;
}

static void setup_start(struct setup *s, enum th_broker_kind kind, const char *test)
{
    memset(s, 0, sizeof(*s));
    s->br = th_broker_start(kind);
    ck_assert_ptr_nonnull(s->br);
    char *v = th_broker_version(s->br);
    fprintf(stderr, "== %s %s (MQTT %s), %s\n", s->br->t->name, v,
            s->br->t->protocol == 5 ? "5" : "3.1.1", test);
    free(v);
    s->queue = xasprintf("ib.%s.%s", s->br->t->name, test);
    s->b = th_bridge_new(NULL);
    th_bridge_set(s->b, "MQTT_PORT", "%d", s->br->port);
    char *yaml = config_for(s->br, s->queue);
    ck_assert_int_eq(th_bridge_config(s->b, yaml), 0);
    free(yaml);
    s->c = th_amqp_consumer(th_rabbit_port(), s->queue, s->queue, "#");
    ck_assert_ptr_nonnull(s->c);
    ck_assert_int_eq(th_bridge_start_ready(s->b, WAIT_MS), 0);
}

static void setup_free(struct setup *s)
{
    if (s->b && s->b->proc.pid > 0)
        ck_assert_int_eq(th_bridge_stop(s->b, 30000), 0);
    th_amqp_free(s->c);
    th_bridge_free(s->b);
    th_broker_free(s->br);
    th_msgs_free(&s->got);
    free(s->queue);
}

/* Publishes seqs first .. first+n-1 at QoS 1 (the broker's PUBACK for each). */
static void publish(struct setup *s, long first, long n)
{
    struct th_pub p = {.port = s->br->port,
                       .topics = topics,
                       .ntopics = 4,
                       .first = first,
                       .count = n,
                       .payload_size = 100,
                       .qos = 1,
                       .window = 1000,
                       .protocol = s->br->t->protocol,
                       .username = s->br->username,
                       .password = s->br->password,
                       .timeout_ms = 120000};
    ck_assert_int_eq(th_mqtt_publish(&p), n);
}

/* Collects until seqs 0 .. n-1 but `may_lose` arrived, then drains
 * stragglers for a moment, and checks. */
static struct th_delivery collect(struct setup *s, long n, long may_lose)
{
    size_t want = (size_t)(n - may_lose);
    int rc = th_amqp_collect(s->c, &s->got, want, COLLECT_MS);
    th_amqp_drain(s->c, &s->got, rc == 0 ? 500 : 100);
    return th_check_msgs(0, n, &s->got);
}

static enum th_broker_kind kind_of(int i)
{
    return (enum th_broker_kind)i;
}

/* 20,000, or 10,000 where the broker sends one message at a time. */
static long burst_size(const struct th_broker *br)
{
    const char *e = getenv("M2A_BROKERS_N");
    return e && atol(e) > 0 ? atol(e) : br->t->max_inflight == 1 ? 10000 : 20000;
}

/* ---- burst ------------------------------------------------------------------- */

START_TEST(burst_arrives_complete)
{
    struct setup s;
    setup_start(&s, kind_of(_i), "burst");
    long n = burst_size(s.br);
    uint64_t t0 = m2a_now_ms();
    publish(&s, 0, n);
    struct th_delivery d = collect(&s, n, 0);
    double secs = (double)(m2a_now_ms() - t0) / 1000.0;
    printf("BROKER %s burst: sent=%ld lost=%ld duplicated=%ld unexpected=%ld in %.1f s (%.0f "
           "msg/s end to end)\n",
           s.br->t->name, n, d.lost, d.duplicated, d.unexpected, secs, (double)n / secs);
    TH_ASSERT_EXACT(d);
    setup_free(&s);
}
END_TEST

/* ---- bridge SIGKILL ------------------------------------------------------------ */

START_TEST(bridge_sigkill_under_traffic_loses_nothing)
{
    struct setup s;
    setup_start(&s, kind_of(_i), "kill");
    struct th_flow f = {.port = s.br->port,
                        .topics = topics,
                        .ntopics = 4,
                        .chunk = 500,
                        .max = 200000,
                        .protocol = s.br->t->protocol,
                        .username = s.br->username,
                        .password = s.br->password,
                        .rate = s.br->t->max_inflight == 1 ? 400 : 2000};
    th_flow_start(&f);
    for (int k = 1; k <= 3; k++) {
        ck_assert_int_eq(th_amqp_collect(s.c, &s.got, (size_t)(2000 * k), WAIT_MS), 0);
        th_bridge_kill(s.b);
        fprintf(stderr, "%s: bridge SIGKILL %d with %ld published, %zu delivered\n", s.br->t->name,
                k, atomic_load(&f.published), s.got.n);
        ck_assert_int_eq(th_bridge_start_ready(s.b, WAIT_MS), 0);
    }
    ck_assert_int_eq(th_flow_wait_published(&f, atomic_load(&f.published) + 2000, WAIT_MS), 0);
    long n = th_flow_stop(&f);
    ck_assert(!atomic_load(&f.failed));
    struct th_delivery d = collect(&s, n, 0);
    printf("BROKER %s bridge SIGKILL x3: sent=%ld lost=%ld duplicated=%ld unexpected=%ld\n",
           s.br->t->name, n, d.lost, d.duplicated, d.unexpected);
    ck_assert_int_eq(d.lost, 0);
    ck_assert_int_eq(d.unexpected, 0);
    setup_free(&s);
}
END_TEST

/* ---- broker restart -------------------------------------------------------------- */

START_TEST(broker_restart_keeps_what_the_broker_keeps)
{
    struct setup s;
    setup_start(&s, kind_of(_i), "restart");
    bool keeps = s.br->t->keeps_sessions;
    const long chunk = 2000;
    long n = 0;

    /* 1. Traffic through the bridge. */
    publish(&s, n, chunk);
    n += chunk;
    ck_assert_int_eq(th_amqp_collect(s.c, &s.got, (size_t)n, WAIT_MS), 0);

    /* 2. The bridge away, messages queued in its session, the broker
     * restarted, the bridge back. */
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    long queued_from = n;
    publish(&s, n, chunk);
    n += chunk;
    ck_assert_int_eq(th_broker_restart(s.br), 0);
    ck_assert_int_eq(th_bridge_start_ready(s.b, WAIT_MS), 0);
    ck_assert_int_eq(
        th_bridge_wait_log(s.b, keeps ? "session present: yes" : "session present: no", WAIT_MS),
        0);
    long lost_by_broker = keeps ? 0 : chunk;

    /* 3. The broker restarted under the connected bridge. One that keeps
     * sessions is restarted while the bridge drains a backlog, and resends
     * what the bridge had not acknowledged; one that does not, once the
     * bridge has everything (what it held would be lost, as in 2), and the
     * bridge must notice the lost session and subscribe again. */
    if (keeps) {
        publish(&s, n, 5 * chunk);
        n += 5 * chunk;
    } else {
        ck_assert_int_eq(th_amqp_collect(s.c, &s.got, (size_t)(n - lost_by_broker), WAIT_MS), 0);
    }
    ck_assert_int_eq(th_broker_restart(s.br), 0);
    ck_assert_int_eq(th_bridge_wait_log_count(s.b, "mqtt: subscribed to", 2, WAIT_MS), 0);
    if (keeps)
        ck_assert_int_eq(th_bridge_wait_log_count(s.b, "session present: yes", 2, WAIT_MS), 0);
    else
        ck_assert_int_eq(th_bridge_wait_log(s.b, "the broker had no session", WAIT_MS), 0);

    /* 4. Traffic after the restarts. */
    publish(&s, n, chunk);
    n += chunk;
    struct th_delivery d = collect(&s, n, lost_by_broker);
    printf("BROKER %s restart: sent=%ld lost=%ld duplicated=%ld unexpected=%ld (session %s by "
           "the broker)\n",
           s.br->t->name, n, d.lost, d.duplicated, d.unexpected, keeps ? "kept" : "not kept");
    ck_assert_int_eq(d.unexpected, 0);
    if (keeps) {
        ck_assert_int_eq(d.lost, 0);
    } else {
        /* What the broker lost is exactly what it held for the bridge while
         * the bridge was away: seqs queued_from .. queued_from+chunk-1. */
        ck_assert_int_eq(d.lost, chunk);
        struct th_delivery before = th_check_msgs(0, queued_from, &s.got);
        ck_assert_int_eq(before.lost, 0);
        struct th_delivery after =
            th_check_msgs(queued_from + chunk, n - queued_from - chunk, &s.got);
        ck_assert_int_eq(after.lost, 0);
    }
    setup_free(&s);
}
END_TEST

static int kind_named(const char *name)
{
    for (int k = 0; k < TH_BROKER_NKINDS; k++)
        if (strcmp(th_broker_traits((enum th_broker_kind)k)->name, name) == 0)
            return k;
    return -1;
}

int main(int argc, char **argv)
{
    int only = argc > 1 ? kind_named(argv[1]) : -1;
    if (argc > 1 && only < 0) {
        fprintf(stderr, "usage: %s [mosquitto|rabbitmq-mqtt|ejabberd|aedes]\n", argv[0]);
        return 2;
    }
    bool rabbit = only < 0 || only == TH_BROKER_RABBITMQ;
    if (rabbit && th_broker_rabbit_node_start() != 0)
        return EXIT_FAILURE;
    Suite *s = suite_create("brokers");
    for (int k = 0; k < TH_BROKER_NKINDS; k++) {
        if (only >= 0 && k != only)
            continue;
        TCase *tc = tcase_create(th_broker_traits((enum th_broker_kind)k)->name);
        tcase_set_timeout(tc, 300);
        tcase_add_loop_test(tc, burst_arrives_complete, k, k + 1);
        tcase_add_loop_test(tc, bridge_sigkill_under_traffic_loses_nothing, k, k + 1);
        tcase_add_loop_test(tc, broker_restart_keeps_what_the_broker_keeps, k, k + 1);
        suite_add_tcase(s, tc);
    }
    int rc = m2a_check_run(s);
    if (rabbit)
        th_broker_rabbit_node_stop();
    return rc;
}
