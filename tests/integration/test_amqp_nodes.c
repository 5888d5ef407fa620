/* test_amqp_nodes.c - the AMQP side against more than one RabbitMQ node
 * (issue 10, item 1) and against a broker whose frames are small (issue 9):
 *
 *   amqp.hosts with a dead node and one that comes up later: every node is
 *   tried each round, the bridge connects to the live one, says which and
 *   why it left the other, and the stats line and /metrics name it;
 *   the node in use SIGKILLed under traffic: the bridge moves to the other
 *   node and re-publishes its window; nothing lost;
 *   a record whose properties cannot fit one frame (frame_max 4096) is
 *   dead-lettered as unpublishable, the others are published, and the
 *   session never ends over it.
 *
 * Two nodes: the fixture's and a private one started in main() with
 * frame_max = 4096 (rabbit_node.h), shared by the forked tests. Every
 * delivery is checked by sequence number. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow.h"
#include "harness.h"
#include "http.h"
#include "mqtt2amqp/util.h"
#include "proxy.h"
#include "rabbit_node.h"
#include "check_main.h"

static struct th_rabbit_node *small; /* frame_max 4096 */

static const char *const load_topics[] = {"load/a", "load/b/c", "load/d.e", "load/f"};

/* Collects from two consumers until `want` distinct seqs arrived or
 * timeout_ms passed. */
static void collect_both(struct th_amqp *a, struct th_amqp *b, struct th_msgs *out, size_t want,
                         int timeout_ms)
{
    uint64_t deadline = m2a_now_ms() + (uint64_t)timeout_ms;
    while (th_msgs_distinct(out) < want && m2a_now_ms() < deadline) {
        if (a)
            th_amqp_drain(a, out, 200);
        if (b)
            th_amqp_drain(b, out, 200);
    }
}

static long publish_to(int port, const char *topic, long first, long count)
{
    const char *const topics[] = {topic};
    struct th_pub p = {.port = port,
                       .topics = topics,
                       .ntopics = 1,
                       .first = first,
                       .count = count,
                       .payload_size = 100,
                       .qos = 1,
                       .timeout_ms = 30000,
                       .quiet = true};
    return th_mqtt_publish(&p);
}

/* ---- failover ------------------------------------------------------------ */

static const char *const round_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-nodes-round}\n"
    "amqp:\n"
    "  hosts: [\"127.0.0.1:${DEAD}\", \"127.0.0.1:${LIVE}\"]\n"
    "  reconnect_min_ms: 100\n"
    "  reconnect_max_ms: 500\n"
    "  topology:\n"
    "    exchanges: [{name: it.nodes.round, type: topic}]\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - {name: all, topic: \"load/#\", exchange: it.nodes.round}\n"
    "log: {stats_interval: 1}\n"
    "metrics: {listen: \"127.0.0.1:${METRICS}\"}\n";

/* A node nobody listens on and one that refuses connections for a while
 * (a cut proxy in front of the fixture's node): each round tries both, and
 * once the second takes connections the bridge is on it, says which node
 * and why it left the other, and so do the stats line and /metrics. */
