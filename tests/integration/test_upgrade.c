/* test_upgrade.c - a spool written by another process is replayed with each
 * record joined to the right route (issue 9: envelopes carry a route id,
 * which is process-local):
 *
 *  - a spool written by 0.1.0 (envelope version 1, no route ids; the README
 *    documents upgrading with a non-empty spool) is read, each record
 *    resolved to its route by name: the route's unroutable policy applies;
 *  - a spool written by this version but by an earlier process, whose
 *    routes had other ids, is not trusted by id: resolved by name too.
 *
 * tests/fixtures/spool-v1 was written by mqtt2amqp 0.1.0 (tree b234cbb),
 * RabbitMQ unreachable, with this configuration:
 *   dead_letter: {exchange: it.upgrade.dlx}
 *   routes:
 *     - {name: kept, topic: "up/kept/+", exchange: it.upgrade, routing_key: "up.{1}"}
 *     - {name: gone, topic: "up/gone/+", exchange: it.upgrade, routing_key: "gone.{1}"}
 *     - {name: long, topic: "up/long/+", exchange: it.upgrade, routing_key: "{1}{1}{1}"}
 * and "seq=N" published to up/kept/kN (N 0..9), up/gone/gN (10..14) and,
 * with a 100-byte level (a routing key over 255 bytes: a routing error,
 * dead-lettered), up/long/... (15): 16 records, seq 1..16, none confirmed. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "flow.h"
#include "harness.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define FIXTURE M2A_SOURCE_DIR "/tests/fixtures/spool-v1"

static void copy_file(const char *from_dir, const char *to_dir, const char *name)
{
    char *from = xasprintf("%s/%s", from_dir, name), *to = xasprintf("%s/%s", to_dir, name);
    size_t len = 0;
    char *data = th_read_file(from, &len);
    ck_assert_ptr_nonnull(data);
    FILE *f = fopen(to, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
    free(data);
    free(from);
    free(to);
}

/* A consumer of a fresh queue bound to nothing yet (the test binds it when
 * the bridge has shown what happens to unroutable messages). */
static struct th_amqp *unbound_consumer(const char *queue)
{
    struct th_amqp *c = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(c);
    th_amqp_delete(c, queue);
    ck_assert_int_eq(th_amqp_declare(c, queue, true, false), 0);
    ck_assert_int_eq(th_amqp_consume(c, queue), 0);
    return c;
}

static long count_header(const struct th_msgs *ms, const char *key, const char *value)
{
    long n = 0;
    for (size_t i = 0; i < ms->n; i++) {
        const char *v = th_msg_header(&ms->v[i], key);
        n += v && strcmp(v, value) == 0;
    }
    return n;
}

static const char *const upgrade_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-upgrade-v1}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  reconnect_min_ms: 50\n"
    "  reconnect_max_ms: 200\n"
    "  topology:\n"
    "    exchanges: [{name: it.upgrade, type: topic}, {name: it.upgrade.dlx, type: topic}]\n"
    "dead_letter: {exchange: it.upgrade.dlx}\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    /* registered first: "kept" gets another id than it had, not that it had one */
    "  - {name: other, topic: \"other/#\", exchange: it.upgrade}\n"
    "  - {name: kept, topic: \"up/kept/+\", exchange: it.upgrade, routing_key: \"up.{1}\",\n"
    "     unroutable: retry}\n"
    "log: {stats_interval: 1}\n";

START_TEST(a_version_1_spool_written_by_0_1_0_is_replayed_by_route_name)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_bridge *b = th_bridge_new(mq);
    ck_assert_int_eq(mkdir(b->spool_dir, 0700), 0);
    copy_file(FIXTURE, b->spool_dir, "00000000000000000001.seg");
    copy_file(FIXTURE, b->spool_dir, "spool.id");
    struct th_amqp *dlq =
        th_amqp_consumer(th_rabbit_port(), "it.upgrade.dlq", "it.upgrade.dlx", "#");
    ck_assert_ptr_nonnull(dlq);
    struct th_amqp *kept = unbound_consumer("it.upgrade.kept");
    ck_assert_int_eq(th_bridge_config(b, upgrade_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "16 to replay", 1000), 0);

    /* "gone" is no route any more: the default policy, dead_letter. The
     * routing error was dead-lettered by 0.1.0 already: published as is. */
    struct th_msgs dead = {0};
    int rc1 = th_amqp_collect(dlq, &dead, 6, 30000);
    /* "kept" is resolved by name: its policy (retry) holds the records
     * until a queue is bound. */
    int retrying =
        th_bridge_wait_log(b,
                           "of route kept returned unroutable (exchange 'it.upgrade', routing "
                           "key 'up.k",
                           30000);
    ck_assert_int_eq(th_amqp_bind(kept, "it.upgrade.kept", "it.upgrade", "up.#"), 0);
    struct th_msgs got = {0};
    int rc2 = th_amqp_collect(kept, &got, 10, 30000);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    th_amqp_drain(dlq, &dead, 300);
    th_amqp_drain(kept, &got, 300);

    ck_assert_int_eq(rc1, 0);
    ck_assert_int_eq(retrying, 0);
    ck_assert_int_eq(rc2, 0);
    struct th_delivery d = th_check_msgs(0, 10, &got);
    ck_assert_int_eq(d.lost, 0);
    ck_assert_int_eq(d.duplicated, 0);
    ck_assert_int_eq(d.unexpected, 0);
    long bad = 0;
    for (size_t i = 0; i < got.n; i++) {
        /* message ids keep the spool's id and the record's seq (seq N+1) */
        char *want = xasprintf("0754418c1cfb25c5-%ld", got.v[i].seq + 1);
        bad += !got.v[i].message_id || strcmp(got.v[i].message_id, want) != 0;
        free(want);
        bad += th_msg_header(&got.v[i], "x-death-reason") != NULL;
    }
    ck_assert_int_eq(bad, 0);
    ck_assert_uint_eq(dead.n, 6);
    ck_assert_int_eq(count_header(&dead, "x-original-route", "gone"), 5);
    ck_assert_int_eq(count_header(&dead, "x-death-reason", "returned"), 5);
    ck_assert_int_eq(count_header(&dead, "x-original-route", "long"), 1);
    ck_assert_int_eq(count_header(&dead, "x-death-reason", "routing_error"), 1);
    th_msgs_free(&dead);
    th_msgs_free(&got);
    th_amqp_delete(kept, "it.upgrade.kept");
    th_amqp_free(kept);
    th_amqp_free(dlq);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* routes in the given order: "drop" (unroutable: drop) and "keep" (retry). */
