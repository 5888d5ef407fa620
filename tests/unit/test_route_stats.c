/* test_route_stats.c - the route registry (ids, names, counters) and the
 * confirm latency histogram: dense ids, lookups by name, ids beyond the
 * metric series cap, stable blocks, concurrent counting while names are
 * registered, bucket boundaries. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/route_stats.h"
#include "check_main.h"

START_TEST(register_is_idempotent_and_lookup_matches_exact_names)
{
    struct m2a_route_stats *rs = m2a_route_stats_new();
    uint32_t a = m2a_route_stats_register(rs, "alpha");
    uint32_t b = m2a_route_stats_register(rs, "beta");
    ck_assert_uint_eq(a, 0); /* dense, in registration order */
    ck_assert_uint_eq(b, 1);
    ck_assert_uint_eq(m2a_route_stats_register(rs, "alpha"), a);
    ck_assert_uint_eq(m2a_route_stats_lookup(rs, "alpha", 5), a);
    /* not NUL-terminated, as in an envelope */
    ck_assert_uint_eq(m2a_route_stats_lookup(rs, "betamax", 4), b);
    ck_assert_uint_eq(m2a_route_stats_lookup(rs, "alph", 4), M2A_ROUTE_NONE);
    ck_assert_uint_eq(m2a_route_stats_lookup(rs, "alphas", 6), M2A_ROUTE_NONE);
    ck_assert_uint_eq(m2a_route_stats_lookup(NULL, "alpha", 5), M2A_ROUTE_NONE);
    ck_assert_uint_eq(m2a_route_stats_count(rs), 2);
    ck_assert_str_eq(m2a_route_stats_name(rs, 0), "alpha");
    ck_assert_ptr_null(m2a_route_stats_name(rs, 2));
    struct m2a_route_counters *ca = m2a_route_stats_at(rs, a);
    ck_assert_ptr_nonnull(ca);
    ck_assert_ptr_ne(ca, m2a_route_stats_at(rs, b));
    ck_assert_ptr_null(m2a_route_stats_at(rs, 2));
    ck_assert_ptr_null(m2a_route_stats_at(rs, M2A_ROUTE_NONE));
    ck_assert_ptr_null(m2a_route_stats_at(NULL, 0));
    M2A_ROUTE_ADD(ca, matched, 3);
    M2A_ROUTE_ADD((struct m2a_route_counters *)NULL, matched, 3); /* no-op */
    ck_assert_uint_eq(atomic_load(&ca->matched), 3);
    m2a_route_stats_free(rs);
    m2a_route_stats_free(NULL);
}
END_TEST

/* 10,000 routes (issue 12) get ids and counters of their own; only the
 * first M2A_ROUTE_STATS_MAX names have metric series. Counter blocks stay
 * where they were while the registry grows. */
START_TEST(ids_are_not_limited_by_the_metric_series_cap)
{
    struct m2a_route_stats *rs = m2a_route_stats_new();
    char name[32];
    int bad = 0;
    struct m2a_route_counters *first = NULL;
    for (uint32_t i = 0; i < 10000; i++) {
        snprintf(name, sizeof(name), "r%u", i);
        bad += m2a_route_stats_register(rs, name) != i;
        if (i == 0)
            first = m2a_route_stats_at(rs, 0);
    }
    ck_assert_int_eq(bad, 0);
    ck_assert_ptr_eq(m2a_route_stats_at(rs, 0), first);
    ck_assert_uint_eq(m2a_route_stats_count(rs), M2A_ROUTE_STATS_MAX);
    for (uint32_t i = 0; i < 10000; i++) {
        snprintf(name, sizeof(name), "r%u", i);
        bad += m2a_route_stats_lookup(rs, name, strlen(name)) != i;
        bad += m2a_route_stats_at(rs, i) == NULL;
        bad += strcmp(m2a_route_stats_name(rs, i), name) != 0;
    }
    ck_assert_int_eq(bad, 0);
    ck_assert_uint_eq(m2a_route_stats_lookup(rs, "r10000", 6), M2A_ROUTE_NONE);
    m2a_route_stats_free(rs);
}
END_TEST

struct counter_arg {
    struct m2a_route_stats *rs;
    long n;
};

/* Counts on "hot" by id and resolves it by name while the main thread
 * registers more names (a reload). */
static void *count_hot(void *p)
{
    struct counter_arg *a = p;
    for (long i = 0; i < a->n; i++) {
        M2A_ROUTE_ADD(m2a_route_stats_at(a->rs, 0), published, 1);
        if (i % 100 == 0)
            M2A_ROUTE_ADD(m2a_route_stats_at(a->rs, m2a_route_stats_lookup(a->rs, "hot", 3)),
                          confirmed, 1);
    }
    return NULL;
}

START_TEST(lookups_are_safe_while_names_are_registered)
{
    struct m2a_route_stats *rs = m2a_route_stats_new();
    ck_assert_uint_eq(m2a_route_stats_register(rs, "hot"), 0);
    struct counter_arg a = {rs, 200000};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, count_hot, &a), 0);
    char name[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof(name), "route-%d", i);
        m2a_route_stats_register(rs, name);
    }
    pthread_join(t, NULL);
    struct m2a_route_counters *hot = m2a_route_stats_at(rs, 0);
    ck_assert_uint_eq(atomic_load(&hot->published), 200000);
    ck_assert_uint_eq(atomic_load(&hot->confirmed), 2000);
    ck_assert_uint_eq(m2a_route_stats_count(rs), M2A_ROUTE_STATS_MAX);
    ck_assert_uint_eq(m2a_route_stats_lookup(rs, "route-4999", 10), 5000);
    m2a_route_stats_free(rs);
}
END_TEST

START_TEST(latency_lands_in_the_first_bucket_that_holds_it)
{
    struct m2a_route_stats *rs = m2a_route_stats_new();
    m2a_route_stats_observe_latency(rs, 500);  /* 0.0005 s: on the first bound, le is inclusive */
    m2a_route_stats_observe_latency(rs, 501);  /* next bucket */
    m2a_route_stats_observe_latency(rs, 3000); /* 0.003 -> le 0.005 */
    m2a_route_stats_observe_latency(rs, 60000000); /* 60 s -> +Inf */
    m2a_route_stats_observe_latency(NULL, 1);      /* no-op */
    struct m2a_latency_snapshot l;
    m2a_route_stats_latency(rs, &l);
    ck_assert_uint_eq(l.bucket[0], 1);
    ck_assert_uint_eq(l.bucket[1], 1);
    ck_assert_uint_eq(l.bucket[3], 1);
    ck_assert_uint_eq(l.bucket[M2A_LATENCY_BUCKETS], 1);
    ck_assert_uint_eq(l.count, 4);
    ck_assert_uint_eq(l.sum_us, 500 + 501 + 3000 + 60000000);
    m2a_route_stats_free(rs);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("route_stats");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, register_is_idempotent_and_lookup_matches_exact_names);
    tcase_add_test(tc, ids_are_not_limited_by_the_metric_series_cap);
    tcase_add_test(tc, lookups_are_safe_while_names_are_registered);
    tcase_add_test(tc, latency_lands_in_the_first_bucket_that_holds_it);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
