/* test_metrics_render.c - the Prometheus exposition and the readiness verdict,
 * without a network: every series present with its TYPE, label values
 * escaped, the histogram cumulative and self-consistent, and /readyz's
 * reasons. (HTTP itself: tests/integration/test_metrics.c.) */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mqtt2amqp/metrics.h"
#include "mqtt2amqp/route_stats.h"
#include "mqtt2amqp/spool.h"
#include "check_main.h"
#include "files.h"

struct fixture {
    char *dir;
    struct m2a_spool *spool;
    struct m2a_stats st;
    _Atomic uint64_t beat;
    struct m2a_metrics_opts o;
};

static void fixture_init(struct fixture *f)
{
    memset(f, 0, sizeof(*f));
    f->dir = th_tmpdir_new("metrics");
    char err[256];
    struct m2a_spool_opts so = {
        .dir = f->dir, .max_bytes = 1 << 20, .segment_bytes = 64 << 10, .fsync = M2A_FSYNC_NEVER};
    ck_assert_int_eq(m2a_spool_open(&so, &f->spool, NULL, err, sizeof(err)), 0);
    f->st.routes = m2a_route_stats_new();
    f->o = (struct m2a_metrics_opts){.listen = "127.0.0.1:1",
                                     .stats = &f->st,
                                     .spool = f->spool,
                                     .spool_max_bytes = 1 << 20,
                                     .heartbeat_ms = &f->beat};
}

static void fixture_free(struct fixture *f)
{
    m2a_spool_close(f->spool);
    m2a_route_stats_free(f->st.routes);
    ck_assert_int_eq(th_rmtree(f->dir), 0);
    free(f->dir);
}

static char *render(struct fixture *f)
{
    struct m2a_buf b = {0};
    m2a_metrics_render(&f->o, &b);
    return (char *)m2a_buf_cstr(&b);
}

static void assert_line(const char *text, const char *line)
{
    char *want = NULL;
    ck_assert_int_gt(asprintf(&want, "\n%s\n", line), 0);
    ck_assert_msg(strstr(text, want) != NULL, "missing line '%s' in:\n%s", line, text);
    free(want);
}

START_TEST(exposition_has_every_series_with_its_type)
{
    struct fixture f;
    fixture_init(&f);
    M2A_STAT_ADD(&f.st, received, 7);
    M2A_STAT_ADD(&f.st, confirmed, 5);
    M2A_STAT_SET(&f.st, mqtt_connected, 1);
    M2A_STAT_ADD(&f.st, amqp_reconnects, 2);
    struct m2a_route_counters *r =
        m2a_route_stats_at(f.st.routes, m2a_route_stats_register(f.st.routes, "tele\"metry\\x"));
    M2A_ROUTE_ADD(r, matched, 4);
    M2A_ROUTE_ADD(r, confirmed, 3);
    m2a_route_stats_register(f.st.routes, "idle");
    char *t = render(&f);
    assert_line(t, "# TYPE mqtt2amqp_received_total counter");
    assert_line(t, "mqtt2amqp_received_total 7");
    assert_line(t, "mqtt2amqp_confirmed_total 5");
    assert_line(t, "# TYPE mqtt2amqp_route_matched_total counter");
    assert_line(t, "mqtt2amqp_route_matched_total{route=\"tele\\\"metry\\\\x\"} 4");
    assert_line(t, "mqtt2amqp_route_confirmed_total{route=\"tele\\\"metry\\\\x\"} 3");
    assert_line(t, "mqtt2amqp_route_dropped_total{route=\"idle\"} 0");
    assert_line(t, "# TYPE mqtt2amqp_spool_messages gauge");
    assert_line(t, "mqtt2amqp_spool_messages 0");
    assert_line(t, "mqtt2amqp_connected{side=\"mqtt\"} 1");
    assert_line(t, "mqtt2amqp_connected{side=\"amqp\"} 0");
    assert_line(t, "mqtt2amqp_reconnects_total{side=\"amqp\"} 2");
    assert_line(t, "# TYPE mqtt2amqp_confirm_latency_seconds histogram");
    /* every series name of the README's list */
    const char *names[] = {"unmatched_total",      "route_errors_total",
                           "spooled_total",        "spooled_bytes_total",
                           "spool_errors_total",   "published_total",
                           "returned_total",       "nacked_total",
                           "dead_lettered_total",  "dropped_total",
                           "expired_total",        "route_published_total",
                           "route_returned_total", "route_dead_lettered_total",
                           "spool_bytes",          "spool_max_bytes",
                           "spool_segments",       "amqp_blocked",
                           "mqtt_paused",          "build_info"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        char want[128];
        snprintf(want, sizeof(want), "# HELP mqtt2amqp_%s ", names[i]);
        ck_assert_msg(strstr(t, want) != NULL, "no %s", names[i]);
    }
    free(t);
    fixture_free(&f);
}
END_TEST

