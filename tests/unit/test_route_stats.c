/* test_route_stats.c - the per-route counter registry and the confirm
 * latency histogram: lookups by name, stable blocks, concurrent counting
 * while names are registered, bucket boundaries. */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/route_stats.h"
#include "check_main.h"

START_TEST(register_is_idempotent_and_find_matches_exact_names)
{
    struct m2a_route_stats *rs = m2a_route_stats_new();
    struct m2a_route_counters *a = m2a_route_stats_register(rs, "alpha");
    struct m2a_route_counters *b = m2a_route_stats_register(rs, "beta");
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_ne(a, b);
    ck_assert_ptr_eq(m2a_route_stats_register(rs, "alpha"), a);
    ck_assert_ptr_eq(m2a_route_stats_find(rs, "alpha", 5), a);
    /* not NUL-terminated, as in an envelope */
    ck_assert_ptr_eq(m2a_route_stats_find(rs, "betamax", 4), b);
    ck_assert_ptr_null(m2a_route_stats_find(rs, "alph", 4));
    ck_assert_ptr_null(m2a_route_stats_find(rs, "alphas", 6));
    ck_assert_ptr_null(m2a_route_stats_find(NULL, "alpha", 5));
    ck_assert_uint_eq(m2a_route_stats_count(rs), 2);
    ck_assert_str_eq(m2a_route_stats_name(rs, 0), "alpha");
    ck_assert_ptr_eq(m2a_route_stats_at(rs, 1), b);
    M2A_ROUTE_ADD(a, matched, 3);
    M2A_ROUTE_ADD((struct m2a_route_counters *)NULL, matched, 3); /* no-op */
    ck_assert_uint_eq(atomic_load(&a->matched), 3);
    m2a_route_stats_free(rs);
    m2a_route_stats_free(NULL);
}
END_TEST

START_TEST(registry_holds_its_maximum_then_refuses)
{
    struct m2a_route_stats *rs = m2a_route_stats_new();
    char name[32];
    int bad = 0;
    for (int i = 0; i < M2A_ROUTE_STATS_MAX; i++) {
        snprintf(name, sizeof(name), "r%d", i);
        bad += m2a_route_stats_register(rs, name) == NULL;
    }
    ck_assert_int_eq(bad, 0);
    ck_assert_ptr_null(m2a_route_stats_register(rs, "one-too-many"));
    for (int i = 0; i < M2A_ROUTE_STATS_MAX; i++) {
        snprintf(name, sizeof(name), "r%d", i);
        bad += m2a_route_stats_find(rs, name, strlen(name)) != m2a_route_stats_at(rs, (size_t)i);
    }
    ck_assert_int_eq(bad, 0);
    m2a_route_stats_free(rs);
}
END_TEST

struct counter_arg {
    struct m2a_route_stats *rs;
    long n;
};

/* Counts on "hot" while the main thread registers more names (a reload). */
static void *count_hot(void *p)
{
    struct counter_arg *a = p;
    for (long i = 0; i < a->n; i++)
        M2A_ROUTE_ADD(m2a_route_stats_find(a->rs, "hot", 3), published, 1);
    return NULL;
}

START_TEST(lookups_are_safe_while_names_are_registered)
{
    struct m2a_route_stats *rs = m2a_route_stats_new();
    struct m2a_route_counters *hot = m2a_route_stats_register(rs, "hot");
    struct counter_arg a = {rs, 200000};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, count_hot, &a), 0);
    char name[32];
    for (int i = 0; i < 500; i++) {
        snprintf(name, sizeof(name), "route-%d", i);
        m2a_route_stats_register(rs, name);
    }
    pthread_join(t, NULL);
    ck_assert_uint_eq(atomic_load(&hot->published), 200000);
    ck_assert_uint_eq(m2a_route_stats_count(rs), 501);
    m2a_route_stats_free(rs);
}
END_TEST

START_TEST(latency_lands_in_the_first_bucket_that_holds_it)
{
    struct m2a_route_stats *rs = m2a_route_stats_new();
    m2a_latency_observe(rs, 500);      /* 0.0005 s: on the first bound, le is inclusive */
    m2a_latency_observe(rs, 501);      /* next bucket */
    m2a_latency_observe(rs, 3000);     /* 0.003 -> le 0.005 */
    m2a_latency_observe(rs, 60000000); /* 60 s -> +Inf */
    m2a_latency_observe(NULL, 1);      /* no-op */
    struct m2a_latency_snapshot l;
    m2a_latency_get(rs, &l);
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
    tcase_add_test(tc, register_is_idempotent_and_find_matches_exact_names);
    tcase_add_test(tc, registry_holds_its_maximum_then_refuses);
    tcase_add_test(tc, lookups_are_safe_while_names_are_registered);
    tcase_add_test(tc, latency_lands_in_the_first_bucket_that_holds_it);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
