/* test_downlink.c - downlinks, AMQP -> MQTT (issue 11), against real
 * RabbitMQ (the fixture), a real Mosquitto and the real bridge binary:
 * 10,000 commands to 100 device topics reach an MQTT subscriber with lost
 * 0, duplicated 0, each on its device's topic; a message whose topic
 * cannot be formed goes to the queue's dead-letter exchange, counted, and
 * is not redelivered; the MQTT broker down with commands waiting: nothing
 * consumed meanwhile, everything delivered once it is back; a SIGTERM with
 * commands in flight loses nothing; a flood of commands does not starve
 * telemetry (the uplink gets through while commands still wait). Counted
 * by sequence number. */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "amqp_pub.h"
#include "harness.h"
#include "http.h"
#include "mqtt_sub.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define NDEV 100

static const char *const config_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-downlink}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  topology:\n"
    "    exchanges:\n"
    "      - {name: it.dl, type: topic}\n"
    "      - {name: it.dl.dlx, type: fanout}\n"
    "    queues:\n"
    "      - name: it.dl.cmds\n"
    "        arguments: {x-dead-letter-exchange: it.dl.dlx}\n"
    "        bindings: [{exchange: it.dl, routing_key: \"#\"}]\n"
    "      - name: it.dl.dead\n"
    "        bindings: [{exchange: it.dl.dlx}]\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "downlinks:\n"
    "  - name: commands\n"
    "    queue: it.dl.cmds\n"
    "    topic: \"devices/{1}/commands\"\n"
    "    qos: 1\n"
    "    prefetch: ${PREFETCH:-100}\n"
    "metrics: {listen: \"127.0.0.1:${HTTP_PORT}\"}\n"
    "log: {level: info, stats_interval: 1}\n";

struct setup {
    struct th_mosq *mosq;
    struct th_bridge *b;
    struct th_sub *sub;
    struct th_amqp *amqp; /* for counts and purges */
    int http_port;        /* /metrics, /readyz */
};

/* Mosquitto, the subscriber, the queues purged, the bridge started and
 * consuming. */
static void setup_up(struct setup *s, const char *prefetch)
{
    /* the shipped config: persistence, and no limit on a subscriber's queue
     * (the stock 1000 would drop QoS 1 messages of a subscriber that lags) */
    s->mosq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(s->mosq);
    s->amqp = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(s->amqp);
    s->sub = th_sub_new(s->mosq->port, "it-downlink-device", "devices/+/commands", 1);
    ck_assert_ptr_nonnull(s->sub);
    s->b = th_bridge_new(s->mosq);
    th_bridge_set(s->b, "PREFETCH", "%s", prefetch);
    s->http_port = th_free_port();
    th_bridge_set(s->b, "HTTP_PORT", "%d", s->http_port);
    ck_assert_int_eq(th_bridge_config(s->b, config_yaml), 0);
    ck_assert_int_eq(th_bridge_start(s->b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_log(s->b, "consuming 1 queue(s)", 30000), 0);
    /* declared by the bridge by now; left-overs of an earlier test go */
    th_amqp_purge(s->amqp, "it.dl.cmds");
    th_amqp_purge(s->amqp, "it.dl.dead");
}

static void teardown_all(struct setup *s)
{
    th_bridge_free(s->b);
    th_sub_free(s->sub);
    th_amqp_free(s->amqp);
    th_mosq_free(s->mosq);
}

static long publish(long first, long count, const char *key_fmt)
{
    struct th_apub p = {.port = th_rabbit_port(),
                        .exchange = "it.dl",
                        .key_fmt = key_fmt,
                        .ndev = NDEV,
                        .first = first,
                        .count = count,
                        .timeout_ms = 120000};
    return th_apub_run(&p);
}

static struct th_delivery check_sub(struct th_sub *sub, long first, long sent)
{
    size_t n;
    long *seqs = th_sub_seqs(sub, &n);
    struct th_delivery d = th_check_seqs(first, sent, seqs, n);
    free(seqs);
    return d;
}

struct count_wait {
    struct setup *s;
    long want;
};

static bool count_is(void *arg)
{
    struct count_wait *w = arg;
    return th_amqp_count(w->s->amqp, "it.dl.cmds") == w->want;
}

/* Waits until the commands queue holds want messages (ready, RabbitMQ's
 * count). */
static int wait_queue(struct setup *s, long want, int timeout_ms)
{
    struct count_wait w = {s, want};
    int rc = th_poll_until(count_is, &w, timeout_ms);
    if (rc)
        fprintf(stderr, "queue holds %ld, want %ld\n", th_amqp_count(s->amqp, "it.dl.cmds"), want);
    return rc;
}

START_TEST(ten_thousand_commands_to_hundred_devices)
{
    struct setup s = {0};
    /* Over the window (256 with the shipped Mosquitto): deliveries also wait
     * on the AMQP side (may_deliver) and must still come whole, in order. */
    setup_up(&s, "1000");
    const long n = 10000;
    uint64_t t0 = m2a_now_ms();
    ck_assert_int_eq(publish(0, n, "dev%ld.open"), n);
    ck_assert_int_eq(th_sub_wait_distinct(s.sub, (size_t)n, 120000), 0);
    uint64_t ms = m2a_now_ms() - t0;
    /* every delivery acknowledged: the queue is empty, nothing in flight */
    ck_assert_int_eq(wait_queue(&s, 0, 10000), 0);
    ck_assert_int_eq(th_bridge_wait_stat(s.b, "down_acked", n, 10000), 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 20000), 0);
    struct th_delivery d = check_sub(s.sub, 0, n);
    TH_ASSERT_EXACT(d);
    ck_assert_uint_eq(th_sub_wrong_topics(s.sub, "devices", NDEV, "commands"), 0);
    ck_assert_int_eq(th_bridge_stat(s.b, "down_received"), n);
    ck_assert_int_eq(th_bridge_stat(s.b, "down_rejected"), 0);
    ck_assert_int_eq(th_bridge_stat(s.b, "down_inflight"), 0);
    printf("downlink: %ld commands in %" PRIu64 " ms (%.0f msg/s) AMQP publish -> MQTT "
           "subscriber\n",
           n, ms, ms ? (double)n * 1000.0 / (double)ms : 0.0);
    teardown_all(&s);
}
END_TEST