START_TEST(every_node_is_tried_and_the_live_one_is_used)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_proxy *px = th_proxy_new(th_rabbit_port());
    ck_assert_ptr_nonnull(px);
    ck_assert_int_eq(th_proxy_cut(px), 0);
    struct th_amqp *c = th_amqp_consumer(th_rabbit_port(), "it.nodes.round", "it.nodes.round", "#");
    ck_assert_ptr_nonnull(c);
    struct th_bridge *b = th_bridge_new(mq);
    int dead = th_free_port(), live = th_proxy_port(px), metrics = th_free_port();
    th_bridge_set(b, "DEAD", "%d", dead);
    th_bridge_set(b, "LIVE", "%d", live);
    th_bridge_set(b, "METRICS", "%d", metrics);
    ck_assert_int_eq(th_bridge_config(b, round_yaml), 0);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);

    /* Both refuse: whichever came first, the round names the other next,
     * then backs off. */
    ck_assert_int_eq(th_bridge_wait_log(b, "none of the 2 nodes answered: retrying from", 30000),
                     0);
    char want[160];
    snprintf(want, sizeof(want), "amqp: 127.0.0.1:%d: cannot connect", dead);
    ck_assert_int_ge(th_proc_log_count(&b->proc, want), 1);
    snprintf(want, sizeof(want), "amqp: 127.0.0.1:%d: ", live); /* refused by the proxy */
    ck_assert_int_ge(th_proc_log_count(&b->proc, want), 1);
    ck_assert_int_eq(th_proc_log_count(&b->proc, "amqp: connected to"), 0);

    ck_assert_int_eq(th_proxy_restore(px), 0);
    snprintf(want, sizeof(want), "amqp: connected to 127.0.0.1:%d (node 2 of 2)", live);
    ck_assert_int_eq(th_bridge_wait_log(b, want, 30000), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "mqtt: subscribed to", 30000), 0);
    char *log = th_read_file_from(b->proc.log_path, b->proc.log_start, NULL);
    ck_assert_ptr_nonnull(log);
    const char *line = strstr(log, want);
    ck_assert_ptr_nonnull(line);
    /* ... and why it left the node before */
    ck_assert_ptr_nonnull(strstr(line, "; left 127.0.0.1:"));
    free(log);

    struct th_pub p = {.port = mq->port,
                       .topics = load_topics,
                       .ntopics = 4,
                       .first = 0,
                       .count = 200,
                       .payload_size = 100,
                       .qos = 1,
                       .timeout_ms = 30000};
    ck_assert_int_eq(th_mqtt_publish(&p), 200);
    struct th_msgs ms = {0};
    ck_assert_int_eq(th_amqp_collect(c, &ms, 200, 30000), 0);
    TH_ASSERT_EXACT(th_check_msgs(0, 200, &ms));

    snprintf(want, sizeof(want), "amqp=up amqp_node=127.0.0.1:%d", live);
    ck_assert_int_eq(th_bridge_wait_log(b, want, 10000), 0);
    struct th_http_reply r;
    ck_assert_int_eq(th_http(metrics, "GET", "/metrics", 10000, &r), 0);
    char series[160];
    snprintf(series, sizeof(series),
             "mqtt2amqp_broker_connected{side=\"amqp\",host=\"127.0.0.1:%d\"}", live);
    ck_assert(th_metric(r.body, series) == 1);
    snprintf(series, sizeof(series),
             "mqtt2amqp_broker_connected{side=\"amqp\",host=\"127.0.0.1:%d\"}", dead);
    ck_assert(th_metric(r.body, series) == 0);
    th_http_reply_free(&r);

    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    th_msgs_free(&ms);
    th_amqp_delete(c, "it.nodes.round");
    th_amqp_free(c);
    th_bridge_free(b);
    th_proxy_free(px);
    th_mosq_free(mq);
}
END_TEST

static const char *const kill_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-nodes-kill}\n"
    "amqp:\n"
    "  hosts: [\"127.0.0.1:${NODE_A}\", \"127.0.0.1:${NODE_B}\"]\n"
    "  heartbeat: 5\n"
    "  reconnect_min_ms: 100\n"
    "  reconnect_max_ms: 1000\n"
    "  topology:\n"
    "    exchanges: [{name: it.nodes.kill, type: topic}]\n"
    "    queues: [{name: it.nodes.kill, bindings: [{exchange: it.nodes.kill}]}]\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - {name: all, topic: \"load/#\", exchange: it.nodes.kill}\n"
    "log: {stats_interval: 1}\n";

/* Which node the bridge is on: 0 (A), 1 (B), or -1. */
static int node_in_use(struct th_bridge *b, int a, int bport, int nth)
{
    char want[96];
    snprintf(want, sizeof(want), "amqp: connected to 127.0.0.1:%d", a);
    int na = th_proc_log_count(&b->proc, want);
    snprintf(want, sizeof(want), "amqp: connected to 127.0.0.1:%d", bport);
    int nb = th_proc_log_count(&b->proc, want);
    if (na + nb != nth)
        return -1;
    return na > nb ? 0 : na < nb ? 1 : -1;
}

