/* test_loop.c - the per-thread event loop: timers in deadline order, fd
 * callbacks, wake-up reasons that stay pending until taken, and one stop
 * deadline that bounds every wait. */
#include <check.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "mqtt2amqp/loop.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

struct log {
    int order[8];
    int n;
};

static void note(struct m2a_loop *l, void *ud)
{
    (void)l;
    struct log *lg = ud;
    lg->order[lg->n] = lg->n;
    lg->n++;
}

static void note_at(struct m2a_loop *l, void *ud)
{
    (void)l;
    int *fired_at = ud;
    *fired_at = (int)(m2a_now_ms() & 0x7fffffff);
}

START_TEST(timers_fire_once_in_deadline_order_and_not_before)
{
    struct m2a_loop *l = m2a_loop_new();
    ck_assert_ptr_nonnull(l);
    uint64_t t0 = m2a_now_ms();
    int a = 0, b = 0, c = 0;
    m2a_loop_timer_add(l, t0 + 60, note_at, &b);
    m2a_loop_timer_add(l, t0 + 20, note_at, &a);
    uint64_t gone = m2a_loop_timer_add(l, t0 + 40, note_at, &c);
    m2a_loop_timer_del(l, gone);
    ck_assert_uint_eq(m2a_loop_next_timer(l), t0 + 20);
    uint64_t until = t0 + 2000;
    while ((a == 0 || b == 0) && m2a_now_ms() < until)
        m2a_loop_once(l, until);
    ck_assert_int_ne(a, 0);
    ck_assert_int_ne(b, 0);
    ck_assert_int_eq(c, 0);
    ck_assert_int_ge((uint64_t)a, (t0 + 20) & 0x7fffffff);
    ck_assert_int_ge((uint64_t)b, (t0 + 60) & 0x7fffffff);
    ck_assert_int_le(a, b);
    ck_assert_uint_eq(m2a_loop_next_timer(l), M2A_LOOP_NEVER);
    m2a_loop_free(l);
}
END_TEST

START_TEST(due_timers_run_earliest_first_in_one_turn)
{
    struct m2a_loop *l = m2a_loop_new();
    struct log lg = {0};
    uint64_t past = m2a_now_ms() - 5;
    m2a_loop_timer_add(l, past, note, &lg);
    m2a_loop_timer_add(l, past - 3, note, &lg);
    ck_assert_int_eq(m2a_loop_once(l, m2a_now_ms() + 1000), 2);
    ck_assert_int_eq(lg.n, 2);
    m2a_loop_free(l);
}
END_TEST

struct fdctx {
    int calls;
    unsigned events;
};

static void on_fd(struct m2a_loop *l, int fd, unsigned events, void *ud)
{
    struct fdctx *c = ud;
    char b[16];
    c->calls++;
    c->events = events;
    (void)!read(fd, b, sizeof(b));
    m2a_loop_unwatch(l, fd); /* from inside the callback */
}

START_TEST(a_ready_fd_runs_its_callback_which_may_unwatch_it)
{
    struct m2a_loop *l = m2a_loop_new();
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    struct fdctx c = {0};
    ck_assert_int_eq(m2a_loop_watch(l, p[0], M2A_LOOP_READ, on_fd, &c), 0);
    ck_assert_int_eq(m2a_loop_once(l, m2a_now_ms() + 20), 0); /* nothing to read yet */
    ck_assert_int_eq(write(p[1], "x", 1), 1);
    ck_assert_int_eq(m2a_loop_once(l, m2a_now_ms() + 2000), 1);
    ck_assert_int_eq(c.calls, 1);
    ck_assert_uint_eq(c.events & M2A_LOOP_READ, M2A_LOOP_READ);
    ck_assert_int_eq(write(p[1], "y", 1), 1);
    ck_assert_int_eq(m2a_loop_once(l, m2a_now_ms() + 20), 0); /* unwatched */
    ck_assert_int_eq(c.calls, 1);
    close(p[0]);
    close(p[1]);
    m2a_loop_free(l);
}
END_TEST

struct waker {
    struct m2a_loop *l;
    unsigned reasons;
    uint64_t stop_at; /* 0: wake only */
};

static void *wake_later(void *arg)
{
    struct waker *w = arg;
    usleep(50 * 1000); /* the wait below must already be under way; not synchronisation */
    if (w->stop_at)
        m2a_loop_stop(w->l, w->stop_at);
    else
        m2a_loop_wake(w->l, w->reasons);
    return NULL;
}