START_TEST(unmappable_message_goes_to_the_dead_letter_exchange)
{
    struct setup s = {0};
    setup_up(&s, "100");
    /* an empty routing key has no word {1}; the ones around it are fine */
    ck_assert_int_eq(publish(0, 5, "dev%ld.open"), 5);
    ck_assert_int_eq(publish(1000, 3, ""), 3); /* key "": rejected */
    ck_assert_int_eq(publish(5, 5, "dev%ld.open"), 5);
    ck_assert_int_eq(th_sub_wait_distinct(s.sub, 10, 30000), 0);
    struct th_amqp *dead = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(dead);
    ck_assert_int_eq(th_amqp_consume(dead, "it.dl.dead"), 0);
    struct th_msgs dl = {0};
    ck_assert_int_eq(th_amqp_collect(dead, &dl, 3, 30000), 0);
    struct th_delivery dd = th_check_msgs(1000, 3, &dl);
    TH_ASSERT_EXACT(dd);
    /* x-death says why RabbitMQ dead-lettered it: rejected */
    ck_assert_ptr_nonnull(th_msg_header(&dl.v[0], "x-first-death-reason"));
    ck_assert_str_eq(th_msg_header(&dl.v[0], "x-first-death-reason"), "rejected");
    ck_assert_int_eq(th_bridge_wait_stat(s.b, "down_rejected", 3, 10000), 0);
    ck_assert_int_eq(th_bridge_wait_stat(s.b, "down_acked", 10, 10000), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "rejected to the queue's dead-letter exchange", 5000),
                     0);
    /* nothing more comes: not redelivered in a loop */
    ck_assert_int_eq(th_amqp_drain(dead, &dl, 1500), 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 20000), 0);
    ck_assert_int_eq(th_bridge_stat(s.b, "down_received"), 13);
    ck_assert_int_eq(th_bridge_stat(s.b, "down_rejected"), 3);
    struct th_delivery d = check_sub(s.sub, 0, 10);
    TH_ASSERT_EXACT(d);
    th_msgs_free(&dl);
    th_amqp_free(dead);
    teardown_all(&s);
}
END_TEST

/* Both connections of the device together. */
struct two_subs {
    struct th_sub *a, *b;
};

