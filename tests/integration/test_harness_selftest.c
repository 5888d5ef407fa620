/* test_harness_selftest.c - proves the test harness itself before other
 * tests trust it: the delivery checker's arithmetic, temp dirs, process
 * control, Mosquitto from the shipped and the stock config (including the
 * shipped config's persistent offline queue across a broker restart), and
 * the RabbitMQ fixture (publish/consume through amq.topic, a durable
 * message surviving kill -9 + restart of the node).
 *
 * Runs under ctest -L integration, after the brokers.start fixture. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mosquitto.h>

#include "harness.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

static bool path_exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

START_TEST(test_seq_checker_counts)
{
    /* 0..9 expected; 1 twice, 5 three times, 4 6 7 8 9 missing, 12 and -1 foreign. */
    long seqs[] = {0, 1, 1, 2, 3, 5, 5, 5, 12, -1};
    struct th_delivery d = th_check_seqs(0, 10, seqs, 10);
    ck_assert_int_eq(d.sent, 10);
    ck_assert_int_eq(d.received, 10);
    ck_assert_int_eq(d.lost, 5);
    ck_assert_int_eq(d.duplicated, 3);
    ck_assert_int_eq(d.unexpected, 2);

    long ok[] = {104, 100, 103, 101, 102};
    d = th_check_seqs(100, 5, ok, 5);
    ck_assert_int_eq(d.lost + d.duplicated + d.unexpected, 0);

    d = th_check_seqs(0, 3, NULL, 0);
    ck_assert_int_eq(d.lost, 3);
}
END_TEST

START_TEST(test_tmpdir_and_subst)
{
    char *dir = th_tmpdir_new("selftest");
    ck_assert(path_exists(dir));
    char *sub = xasprintf("%s/a/b", dir);
    char *a = xasprintf("%s/a", dir);
    ck_assert_int_eq(mkdir(a, 0755), 0);
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    char *f = xasprintf("%s/file", sub);
    ck_assert_int_eq(th_write_file(f, "hello\n"), 0);
    char *link = xasprintf("%s/link", a);
    ck_assert_int_eq(symlink("/", link), 0); /* must be removed, not followed */
    size_t len = 0;
    char *text = th_read_file(f, &len);
    ck_assert_str_eq(text, "hello\n");
    ck_assert_uint_eq(len, 6);
    ck_assert_int_eq(th_rmtree(dir), 0);
    ck_assert(!path_exists(dir));
    ck_assert(path_exists("/usr"));

    const char *vars[] = {"PORT=1883", "DIR=/x y", NULL};
    char *s = th_subst("p: ${PORT} d: ${DIR}/s q: ${PORT:-9} u: ${OTHER:-5} ${", vars);
    ck_assert_str_eq(s, "p: 1883 d: /x y/s q: 1883 u: ${OTHER:-5} ${");
    free(s);
    free(text);
    free(link);
    free(f);
    free(a);
    free(sub);
    free(dir);
}
END_TEST

START_TEST(test_free_port_is_free_and_unique)
{
    int p1 = th_free_port(), p2 = th_free_port();
    ck_assert_int_ne(p1, p2);
    ck_assert(!th_port_open(p1));
    ck_assert_int_ge(p1, 20000);
    ck_assert_int_lt(p1, 32000);
}
END_TEST

START_TEST(test_run_and_proc_control)
{
    struct th_run_result r;
    const char *argv[] = {"sh", "-c", "cat; echo out; echo err >&2; exit 3", NULL};
    ck_assert_int_eq(th_run(argv, "in\n", 10000, &r), 0);
    ck_assert_int_eq(r.exit_code, 3);
    ck_assert_str_eq(r.out, "in\nout\n");
    ck_assert_str_eq(r.err, "err\n");
    th_run_result_free(&r);

    /* A process that prints a line and then idles until signalled. */
    char *dir = th_tmpdir_new("proc");
    char *log = xasprintf("%s/log", dir);
    struct th_proc p = {0};
    const char *idle[] = {"sh", "-c", "echo ready $X; exec tail -f /dev/null", NULL};
    const char *env[] = {"X=42", NULL};
    ck_assert_int_eq(th_proc_spawn(&p, idle, env, log), 0);
    ck_assert_int_eq(th_proc_wait_log(&p, "ready 42", 10000), 0);
    ck_assert_int_eq(th_proc_log_count(&p, "ready"), 1);
    int code = 0;
    ck_assert_int_eq(th_proc_wait_exit(&p, 50, &code), M2A_ERR_TIMEOUT);
    ck_assert_int_eq(th_proc_signal(&p, SIGTERM), 0);
    ck_assert_int_eq(th_proc_wait_exit(&p, 10000, &code), 0);
    ck_assert_int_eq(code, 128 + SIGTERM);
    ck_assert(!th_proc_alive(&p));

    /* A second run appends to the log; waits only see the new run. */
    const char *quick[] = {"sh", "-c", "echo second; exit 7", NULL};
    ck_assert_int_eq(th_proc_spawn(&p, quick, NULL, log), 0);
    ck_assert_int_eq(th_proc_wait_exit(&p, 10000, &code), 0);
    ck_assert_int_eq(code, 7);
    ck_assert_int_eq(th_proc_log_count(&p, "ready"), 0);
    ck_assert_int_eq(th_proc_wait_log(&p, "second", 1000), 0);
    ck_assert_int_eq(th_proc_wait_log(&p, "never printed", 200), M2A_ERR_CLOSED);
    th_proc_release(&p);
    th_rmtree(dir);
    free(log);
    free(dir);
}
END_TEST

