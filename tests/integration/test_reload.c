/* test_reload.c - live reload on SIGHUP (issue 5, item 6): under traffic, a
 * config adding a route to a new queue (new exchange, queue and binding)
 * and raising the log level takes effect with nothing lost or duplicated
 * on the original queue; a changed connection setting is named and not
 * applied; a bad file, or a topology RabbitMQ refuses, is refused and the
 * old configuration keeps running.
 *
 * Issue 9: a reload that waits on the AMQP side (RabbitMQ blocks the
 * connection, so no topology can be declared) keeps the main thread free:
 * SIGTERM is handled at once, reloads arriving meanwhile are coalesced
 * (newest wins), and the MQTT side takes the new routes only once their
 * topology is declared; and a refused reload does not leave the AMQP
 * thread spinning through its reconnect delay. */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow.h"
#include "harness.h"
#include "proxy.h"
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

/* ---- RabbitMQ blocking the connection ---------------------------------- */

/* RabbitMQ blocks a connection when it publishes during a memory alarm:
 * raises the alarm and publishes until the bridge says it is blocked (for
 * the n-th time). */
static void block(struct setup *s, int n)
{
    static const char *const topics[] = {"reload/a"};
    th_rabbit_set_watermark("0");
    struct th_pub p = {.port = s->mq->port,
                       .topics = topics,
                       .ntopics = 1,
                       .first = 100000 * n,
                       .count = 10,
                       .payload_size = 20,
                       .qos = 1,
                       .timeout_ms = 10000};
    ck_assert_int_eq(th_mqtt_publish(&p), 10);
    ck_assert_int_eq(th_bridge_wait_log_count(s->b, "connection blocked by broker", n, 30000), 0);
}

/* The test's configs stop within a second: a stop does not wait for
 * confirms RabbitMQ withholds while it blocks. */
static void write_config(struct th_bridge *b, char *yaml)
{
    char *more = xasprintf("%sshutdown_timeout: 1\n", yaml);
    ck_assert_int_eq(th_bridge_config(b, more), 0);
    free(more);
    free(yaml);
}

/* While RabbitMQ blocks the connection the AMQP side cannot declare a
 * topology (an RPC would hang), so a reload waits for it. The main thread
 * does not: a second reload replaces the first (newest wins, the first is
 * never applied), and the MQTT side keeps the old routes until the AMQP
 * side has declared the new topology (before, the main thread polled the
 * AMQP side for up to 30 s, and after that timeout the two sides could run
 * different configurations). */
START_TEST(reloads_wait_for_a_blocked_rabbitmq_and_the_newest_wins)
{
    static const char *const extra[] = {"extra/x"};
    struct setup s = {0};
    setup_start(&s, "blocked");
    struct th_amqp *cn = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(cn);
    th_amqp_delete(cn, "it.reload.blocked.new");

    block(&s, 1);
    char *yaml = config("blocked", "30", "info", ", {name: it.reload.blocked.new, type: topic}",
                        "      - {name: it.reload.blocked.new, bindings: "
                        "[{exchange: it.reload.blocked.new}]}\n",
                        "  - {name: new, topic: \"extra/#\", exchange: it.reload.blocked.new}\n");
    write_config(s.b, yaml);
    ck_assert_int_eq(th_bridge_signal(s.b, SIGHUP), 0);
    ck_assert_int_eq(th_bridge_wait_log_count(s.b, "SIGHUP received", 1, 10000), 0);
    yaml = config("blocked", "30", "info", ", {name: it.reload.blocked.new, type: topic}",
                  "      - {name: it.reload.blocked.new, bindings: "
                  "[{exchange: it.reload.blocked.new}]}\n",
                  "  - {name: new, topic: \"extra/#\", exchange: it.reload.blocked.new}\n"
                  "  - {name: newer, topic: \"more/#\", exchange: it.reload.blocked.new}\n");
    write_config(s.b, yaml);
    ck_assert_int_eq(th_bridge_signal(s.b, SIGHUP), 0);
    ck_assert_int_eq(
        th_bridge_wait_log(s.b, "replaces an earlier one the AMQP side had not taken", 10000), 0);
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "reload applied"), 0);
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "mqtt: routes reloaded"), 0);

    /* Unblocked: the newest is declared, then the MQTT side takes it. */
    th_rabbit_restore_watermark();
    ck_assert_int_eq(th_bridge_wait_log(s.b, "connection unblocked", 30000), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "bridge: reload applied: 3 routes", 30000), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "mqtt: subscribed to more/#", 10000), 0);
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "reload applied"), 1);
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "mqtt: routes reloaded"), 1);
    ck_assert_int_eq(th_amqp_consume(cn, "it.reload.blocked.new"), 0);
    publish_and_collect(&s, cn, extra, 1, 200);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    th_amqp_delete(cn, "it.reload.blocked.new");
    th_amqp_free(cn);
    setup_free(&s);
}
END_TEST

