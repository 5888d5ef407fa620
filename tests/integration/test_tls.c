/* test_tls.c - TLS and client certificates on both sides (issue 5, item 4):
 * delivery over TLS to Mosquitto and RabbitMQ, refusal of a broker
 * certificate from another CA and of a host name the certificate does not
 * hold, each with a log line that says so, verify_hostname: false
 * accepting the latter, and clean stops over TLS that duplicate nothing.
 *
 * The certificates and a private RabbitMQ node with TLS listeners are made
 * once in main() (the parent of check's forked tests) and shared; each test
 * starts its own Mosquitto. The bridge reaches both brokers over TLS; the
 * test's own publisher and consumer use their plain listeners. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow.h"
#include "harness.h"
#include "mqtt2amqp/util.h"
#include "tls.h"
#include "check_main.h"

static struct th_certs *certs;
static struct th_rabbit_tls *rabbit;

static const char *const topics[] = {"tls/a", "tls/b/c"};

struct setup {
    struct th_mosq *mq;
    int mq_tls_port;
    struct th_bridge *b;
    struct th_amqp *c;
    char *queue;
};

/* host: what the bridge connects to on both sides; ca: the CA file it
 * trusts; verify: its verify_hostname. */
static void setup_start(struct setup *s, const char *name, const char *host, const char *ca,
                        bool verify)
{
    s->mq = th_mosq_start_tls(certs, &s->mq_tls_port);
    ck_assert_ptr_nonnull(s->mq);
    s->b = th_bridge_new(s->mq);
    th_bridge_set(s->b, "TLS_HOST", "%s", host);
    th_bridge_set(s->b, "MQTT_TLS_PORT", "%d", s->mq_tls_port);
    th_bridge_set(s->b, "AMQP_TLS_PORT", "%d", rabbit->tls_port);
    th_bridge_set(s->b, "CA", "%s", ca);
    th_bridge_set(s->b, "CERT", "%s", certs->client);
    th_bridge_set(s->b, "KEY", "%s", certs->client_key);
    th_bridge_set(s->b, "VERIFY", "%s", verify ? "true" : "false");
    char *yaml = xasprintf("mqtt:\n"
                           "  host: ${TLS_HOST}\n"
                           "  port: ${MQTT_TLS_PORT}\n"
                           "  client_id: it-tls-%s\n"
                           "  reconnect_max_ms: 1000\n"
                           "  tls: {ca_file: ${CA}, cert_file: ${CERT}, key_file: ${KEY}, "
                           "verify_hostname: ${VERIFY}}\n"
                           "amqp:\n"
                           "  host: ${TLS_HOST}\n"
                           "  port: ${AMQP_TLS_PORT}\n"
                           "  reconnect_max_ms: 1000\n"
                           "  tls: {ca_file: ${CA}, cert_file: ${CERT}, key_file: ${KEY}, "
                           "verify_hostname: ${VERIFY}}\n"
                           "  topology:\n"
                           "    exchanges: [{name: it.tls.%s, type: topic}]\n"
                           "    queues: [{name: it.tls.%s, bindings: [{exchange: it.tls.%s}]}]\n"
                           "spool: {dir: ${SPOOL_DIR}}\n"
                           "routes:\n"
                           "  - {name: all, topic: \"tls/#\", exchange: it.tls.%s}\n"
                           "log: {stats_interval: 0}\n",
                           name, name, name, name, name);
    ck_assert_int_eq(th_bridge_config(s->b, yaml), 0);
    free(yaml);
    s->queue = xasprintf("it.tls.%s", name);
    s->c = th_amqp_consumer(rabbit->amqp_port, s->queue, s->queue, "#");
    ck_assert_ptr_nonnull(s->c);
}

static void setup_free(struct setup *s)
{
    th_amqp_free(s->c);
    th_bridge_free(s->b);
    th_mosq_free(s->mq);
    free(s->queue);
}

/* Publishes n messages on the plain listener and checks all arrive once. */
static void deliver_and_check(struct setup *s, long n)
{
    struct th_pub p = {.port = s->mq->port,
                       .topics = topics,
                       .ntopics = 2,
                       .count = n,
                       .payload_size = 100,
                       .qos = 1,
                       .window = 500,
                       .timeout_ms = 60000};
    ck_assert_int_eq(th_mqtt_publish(&p), n);
    struct th_msgs got = {0};
    int rc = th_amqp_collect(s->c, &got, (size_t)n, 60000);
    th_amqp_drain(s->c, &got, 300);
    struct th_delivery d = th_check_msgs(0, n, &got);
    ck_assert_int_eq(rc, 0);
    TH_ASSERT_EXACT(d);
    th_msgs_free(&got);
}

struct line_wait {
    struct th_bridge *b;
    const char *prefix; /* "mqtt: " or "amqp: " */
    const char *phrase;
};