/* Two independent nodes; the one the bridge uses is SIGKILLed under
 * traffic. The bridge moves to the other at once and re-publishes its
 * window there; once the killed node is back, its durable queue and the
 * other's hold every message: lost 0 (duplicates reported). */
START_TEST(killing_the_node_in_use_moves_on_and_loses_nothing)
{
    const int ports[2] = {th_rabbit_port(), small->amqp_port};
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_amqp *c[2];
    for (int i = 0; i < 2; i++) {
        c[i] = th_amqp_consumer(ports[i], "it.nodes.kill", "it.nodes.kill", "#");
        ck_assert_ptr_nonnull(c[i]);
    }
    struct th_bridge *b = th_bridge_new(mq);
    th_bridge_set(b, "NODE_A", "%d", ports[0]);
    th_bridge_set(b, "NODE_B", "%d", ports[1]);
    ck_assert_int_eq(th_bridge_config(b, kill_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);
    int x = node_in_use(b, ports[0], ports[1], 1);
    ck_assert_int_ge(x, 0);
    fprintf(stderr, "nodes: the bridge is on node %c (port %d)\n", "AB"[x], ports[x]);

    struct th_flow f = {
        .port = mq->port, .topics = load_topics, .ntopics = 4, .chunk = 200, .max = 1000000};
    th_flow_start(&f);
    ck_assert_int_eq(th_flow_wait_published(&f, 2000, 60000), 0);
    int killed = x == 0 ? th_rabbit_do("kill") : th_rabbit_node_do(small, "kill");
    long at_kill = atomic_load(&f.published);
    th_amqp_free(c[x]); /* its connection died with the node */
    c[x] = NULL;
    ck_assert_int_eq(killed, 0);
    char want[96];
    snprintf(want, sizeof(want), "amqp: connected to 127.0.0.1:%d", ports[!x]);
    int moved = th_bridge_wait_log(b, want, 30000);
    int more = th_flow_wait_published(&f, at_kill + 2000, 60000);
    long n = th_flow_stop(&f);
    int back = x == 0 ? th_rabbit_do("restart") : th_rabbit_node_do(small, "restart");
    ck_assert_int_eq(moved, 0);
    ck_assert_int_eq(more, 0);
    ck_assert_int_eq(back, 0);
    ck_assert(!atomic_load(&f.failed));

    /* Everything spooled is confirmed by one node or the other. */
    c[x] = th_amqp_connect(ports[x], 30000, false);
    ck_assert_ptr_nonnull(c[x]);
    ck_assert_int_eq(th_amqp_consume(c[x], "it.nodes.kill"), 0);
    struct th_msgs ms = {0};
    collect_both(c[0], c[1], &ms, (size_t)n, 120000);
    th_amqp_drain(c[0], &ms, 500);
    th_amqp_drain(c[1], &ms, 500);
    struct th_delivery d = th_check_msgs(0, n, &ms);
    fprintf(stderr, "nodes: kill of the node in use: sent=%ld lost=%ld duplicated=%ld\n", n, d.lost,
            d.duplicated);
    ck_assert_int_eq(d.lost, 0);
    ck_assert_int_eq(d.unexpected, 0);
    snprintf(want, sizeof(want), "amqp_node=127.0.0.1:%d", ports[!x]);
    ck_assert_int_ge(th_proc_log_count(&b->proc, want), 1);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);

    th_msgs_free(&ms);
    for (int i = 0; i < 2; i++) {
        th_amqp_delete(c[i], "it.nodes.kill");
        th_amqp_free(c[i]);
    }
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* ---- nacks of a destination that is not ready ------------------------------ */

static const char *const unready_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-nodes-unready}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  reconnect_min_ms: 50\n"
    "  reconnect_max_ms: 200\n"
    "  topology:\n"
    "    exchanges: [{name: it.unready, type: topic}, {name: it.unready.dlx, type: topic}]\n"
    "    queues:\n"
    "      - name: it.unready.q\n"
    "        arguments: {x-max-length: 1, x-overflow: reject-publish}\n"
    "        bindings: [{exchange: it.unready, routing_key: \"#\"}]\n"
    "dead_letter: {exchange: it.unready.dlx, max_retries: 2}\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - {name: unready, topic: \"unready/#\", exchange: it.unready}\n"
    "log: {stats_interval: 1}\n";