static bool both_have_all(void *arg)
{
    struct two_subs *t = arg;
    size_t n1, n2;
    long *a = th_sub_seqs(t->a, &n1), *b = th_sub_seqs(t->b, &n2);
    a = xrealloc(a, (n1 + n2 + 1) * sizeof(*a));
    memcpy(a + n1, b, n2 * sizeof(*b));
    size_t distinct = 0;
    static unsigned char seen[2000];
    memset(seen, 0, sizeof(seen));
    for (size_t i = 0; i < n1 + n2; i++)
        if (a[i] >= 0 && a[i] < 2000 && !seen[a[i]]++)
            distinct++;
    free(b);
    free(a);
    return distinct == 2000;
}

struct readyz_wait {
    int port;
    int status;
    const char *line; /* in the body; NULL: any */
};

static bool readyz_is(void *arg)
{
    struct readyz_wait *w = arg;
    struct th_http_reply r = {0};
    bool ok = th_http(w->port, "GET", "/readyz", 2000, &r) == 0 && r.status == w->status &&
              (!w->line || (r.body && strstr(r.body, w->line)));
    th_http_reply_free(&r);
    return ok;
}

/* Waits until /readyz answers status with line in its body. */
static int wait_readyz(int port, int status, const char *line, int timeout_ms)
{
    struct readyz_wait w = {port, status, line};
    return th_poll_until(readyz_is, &w, timeout_ms);
}

START_TEST(mqtt_outage_consumes_nothing_and_loses_nothing)
{
    struct setup s = {0};
    setup_up(&s, "50");
    ck_assert_int_eq(publish(0, 1000, "dev%ld.open"), 1000);
    ck_assert_int_eq(th_sub_wait_distinct(s.sub, 1000, 30000), 0);
    /* all acknowledged: none ready, and the bridge has acked every one (acks
     * go out in batches up to 2 ms after the PUBACK; an unacked delivery
     * would be requeued when the connection closes below) */
    ck_assert_int_eq(wait_queue(&s, 0, 10000), 0);
    ck_assert_int_eq(th_bridge_wait_stat(s.b, "down_acked", 1000, 10000), 0);
    struct th_delivery d1 = check_sub(s.sub, 0, 1000);
    TH_ASSERT_EXACT(d1);
    /* the device goes offline first (its session stays), then the broker
     * stops (saving that session) */
    th_sub_disconnect(s.sub);
    ck_assert_int_eq(th_mosq_stop(s.mosq), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "the MQTT session is down: consuming stops", 15000),
                     0);
    /* not ready, and /readyz says the downlink's side is down too */
    ck_assert_int_eq(wait_readyz(s.http_port, 503, "downlink: mqtt not connected\n", 15000), 0);
    ck_assert_int_eq(publish(1000, 1000, "dev%ld.open"), 1000);
    /* nothing is taken while the broker is away: all 1000 wait in the queue */
    ck_assert_int_eq(wait_queue(&s, 1000, 10000), 0);
    ck_assert_int_eq(th_bridge_wait_stat(s.b, "down_received", 1000, 3000), 0);
    ck_assert_int_eq(th_bridge_stat(s.b, "down_received"), 1000);
    ck_assert_int_eq(th_mosq_restart(s.mosq), 0);
    ck_assert_int_eq(th_bridge_wait_stat(s.b, "down_acked", 2000, 60000), 0);
    ck_assert_int_eq(wait_queue(&s, 0, 10000), 0);
    ck_assert_int_eq(wait_readyz(s.http_port, 200, "ready\n", 15000), 0);
    /* the device comes back: its session queued what the bridge published */
    struct th_sub *first = s.sub;
    s.sub = th_sub_new(s.mosq->port, "it-downlink-device", "devices/+/commands", 1);
    ck_assert_ptr_nonnull(s.sub);
    struct two_subs both = {first, s.sub};
    th_poll_until(both_have_all, &both, 60000);
    ck_assert_int_eq(th_bridge_stop(s.b, 20000), 0);
    /* the bridge published each command once ... */
    ck_assert_int_eq(th_bridge_stat(s.b, "down_published"), 2000);
    ck_assert_int_eq(th_bridge_stat(s.b, "down_acked"), 2000);
    /* ... and the device got every one; Mosquitto may resend to it what it
     * had not acknowledged when it left (its at least once, not ours) */
    size_t n1, n2;
    long *a = th_sub_seqs(first, &n1), *b = th_sub_seqs(s.sub, &n2);
    a = xrealloc(a, (n1 + n2 + 1) * sizeof(*a));
    memcpy(a + n1, b, n2 * sizeof(*b));
    struct th_delivery d = th_check_seqs(0, 2000, a, n1 + n2);
    free(a);
    free(b);
    th_sub_free(first);
    ck_assert_int_eq(d.lost, 0);
    ck_assert_int_eq(d.unexpected, 0);
    teardown_all(&s);
}
END_TEST