/* True once a log line of the current run has both prefix and phrase. */
static bool line_with(void *arg)
{
    struct line_wait *w = arg;
    char *log = th_read_file(w->b->proc.log_path, NULL);
    bool found = false;
    for (char *l = log ? log + w->b->proc.log_start : NULL; l && *l && !found;) {
        char *nl = strchr(l, '\n');
        if (nl)
            *nl = '\0';
        found = strstr(l, w->prefix) && strstr(l, w->phrase);
        l = nl ? nl + 1 : NULL;
    }
    free(log);
    return found;
}

static void assert_logged(struct th_bridge *b, const char *prefix, const char *phrase)
{
    struct line_wait w = {b, prefix, phrase};
    int rc = th_poll_until(line_with, &w, 30000);
    if (rc != 0)
        th_dump_tail("bridge", b->proc.log_path, 30);
    ck_assert_msg(rc == 0, "no '%s' line saying '%s'", prefix, phrase);
}

START_TEST(delivery_over_tls_with_client_certificates_on_both_sides)
{
    struct setup s = {0};
    setup_start(&s, "ok", "localhost", certs->ca, true);
    ck_assert_int_eq(th_bridge_start_ready(s.b, 60000), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "(MQTT 5, TLS,", 1000), 0);
    ck_assert_int_eq(th_bridge_wait_log(s.b, "(TLS) vhost", 1000), 0);
    deliver_and_check(&s, 2000);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

/* A clean stop over TLS lets every PUBACK reach Mosquitto before the
 * connection ends: stopping and restarting the bridge three times during
 * traffic loses nothing and duplicates nothing (a stop that closes the
 * socket with unread data makes the kernel send RST, and Mosquitto then
 * drops the PUBACKs it had not read yet: their messages come back). */
START_TEST(clean_stops_over_tls_duplicate_nothing)
{
    struct setup s = {0};
    setup_start(&s, "stop", "localhost", certs->ca, true);
    ck_assert_int_eq(th_bridge_start_ready(s.b, 60000), 0);
    struct th_flow f = {
        .port = s.mq->port, .topics = topics, .ntopics = 2, .chunk = 500, .max = 400000};
    th_flow_start(&f);
    struct th_msgs got = {0};
    for (size_t k = 1; k <= 3; k++) {
        ck_assert_int_eq(th_amqp_collect(s.c, &got, k * 2000, 60000), 0);
        ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
        ck_assert_int_eq(th_bridge_start_ready(s.b, 60000), 0);
    }
    ck_assert_int_eq(th_flow_wait_published(&f, atomic_load(&f.published) + 1000, 60000), 0);
    long n = th_flow_stop(&f);
    ck_assert(!atomic_load(&f.failed));
    int rc = th_amqp_collect(s.c, &got, (size_t)n, 120000);
    th_amqp_drain(s.c, &got, 300);
    struct th_delivery d = th_check_msgs(0, n, &got);
    fprintf(stderr, "tls clean stops: sent %ld lost %ld duplicated %ld unexpected %ld\n", n, d.lost,
            d.duplicated, d.unexpected);
    ck_assert_int_eq(rc, 0);
    TH_ASSERT_EXACT(d);
    th_msgs_free(&got);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

/* 127.0.0.1 is in the certificate as an IP address, which neither client
 * library's own host name check handles: ours does. */
START_TEST(delivery_over_tls_to_an_ip_address_the_certificate_names)
{
    struct setup s = {0};
    setup_start(&s, "ip", "127.0.0.1", certs->ca, true);
    ck_assert_int_eq(th_bridge_start_ready(s.b, 60000), 0);
    deliver_and_check(&s, 200);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

START_TEST(certificate_from_another_ca_is_refused_with_a_clear_line)
{
    struct setup s = {0};
    setup_start(&s, "badca", "localhost", certs->other_ca, true);
    ck_assert_int_eq(th_bridge_start(s.b, NULL), 0);
    const char *why = "TLS: the broker's certificate is not signed by a trusted CA";
    assert_logged(s.b, "mqtt: ", why);
    assert_logged(s.b, "amqp: ", why);
    assert_logged(s.b, "amqp: ", "check that tls.ca_file holds the CA that issued it");
    /* refused, not connected: nothing was subscribed or declared */
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "mqtt: subscribed to"), 0);
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "amqp: connected to"), 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

START_TEST(host_name_the_certificate_does_not_hold_is_refused_with_a_clear_line)
{
    struct setup s = {0};
    setup_start(&s, "badhost", "127.0.0.2", certs->ca, true);
    ck_assert_int_eq(th_bridge_start(s.b, NULL), 0);
    const char *why = "TLS: the broker's certificate does not match the host '127.0.0.2'";
    assert_logged(s.b, "mqtt: ", why);
    assert_logged(s.b, "amqp: ", why);
    assert_logged(s.b, "mqtt: ", "or set tls.verify_hostname: false");
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "mqtt: subscribed to"), 0);
    ck_assert_int_eq(th_proc_log_count(&s.b->proc, "amqp: connected to"), 0);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