/* SIGTERM in the middle of a reload that waits on the AMQP side (RabbitMQ
 * blocks the connection): handled at once. The main thread used to poll
 * the AMQP side for the reload's outcome for up to 30 s before it looked
 * at signals again. */
START_TEST(sigterm_during_a_reload_waiting_for_a_blocked_rabbitmq_exits_at_once)
{
    struct setup s = {0};
    setup_start(&s, "sigterm");
    write_config(s.b, config("sigterm", "30", "info", "", "", "")); /* shutdown_timeout: 1 */
    ck_assert_int_eq(th_bridge_signal(s.b, SIGHUP), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "bridge: reload applied", 30000), 0);
    block(&s, 1);
    write_config(
        s.b, config("sigterm", "30", "info", "", "      - {name: it.reload.sigterm.more}\n", ""));
    ck_assert_int_eq(th_bridge_signal(s.b, SIGHUP), 0);
    ck_assert_int_eq(th_bridge_wait_log_count(s.b, "SIGHUP received", 2, 10000), 0);
    uint64_t t0 = m2a_now_ms();
    ck_assert_int_eq(th_bridge_signal(s.b, SIGTERM), 0);
    int code = -1;
    int exited = th_bridge_wait_exit(s.b, 10000, &code);
    uint64_t took = m2a_now_ms() - t0;
    th_rabbit_restore_watermark();
    fprintf(stderr, "reload: SIGTERM during a blocked reload: exit after %" PRIu64 " ms\n", took);
    ck_assert_int_eq(exited, 0);
    ck_assert_int_eq(code, 0);
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "reload applied"), 1);
    setup_free(&s);
}
END_TEST

/* ---- a refused reload, then the reconnect delay -------------------------- */

/* CPU time (user + system, clock ticks) the process has used. */
static long cpu_ticks(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    char *stat = th_read_file(path, NULL);
    ck_assert_ptr_nonnull(stat);
    const char *p = strrchr(stat, ')'); /* the command may hold spaces */
    long utime = 0, stime = 0;
    ck_assert_int_eq(
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &utime, &stime), 2);
    free(stat);
    return utime + stime;
}

static bool accepted_more(void *arg)
{
    struct th_proxy **px = arg;
    return th_proxy_accepted(*px) >= 2;
}

/* A reload offered while the AMQP side is connecting is taken by the new
 * session's first turn, before anything read the wake-up it came with; if
 * RabbitMQ refuses its topology the session ends at once and the AMQP
 * thread sleeps through its reconnect delay. That sleep used to poll the
 * still-readable wake-up fd, find no reload pending, and poll again: a
 * busy loop for the whole delay (here 3-6 s; on 2 shared cores the spin
 * got 25% of one or more). The connect is held open by the fault proxy
 * (blackhole) while the reload is offered. */