START_TEST(test_bridge_config_substitution)
{
    struct th_mosq fake = {.port = 12345};
    struct th_bridge *b = th_bridge_new(&fake);
    th_bridge_set(b, "EXTRA", "%d", 7);
    th_bridge_set(b, "EXTRA", "%d", 8);
    ck_assert_int_eq(th_bridge_config(b, "mqtt: {port: ${MQTT_PORT}}\nspool: ${SPOOL_DIR}\n"
                                         "amqp: {port: ${AMQP_PORT}}\nx: ${EXTRA}\n"),
                     0);
    char *text = th_read_file(b->config_path, NULL);
    char *want = xasprintf("mqtt: {port: 12345}\nspool: %s\namqp: {port: %d}\nx: 8\n", b->spool_dir,
                           th_rabbit_port());
    ck_assert_str_eq(text, want);
    char *dir = xstrdup(b->dir);
    th_bridge_free(b);
    if (!th_keep_dirs())
        ck_assert(!path_exists(dir));
    free(dir);
    free(want);
    free(text);
}
END_TEST

/* ---- Mosquitto ---------------------------------------------------------- */

struct sub {
    struct mosquitto *m;
    int connack, subacked;
    long seqs[4096];
    size_t n;
};

static void sub_on_connect(struct mosquitto *m, void *obj, int rc)
{
    (void)m;
    ((struct sub *)obj)->connack = rc;
}

static void sub_on_subscribe(struct mosquitto *m, void *obj, int mid, int n, const int *q)
{
    (void)m;
    (void)mid;
    (void)n;
    (void)q;
    ((struct sub *)obj)->subacked = 1;
}

static void sub_on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
    struct sub *s = obj;
    (void)m;
    const char *p = msg->payloadlen > 4 ? msg->payload : "";
    if (s->n < 4096)
        s->seqs[s->n++] = strncmp(p, "seq=", 4) == 0 ? atol(p + 4) : -1;
}

/* Runs the client's loop until *flag is set or timeout_ms passes. */
static int sub_loop_until(struct sub *s, const int *flag, size_t want, int timeout_ms)
{
    uint64_t end = m2a_now_ms() + (uint64_t)timeout_ms;
    while (m2a_now_ms() < end) {
        if ((flag && *flag >= 0) || (!flag && s->n >= want))
            return 0;
        if (mosquitto_loop(s->m, 20, 1) != MOSQ_ERR_SUCCESS)
            return M2A_ERR_MQTT;
    }
    return M2A_ERR_TIMEOUT;
}

/* A persistent-session subscriber (clean_session false, fixed id, QoS1). */
static struct sub *sub_connect(int port, bool subscribe)
{
    struct sub *s = xcalloc(1, sizeof(*s));
    s->connack = -1;
    s->subacked = -1;
    s->m = mosquitto_new("th-selftest-sub", false, s);
    ck_assert_ptr_nonnull(s->m);
    mosquitto_connect_callback_set(s->m, sub_on_connect);
    mosquitto_subscribe_callback_set(s->m, sub_on_subscribe);
    mosquitto_message_callback_set(s->m, sub_on_message);
    ck_assert_int_eq(mosquitto_connect(s->m, "127.0.0.1", port, 60), MOSQ_ERR_SUCCESS);
    ck_assert_int_eq(sub_loop_until(s, &s->connack, 0, 10000), 0);
    ck_assert_int_eq(s->connack, 0);
    if (subscribe) {
        ck_assert_int_eq(mosquitto_subscribe(s->m, NULL, "selftest/#", 1), MOSQ_ERR_SUCCESS);
        ck_assert_int_eq(sub_loop_until(s, &s->subacked, 0, 10000), 0);
    }
    return s;
}

static void sub_free(struct sub *s)
{
    mosquitto_disconnect(s->m);
    mosquitto_loop(s->m, 20, 1);
    mosquitto_destroy(s->m);
    free(s);
}