START_TEST(histogram_is_cumulative_and_counts_match)
{
    struct fixture f;
    fixture_init(&f);
    m2a_route_stats_observe_latency(f.st.routes, 400);     /* le 0.0005 */
    m2a_route_stats_observe_latency(f.st.routes, 2000);    /* le 0.0025 */
    m2a_route_stats_observe_latency(f.st.routes, 2000000); /* le 2.5 */
    char *t = render(&f);
    assert_line(t, "mqtt2amqp_confirm_latency_seconds_bucket{le=\"0.0005\"} 1");
    assert_line(t, "mqtt2amqp_confirm_latency_seconds_bucket{le=\"0.001\"} 1");
    assert_line(t, "mqtt2amqp_confirm_latency_seconds_bucket{le=\"0.0025\"} 2");
    assert_line(t, "mqtt2amqp_confirm_latency_seconds_bucket{le=\"1\"} 2");
    assert_line(t, "mqtt2amqp_confirm_latency_seconds_bucket{le=\"2.5\"} 3");
    assert_line(t, "mqtt2amqp_confirm_latency_seconds_bucket{le=\"+Inf\"} 3");
    assert_line(t, "mqtt2amqp_confirm_latency_seconds_count 3");
    assert_line(t, "mqtt2amqp_confirm_latency_seconds_sum 2.002400");
    free(t);
    fixture_free(&f);
}
END_TEST

START_TEST(ready_needs_both_sides_and_room_in_the_spool)
{
    struct fixture f;
    fixture_init(&f);
    char why[512];
    ck_assert(!m2a_metrics_ready(&f.o, why, sizeof(why)));
    ck_assert_str_eq(why, "mqtt: not connected\namqp: not connected\n");
    M2A_STAT_SET(&f.st, mqtt_connected, 1);
    ck_assert(!m2a_metrics_ready(&f.o, why, sizeof(why)));
    ck_assert_str_eq(why, "amqp: not connected\n");
    M2A_STAT_SET(&f.st, amqp_connected, 1);
    ck_assert(m2a_metrics_ready(&f.o, why, sizeof(why)));
    ck_assert_str_eq(why, "");
    /* A spool already at its high-water mark: max below what it holds. */
    struct m2a_spool_stats ss;
    char body[2048];
    memset(body, 'x', sizeof(body));
    struct m2a_envelope env = {.route = {"r", 1},
                               .exchange = {"x", 1},
                               .routing_key = {"k", 1},
                               .topic = {"t", 1},
                               .body = {body, sizeof(body)}};
    ck_assert_int_eq(m2a_spool_append(f.spool, &env, NULL), 0);
    ck_assert_int_eq(m2a_spool_flush(f.spool), 0);
    m2a_spool_get_stats(f.spool, &ss);
    f.o.spool_max_bytes = ss.bytes; /* 100% full */
    ck_assert(!m2a_metrics_ready(&f.o, why, sizeof(why)));
    ck_assert_ptr_nonnull(strstr(why, "spool: "));
    ck_assert_ptr_nonnull(strstr(why, "high-water mark"));
    f.o.spool_max_bytes = ss.bytes * 2; /* 50% */
    ck_assert(m2a_metrics_ready(&f.o, why, sizeof(why)));
    fixture_free(&f);
}
END_TEST

/* Issue 9: the HTTP server's connection limit leaves the bridge its own
 * descriptors under any RLIMIT_NOFILE. */
START_TEST(connection_limit_leaves_descriptors_for_the_bridge)
{
    ck_assert_uint_eq(m2a_metrics_connection_limit(UINT64_MAX), M2A_METRICS_MAX_CONNECTIONS);
    ck_assert_uint_eq(m2a_metrics_connection_limit(1048576), M2A_METRICS_MAX_CONNECTIONS);
    ck_assert_uint_eq(
        m2a_metrics_connection_limit(M2A_METRICS_MAX_CONNECTIONS + M2A_METRICS_FD_RESERVE),
        M2A_METRICS_MAX_CONNECTIONS);
    ck_assert_uint_eq(m2a_metrics_connection_limit(1024), M2A_METRICS_MAX_CONNECTIONS);
    ck_assert_uint_eq(m2a_metrics_connection_limit(512), 512 - M2A_METRICS_FD_RESERVE);
    ck_assert_uint_eq(m2a_metrics_connection_limit(256), 256 - M2A_METRICS_FD_RESERVE);
    ck_assert_uint_eq(m2a_metrics_connection_limit(100), 25);
    ck_assert_uint_eq(m2a_metrics_connection_limit(8), 4);
    for (uint64_t n = 16; n <= 4096; n++) { /* never more than leaves a reserve */
        unsigned l = m2a_metrics_connection_limit(n);
        ck_assert(l >= 4 && l <= M2A_METRICS_MAX_CONNECTIONS);
        ck_assert(n - l >= (n >= 2 * M2A_METRICS_FD_RESERVE ? M2A_METRICS_FD_RESERVE : n / 2));
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, exposition_has_every_series_with_its_type);
    tcase_add_test(tc, histogram_is_cumulative_and_counts_match);
    tcase_add_test(tc, ready_needs_both_sides_and_room_in_the_spool);
    tcase_add_test(tc, connection_limit_leaves_descriptors_for_the_bridge);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