static char *ids_yaml(bool keep_first)
{
    const char *drop =
        "  - {name: drop, topic: \"ids/drop/+\", exchange: it.ids, unroutable: drop}\n";
    const char *keep =
        "  - {name: keep, topic: \"ids/keep/+\", exchange: it.ids, unroutable: retry}\n";
    return xasprintf("mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-upgrade-ids}\n"
                     "amqp:\n"
                     "  port: ${AMQP_PORT}\n"
                     "  reconnect_min_ms: 50\n"
                     "  reconnect_max_ms: 200\n"
                     "  topology: {exchanges: [{name: it.ids, type: topic}]}\n"
                     "spool: {dir: ${SPOOL_DIR}}\n"
                     "routes:\n%s%s"
                     "log: {stats_interval: 1}\n"
                     "shutdown_timeout: 1\n",
                     keep_first ? keep : drop, keep_first ? drop : keep);
}

/* The first process spools the messages of "keep" (id 1 there) with
 * RabbitMQ out of reach; the second lists the routes the other way round,
 * so id 1 is "drop" there. Trusting the record's id would drop them. */
START_TEST(route_ids_of_an_earlier_process_are_not_trusted)
{
    static const char *const topics[] = {"ids/keep/a"};
    const long n = 20;
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_bridge *b = th_bridge_new(mq);
    struct th_amqp *c = unbound_consumer("it.ids.keep");
    th_bridge_set(b, "AMQP_PORT", "%d", th_free_port()); /* nothing listens */
    char *yaml = ids_yaml(false);
    ck_assert_int_eq(th_bridge_config(b, yaml), 0);
    free(yaml);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "mqtt: subscribed to", 60000), 0);
    struct th_pub p = {.port = mq->port,
                       .topics = topics,
                       .ntopics = 1,
                       .count = n,
                       .payload_size = 40,
                       .qos = 1,
                       .timeout_ms = 30000};
    ck_assert_int_eq(th_mqtt_publish(&p), n);
    char *spooled = xasprintf(" spooled=%ld ", n);
    ck_assert_int_eq(th_bridge_wait_log(b, spooled, 30000), 0);
    free(spooled);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);

    th_bridge_set(b, "AMQP_PORT", "%d", th_rabbit_port());
    yaml = ids_yaml(true);
    ck_assert_int_eq(th_bridge_config(b, yaml), 0);
    free(yaml);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);
    int retrying = th_bridge_wait_log(b, "of route keep returned unroutable", 30000);
    ck_assert_int_eq(th_amqp_bind(c, "it.ids.keep", "it.ids", "ids.keep.#"), 0);
    struct th_msgs got = {0};
    int rc = th_amqp_collect(c, &got, (size_t)n, 30000);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    th_amqp_drain(c, &got, 300);
    ck_assert_int_eq(retrying, 0);
    ck_assert_int_eq(rc, 0);
    struct th_delivery d = th_check_msgs(0, n, &got);
    ck_assert_int_eq(d.lost, 0);
    ck_assert_int_eq(d.duplicated, 0);
    ck_assert_int_eq(th_proc_log_count(&b->proc, "dropped (unroutable: drop)"), 0);
    th_msgs_free(&got);
    th_amqp_delete(c, "it.ids.keep");
    th_amqp_free(c);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("upgrade");
    TCase *tc = tcase_create("upgrade");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, a_version_1_spool_written_by_0_1_0_is_replayed_by_route_name);
    tcase_add_test(tc, route_ids_of_an_earlier_process_are_not_trusted);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