static const char *const topics[] = {"selftest/a", "selftest/b/c"};

START_TEST(test_mosquitto_shipped_conf_queues_across_restart)
{
    mosquitto_lib_init();
    struct th_mosq *m = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(m);
    char *conf = th_read_file(m->conf_path, NULL);
    char *want_listener = xasprintf("listener %d 127.0.0.1\n", m->port);
    ck_assert_ptr_nonnull(strstr(conf, want_listener));
    ck_assert_ptr_nonnull(strstr(conf, "max_queued_messages 1000000"));
    ck_assert_ptr_nonnull(strstr(conf, m->dir));
    int port = m->port;

    /* Register a persistent session, go away, let 2000 messages queue (more
     * than stock Mosquitto's 1000), restart the broker, come back. */
    struct sub *s = sub_connect(port, true);
    sub_free(s);
    struct th_pub pub = {.port = port,
                         .topics = topics,
                         .ntopics = 2,
                         .first = 0,
                         .count = 2000,
                         .qos = 1,
                         .timeout_ms = 60000};
    ck_assert_int_eq(th_mqtt_publish(&pub), 2000);
    ck_assert_int_eq(th_mosq_stop(m), 0);
    ck_assert(!th_port_open(port));
    ck_assert_int_eq(th_mosq_restart(m), 0);
    ck_assert_int_eq(m->port, port);
    ck_assert(th_port_open(port));

    s = sub_connect(port, false);
    ck_assert_int_eq(sub_loop_until(s, NULL, 2000, 30000), 0);
    struct th_delivery d = th_check_seqs(0, 2000, s->seqs, s->n);
    ck_assert_int_eq(d.lost, 0);
    ck_assert_int_eq(d.unexpected, 0);
    sub_free(s);

    char *dir = xstrdup(m->dir);
    th_mosq_free(m);
    if (!th_keep_dirs())
        ck_assert(!path_exists(dir));
    free(dir);
    free(want_listener);
    free(conf);
    mosquitto_lib_cleanup();
}
END_TEST

START_TEST(test_mosquitto_stock_and_kill)
{
    struct th_mosq *m = th_mosq_start(TH_MOSQ_STOCK);
    ck_assert_ptr_nonnull(m);
    char *conf = th_read_file(m->conf_path, NULL);
    ck_assert_ptr_null(strstr(conf, "max_queued_messages"));
    struct th_pub pub = {.port = m->port,
                         .topics = topics,
                         .ntopics = 2,
                         .first = 0,
                         .count = 500,
                         .qos = 1,
                         .window = 50,
                         .timeout_ms = 30000};
    ck_assert_int_eq(th_mqtt_publish(&pub), 500);
    pid_t old = m->proc.pid;
    th_mosq_kill(m);
    ck_assert(!th_port_open(m->port));
    ck_assert_int_eq(th_mosq_restart(m), 0);
    ck_assert_int_ne(m->proc.pid, old);
    pub.count = 10;
    ck_assert_int_eq(th_mqtt_publish(&pub), 10);
    th_mosq_free(m);
    free(conf);
}
END_TEST

/* ---- RabbitMQ ----------------------------------------------------------- */

START_TEST(test_rabbit_fixture_topic_roundtrip)
{
    const struct th_rabbit *r = th_rabbit();
    ck_assert_msg(r != NULL, "fixture env missing: run via ctest -L integration");
    ck_assert_int_gt(r->server_pid, 0);
    ck_assert_int_eq(kill(r->server_pid, 0), 0);

    struct th_amqp *c = th_amqp_connect(r->amqp_port, 10000, false);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(th_amqp_declare(c, "th-selftest-q", false, true), 0);
    ck_assert_int_eq(th_amqp_bind(c, "th-selftest-q", "amq.topic", "selftest.#"), 0);
    ck_assert_int_eq(th_amqp_purge(c, "th-selftest-q"), 0);
    for (int i = 0; i < 200; i++) {
        char body[64];
        snprintf(body, sizeof(body), "seq=%d hello", i);
        ck_assert_int_eq(
            th_amqp_publish(c, "amq.topic", i % 2 ? "selftest.a.b" : "selftest.x", body, false), 0);
    }
    ck_assert_int_eq(th_amqp_publish(c, "amq.topic", "other.key", "seq=999", false), 0);
    ck_assert_int_eq(th_amqp_consume(c, "th-selftest-q"), 0);
    struct th_msgs ms = {0};
    ck_assert_int_eq(th_amqp_collect(c, &ms, 200, 20000), 0);
    ck_assert_int_eq(th_amqp_drain(c, &ms, 300), 0);
    struct th_delivery d = th_check_msgs(0, 200, &ms);
    ck_assert_int_eq(d.lost + d.duplicated + d.unexpected, 0);
    ck_assert_str_eq(ms.v[1].routing_key, "selftest.a.b");
    ck_assert_str_eq(ms.v[1].exchange, "amq.topic");
    ck_assert_str_eq(ms.v[1].content_type, "text/plain");
    ck_assert_int_eq(ms.v[1].delivery_mode, 1);
    ck_assert_ptr_null(th_msg_header(&ms.v[1], "x-none"));
    th_msgs_free(&ms);

    /* A failed passive declare closes the channel; the helper reopens it. */
    ck_assert_int_lt(th_amqp_count(c, "th-selftest-does-not-exist"), 0);
    ck_assert_int_eq(th_amqp_count(c, "th-selftest-q"), 0);
    th_amqp_free(c);
}
END_TEST

