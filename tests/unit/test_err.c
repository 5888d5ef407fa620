/* test_err.c - every error code has its own name; backoff stays in bounds. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/backoff.h"
#include "mqtt2amqp/err.h"
#include "check_main.h"

START_TEST(every_code_has_a_distinct_name)
{
    for (int a = 0; a > M2A_ERR__LAST; a--) {
        const char *na = m2a_strerror(a);
        ck_assert_ptr_nonnull(na);
        ck_assert_str_ne(na, "unknown error");
        for (int b = a - 1; b > M2A_ERR__LAST; b--)
            ck_assert_str_ne(na, m2a_strerror(b));
    }
    ck_assert_str_eq(m2a_strerror(M2A_ERR__LAST), "unknown error");
    ck_assert_str_eq(m2a_strerror(1), "unknown error");
}
END_TEST

START_TEST(backoff_grows_with_jitter_and_caps)
{
    struct m2a_backoff b;
    m2a_backoff_init(&b, 100, 30000);
    uint32_t prev_ceil = 100;
    for (int i = 0; i < 20; i++) {
        uint32_t ceil = prev_ceil;
        uint32_t d = m2a_backoff_next(&b);
        ck_assert_uint_ge(d, ceil / 2);
        ck_assert_uint_le(d, ceil);
        prev_ceil = ceil * 2 > 30000 ? 30000 : ceil * 2;
    }
    m2a_backoff_reset(&b);
    ck_assert_uint_le(m2a_backoff_next(&b), 100);
}
END_TEST

START_TEST(backoff_jitter_differs_between_draws)
{
    struct m2a_backoff b;
    m2a_backoff_init(&b, 1000, 1000);
    uint32_t first = m2a_backoff_next(&b);
    int differs = 0;
    for (int i = 0; i < 50; i++)
        differs |= m2a_backoff_next(&b) != first;
    ck_assert(differs);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("err");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, every_code_has_a_distinct_name);
    tcase_add_test(tc, backoff_grows_with_jitter_and_caps);
    tcase_add_test(tc, backoff_jitter_differs_between_draws);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
