/* test_downlink_faults.c - the downlinks' fault rows (issue 11): commands flowing
 * AMQP -> bridge -> Mosquitto -> an MQTT subscriber while a fault hits,
 * every run checked by sequence number (lost must be 0; duplicates are the
 * at-least-once price and are counted):
 *
 *   bridge SIGKILL under downlink traffic (3 times)
 *   Mosquitto restart with persistence (SIGTERM, 2 times): the device's
 *   session keeps what the bridge published while it was away
 *   RabbitMQ SIGKILL and restart (durable queue, persistent messages)
 *
 * The commands are published first (confirmed by RabbitMQ), then delivered
 * by the bridge at its own pace; each fault lands while deliveries run. */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp_pub.h"
#include "fault.h"
#include "harness.h"
#include "mqtt_sub.h"
#include "mqtt2amqp/util.h"

#define NDEV       100
#define N          30000
#define WAIT_MS    60000
#define COLLECT_MS 180000
#define MAX_SUBS   8
#define DEVICE_ID  "fdl-device"
#define FILTER     "devices/+/commands"

static const char *const config_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: fault-downlink}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  heartbeat: 5\n"
    "  reconnect_max_ms: 2000\n"
    "  topology:\n"
    "    exchanges:\n"
    "      - {name: fdl, type: topic}\n"
    "    queues:\n"
    "      - name: fdl.cmds\n"
    "        bindings: [{exchange: fdl, routing_key: \"#\"}]\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "downlinks:\n"
    "  - {name: commands, queue: fdl.cmds, topic: \"devices/{1}/commands\", prefetch: 200}\n"
    "log: {level: info, stats_interval: 1}\n";

static uint64_t case_t0;

struct fcase {
    struct th_mosq *mosq;
    struct th_bridge *b;
    struct th_sub *subs[MAX_SUBS]; /* the device, once per connection it made */
    int nsubs;
    struct th_amqp *amqp;
};

static void add_sub(struct fcase *c)
{
    ck_assert_int_lt(c->nsubs, MAX_SUBS);
    c->subs[c->nsubs] = th_sub_new(c->mosq->port, DEVICE_ID, FILTER, 1);
    ck_assert_ptr_nonnull(c->subs[c->nsubs]);
    c->nsubs++;
}

static void start(struct fcase *c)
{
    case_t0 = m2a_now_ms();
    c->mosq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(c->mosq);
    c->amqp = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(c->amqp);
    add_sub(c);
    c->b = th_bridge_new(c->mosq);
    ck_assert_int_eq(th_bridge_config(c->b, config_yaml), 0);
    ck_assert_int_eq(th_bridge_start(c->b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_log(c->b, "consuming 1 queue(s)", WAIT_MS), 0);
    th_amqp_purge(c->amqp, "fdl.cmds");
    struct th_apub p = {.port = th_rabbit_port(),
                        .exchange = "fdl",
                        .key_fmt = "dev%ld.cmd",
                        .ndev = NDEV,
                        .first = 0,
                        .count = N,
                        .timeout_ms = 120000};
    ck_assert_int_eq(th_apub_run(&p), N);
}

static void finish(struct fcase *c)
{
    th_bridge_free(c->b);
    for (int i = 0; i < c->nsubs; i++)
        th_sub_free(c->subs[i]);
    th_amqp_free(c->amqp);
    th_mosq_stop(c->mosq); /* its log is complete */
    th_mosq_free(c->mosq);
}

/* Every seq every connection of the device received. Caller frees. */
static long *all_seqs(struct fcase *c, size_t *n)
{
    long *all = NULL;
    *n = 0;
    for (int i = 0; i < c->nsubs; i++) {
        size_t k;
        long *s = th_sub_seqs(c->subs[i], &k);
        all = xrealloc(all, (*n + k + 1) * sizeof(*all));
        memcpy(all + *n, s, k * sizeof(*s));
        *n += k;
        free(s);
    }
    return all;
}

static size_t distinct_of(const long *v, size_t n)
{
    unsigned char *seen = xcalloc(N, 1);
    size_t d = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] >= 0 && v[i] < N && !seen[v[i]]++)
            d++;
    free(seen);
    return d;
}

struct at_least {
    struct fcase *c;
    size_t n;
};