START_TEST(sigterm_with_commands_in_flight_loses_nothing)
{
    struct setup s = {0};
    setup_up(&s, "500");
    ck_assert_int_eq(publish(0, 5000, "dev%ld.open"), 5000);
    ck_assert_int_eq(th_sub_wait_distinct(s.sub, 100, 30000), 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 20000), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "downlink: stopped", 1000), 0);
    /* acked by the bridge = received by the subscriber (nothing in flight
     * was acknowledged without its PUBACK); the rest is still queued */
    long acked = th_bridge_stat(s.b, "down_acked");
    ck_assert_int_eq(th_bridge_stat(s.b, "down_inflight"), 0);
    ck_assert_int_eq(wait_queue(&s, 5000 - acked, 10000), 0);
    /* a second start delivers the rest */
    ck_assert_int_eq(th_bridge_start(s.b, NULL), 0);
    ck_assert_int_eq(th_sub_wait_distinct(s.sub, 5000, 60000), 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 20000), 0);
    struct th_delivery d = check_sub(s.sub, 0, 5000);
    TH_ASSERT_EXACT(d);
    teardown_all(&s);
}
END_TEST

/* The uplink and a downlink side by side: telemetry routed to it.tele. */
static const char *const flood_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-downlink-flood}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  topology:\n"
    "    exchanges:\n"
    "      - {name: it.dl, type: topic}\n"
    "      - {name: it.dl.dlx, type: fanout}\n"
    "      - {name: it.tele, type: topic}\n"
    "    queues:\n"
    "      - name: it.dl.cmds\n"
    "        arguments: {x-dead-letter-exchange: it.dl.dlx}\n"
    "        bindings: [{exchange: it.dl, routing_key: \"#\"}]\n"
    "      - name: it.dl.dead\n"
    "        bindings: [{exchange: it.dl.dlx}]\n"
    "      - name: it.tele.q\n"
    "        bindings: [{exchange: it.tele, routing_key: \"#\"}]\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - {name: telemetry, topic: \"tele/#\", exchange: it.tele}\n"
    "downlinks:\n"
    "  - {name: commands, queue: it.dl.cmds, topic: \"devices/{1}/commands\", qos: 1}\n"
    "log: {level: info, stats_interval: 1}\n";

/* A flood of commands does not starve telemetry: with FLOOD commands
 * queued before the bridge starts, UP telemetry messages published once the
 * flood is flowing all reach RabbitMQ (lost 0, dup 0) while commands are
 * still waiting in the queue; then the flood completes, lost 0, dup 0.
 * (How fast each side goes is bench/run.sh's business, not this test's.) */
START_TEST(downlink_flood_does_not_starve_the_uplink)
{
    const long flood = 50000, up = 2000;
    struct setup s = {0};
    s.mosq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(s.mosq);
    s.amqp = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(s.amqp);
    s.sub = th_sub_new(s.mosq->port, "it-downlink-flood-device", "devices/+/commands", 1);
    ck_assert_ptr_nonnull(s.sub);
    s.b = th_bridge_new(s.mosq);
    ck_assert_int_eq(th_bridge_config(s.b, flood_yaml), 0);
    /* a first run declares the topology; the flood is queued while it is away */
    ck_assert_int_eq(th_bridge_start(s.b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "consuming 1 queue(s)", 30000), 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 20000), 0);
    th_amqp_purge(s.amqp, "it.dl.cmds");
    th_amqp_purge(s.amqp, "it.dl.dead");
    th_amqp_purge(s.amqp, "it.tele.q");
    ck_assert_int_eq(publish(0, flood, "dev%ld.open"), flood);
    struct th_amqp *tele = th_amqp_consumer(th_rabbit_port(), "it.tele.q", NULL, NULL);
    ck_assert_ptr_nonnull(tele);

    ck_assert_int_eq(th_bridge_start(s.b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_stat(s.b, "down_acked", 1000, 60000), 0);
    const char *topics[] = {"tele/a/temp", "tele/b/temp", "tele/c/temp"};
    struct th_pub p = {.port = s.mosq->port,
                       .topics = topics,
                       .ntopics = 3,
                       .count = up,
                       .qos = 1,
                       .client_id = "it-downlink-flood-sensor",
                       .timeout_ms = 60000};
    uint64_t t0 = m2a_now_ms();
    ck_assert_int_eq(th_mqtt_publish(&p), up);
    struct th_msgs msgs = {0};
    ck_assert_int_eq(th_amqp_collect(tele, &msgs, (size_t)up, 60000), 0);
    uint64_t ms = m2a_now_ms() - t0;
    long waiting = th_amqp_count(s.amqp, "it.dl.cmds");
    long acked = th_bridge_stat(s.b, "down_acked");
    printf("downlink flood: %ld telemetry messages through in %" PRIu64
           " ms while the flood ran (%ld commands acked, %ld still queued)\n",
           up, ms, acked, waiting);
    /* the telemetry got through while the flood was still going */
    ck_assert_int_gt(waiting, 0);
    TH_ASSERT_EXACT(th_check_msgs(0, up, &msgs));
    th_msgs_free(&msgs);

    ck_assert_int_eq(th_sub_wait_distinct(s.sub, (size_t)flood, 240000), 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 20000), 0);
    TH_ASSERT_EXACT(check_sub(s.sub, 0, flood));
    th_amqp_free(tele);
    teardown_all(&s);
}
END_TEST