/* Issue 10: nacks before RabbitMQ has confirmed anything of the route on
 * the connection say that its destination is not ready (a quorum queue
 * without a leader nacks every publish of a channel that could not
 * register with it, RabbitMQ 3.10); they are retried past max_retries,
 * not dead-lettered early. Here a queue full from the start (x-overflow
 * reject-publish) stands in for it: every message is nacked many times
 * more than max_retries (main dead-lettered each after 3), and once the
 * queue takes messages again all of them arrive. */
START_TEST(nacks_before_any_confirm_of_the_route_are_retried_not_dead_lettered)
{
    const long n = 5;
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_amqp *c = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(c);
    th_amqp_delete(c, "it.unready.q"); /* the bridge declares it */
    struct th_bridge *b = th_bridge_new(mq);
    ck_assert_int_eq(th_bridge_config(b, unready_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);
    ck_assert_int_eq(th_amqp_publish(c, "", "it.unready.q", "filler", true), 0); /* now full */

    ck_assert_int_eq(publish_to(mq->port, "unready/a", 0, n), n);
    ck_assert_int_eq(th_bridge_wait_stat(b, "nacked", n * 6, 60000), 0);
    long dead_while_full = th_bridge_stat(b, "dead_lettered");
    const char *why = "nothing of the route confirmed on this connection yet";
    int said = th_proc_log_count(&b->proc, why);

    /* The queue takes messages again. */
    ck_assert_int_eq(th_amqp_consume(c, "it.unready.q"), 0);
    struct th_msgs got = {0};
    int rc = th_amqp_collect(c, &got, (size_t)n, 60000);
    th_amqp_drain(c, &got, 500);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    long seqs[64];
    size_t k = 0;
    for (size_t i = 0; i < got.n && k < 64; i++)
        if (strcmp(got.v[i].body, "filler") != 0)
            seqs[k++] = got.v[i].seq;
    struct th_delivery d = th_check_seqs(0, n, seqs, k);
    ck_assert_int_eq(dead_while_full, 0);
    ck_assert_int_ge(said, 1);
    ck_assert_int_eq(rc, 0);
    TH_ASSERT_EXACT(d);
    ck_assert_int_eq(th_bridge_stat(b, "dead_lettered"), 0);

    th_msgs_free(&got);
    th_amqp_delete(c, "it.unready.q");
    th_amqp_free(c);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* ---- heartbeats ----------------------------------------------------------- */

static const char *const idle_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-nodes-idle}\n"
    "amqp: {port: ${AMQP_PORT}, heartbeat: 1}\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - {name: all, topic: \"idle/#\", exchange: amq.topic}\n"
    "log: {stats_interval: 1}\n";

/* An idle connection: RabbitMQ sends only heartbeats, which rabbitmq-c
 * consumes without handing them over; they still count as the broker
 * being there (the split of amqp_out.c lost that once: an idle bridge
 * left every connection after two heartbeat intervals). */
START_TEST(an_idle_connection_stays_up)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_bridge *b = th_bridge_new(mq);
    ck_assert_int_eq(th_bridge_config(b, idle_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);
    /* Six heartbeat intervals with nothing to publish. */
    ck_assert_int_eq(th_bridge_wait_log_count(b, "stats: ", 7, 30000), 0);
    ck_assert_int_eq(th_proc_log_count(&b->proc, "amqp: disconnected from"), 0);
    ck_assert_int_eq(th_bridge_stat(b, "amqp_reconnects"), 0);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* ---- a record that cannot be published ------------------------------------ */

static const char *const unpub_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-nodes-unpub}\n"
    "amqp:\n"
    "  port: ${SMALL_PORT}\n"
    "  topology:\n"
    "    exchanges: [{name: it.unpub, type: topic}, {name: it.unpub.dlx, type: topic}]\n"
    "dead_letter: {exchange: it.unpub.dlx}\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - name: wide\n"
    "    topic: \"wide/+\"\n"
    "    exchange: it.unpub\n"
    "    routing_key: wide\n"
    "    headers: {h1: \"{1}\", h2: \"{1}\", h3: \"{1}\", h4: \"{1}\"}\n"
    "log: {stats_interval: 1}\n";

/* Regression (issue 9): a record whose frames cannot be encoded ended the
 * AMQP session and was re-published for ever after each reconnect; and the
 * estimate that stood in front of it took every message for unpublishable
 * on a broker with frame_max 4096. With that broker: four headers of a
 * 1000-byte topic level do not fit a frame, so that message alone is
 * dead-lettered (unpublishable, without the route's headers); the others
 * are published; the session stays up. */
START_TEST(unpublishable_record_is_dead_lettered_and_the_session_stays)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_amqp *q = th_amqp_consumer(small->amqp_port, "it.unpub.q", "it.unpub", "#");
    struct th_amqp *dlq = th_amqp_consumer(small->amqp_port, "it.unpub.dlq", "it.unpub.dlx", "#");
    ck_assert_ptr_nonnull(q);
    ck_assert_ptr_nonnull(dlq);
    struct th_bridge *b = th_bridge_new(mq);
    th_bridge_set(b, "SMALL_PORT", "%d", small->amqp_port);
    ck_assert_int_eq(th_bridge_config(b, unpub_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);

    char *wide = xmalloc(1006);
    memcpy(wide, "wide/", 5);
    memset(wide + 5, 'w', 1000);
    wide[1005] = '\0';
    ck_assert_int_eq(publish_to(mq->port, "wide/a", 0, 10), 10);
    ck_assert_int_eq(publish_to(mq->port, wide, 10, 1), 1);
    ck_assert_int_eq(publish_to(mq->port, "wide/b", 11, 10), 10);

    struct th_msgs ok = {0}, dead = {0};
    int rc_ok = th_amqp_collect(q, &ok, 20, 30000);
    int rc_dead = th_amqp_collect(dlq, &dead, 1, 30000);
    th_amqp_drain(q, &ok, 300);
    th_amqp_drain(dlq, &dead, 300);
    ck_assert_int_eq(th_bridge_wait_stat(b, "dead_lettered", 1, 10000), 0);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    ck_assert_int_eq(rc_ok, 0);
    ck_assert_int_eq(rc_dead, 0);
    ck_assert_int_eq((long)ok.n, 20);
    ck_assert_int_eq((long)dead.n, 1);
    for (size_t i = 0; i < ok.n; i++)
        ck_assert(ok.v[i].seq != 10);
    ck_assert_int_eq(dead.v[0].seq, 10);
    ck_assert_str_eq(th_msg_header(&dead.v[0], "x-death-reason"), "unpublishable");
    ck_assert_str_eq(th_msg_header(&dead.v[0], "x-original-route"), "wide");
    ck_assert_ptr_null(th_msg_header(&dead.v[0], "h1"));
    ck_assert_str_eq(th_msg_header(&dead.v[0], "x-mqtt-topic"), wide);
    /* one session throughout */
    ck_assert_int_eq(th_proc_log_count(&b->proc, "amqp: connected to"), 1);
    ck_assert_int_eq(th_bridge_stat(b, "amqp_reconnects"), 0);
    ck_assert_int_eq(th_bridge_stat(b, "dropped"), 0);

    free(wide);
    th_msgs_free(&ok);
    th_msgs_free(&dead);
    th_amqp_free(q);
    th_amqp_free(dlq);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

int main(void)
{
    small = th_rabbit_node_start("small", "frame_max = 4096\n");
    if (!small)
        return 1;
    Suite *s = suite_create("amqp_nodes");
    TCase *tc = tcase_create("nodes");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, every_node_is_tried_and_the_live_one_is_used);
    tcase_add_test(tc, killing_the_node_in_use_moves_on_and_loses_nothing);
    tcase_add_test(tc, unpublishable_record_is_dead_lettered_and_the_session_stays);
    tcase_add_test(tc, an_idle_connection_stays_up);
    tcase_add_test(tc, nacks_before_any_confirm_of_the_route_are_retried_not_dead_lettered);
    suite_add_tcase(s, tc);
    int rc = m2a_check_run(s);
    th_rabbit_node_free(small);
    return rc;
}