START_TEST(verify_hostname_false_accepts_a_name_the_certificate_does_not_hold)
{
    struct setup s = {0};
    setup_start(&s, "nohostcheck", "127.0.0.2", certs->ca, false);
    ck_assert_int_eq(th_bridge_start_ready(s.b, 60000), 0);
    deliver_and_check(&s, 200);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

START_TEST(unreadable_tls_file_fails_the_start_with_exit_code_2)
{
    struct setup s = {0};
    setup_start(&s, "nofile", "localhost", "/nonexistent/ca.pem", true);
    ck_assert_int_eq(th_bridge_start(s.b, NULL), 0);
    int code = -1;
    ck_assert_int_eq(th_bridge_wait_exit(s.b, 30000, &code), 0);
    ck_assert_int_eq(code, 2); /* the config check names the file */
    ck_assert_int_ge(th_proc_log_count(&s.b->proc, "/nonexistent/ca.pem"), 1);
    setup_free(&s);
}
END_TEST

/* amqp.hosts over TLS (issue 10): the certificate is checked against the
 * node actually connected to, not the list's first entry nor the one-host
 * default. 127.0.0.2 alone is refused by name; with 127.0.0.1 beside it
 * the bridge ends up on 127.0.0.1, and never on 127.0.0.2. */
START_TEST(each_node_of_amqp_hosts_is_verified_by_its_own_name)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    const char *lists[] = {"[\"127.0.0.2:${AMQP_TLS_PORT}\"]",
                           "[\"127.0.0.2:${AMQP_TLS_PORT}\", \"127.0.0.1:${AMQP_TLS_PORT}\"]"};
    for (int k = 0; k < 2; k++) {
        struct th_bridge *b = th_bridge_new(mq);
        th_bridge_set(b, "AMQP_TLS_PORT", "%d", rabbit->tls_port);
        th_bridge_set(b, "CA", "%s", certs->ca);
        th_bridge_set(b, "CERT", "%s", certs->client);
        th_bridge_set(b, "KEY", "%s", certs->client_key);
        char *yaml =
            xasprintf("mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-tls-hosts}\n"
                      "amqp:\n"
                      "  hosts: %s\n"
                      "  reconnect_min_ms: 50\n"
                      "  reconnect_max_ms: 200\n"
                      "  tls: {ca_file: ${CA}, cert_file: ${CERT}, key_file: ${KEY}}\n"
                      "spool: {dir: ${SPOOL_DIR}}\n"
                      "routes:\n"
                      "  - {name: all, topic: \"tls/#\", exchange: amq.topic}\n"
                      "log: {stats_interval: 0}\n",
                      lists[k]);
        ck_assert_int_eq(th_bridge_config(b, yaml), 0);
        free(yaml);
        ck_assert_int_eq(th_bridge_start(b, NULL), 0);
        char want[160];
        snprintf(want, sizeof(want), "amqp: 127.0.0.2:%d: cannot connect: TLS: ", rabbit->tls_port);
        if (k == 0)
            assert_logged(b, want, "does not match the host '127.0.0.2'");
        if (k == 1) { /* the first attempt may go to either node */
            snprintf(want, sizeof(want), "amqp: connected to 127.0.0.1:%d (node 2 of 2)",
                     rabbit->tls_port);
            ck_assert_int_eq(th_bridge_wait_log(b, want, 30000), 0);
        }
        ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
        snprintf(want, sizeof(want), "amqp: connected to 127.0.0.2:");
        ck_assert_int_eq(th_proc_log_count(&b->proc, want), 0);
        if (k == 0)
            ck_assert_int_eq(th_proc_log_count(&b->proc, "amqp: connected to"), 0);
        th_bridge_free(b);
    }
    th_mosq_free(mq);
}
END_TEST

int main(void)
{
    certs = th_certs_new();
    if (!certs)
        return EXIT_FAILURE;
    rabbit = th_rabbit_tls_start(certs);
    if (!rabbit) {
        th_certs_free(certs);
        return EXIT_FAILURE;
    }
    Suite *s = suite_create("tls");
    TCase *tc = tcase_create("tls");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, delivery_over_tls_with_client_certificates_on_both_sides);
    tcase_add_test(tc, delivery_over_tls_to_an_ip_address_the_certificate_names);
    tcase_add_test(tc, certificate_from_another_ca_is_refused_with_a_clear_line);
    tcase_add_test(tc, host_name_the_certificate_does_not_hold_is_refused_with_a_clear_line);
    tcase_add_test(tc, verify_hostname_false_accepts_a_name_the_certificate_does_not_hold);
    tcase_add_test(tc, unreadable_tls_file_fails_the_start_with_exit_code_2);
    tcase_add_test(tc, clean_stops_over_tls_duplicate_nothing);
    tcase_add_test(tc, each_node_of_amqp_hosts_is_verified_by_its_own_name);
    suite_add_tcase(s, tc);
    int failed = m2a_check_failures(s);
    th_rabbit_tls_stop(rabbit);
    th_certs_free(certs);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