START_TEST(a_refused_reload_does_not_spin_through_the_reconnect_delay)
{
    struct setup s = {0};
    s.mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(s.mq);
    struct th_proxy *px = th_proxy_new(th_rabbit_port());
    ck_assert_ptr_nonnull(px);
    s.b = th_bridge_new(s.mq);
    th_bridge_set(s.b, "AMQP_PORT", "%d", th_proxy_port(px));
    const char *yaml = "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-reload-spin}\n"
                       "amqp:\n"
                       "  port: ${AMQP_PORT}\n"
                       "  reconnect_min_ms: 6000\n"
                       "  reconnect_max_ms: 6000\n"
                       "  topology: {exchanges: [{name: it.reload.spin, type: topic}]}\n"
                       "spool: {dir: ${SPOOL_DIR}}\n"
                       "routes:\n"
                       "  - {name: all, topic: \"spin/#\", exchange: it.reload.spin}\n"
                       "log: {stats_interval: 0}\n";
    ck_assert_int_eq(th_bridge_config(s.b, yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(s.b, 60000), 0);
    struct th_amqp *c2 = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(c2);
    th_amqp_delete(c2, "it.reload.spin.q");
    ck_assert_int_eq(th_amqp_declare(c2, "it.reload.spin.q", true, false), 0);

    /* Link cut, then held: the reconnect hangs in its handshake. */
    ck_assert_int_eq(th_proxy_cut(px), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "amqp: disconnected from", 10000), 0);
    ck_assert_int_eq(th_proxy_blackhole(px), 0);
    ck_assert_int_eq(th_poll_until(accepted_more, &px, 10000), 0);
    /* A reload RabbitMQ will refuse (the queue exists with other
     * arguments), offered while that connect hangs. */
    ck_assert_int_eq(
        th_bridge_config(s.b,
                         "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: "
                         "it-reload-spin, keepalive: 40}\n"
                         "amqp:\n"
                         "  port: ${AMQP_PORT}\n"
                         "  reconnect_min_ms: 6000\n"
                         "  reconnect_max_ms: 6000\n"
                         "  topology:\n"
                         "    exchanges: [{name: it.reload.spin, type: topic}]\n"
                         "    queues: [{name: it.reload.spin.q, arguments: {x-max-length: 5}}]\n"
                         "spool: {dir: ${SPOOL_DIR}}\n"
                         "routes:\n"
                         "  - {name: all, topic: \"spin/#\", exchange: it.reload.spin}\n"
                         "log: {stats_interval: 0}\n"),
        0);
    ck_assert_int_eq(th_bridge_signal(s.b, SIGHUP), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "reload: mqtt.keepalive changed", 10000), 0);
    ck_assert_int_eq(th_proxy_resume(px), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "RabbitMQ refused the new topology", 30000), 0);
    long before = cpu_ticks(s.b->proc.pid);
    uint64_t t0 = m2a_now_ms();
    ck_assert_int_eq(th_bridge_wait_log_count(s.b, "amqp: connected to", 3, 30000), 0);
    long spent = cpu_ticks(s.b->proc.pid) - before;
    uint64_t took = m2a_now_ms() - t0;
    long hz = sysconf(_SC_CLK_TCK);
    fprintf(stderr, "reload: reconnect delay after the refusal: %" PRIu64 " ms, CPU %ld ms\n", took,
            spent * 1000 / hz);
    ck_assert_int_ge(took, 2000); /* the delay happened: 3-6 s */
    ck_assert_int_lt(spent * 1000 / hz, (long)took / 10);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    th_amqp_delete(c2, "it.reload.spin.q");
    th_amqp_free(c2);
    th_proxy_free(px);
    th_bridge_free(s.b);
    th_mosq_free(s.mq);
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
    tcase_add_test(tc, a_refused_reload_does_not_spin_through_the_reconnect_delay);
    suite_add_tcase(s, tc);
    TCase *blocked = tcase_create("blocked");
    tcase_set_timeout(blocked, 300);
    tcase_add_unchecked_fixture(blocked, NULL, th_rabbit_restore_watermark);
    tcase_add_test(blocked, reloads_wait_for_a_blocked_rabbitmq_and_the_newest_wins);
    tcase_add_test(blocked, sigterm_during_a_reload_waiting_for_a_blocked_rabbitmq_exits_at_once);
    suite_add_tcase(s, blocked);
    return m2a_check_run(s);
}
