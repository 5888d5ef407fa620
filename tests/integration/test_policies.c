/* test_policies.c - what happens to messages that cannot be delivered
 * (issue 3, policies): unroutable dead_letter / drop / retry, routing
 * errors and nacks past max_retries to the dead-letter exchange, spool
 * overflow drop_oldest, spool.max_age, a full disk, and RabbitMQ's
 * connection.blocked. Real Mosquitto (shipped config), the fixture's
 * RabbitMQ, the real bridge binary.
 *
 * Every run is checked by sequence number (lost / duplicated / unexpected)
 * for every queue involved, and the bridge's counters (its last stats line)
 * must match the dead letters and drops exactly. Queue and exchange names
 * differ per test. */
#include <check.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "flow.h"
#include "harness.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

/* ---- helpers ------------------------------------------------------------ */

/* The first line of the bridge's log (all runs) holding needle, as a
 * NUL-terminated copy valid until the next call; NULL if none. */
static const char *log_line(struct th_bridge *b, const char *needle)
{
    static char line[4096];
    char *log = th_read_file(b->proc.log_path, NULL);
    const char *at = log ? strstr(log, needle) : NULL;
    if (!at) {
        free(log);
        return NULL;
    }
    const char *bol = at, *eol = strchr(at, '\n');
    while (bol > log && bol[-1] != '\n')
        bol--;
    snprintf(line, sizeof(line), "%.*s", (int)(eol ? eol - bol : (long)strlen(bol)), bol);
    free(log);
    return line;
}

/* Which seqs of 0..n-1 a queue must hold. */
typedef bool (*want_fn)(long seq, long arg);

static bool want_mod(long seq, long arg) /* arg = 10 * modulus + residue */
{
    return seq % (arg / 10) == arg % 10;
}

static bool want_from(long seq, long arg)
{
    return seq >= arg;
}

/* Counts ms against the seqs s in [0, n) with want(s, arg) (printed). */
static struct th_delivery check_set(const char *label, const struct th_msgs *ms, long n,
                                    want_fn want, long arg)
{
    struct th_delivery d = {0};
    unsigned char *seen = xcalloc((size_t)n, 1);
    for (long s = 0; s < n; s++)
        d.sent += want(s, arg);
    for (size_t i = 0; i < ms->n; i++) {
        long s = ms->v[i].seq;
        d.received++;
        if (s < 0 || s >= n || !want(s, arg))
            d.unexpected++;
        else if (seen[s]++)
            d.duplicated++;
    }
    for (long s = 0; s < n; s++)
        d.lost += want(s, arg) && !seen[s];
    free(seen);
    fprintf(stderr, "delivery %s: sent=%ld received=%ld lost=%ld duplicated=%ld unexpected=%ld\n",
            label, d.sent, d.received, d.lost, d.duplicated, d.unexpected);
    return d;
}

/* Expected header value on every message; counts the ones that differ. */
static long header_mismatches(const struct th_msgs *ms, const char *key, const char *value)
{
    long bad = 0;
    for (size_t i = 0; i < ms->n; i++) {
        const char *v = th_msg_header(&ms->v[i], key);
        if (value ? (!v || strcmp(v, value) != 0) : v != NULL) {
            if (bad++ == 0)
                fprintf(stderr, "header %s: got '%s', want '%s' (seq %ld)\n", key,
                        v ? v : "(absent)", value ? value : "(absent)", ms->v[i].seq);
        }
    }
    return bad;
}

static long publish(int port, const char *const *topics, size_t ntopics, long first, long count,
                    size_t payload)
{
    struct th_pub p = {.port = port,
                       .topics = topics,
                       .ntopics = ntopics,
                       .first = first,
                       .count = count,
                       .payload_size = payload,
                       .qos = 1,
                       .window = 100,
                       .timeout_ms = 60000};
    return th_mqtt_publish(&p);
}

/* ---- unroutable: dead_letter, drop, retry ------------------------------- */

static const char *const unroutable_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-pol-unroutable}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  reconnect_max_ms: 1000\n"
    "  topology:\n"
    "    exchanges: [{name: it.pol.ret, type: topic}, {name: it.pol.ret.dlx, type: topic}]\n"
    "    queues:\n"
    "      - name: it.pol.ret.dlq\n"
    "        bindings: [{exchange: it.pol.ret.dlx, routing_key: \"#\"}]\n"
    "dead_letter: {exchange: it.pol.ret.dlx, routing_key: \"dead.{reason}.{route}\"}\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - {name: to-dl, topic: \"ret/dl/#\", exchange: it.pol.ret}\n"
    "  - {name: to-drop, topic: \"ret/drop/#\", exchange: it.pol.ret, unroutable: drop}\n"
    "  - {name: to-retry, topic: \"ret/retry/#\", exchange: it.pol.ret, unroutable: retry}\n"
    "log: {stats_interval: 1}\n";