START_TEST(test_rabbit_kill_restart_keeps_durable_messages)
{
    int port = th_rabbit_port();
    struct th_amqp *c = th_amqp_connect(port, 10000, false);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(th_amqp_declare(c, "th-selftest-durable", true, false), 0);
    ck_assert_int_eq(th_amqp_purge(c, "th-selftest-durable"), 0);
    /* Without a confirm the message may still be only in memory at kill -9. */
    ck_assert_int_eq(th_amqp_confirm_select(c), 0);
    ck_assert_int_eq(th_amqp_publish(c, "", "th-selftest-durable", "seq=7 durable", true), 0);
    ck_assert_int_eq(th_amqp_count(c, "th-selftest-durable"), 1);
    th_amqp_free(c);
    /* The confirm covers the message, not the queue's definition: RabbitMQ
     * 3.10 keeps that in Mnesia, whose log reaches the disk after a delay,
     * and a kill -9 within it lost the queue once ("no queue" after the
     * restart). This test is about the harness restarting a node, so sync
     * the log first. */
    const char *sync[] = {"eval", "mnesia:sync_log().", NULL};
    struct th_run_result sr;
    ck_assert_int_eq(th_rabbit_ctl(sync, &sr), 0);
    th_run_result_free(&sr);

    pid_t before = th_rabbit()->server_pid;
    ck_assert_int_eq(th_rabbit_do("kill"), 0);
    ck_assert(!th_port_open(port));
    ck_assert_ptr_null(th_amqp_connect(port, 2000, true));
    ck_assert_int_eq(th_rabbit_do("restart"), 0);
    ck_assert_int_eq(th_rabbit_port(), port);
    ck_assert_int_ne(th_rabbit()->server_pid, before);

    c = th_amqp_connect(port, 10000, false);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(th_amqp_count(c, "th-selftest-durable"), 1);
    ck_assert_int_eq(th_amqp_consume(c, "th-selftest-durable"), 0);
    struct th_msgs ms = {0};
    ck_assert_int_eq(th_amqp_collect(c, &ms, 1, 10000), 0);
    ck_assert_int_eq(ms.v[0].seq, 7);
    ck_assert_int_eq(ms.v[0].delivery_mode, 2);
    th_msgs_free(&ms);
    th_amqp_free(c);

    /* stop_app closes the AMQP port with the node up; start_app reopens it. */
    ck_assert_int_eq(th_rabbit_do("stop_app"), 0);
    ck_assert(!th_port_open(port));
    ck_assert_int_eq(th_rabbit_do("start_app"), 0);
    c = th_amqp_connect(port, 10000, false);
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(th_amqp_delete(c, "th-selftest-durable"), 0);
    th_amqp_free(c);

    struct th_run_result rr;
    const char *args[] = {"-q", "list_queues", "name", NULL};
    ck_assert_int_eq(th_rabbit_ctl(args, &rr), 0);
    ck_assert_ptr_null(strstr(rr.out, "th-selftest-durable"));
    th_run_result_free(&rr);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("harness_selftest");
    TCase *t = tcase_create("offline");
    tcase_add_test(t, test_seq_checker_counts);
    tcase_add_test(t, test_tmpdir_and_subst);
    tcase_add_test(t, test_free_port_is_free_and_unique);
    tcase_add_test(t, test_run_and_proc_control);
    tcase_add_test(t, test_bridge_config_substitution);
    suite_add_tcase(s, t);
    t = tcase_create("mosquitto");
    tcase_set_timeout(t, 120);
    tcase_add_test(t, test_mosquitto_shipped_conf_queues_across_restart);
    tcase_add_test(t, test_mosquitto_stock_and_kill);
    suite_add_tcase(s, t);
    t = tcase_create("rabbitmq");
    tcase_set_timeout(t, 300);
    tcase_add_test(t, test_rabbit_fixture_topic_roundtrip);
    tcase_add_test(t, test_rabbit_kill_restart_keeps_durable_messages);
    suite_add_tcase(s, t);
    return s;
}

int main(void)
{
    return m2a_check_run(suite());
}