/* The command line: --explain-downlink prints each downlink's topic (or
 * why it would reject), --check refuses a bad template with its position. */
START_TEST(explain_downlink_and_check)
{
    char *dir = th_tmpdir_new("dl-cli");
    char *good = xasprintf("%s/good.yaml", dir), *bad = xasprintf("%s/bad.yaml", dir);
    ck_assert_int_eq(th_write_file(good,
                                   "amqp:\n"
                                   "  topology:\n"
                                   "    queues: [{name: cmds}]\n"
                                   "downlinks:\n"
                                   "  - {name: c, queue: cmds, topic: \"devices/{1}/cmd\"}\n"
                                   "  - {name: h, queue: cmds, topic: \"s/{header:site}\"}\n"),
                     0);
    ck_assert_int_eq(th_write_file(bad, "amqp:\n"
                                        "  topology:\n"
                                        "    queues: [{name: cmds}]\n"
                                        "downlinks:\n"
                                        "  - name: c\n"
                                        "    queue: cmds\n"
                                        "    topic: \"devices/+/cmd\"\n"),
                     0);
    struct th_run_result r;
    const char *explain[] = {M2A_BINARY,  "-c", good,         "--explain-downlink",
                             "dev7.open", "-H", "site=north", NULL};
    ck_assert_int_eq(th_run(explain, NULL, 10000, &r), 0);
    ck_assert_int_eq(r.exit_code, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "topic:        devices/dev7/cmd"));
    ck_assert_ptr_nonnull(strstr(r.out, "topic:        s/north"));
    th_run_result_free(&r);
    const char *reject[] = {M2A_BINARY, "-c", good, "--explain-downlink", "", NULL};
    ck_assert_int_eq(th_run(reject, NULL, 10000, &r), 0);
    ck_assert_ptr_nonnull(strstr(r.out, "rejected:     the message has no header 'site'"));
    th_run_result_free(&r);
    const char *check[] = {M2A_BINARY, "-c", bad, "--check", NULL};
    ck_assert_int_eq(th_run(check, NULL, 10000, &r), 0);
    ck_assert_int_eq(r.exit_code, 2);
    char *want = xasprintf("%s:7:12: downlinks[0].topic:", bad);
    ck_assert_msg(strstr(r.err, want), "stderr: %s", r.err);
    free(want);
    th_run_result_free(&r);
    free(good);
    free(bad);
    th_tmpdir_remove("dl-cli", dir);
    free(dir);
}
END_TEST

/* One case per test, so that CK_RUN_CASE=NAME runs one. */
static void add(Suite *s, const char *name, const TTest *t)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, t);
    suite_add_tcase(s, tc);
}

int main(void)
{
    Suite *s = suite_create("downlink");
    add(s, "ten_thousand", ten_thousand_commands_to_hundred_devices);
    add(s, "dead_letter", unmappable_message_goes_to_the_dead_letter_exchange);
    add(s, "mqtt_outage", mqtt_outage_consumes_nothing_and_loses_nothing);
    add(s, "sigterm", sigterm_with_commands_in_flight_loses_nothing);
    add(s, "flood", downlink_flood_does_not_starve_the_uplink);
    add(s, "cli", explain_downlink_and_check);
    return m2a_check_run(s);
}