static bool received_at_least(void *arg)
{
    struct at_least *w = arg;
    size_t n;
    long *v = all_seqs(w->c, &n);
    size_t d = distinct_of(v, n);
    free(v);
    return d >= w->n;
}

static int wait_received(struct fcase *c, size_t n, int timeout_ms)
{
    struct at_least w = {c, n};
    int rc = th_poll_until(received_at_least, &w, timeout_ms);
    if (rc)
        for (int i = 0; i < c->nsubs; i++)
            fprintf(stderr, "device connection %d: %zu messages, %zu distinct\n", i,
                    th_sub_count(c->subs[i]), th_sub_distinct(c->subs[i]));
    return rc;
}

/* Waits for everything (or COLLECT_MS), counts it, writes the row. */
static struct th_fres collect(struct fcase *c)
{
    wait_received(c, N, COLLECT_MS);
    size_t n;
    long *v = all_seqs(c, &n);
    struct th_delivery d = th_check_seqs(0, N, v, n);
    free(v);
    struct th_fres r = {.sent = N,
                        .delivered = N - d.lost,
                        .lost = d.lost,
                        .duplicated = d.duplicated,
                        .unexpected = d.unexpected};
    return r;
}

START_TEST(downlink_bridge_sigkill)
{
    struct fcase c = {0};
    start(&c);
    const int kills = 3;
    for (int k = 0; k < kills; k++) {
        ck_assert_int_eq(wait_received(&c, (size_t)(k + 1) * 5000, WAIT_MS), 0);
        th_bridge_kill(c.b);
        ck_assert_int_eq(th_bridge_start(c.b, NULL), 0);
        ck_assert_int_eq(th_bridge_wait_log(c.b, "consuming 1 queue(s)", WAIT_MS), 0);
    }
    struct th_fres r = collect(&c);
    th_fault_row("downlink: bridge SIGKILL", kills, &r, case_t0,
                 "unacked deliveries redelivered by RabbitMQ");
    TH_FAULT_ASSERT_NOTHING_LOST(&r);
    finish(&c);
}
END_TEST

START_TEST(downlink_mosquitto_restart)
{
    struct fcase c = {0};
    start(&c);
    const int restarts = 2;
    for (int k = 0; k < restarts; k++) {
        ck_assert_int_eq(wait_received(&c, (size_t)(k + 1) * 8000, WAIT_MS), 0);
        /* the device leaves (its session stays), the broker stops and
         * saves it, comes back, the device reconnects to its session */
        th_sub_disconnect(c.subs[c.nsubs - 1]);
        ck_assert_int_eq(th_mosq_stop(c.mosq), 0);
        ck_assert_int_eq(th_mosq_restart(c.mosq), 0);
        add_sub(&c);
        ck_assert_int_eq(th_bridge_wait_log_count(c.b, "consuming 1 queue(s)", k + 2, WAIT_MS), 0);
    }
    struct th_fres r = collect(&c);
    th_fault_row("downlink: Mosquitto restart", restarts, &r, case_t0,
                 "persistence on; the device's session keeps what it missed");
    TH_FAULT_ASSERT_NOTHING_LOST(&r);
    finish(&c);
}
END_TEST

START_TEST(downlink_rabbitmq_sigkill_and_restart)
{
    struct fcase c = {0};
    start(&c);
    ck_assert_int_eq(wait_received(&c, 5000, WAIT_MS), 0);
    th_amqp_free(c.amqp);
    c.amqp = NULL;
    ck_assert_int_eq(th_rabbit_do("kill"), 0);
    ck_assert_int_eq(th_rabbit_do("restart"), 0);
    ck_assert_int_eq(th_bridge_wait_log_count(c.b, "consuming 1 queue(s)", 2, WAIT_MS), 0);
    struct th_fres r = collect(&c);
    th_fault_row("downlink: RabbitMQ SIGKILL + restart", 1, &r, case_t0,
                 "durable queue, persistent messages");
    TH_FAULT_ASSERT_NOTHING_LOST(&r);
    finish(&c);
}
END_TEST

int main(void)
{
    const TTest *cases[] = {downlink_bridge_sigkill, downlink_mosquitto_restart,
                            downlink_rabbitmq_sigkill_and_restart, NULL};
    int failed = th_fault_run("downlink", "downlink fault suite", cases, 600);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