START_TEST(unroutable_dead_letter_drop_and_retry)
{
    static const char *const topics[] = {"ret/dl/a", "ret/drop/a", "ret/retry/a"};
    const long n = 300;
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_amqp *dlq =
        th_amqp_consumer(th_rabbit_port(), "it.pol.ret.dlq", "it.pol.ret.dlx", "#");
    ck_assert_ptr_nonnull(dlq);
    struct th_amqp *late = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(late);
    th_amqp_delete(late, "it.pol.ret.late"); /* never bound before the test binds it */
    struct th_bridge *b = th_bridge_new(mq);
    ck_assert_int_eq(th_bridge_config(b, unroutable_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);

    ck_assert_int_eq(publish(mq->port, topics, 3, 0, n, 50), n);

    /* dead_letter: every third message, with the headers that say why. */
    struct th_msgs dead = {0};
    int rc = th_amqp_collect(dlq, &dead, (size_t)n / 3, 60000);
    /* retry: returned again and again while no queue is bound... */
    ck_assert_int_eq(th_bridge_wait_stat(b, "returned", n + n / 3, 60000), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "retrying with backoff until a queue is bound", 1000),
                     0);
    /* ...and delivered once one is. */
    ck_assert_int_eq(th_amqp_declare(late, "it.pol.ret.late", true, false), 0);
    ck_assert_int_eq(th_amqp_bind(late, "it.pol.ret.late", "it.pol.ret", "ret.retry.#"), 0);
    ck_assert_int_eq(th_amqp_consume(late, "it.pol.ret.late"), 0);
    struct th_msgs retried = {0};
    int rc2 = th_amqp_collect(late, &retried, (size_t)n / 3, 60000);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    th_amqp_drain(dlq, &dead, 300);
    th_amqp_drain(late, &retried, 300);

    ck_assert_int_eq(rc, 0);
    ck_assert_int_eq(rc2, 0);
    TH_ASSERT_EXACT(check_set("dead letters", &dead, n, want_mod, 30));
    TH_ASSERT_EXACT(check_set("retried", &retried, n, want_mod, 32));
    long bad = header_mismatches(&dead, "x-death-reason", "returned") +
               header_mismatches(&dead, "x-original-route", "to-dl") +
               header_mismatches(&dead, "x-original-exchange", "it.pol.ret") +
               header_mismatches(&dead, "x-original-routing-key", "ret.dl.a") +
               header_mismatches(&dead, "x-mqtt-topic", "ret/dl/a") +
               header_mismatches(&retried, "x-death-reason", NULL);
    for (size_t i = 0; i < dead.n; i++)
        bad += strcmp(dead.v[i].routing_key, "dead.returned.to-dl") != 0;
    ck_assert_int_eq(bad, 0);
    ck_assert_int_eq(th_bridge_stat(b, "dead_lettered"), n / 3);
    ck_assert_int_eq(th_bridge_stat(b, "dropped"), n / 3);
    ck_assert_int_ge(th_bridge_stat(b, "returned"), n + n / 3);
    ck_assert_int_ge(th_proc_log_count(&b->proc, "dropped (unroutable: drop)"), 1);

    th_msgs_free(&dead);
    th_msgs_free(&retried);
    th_amqp_delete(late, "it.pol.ret.late");
    th_amqp_free(late);
    th_amqp_free(dlq);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* ---- routing errors ----------------------------------------------------- */

static const char *const rkey_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-pol-rkey}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  topology:\n"
    "    exchanges: [{name: it.pol.rk, type: topic}, {name: it.pol.rk.dlx, type: topic}]\n"
    "dead_letter: {exchange: it.pol.rk.dlx}\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - {name: keyed, topic: \"rk/+\", exchange: it.pol.rk, routing_key: \"k.{1}\"}\n"
    "log: {stats_interval: 1}\n";

