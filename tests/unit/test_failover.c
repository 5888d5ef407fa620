/* test_failover.c - the reconnect policy over a list of nodes: rounds in
 * list order from a random start, no wait within a round, a backoff only
 * after a whole round failed, a lost connection moving on to the next
 * node, and a single node behaving as the plain backoff. */
#include <check.h>

#include "mqtt2amqp/failover.h"
#include "check_main.h"

START_TEST(a_round_tries_every_node_then_backs_off)
{
    struct m2a_failover f;
    m2a_failover_init(&f, 3, 100, 1000);
    size_t start = m2a_failover_node(&f);
    ck_assert_uint_lt(start, 3);
    bool over = true;
    ck_assert_uint_eq(m2a_failover_failed(&f, &over), 0);
    ck_assert(!over);
    ck_assert_uint_eq(m2a_failover_node(&f), (start + 1) % 3);
    ck_assert_uint_eq(m2a_failover_failed(&f, &over), 0);
    ck_assert(!over);
    ck_assert_uint_eq(m2a_failover_node(&f), (start + 2) % 3);
    uint32_t d = m2a_failover_failed(&f, &over); /* the third: the round is over */
    ck_assert(over);
    ck_assert_uint_ge(d, 50);
    ck_assert_uint_le(d, 100);
    ck_assert_uint_eq(m2a_failover_node(&f), start);
    /* the next round backs off longer */
    m2a_failover_failed(&f, NULL);
    m2a_failover_failed(&f, NULL);
    d = m2a_failover_failed(&f, &over);
    ck_assert(over);
    ck_assert_uint_ge(d, 100);
    ck_assert_uint_le(d, 200);
}
END_TEST

START_TEST(a_connection_starts_a_new_round_and_a_loss_moves_on)
{
    struct m2a_failover f;
    m2a_failover_init(&f, 3, 100, 1000);
    size_t start = m2a_failover_node(&f);
    m2a_failover_failed(&f, NULL);
    m2a_failover_connected(&f); /* on start + 1 */
    bool over = true;
    ck_assert_uint_eq(m2a_failover_failed(&f, &over), 0); /* a fresh round */
    ck_assert(!over);
    m2a_failover_connected(&f); /* on start + 2 */
    uint32_t d = m2a_failover_lost(&f, true);
    ck_assert_uint_eq(m2a_failover_node(&f), start); /* the next one */
    ck_assert_uint_ge(d, 50);
    ck_assert_uint_le(d, 100); /* stable: the backoff starts over */
    /* unstable losses back off more and more */
    uint32_t prev = 0;
    for (int i = 0; i < 4; i++) {
        d = m2a_failover_lost(&f, false);
        ck_assert_uint_ge(d, prev / 2);
        prev = d;
    }
    ck_assert_uint_ge(prev, 400);
}
END_TEST

START_TEST(one_node_is_the_plain_backoff)
{
    struct m2a_failover f;
    m2a_failover_init(&f, 1, 100, 400);
    bool over = false;
    uint32_t want_max[] = {100, 200, 400, 400};
    for (int i = 0; i < 4; i++) {
        uint32_t d = m2a_failover_failed(&f, &over);
        ck_assert(over);
        ck_assert_uint_eq(m2a_failover_node(&f), 0);
        ck_assert_uint_le(d, want_max[i]);
        ck_assert_uint_ge(d, want_max[i] / 2);
    }
}
END_TEST

/* Bridges sharing a list spread over it. */
START_TEST(the_first_node_is_picked_at_random)
{
    int seen[4] = {0};
    for (int i = 0; i < 400; i++) {
        struct m2a_failover f;
        m2a_failover_init(&f, 4, 100, 1000);
        seen[m2a_failover_node(&f)]++;
    }
    for (int i = 0; i < 4; i++)
        ck_assert_int_gt(seen[i], 40);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("failover");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, a_round_tries_every_node_then_backs_off);
    tcase_add_test(tc, a_connection_starts_a_new_round_and_a_loss_moves_on);
    tcase_add_test(tc, one_node_is_the_plain_backoff);
    tcase_add_test(tc, the_first_node_is_picked_at_random);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
