/* test_mqtt_readiness.c - what the MQTT side publishes for operators: the
 * broker in use and the refused subscriptions in /metrics, the refused
 * subscriptions as /readyz reasons, and the lock-free note they travel in
 * (stats.h) read whole while another thread rewrites it. */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/metrics.h"
#include "mqtt2amqp/route_stats.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/stats.h"
#include "check_main.h"
#include "files.h"

struct fixture {
    char *dir;
    struct m2a_spool *spool;
    struct m2a_stats st;
    _Atomic uint64_t beat;
    struct m2a_conf_endpoint ep[2];
    struct m2a_metrics_opts o;
};

static void fixture_init(struct fixture *f)
{
    memset(f, 0, sizeof(*f));
    f->dir = th_tmpdir_new("mqtt-ready");
    char err[256];
    struct m2a_spool_opts so = {
        .dir = f->dir, .max_bytes = 1 << 20, .segment_bytes = 64 << 10, .fsync = M2A_FSYNC_NEVER};
    ck_assert_int_eq(m2a_spool_open(&so, &f->spool, NULL, err, sizeof(err)), 0);
    f->st.routes = m2a_route_stats_new();
    f->ep[0] = (struct m2a_conf_endpoint){.host = "emqx-0", .port = 1883};
    f->ep[1] = (struct m2a_conf_endpoint){.host = "fd00::7", .port = 8883};
    f->o = (struct m2a_metrics_opts){.listen = "127.0.0.1:1",
                                     .stats = &f->st,
                                     .spool = f->spool,
                                     .spool_max_bytes = 1 << 20,
                                     .heartbeat_ms = &f->beat,
                                     .mqtt_endpoints = f->ep,
                                     .mqtt_nendpoints = 2};
}

static void fixture_free(struct fixture *f)
{
    m2a_spool_close(f->spool);
    m2a_route_stats_free(f->st.routes);
    ck_assert_int_eq(th_rmtree(f->dir), 0);
    free(f->dir);
}

static void assert_has(const char *text, const char *line)
{
    ck_assert_msg(strstr(text, line) != NULL, "missing '%s' in:\n%s", line, text);
}

START_TEST(metrics_name_the_broker_in_use_and_count_refusals)
{
    struct fixture f;
    fixture_init(&f);
    M2A_STAT_SET(&f.st, mqtt_endpoint, 2);
    M2A_STAT_ADD(&f.st, mqtt_subscribe_refusals, 3);
    M2A_STAT_SET(&f.st, mqtt_subscriptions_refused, 1);
    M2A_STAT_ADD(&f.st, mqtt_takeovers, 4);
    struct m2a_buf b = {0};
    m2a_metrics_render(&f.o, &b);
    const char *t = m2a_buf_cstr(&b);
    assert_has(t, "# TYPE mqtt2amqp_broker_connected gauge\n");
    assert_has(t, "\nmqtt2amqp_broker_connected{side=\"mqtt\",host=\"emqx-0:1883\"} 0\n");
    assert_has(t, "\nmqtt2amqp_broker_connected{side=\"mqtt\",host=\"[fd00::7]:8883\"} 1\n");
    assert_has(t, "\nmqtt2amqp_mqtt_subscribe_refusals_total 3\n");
    assert_has(t, "\nmqtt2amqp_mqtt_subscriptions_refused 1\n");
    assert_has(t, "\nmqtt2amqp_mqtt_takeovers_total 4\n");
    m2a_buf_free(&b);
    fixture_free(&f);
}
END_TEST

START_TEST(readiness_names_each_refused_subscription)
{
    struct fixture f;
    fixture_init(&f);
    char why[2048];
    M2A_STAT_SET(&f.st, mqtt_connected, true);
    M2A_STAT_SET(&f.st, amqp_connected, true);
    ck_assert(m2a_metrics_ready(&f.o, why, sizeof(why)));
    m2a_stats_note_set(&f.st.mqtt_refused, "mqtt: subscription to secret/# refused by the broker: "
                                           "Not authorized (2 refusals, retrying)\n");
    M2A_STAT_SET(&f.st, mqtt_subscriptions_refused, 1);
    ck_assert(!m2a_metrics_ready(&f.o, why, sizeof(why)));
    ck_assert_str_eq(why, "mqtt: subscription to secret/# refused by the broker: Not authorized "
                          "(2 refusals, retrying)\n");
    M2A_STAT_SET(&f.st, mqtt_subscriptions_refused, 0);
    m2a_stats_note_set(&f.st.mqtt_refused, "");
    ck_assert(m2a_metrics_ready(&f.o, why, sizeof(why)));
    fixture_free(&f);
}
END_TEST

/* --- the note under a concurrent writer ----------------------------------------- */

struct writer {
    struct m2a_stats_note *note;
    atomic_bool stop;
};

static void *write_notes(void *arg)
{
    struct writer *w = arg;
    static const char *texts[] = {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                                  "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", ""};
    for (unsigned i = 0; !atomic_load(&w->stop); i++)
        m2a_stats_note_set(w->note, texts[i % 3]);
    return NULL;
}

/* Every read is one of the texts written, never a mix of two. */
START_TEST(note_reads_are_never_torn)
{
    static struct m2a_stats_note note;
    struct writer w = {.note = &note};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, write_notes, &w), 0);
    long torn = 0;
    for (int i = 0; i < 200000; i++) {
        char got[128];
        m2a_stats_note_get(&note, got, sizeof(got));
        size_t n = strlen(got);
        for (size_t k = 1; k < n; k++)
            torn += got[k] != got[0];
        torn += n != 0 && n != 63 && n != 30;
    }
    atomic_store(&w.stop, true);
    pthread_join(t, NULL);
    ck_assert_int_eq(torn, 0);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("mqtt_readiness");
    TCase *tc = tcase_create("readiness");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, metrics_name_the_broker_in_use_and_count_refusals);
    tcase_add_test(tc, readiness_names_each_refused_subscription);
    tcase_add_test(tc, note_reads_are_never_torn);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return m2a_check_run(suite());
}