START_TEST(routing_error_goes_to_the_dead_letter_exchange)
{
    char longtopic[400];
    memcpy(longtopic, "rk/", 3);
    memset(longtopic + 3, 'x', 300);
    longtopic[303] = '\0';
    const char *const topics[] = {"rk/short", longtopic};
    const long n = 200;
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_amqp *ok = th_amqp_consumer(th_rabbit_port(), "it.pol.rk.ok", "it.pol.rk", "k.#");
    ck_assert_ptr_nonnull(ok);
    struct th_amqp *dlq = th_amqp_consumer(th_rabbit_port(), "it.pol.rk.dlq", "it.pol.rk.dlx", "#");
    ck_assert_ptr_nonnull(dlq);
    struct th_bridge *b = th_bridge_new(mq);
    ck_assert_int_eq(th_bridge_config(b, rkey_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);

    ck_assert_int_eq(publish(mq->port, topics, 2, 0, n, 50), n);
    struct th_msgs good = {0}, dead = {0};
    int rc1 = th_amqp_collect(ok, &good, (size_t)n / 2, 60000);
    int rc2 = th_amqp_collect(dlq, &dead, (size_t)n / 2, 60000);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    th_amqp_drain(ok, &good, 300);
    th_amqp_drain(dlq, &dead, 300);

    ck_assert_int_eq(rc1, 0);
    ck_assert_int_eq(rc2, 0);
    TH_ASSERT_EXACT(check_set("routed", &good, n, want_mod, 20));
    TH_ASSERT_EXACT(check_set("routing errors", &dead, n, want_mod, 21));
    long bad = header_mismatches(&dead, "x-death-reason", "routing_error") +
               header_mismatches(&dead, "x-original-route", "keyed") +
               header_mismatches(&dead, "x-original-exchange", "it.pol.rk") +
               header_mismatches(&dead, "x-original-routing-key", NULL) +
               header_mismatches(&dead, "x-mqtt-topic", longtopic);
    for (size_t i = 0; i < dead.n; i++)
        bad += strcmp(dead.v[i].routing_key, "keyed") != 0; /* default "{route}" */
    ck_assert_int_eq(bad, 0);
    ck_assert_int_eq(th_bridge_stat(b, "route_errors"), n / 2);
    ck_assert_int_eq(th_bridge_stat(b, "dead_lettered"), n / 2);
    ck_assert_int_eq(th_bridge_stat(b, "dropped"), 0);

    th_msgs_free(&good);
    th_msgs_free(&dead);
    th_amqp_free(ok);
    th_amqp_free(dlq);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* ---- nacks past max_retries --------------------------------------------- */

/* A queue holding at most 10 messages that rejects the rest: RabbitMQ nacks
 * every publish beyond the tenth (with confirms), for ever. */
static const char *const nack_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-pol-nack}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  reconnect_min_ms: 20\n"
    "  reconnect_max_ms: 200\n"
    "  topology:\n"
    "    exchanges: [{name: it.pol.nack, type: topic}, {name: it.pol.nack.dlx, type: topic}]\n"
    "    queues:\n"
    "      - name: it.pol.nack.small\n"
    "        arguments: {x-max-length: 10, x-overflow: reject-publish}\n"
    "        bindings: [{exchange: it.pol.nack, routing_key: \"#\"}]\n"
    "dead_letter: {exchange: it.pol.nack.dlx, max_retries: 2}\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - {name: small, topic: \"nack/#\", exchange: it.pol.nack}\n"
    "log: {stats_interval: 1}\n";

START_TEST(nacked_past_max_retries_goes_to_the_dead_letter_exchange)
{
    static const char *const topics[] = {"nack/a"};
    const long n = 60, cap = 10;
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_amqp *dlq =
        th_amqp_consumer(th_rabbit_port(), "it.pol.nack.dlq", "it.pol.nack.dlx", "#");
    ck_assert_ptr_nonnull(dlq);
    struct th_amqp *small = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(small);
    th_amqp_delete(small, "it.pol.nack.small"); /* the bridge declares it, empty */
    struct th_bridge *b = th_bridge_new(mq);
    ck_assert_int_eq(th_bridge_config(b, nack_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);

    ck_assert_int_eq(publish(mq->port, topics, 1, 0, n, 50), n);
    struct th_msgs dead = {0}, kept = {0};
    int rc1 = th_amqp_collect(dlq, &dead, (size_t)(n - cap), 60000);
    ck_assert_int_eq(th_bridge_wait_stat(b, "dead_lettered", n - cap, 10000), 0);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    th_amqp_drain(dlq, &dead, 300);
    long in_small = th_amqp_count(small, "it.pol.nack.small");
    ck_assert_int_eq(th_amqp_consume(small, "it.pol.nack.small"), 0);
    int rc2 = th_amqp_collect(small, &kept, (size_t)cap, 10000);
    th_amqp_drain(small, &kept, 300);

    ck_assert_int_eq(rc1, 0);
    ck_assert_int_eq(rc2, 0);
    ck_assert_int_eq(in_small, cap);
    /* Every seq exactly once across the two queues. */
    struct th_msgs all = {0};
    for (size_t i = 0; i < dead.n + kept.n; i++) {
        if (all.n == all.cap) {
            all.cap = all.cap ? 2 * all.cap : 64;
            all.v = xrealloc(all.v, all.cap * sizeof(*all.v));
        }
        all.v[all.n++] = i < dead.n ? dead.v[i] : kept.v[i - dead.n];
    }
    struct th_delivery d = check_set("small + dead letters", &all, n, want_from, 0);
    free(all.v);
    TH_ASSERT_EXACT(d);
    ck_assert_int_eq((long)kept.n, cap);
    ck_assert_int_eq((long)dead.n, n - cap);
    long bad = header_mismatches(&dead, "x-death-reason", "max_retries") +
               header_mismatches(&dead, "x-original-route", "small") +
               header_mismatches(&dead, "x-original-exchange", "it.pol.nack") +
               header_mismatches(&dead, "x-original-routing-key", "nack.a") +
               header_mismatches(&kept, "x-death-reason", NULL);
    ck_assert_int_eq(bad, 0);
    ck_assert_int_eq(th_bridge_stat(b, "dead_lettered"), n - cap);
    /* Each rejected message: published 1 + max_retries times, nacked each time. */
    ck_assert_int_eq(th_bridge_stat(b, "nacked"), (n - cap) * 3);
    ck_assert_int_eq(th_bridge_stat(b, "dropped"), 0);
    /* A nack names no queue; the log names what the bridge knows. */
    const char *nack_line = log_line(b, "of route small nacked by the broker");
    ck_assert_ptr_nonnull(nack_line);
    ck_assert_ptr_nonnull(strstr(nack_line, "exchange 'it.pol.nack', routing key 'nack.a'"));
    ck_assert_ptr_nonnull(strstr(nack_line, " warn "));
    ck_assert_int_ge(th_proc_log_count(&b->proc, "dead-lettered after 3 nacks (max_retries 2)"), 1);

    th_msgs_free(&dead);
    th_msgs_free(&kept);
    th_amqp_delete(small, "it.pol.nack.small");
    th_amqp_free(small);
    th_amqp_free(dlq);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* The dead-letter queue refuses everything too: a dead letter is never
 * dead-lettered again nor dropped, it is retried with backoff; and since
 * its dead-letter exchange needs a queue that takes it, every nack of it is
 * logged as an error (the README says so; it used to be one warning for
 * every nack, naming no route). */
static const char *const dead_nack_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-pol-dead-nack}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  reconnect_min_ms: 20\n"
    "  reconnect_max_ms: 200\n"
    "  topology:\n"
    "    exchanges: [{name: it.pol.dnack, type: topic}, {name: it.pol.dnack.dlx, type: topic}]\n"
    "    queues:\n"
    "      - name: it.pol.dnack.none\n"
    "        arguments: {x-max-length: 0, x-overflow: reject-publish}\n"
    "        bindings: [{exchange: it.pol.dnack, routing_key: \"#\"}]\n"
    "      - name: it.pol.dnack.dlq\n"
    "        arguments: {x-max-length: 0, x-overflow: reject-publish}\n"
    "        bindings: [{exchange: it.pol.dnack.dlx, routing_key: \"#\"}]\n"
    "dead_letter: {exchange: it.pol.dnack.dlx, max_retries: 0}\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - {name: refused, topic: \"dnack/#\", exchange: it.pol.dnack}\n"
    "log: {stats_interval: 1}\n"
    "shutdown_timeout: 1\n";

START_TEST(a_nacked_dead_letter_is_retried_and_logged_as_an_error)
{
    static const char *const topics[] = {"dnack/a"};
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_amqp *c = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(c);
    th_amqp_delete(c, "it.pol.dnack.none"); /* the bridge declares them */
    th_amqp_delete(c, "it.pol.dnack.dlq");
    struct th_bridge *b = th_bridge_new(mq);
    ck_assert_int_eq(th_bridge_config(b, dead_nack_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);
    ck_assert_int_eq(publish(mq->port, topics, 1, 0, 1, 20), 1);

    int logged = th_bridge_wait_log(b, "dead letter ", 30000);
    /* retried, not given up: nacked again and again */
    int again = th_bridge_wait_stat(b, "nacked", 4, 30000);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    ck_assert_int_eq(logged, 0);
    ck_assert_int_eq(again, 0);
    const char *l = log_line(b, "of route refused nacked by the broker");
    ck_assert_ptr_nonnull(l);
    ck_assert_ptr_nonnull(strstr(l, "dead-lettered after 1 nacks (max_retries 0)"));
    l = log_line(b, "dead letter ");
    ck_assert_ptr_nonnull(l);
    ck_assert_ptr_nonnull(strstr(l, " error "));
    ck_assert_ptr_nonnull(strstr(l, "of route refused nacked by the broker"));
    ck_assert_ptr_nonnull(strstr(l, "exchange 'it.pol.dnack.dlx', routing key 'refused'"));
    ck_assert_ptr_nonnull(strstr(l, "it is a dead letter: retrying in"));
    ck_assert_int_eq(th_bridge_stat(b, "dead_lettered"), 1);
    ck_assert_int_eq(th_bridge_stat(b, "dropped"), 0);
    /* unconfirmed, it stays in the spool */
    ck_assert_int_eq(th_proc_log_count(&b->proc, "1 unconfirmed messages kept"), 1);

    th_amqp_delete(c, "it.pol.dnack.none");
    th_amqp_delete(c, "it.pol.dnack.dlq");
    th_amqp_free(c);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* ---- spool overflow drop_oldest ----------------------------------------- */

static const char *const drop_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-pol-drop}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  topology:\n"
    "    exchanges: [{name: it.pol.drop, type: topic}]\n"
    "spool: {dir: ${SPOOL_DIR}, max_bytes: 256KiB, segment_bytes: 64KiB, overflow: drop_oldest}\n"
    "routes:\n"
    "  - {name: all, topic: \"drop/#\", exchange: it.pol.drop}\n"
    "log: {stats_interval: 1}\n";

/* RabbitMQ unreachable while 1,000 1-KiB messages arrive: the spool keeps
 * only the newest ~256 KiB and counts the rest; reading MQTT never pauses.
 * Once RabbitMQ is reachable, exactly the newest arrive: lost == dropped,
 * and what was dropped is the oldest. */
START_TEST(drop_oldest_loses_exactly_the_counted_oldest)
{
    static const char *const topics[] = {"drop/a"};
    const long n = 1000;
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_amqp *c = th_amqp_consumer(th_rabbit_port(), "it.pol.drop.q", "it.pol.drop", "#");
    ck_assert_ptr_nonnull(c);
    struct th_bridge *b = th_bridge_new(mq);
    th_bridge_set(b, "AMQP_PORT", "%d", th_free_port()); /* nobody listens */
    ck_assert_int_eq(th_bridge_config(b, drop_yaml), 0);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "mqtt: subscribed to", 60000), 0);

    ck_assert_int_eq(publish(mq->port, topics, 1, 0, n, 1000), n);
    ck_assert_int_eq(th_bridge_wait_stat(b, "received", n, 60000), 0);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    long dropped = th_bridge_stat(b, "dropped");
    ck_assert_int_gt(dropped, 0);
    ck_assert_int_lt(dropped, n);
    ck_assert_int_ge(th_proc_log_count(&b->proc, "spool full (overflow: drop_oldest): discarded"),
                     1);
    ck_assert_int_eq(th_proc_log_count(&b->proc, "pausing MQTT reads"), 0);

    th_bridge_set(b, "AMQP_PORT", "%d", th_rabbit_port());
    ck_assert_int_eq(th_bridge_config(b, drop_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);
    struct th_msgs got = {0};
    int rc = th_amqp_collect(c, &got, (size_t)(n - dropped), 60000);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    th_amqp_drain(c, &got, 300);
    ck_assert_int_eq(rc, 0);
    fprintf(stderr, "drop_oldest: %ld of %ld dropped\n", dropped, n);
    /* exactly seqs dropped..n-1: the lost ones are the oldest, and as many
     * as were counted */
    TH_ASSERT_EXACT(check_set("after drop_oldest", &got, n, want_from, dropped));
    ck_assert_int_eq(th_bridge_stat(b, "dropped"), 0); /* nothing more on the second run */

    th_msgs_free(&got);
    th_amqp_free(c);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* ---- spool.max_age ------------------------------------------------------- */

static const char *const age_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-pol-age}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  topology:\n"
    "    exchanges: [{name: it.pol.age, type: topic}, {name: it.pol.age.dlx, type: topic}]\n"
    "dead_letter: {exchange: it.pol.age.dlx}\n"
    "spool: {dir: ${SPOOL_DIR}, max_age: 5s}\n"
    "routes:\n"
    "  - {name: aged, topic: \"age/#\", exchange: it.pol.age}\n"
    "log: {stats_interval: 1}\n";

struct clock_wait {
    uint64_t until_ms;
};

static bool clock_passed(void *arg)
{
    return m2a_now_ms() >= ((struct clock_wait *)arg)->until_ms;
}

/* Spooled while RabbitMQ is unreachable, read more than max_age later:
 * every one goes to the dead-letter exchange as expired; fresh messages
 * after that are delivered normally. */
START_TEST(records_older_than_max_age_expire_to_the_dead_letter_exchange)
{
    static const char *const topics[] = {"age/a"};
    const long n = 100, fresh = 50;
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_amqp *q = th_amqp_consumer(th_rabbit_port(), "it.pol.age.q", "it.pol.age", "#");
    ck_assert_ptr_nonnull(q);
    struct th_amqp *dlq =
        th_amqp_consumer(th_rabbit_port(), "it.pol.age.dlq", "it.pol.age.dlx", "#");
    ck_assert_ptr_nonnull(dlq);
    struct th_bridge *b = th_bridge_new(mq);
    th_bridge_set(b, "AMQP_PORT", "%d", th_free_port()); /* nobody listens */
    ck_assert_int_eq(th_bridge_config(b, age_yaml), 0);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "mqtt: subscribed to", 60000), 0);
    ck_assert_int_eq(publish(mq->port, topics, 1, 0, n, 50), n);
    ck_assert_int_eq(th_bridge_wait_stat(b, "spooled", n, 60000), 0);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    /* The condition under test is the records' age itself. */
    struct clock_wait cw = {m2a_now_ms() + 5500};
    ck_assert_int_eq(th_poll_until(clock_passed, &cw, 10000), 0);

    th_bridge_set(b, "AMQP_PORT", "%d", th_rabbit_port());
    ck_assert_int_eq(th_bridge_config(b, age_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);
    struct th_msgs dead = {0}, live = {0};
    int rc1 = th_amqp_collect(dlq, &dead, (size_t)n, 60000);
    ck_assert_int_eq(publish(mq->port, topics, 1, n, fresh, 50), fresh);
    int rc2 = th_amqp_collect(q, &live, (size_t)fresh, 60000);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    th_amqp_drain(dlq, &dead, 300);
    th_amqp_drain(q, &live, 300);

    ck_assert_int_eq(rc1, 0);
    ck_assert_int_eq(rc2, 0);
    TH_ASSERT_EXACT(check_set("expired", &dead, n, want_from, 0));
    TH_ASSERT_EXACT(check_set("fresh", &live, n + fresh, want_from, n));
    long bad = header_mismatches(&dead, "x-death-reason", "expired") +
               header_mismatches(&dead, "x-original-route", "aged") +
               header_mismatches(&dead, "x-original-routing-key", "age.a") +
               header_mismatches(&live, "x-death-reason", NULL);
    ck_assert_int_eq(bad, 0);
    ck_assert_int_eq(th_bridge_stat(b, "expired"), n);
    ck_assert_int_eq(th_bridge_stat(b, "dead_lettered"), n);
    ck_assert_int_eq(th_bridge_stat(b, "dropped"), 0);

    th_msgs_free(&dead);
    th_msgs_free(&live);
    th_amqp_free(q);
    th_amqp_free(dlq);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* ---- RabbitMQ flow control: connection.blocked -------------------------- */

static const char *const blocked_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-pol-blocked, keepalive: 5}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  topology:\n"
    "    exchanges: [{name: it.pol.blk, type: topic}]\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - {name: all, topic: \"blk/#\", exchange: it.pol.blk}\n"
    "log: {stats_interval: 1}\n";

START_TEST(blocked_connection_pauses_publishing_and_loses_nothing)
{
    static const char *const topics[] = {"blk/a", "blk/b"};
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_amqp *c = th_amqp_consumer(th_rabbit_port(), "it.pol.blk.q", "it.pol.blk", "#");
    ck_assert_ptr_nonnull(c);
    struct th_bridge *b = th_bridge_new(mq);
    ck_assert_int_eq(th_bridge_config(b, blocked_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);
    struct th_flow f = {
        .port = mq->port, .topics = topics, .ntopics = 2, .chunk = 200, .max = 400000};
    th_flow_start(&f);
    struct th_msgs got = {0};
    ck_assert_int_eq(th_amqp_collect(c, &got, 1000, 60000), 0);

    th_rabbit_set_watermark("0");
    int blocked = th_bridge_wait_log(b, "connection blocked by broker", 30000);
    long at_block = atomic_load(&f.published);
    /* Blocked for at least 8 s, longer than 1.5 MQTT keepalives (5 s): the
     * session must stay up all along. Time is the condition here. */
    struct clock_wait hold = {m2a_now_ms() + 8000};
    /* While blocked: MQTT keeps flowing into the spool... */
    int flowed = th_flow_wait_published(&f, at_block + 2000, 60000);
    int backlog = th_bridge_wait_stat(b, "spool_messages", 1000, 30000);
    /* ...and nothing reaches RabbitMQ's queues: after the publishes that were
     * already on the wire settle, two quiet seconds. */
    th_amqp_drain(c, &got, 1000);
    size_t before = got.n;
    th_amqp_drain(c, &got, 2000);
    size_t during = got.n - before;
    int blocked_stat = th_bridge_wait_log(b, "amqp_blocked=1", 5000);
    ck_assert_int_eq(th_poll_until(clock_passed, &hold, 20000), 0);
    long stats_while_blocked = th_proc_log_count(&b->proc, "amqp_blocked=1");
    th_rabbit_restore_watermark();

    ck_assert_int_eq(blocked, 0);
    ck_assert_int_eq(flowed, 0);
    ck_assert_int_eq(backlog, 0);
    ck_assert_int_eq(blocked_stat, 0);
    ck_assert_uint_eq(during, 0);
    ck_assert_int_ge(stats_while_blocked, 5); /* one stats line a second */
    ck_assert_int_eq(th_bridge_wait_log(b, "connection unblocked", 30000), 0);
    ck_assert_int_eq(th_flow_wait_published(&f, atomic_load(&f.published) + 1000, 60000), 0);
    long n = th_flow_stop(&f);
    ck_assert(!atomic_load(&f.failed));
    int rc = th_amqp_collect(c, &got, (size_t)n, 120000);
    th_amqp_drain(c, &got, 300);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    ck_assert_int_eq(rc, 0);
    TH_ASSERT_EXACT(check_set("blocked", &got, n, want_from, 0));
    /* The MQTT session and the AMQP connection both stayed up throughout. */
    ck_assert_int_eq(th_proc_log_count(&b->proc, "mqtt: disconnected from"), 1); /* at stop */
    ck_assert_int_eq(th_proc_log_count(&b->proc, "mqtt: connection to"), 0);
    ck_assert_int_eq(th_proc_log_count(&b->proc, "amqp: disconnected from"), 1); /* at stop */
    fprintf(stderr, "blocked: %ld published, %ld of them while blocked\n", n, n - at_block);

    th_msgs_free(&got);
    th_amqp_free(c);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* ---- disk full ----------------------------------------------------------- */

/* A 4 MiB tmpfs for the spool, mounted by check's parent process (so that
 * the teardown, which runs there even when the test fails, unmounts it).
 * Needs root; without it the test says so and passes vacuously. */
static char fs_dir[256];
static bool fs_mounted;

static void fs_setup(void)
{
    snprintf(fs_dir, sizeof(fs_dir), "%s/tmp/policies-enospc-%d", M2A_TEST_STATE, (int)getpid());
    mkdir(M2A_TEST_STATE, 0755);
    mkdir(M2A_TEST_STATE "/tmp", 0755);
    if (mkdir(fs_dir, 0755) != 0 && errno != EEXIST)
        return;
    fs_mounted = mount("tmpfs", fs_dir, "tmpfs", 0, "size=4m") == 0;
    if (!fs_mounted)
        fprintf(stderr, "disk full test: cannot mount a tmpfs at %s (%s): not run\n", fs_dir,
                strerror(errno));
}

static void fs_teardown(void)
{
    if (fs_mounted)
        umount2(fs_dir, MNT_DETACH);
    fs_mounted = false;
    rmdir(fs_dir);
}

/* Writes zeros to path until the file system is full. */
static long fill_disk(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    static char block[4096];
    long n = 0;
    setvbuf(f, NULL, _IONBF, 0);
    while (fwrite(block, 1, sizeof(block), f) == sizeof(block))
        n += (long)sizeof(block);
    fclose(f);
    return n;
}

static const char *const disk_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-pol-disk, reconnect_max_ms: 500}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  topology:\n"
    "    exchanges: [{name: it.pol.disk, type: topic}]\n"
    "spool: {dir: ${FS_DIR}/spool, max_bytes: 64MiB, segment_bytes: 64KiB}\n"
    "routes:\n"
    "  - {name: all, topic: \"disk/#\", exchange: it.pol.disk}\n"
    "log: {stats_interval: 1}\n";

START_TEST(disk_full_blocks_then_recovers_by_itself)
{
    if (!fs_mounted) {
        fprintf(stderr, "disk_full_blocks_then_recovers_by_itself: SKIPPED (no tmpfs mount)\n");
        return;
    }
    static const char *const topics[] = {"disk/a"};
    const long n1 = 500, n2 = 1000;
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_amqp *c = th_amqp_consumer(th_rabbit_port(), "it.pol.disk.q", "it.pol.disk", "#");
    ck_assert_ptr_nonnull(c);
    struct th_bridge *b = th_bridge_new(mq);
    th_bridge_set(b, "FS_DIR", "%s", fs_dir);
    ck_assert_int_eq(th_bridge_config(b, disk_yaml), 0);
    ck_assert_int_eq(th_bridge_start_ready(b, 60000), 0);
    ck_assert_int_eq(publish(mq->port, topics, 1, 0, n1, 200), n1);
    struct th_msgs got = {0};
    ck_assert_int_eq(th_amqp_collect(c, &got, (size_t)n1, 60000), 0);

    char *filler = xasprintf("%s/filler", fs_dir);
    long filled = fill_disk(filler);
    ck_assert_int_gt(filled, 0);
    ck_assert_int_eq(publish(mq->port, topics, 1, n1, n2 - n1, 200), n2 - n1);
    int full = th_bridge_wait_log(b, "spool: no space left on device", 30000);
    /* Blocked: the 500 new messages stay in Mosquitto (a few single-message
     * batches may still fit in the last, partly used page of the segment). */
    th_amqp_drain(c, &got, 2000);
    size_t while_full = got.n;
    fprintf(stderr, "disk full: %zu of %ld delivered while full\n", while_full, n2);
    unlink(filler);
    int back = th_bridge_wait_log(b, "spool: appends succeed again", 30000);
    int rc = th_amqp_collect(c, &got, (size_t)n2, 60000);
    th_amqp_drain(c, &got, 300);
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    free(filler);

    ck_assert_int_eq(full, 0);
    ck_assert_int_eq(back, 0);
    ck_assert_int_eq(rc, 0);
    ck_assert_uint_lt(while_full, (size_t)(n1 + 50));
    struct th_delivery d = check_set("disk full", &got, n2, want_from, 0);
    /* Duplicates are allowed: each failed batch drops the MQTT connection,
     * and a PUBACK of an earlier, spooled batch still queued then is lost
     * with it, so Mosquitto redelivers that message (at least once). */
    ck_assert_int_eq(d.lost, 0);
    ck_assert_int_eq(d.unexpected, 0);
    ck_assert_int_eq(th_proc_log_count(&b->proc, "damaged records"), 0);

    th_msgs_free(&got);
    th_amqp_free(c);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("policies");
    TCase *tc = tcase_create("undeliverable");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, unroutable_dead_letter_drop_and_retry);
    tcase_add_test(tc, routing_error_goes_to_the_dead_letter_exchange);
    tcase_add_test(tc, nacked_past_max_retries_goes_to_the_dead_letter_exchange);
    tcase_add_test(tc, a_nacked_dead_letter_is_retried_and_logged_as_an_error);
    tcase_add_test(tc, drop_oldest_loses_exactly_the_counted_oldest);
    tcase_add_test(tc, records_older_than_max_age_expire_to_the_dead_letter_exchange);
    suite_add_tcase(s, tc);
    TCase *blk = tcase_create("blocked");
    tcase_set_timeout(blk, 300);
    tcase_add_unchecked_fixture(blk, NULL, th_rabbit_restore_watermark);
    tcase_add_test(blk, blocked_connection_pauses_publishing_and_loses_nothing);
    suite_add_tcase(s, blk);
    TCase *disk = tcase_create("disk_full");
    tcase_set_timeout(disk, 300);
    tcase_add_unchecked_fixture(disk, fs_setup, fs_teardown);
    tcase_add_test(disk, disk_full_blocks_then_recovers_by_itself);
    suite_add_tcase(s, disk);
    return m2a_check_run(s);
}