START_TEST(a_wake_from_another_thread_ends_the_wait_and_stays_pending)
{
    struct m2a_loop *l = m2a_loop_new();
    struct waker w = {l, M2A_WAKE_USER_0 << 1, 0};
    pthread_t t;
    uint64_t t0 = m2a_now_ms();
    pthread_create(&t, NULL, wake_later, &w);
    unsigned got = 0;
    while (!(got = m2a_loop_pending_wakes(l)) && m2a_now_ms() < t0 + 10000)
        m2a_loop_once(l, t0 + 10000);
    pthread_join(t, NULL);
    ck_assert_uint_lt(m2a_now_ms() - t0, 5000);
    ck_assert_uint_eq(got, M2A_WAKE_USER_0 << 1);
    /* Another wait does not consume it: only taking does. */
    m2a_loop_once(l, m2a_now_ms() + 10);
    ck_assert_uint_eq(m2a_loop_take_wakes(l, M2A_WAKE_USER_0), 0);
    ck_assert_uint_eq(m2a_loop_take_wakes(l, ~0u), M2A_WAKE_USER_0 << 1);
    ck_assert_uint_eq(m2a_loop_pending_wakes(l), 0);
    m2a_loop_free(l);
}
END_TEST

START_TEST(sleep_ends_at_once_for_a_pending_reason_in_its_mask_only)
{
    struct m2a_loop *l = m2a_loop_new();
    m2a_loop_wake(l, M2A_WAKE_USER_0);
    uint64_t t0 = m2a_now_ms();
    ck_assert_uint_eq(m2a_loop_sleep(l, t0 + 5000, M2A_WAKE_USER_0), M2A_WAKE_USER_0);
    ck_assert_uint_lt(m2a_now_ms() - t0, 1000);
    /* A reason outside the mask neither ends the sleep nor makes it spin:
     * the sleep lasts its whole delay (bounded below, and above). */
    t0 = m2a_now_ms();
    ck_assert_uint_eq(m2a_loop_sleep(l, t0 + 80, M2A_WAKE_USER_0 << 1), 0);
    ck_assert_uint_ge(m2a_now_ms() - t0, 80);
    ck_assert_uint_eq(m2a_loop_pending_wakes(l), M2A_WAKE_USER_0);
    m2a_loop_free(l);
}
END_TEST

START_TEST(stop_sets_one_deadline_that_bounds_every_wait)
{
    struct m2a_loop *l = m2a_loop_new();
    ck_assert(!m2a_loop_stopping(l));
    ck_assert_uint_eq(m2a_loop_deadline(l, 1234), 1234);
    uint64_t t0 = m2a_now_ms();
    struct waker w = {l, 0, t0 + 100};
    pthread_t t;
    pthread_create(&t, NULL, wake_later, &w);
    /* A sleep with no mask still ends for the stop. */
    ck_assert_uint_eq(m2a_loop_sleep(l, t0 + 20000, 0), M2A_WAKE_STOP);
    pthread_join(t, NULL);
    ck_assert(m2a_loop_stopping(l));
    ck_assert_uint_eq(m2a_loop_stop_deadline(l), t0 + 100);
    ck_assert_uint_eq(m2a_loop_deadline(l, t0 + 20000), t0 + 100);
    /* An earlier deadline wins, a later one does not move it. */
    m2a_loop_stop(l, t0 + 50);
    m2a_loop_stop(l, t0 + 90000);
    ck_assert_uint_eq(m2a_loop_stop_deadline(l), t0 + 50);
    /* Past the stop deadline a wait returns at once whatever it asks. */
    uint64_t t1 = m2a_now_ms();
    m2a_loop_once(l, t1 + 20000);
    m2a_loop_sleep(l, t1 + 20000, 0);
    ck_assert_uint_lt(m2a_now_ms() - t1, 1000);
    ck_assert_int_eq(m2a_loop_timeout_ms(t0), 0);
    ck_assert_int_eq(m2a_loop_timeout_ms(M2A_LOOP_NEVER), -1);
    m2a_loop_free(l);
}
END_TEST

START_TEST(watch_refuses_bad_arguments_and_too_many_fds)
{
    struct m2a_loop *l = m2a_loop_new();
    struct fdctx c = {0};
    ck_assert_int_ne(m2a_loop_watch(l, -1, M2A_LOOP_READ, on_fd, &c), 0);
    ck_assert_int_ne(m2a_loop_watch(l, 0, M2A_LOOP_READ, NULL, &c), 0);
    for (int fd = 100; fd < 100 + M2A_LOOP_MAX_FDS; fd++)
        ck_assert_int_eq(m2a_loop_watch(l, fd, 0, on_fd, &c), 0);
    ck_assert_int_ne(m2a_loop_watch(l, 999, 0, on_fd, &c), 0);
    ck_assert_int_eq(m2a_loop_watch(l, 100, M2A_LOOP_READ, on_fd, &c), 0); /* replaces */
    m2a_loop_free(l);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("loop");
    TCase *tc = tcase_create("loop");
    tcase_add_test(tc, timers_fire_once_in_deadline_order_and_not_before);
    tcase_add_test(tc, due_timers_run_earliest_first_in_one_turn);
    tcase_add_test(tc, a_ready_fd_runs_its_callback_which_may_unwatch_it);
    tcase_add_test(tc, a_wake_from_another_thread_ends_the_wait_and_stays_pending);
    tcase_add_test(tc, sleep_ends_at_once_for_a_pending_reason_in_its_mask_only);
    tcase_add_test(tc, stop_sets_one_deadline_that_bounds_every_wait);
    tcase_add_test(tc, watch_refuses_bad_arguments_and_too_many_fds);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
