/* test_amqp_window.c - the AMQP confirm window: acks (single, multiple, out
 * of order), nacks and their retries, the committed prefix, reconnects. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/confirm_window.h"
#include "check_main.h"

static uint32_t fixed_delay(void *ctx, uint32_t retries)
{
    (void)ctx;
    return 100u << (retries > 10 ? 10 : retries);
}

/* Pushes n slots seq first..first+n-1 and publishes them with tags from *tag. */
static void push_send(struct m2a_confirm_window *cw, uint64_t first, int n, uint64_t *tag)
{
    for (int i = 0; i < n; i++) {
        struct m2a_confirm_window_slot *s =
            m2a_confirm_window_push(cw, first + (uint64_t)i, "r", 1);
        ck_assert_ptr_nonnull(s);
        m2a_confirm_window_sent(cw, s, ++*tag);
    }
}

START_TEST(multiple_ack_commits_the_contiguous_prefix)
{
    struct m2a_confirm_window *cw = m2a_confirm_window_new(8, 0);
    uint64_t tag = 0, seq = 0;
    push_send(cw, 10, 5, &tag);
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).inflight, 5);
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 3, true), 3);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(seq, 12);
    ck_assert_uint_eq(m2a_confirm_window_count(cw), 2);
    /* 5 before 4: nothing to commit until 4 is confirmed too. */
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 5, false), 1);
    ck_assert(!m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 4, false), 1);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(seq, 14);
    ck_assert_uint_eq(m2a_confirm_window_count(cw), 0);
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).inflight, 0);
    m2a_confirm_window_free(cw);
}
END_TEST

START_TEST(repeated_and_unknown_tags_confirm_nothing)
{
    struct m2a_confirm_window *cw = m2a_confirm_window_new(4, 0);
    uint64_t tag = 0;
    push_send(cw, 1, 3, &tag);
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 2, false), 1);
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 2, false), 0);
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 99, false), 0);
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 0, true), 0);
    /* multiple over an already-acked tag counts only the others */
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 3, true), 2);
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 3, true), 0);
    m2a_confirm_window_free(cw);
}
END_TEST

START_TEST(window_is_bounded_and_wraps)
{
    struct m2a_confirm_window *cw = m2a_confirm_window_new(3, 0);
    uint64_t tag = 0, seq = 0;
    for (uint64_t round = 0; round < 100; round++) {
        push_send(cw, round * 3 + 1, 3, &tag);
        ck_assert(m2a_confirm_window_full(cw));
        ck_assert_ptr_null(m2a_confirm_window_push(cw, 999, "r", 1));
        ck_assert_uint_eq(m2a_confirm_window_ack(cw, tag, true), 3);
        ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
        ck_assert_uint_eq(seq, round * 3 + 3);
    }
    m2a_confirm_window_free(cw);
}
END_TEST

START_TEST(nack_schedules_a_retry_with_a_new_tag)
{
    struct m2a_confirm_window *cw = m2a_confirm_window_new(8, 0);
    uint64_t tag = 0, seq = 0, next = 0;
    push_send(cw, 1, 4, &tag);
    ck_assert_uint_eq(m2a_confirm_window_nack(cw, 2, false, 1000, fixed_delay, NULL), 1);
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).inflight, 3);
    ck_assert_ptr_null(m2a_confirm_window_next_to_send(cw, 1050, &next));
    ck_assert_uint_eq(next, 1100);
    struct m2a_confirm_window_slot *s = m2a_confirm_window_next_to_send(cw, 1100, &next);
    ck_assert_ptr_nonnull(s);
    ck_assert_uint_eq(s->seq, 2);
    ck_assert_uint_eq(s->retries, 1);
    /* not sent (say, connection.blocked): still due next time */
    ck_assert_ptr_eq(m2a_confirm_window_next_to_send(cw, 1200, NULL), s);
    m2a_confirm_window_sent(cw, s, ++tag); /* tag 5 */
    ck_assert_ptr_null(m2a_confirm_window_next_to_send(cw, 5000, &next));
    ck_assert_uint_eq(next, UINT64_MAX);
    /* ack multiple up to 4 must not confirm seq 2 via its stale tag 2 */
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 4, true), 3);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(seq, 1);
    ck_assert_uint_eq(m2a_confirm_window_count(cw), 3);
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 5, false), 1);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(seq, 4);
    m2a_confirm_window_free(cw);
}
END_TEST

START_TEST(nack_multiple_backs_off_per_slot)
{
    struct m2a_confirm_window *cw = m2a_confirm_window_new(8, 0);
    uint64_t tag = 0, next = 0;
    push_send(cw, 1, 3, &tag);
    ck_assert_uint_eq(m2a_confirm_window_nack(cw, 3, true, 0, fixed_delay, NULL), 3);
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).inflight, 0);
    for (int i = 0; i < 3; i++) {
        struct m2a_confirm_window_slot *s = m2a_confirm_window_next_to_send(cw, 100, NULL);
        ck_assert_ptr_nonnull(s);
        ck_assert_uint_eq(s->seq, (uint64_t)i + 1); /* spool order */
        m2a_confirm_window_sent(cw, s, ++tag);
    }
    /* second nack of seq 1: delay doubles */
    ck_assert_uint_eq(m2a_confirm_window_nack(cw, 4, false, 1000, fixed_delay, NULL), 1);
    ck_assert_ptr_null(m2a_confirm_window_next_to_send(cw, 1199, &next));
    ck_assert_uint_eq(next, 1200);
    m2a_confirm_window_free(cw);
}
END_TEST

START_TEST(requeue_resends_unconfirmed_and_keeps_confirmed)
{
    struct m2a_confirm_window *cw = m2a_confirm_window_new(8, 0);
    uint64_t tag = 0, seq = 0;
    push_send(cw, 1, 5, &tag);
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 3, false), 1);
    ck_assert_uint_eq(m2a_confirm_window_nack(cw, 4, false, 0, fixed_delay, NULL), 1);
    struct m2a_confirm_window_slot *unsent = m2a_confirm_window_push(cw, 6, "r", 1);
    ck_assert_ptr_nonnull(unsent);
    m2a_confirm_window_requeue(cw); /* connection lost; a new channel numbers tags from 1 */
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).inflight, 0);
    uint64_t expect[] = {1, 2, 4, 5, 6};
    tag = 0;
    for (int i = 0; i < 5; i++) {
        struct m2a_confirm_window_slot *s = m2a_confirm_window_next_to_send(cw, 0, NULL);
        ck_assert_ptr_nonnull(s);
        ck_assert_uint_eq(s->seq, expect[i]);
        m2a_confirm_window_sent(cw, s, ++tag);
    }
    ck_assert_ptr_null(m2a_confirm_window_next_to_send(cw, 0, NULL));
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 5, true), 5);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(seq, 6);
    ck_assert_uint_eq(m2a_confirm_window_count(cw), 0);
    m2a_confirm_window_free(cw);
}
END_TEST

START_TEST(drop_counts_as_confirmed)
{
    struct m2a_confirm_window *cw = m2a_confirm_window_new(4, 0);
    uint64_t tag = 0, seq = 0;
    struct m2a_confirm_window_slot *bad = m2a_confirm_window_push(cw, 1, "r", 1);
    m2a_confirm_window_drop(cw, bad);
    push_send(cw, 2, 1, &tag);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(seq, 1);
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 1, false), 1);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(seq, 2);
    m2a_confirm_window_free(cw);
}
END_TEST

/* Regression (issue 9): a slot kept a large record's buffer until the slot
 * was reused, a whole window later, so twenty 16 MiB messages took the
 * bridge from 7 MB to 433 MB of RSS and every further one added ~16 MB
 * (up to confirm_window x 16 MiB). Once confirmed and popped, a large
 * record's buffer is gone. */
START_TEST(large_records_are_released_once_confirmed)
{
    enum { N = 20, BIG = 16 << 20 };
    struct m2a_confirm_window *cw = m2a_confirm_window_new(1000, 64u << 20);
    unsigned char *big = calloc(1, BIG);
    ck_assert_ptr_nonnull(big);
    uint64_t tag = 0, seq = 0;
    for (int i = 0; i < N; i++) {
        struct m2a_confirm_window_slot *s = m2a_confirm_window_push(cw, (uint64_t)i + 1, big, BIG);
        ck_assert_ptr_nonnull(s);
        ck_assert_uint_ge(m2a_confirm_window_usage(cw).held, BIG);
        m2a_confirm_window_sent(cw, s, ++tag);
        ck_assert_uint_eq(m2a_confirm_window_ack(cw, tag, false), 1);
        ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
        ck_assert_uint_eq(seq, (uint64_t)i + 1);
        /* One buffer waits for the next large record, no more. */
        ck_assert_uint_le(m2a_confirm_window_usage(cw).held, BIG + 1);
    }
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).bytes, 0);
    /* No large record for M2A_CONFIRM_WINDOW_IDLE_MS: it is freed. */
    m2a_confirm_window_trim(cw, 5000);
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).held, BIG + 1);
    m2a_confirm_window_trim(cw, 5000 + M2A_CONFIRM_WINDOW_IDLE_MS - 1);
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).held, BIG + 1);
    m2a_confirm_window_trim(cw, 5000 + M2A_CONFIRM_WINDOW_IDLE_MS);
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).held, 0);
    /* Small records keep their buffers: the steady state allocates nothing. */
    for (int i = 0; i < 3; i++) {
        struct m2a_confirm_window_slot *s =
            m2a_confirm_window_push(cw, (uint64_t)N + 1 + (uint64_t)i, big, 100);
        m2a_confirm_window_sent(cw, s, ++tag);
    }
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, tag, true), 3);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert_uint_gt(m2a_confirm_window_usage(cw).held, 0);
    ck_assert_uint_le(m2a_confirm_window_usage(cw).held, 3 * 512);
    free(big);
    m2a_confirm_window_free(cw);
}
END_TEST

/* Issue 12, round 2: the pool took at most 4 buffers, so with a window of
 * 64 records of 256 KiB in flight 60 buffers were freed and allocated
 * again per window, and the kernel faulted their pages in during the
 * spool's pread (a third of the AMQP thread's time). The pool now keeps
 * every buffer within max_bytes + 2 x the buffer, and no more. */
START_TEST(the_pool_keeps_a_window_of_large_buffers_within_the_bound)
{
    enum { BIG = 1 << 20, INFLIGHT = 12 };
    unsigned char *big = calloc(1, BIG);
    for (int round = 0; round < 2; round++) {
        uint64_t max = round == 0 ? 16u << 20 : 4u << 20;
        struct m2a_confirm_window *cw = m2a_confirm_window_new(1000, max);
        uint64_t tag = 0, seq = 0;
        int pushed = 0;
        for (int i = 0; i < INFLIGHT; i++) {
            struct m2a_confirm_window_slot *s =
                m2a_confirm_window_push(cw, (uint64_t)i + 1, big, BIG);
            if (!s)
                break; /* max_bytes reached */
            m2a_confirm_window_sent(cw, s, ++tag);
            pushed++;
        }
        ck_assert_int_eq(pushed, round == 0 ? INFLIGHT : 4);
        ck_assert_uint_eq(m2a_confirm_window_ack(cw, tag, true), (uint64_t)pushed);
        ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
        ck_assert_uint_eq(m2a_confirm_window_usage(cw).bytes, 0);
        uint64_t held = m2a_confirm_window_usage(cw).held;
        if (round == 0) /* all kept for the next window's records */
            ck_assert_uint_ge(held, (uint64_t)INFLIGHT * BIG);
        ck_assert_uint_le(held, max + 2 * (uint64_t)(BIG + 1));
        m2a_confirm_window_free(cw);
    }
    free(big);
}
END_TEST

/* Issue 12: a stream of large records (4 in flight, each confirmed as the
 * next comes) reuses a few buffers instead of allocating one per record;
 * once everything is confirmed nothing large is kept. */
START_TEST(a_stream_of_large_records_reuses_buffers)
{
    enum { N = 60, BIG = 1 << 20, INFLIGHT = 4 };
    struct m2a_confirm_window *cw = m2a_confirm_window_new(1000, 64u << 20);
    unsigned char *big = calloc(1, BIG);
    const void *seen[N];
    size_t nseen = 0;
    uint64_t tag = 0, seq = 0, next = 1;
    for (int i = 0; i < N; i++) {
        if (i >= INFLIGHT) { /* the oldest is confirmed as a new one comes */
            ck_assert_uint_eq(m2a_confirm_window_ack(cw, (uint64_t)(i - INFLIGHT + 1), false), 1);
            ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
            /* The popped one's buffer waits for the next record. */
            ck_assert_uint_ge(m2a_confirm_window_usage(cw).held, (uint64_t)INFLIGHT * BIG);
        }
        struct m2a_confirm_window_slot *s = m2a_confirm_window_push(cw, next++, big, BIG);
        ck_assert_ptr_nonnull(s);
        m2a_confirm_window_sent(cw, s, ++tag);
        bool known = false;
        for (size_t k = 0; k < nseen && !known; k++)
            known = seen[k] == s->rec.data;
        if (!known)
            seen[nseen++] = s->rec.data;
    }
    ck_assert_uint_le(nseen, 2 * INFLIGHT); /* not N */
    ck_assert_uint_le(m2a_confirm_window_usage(cw).held, (INFLIGHT + 4) * (BIG + 1));
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, tag, true), INFLIGHT);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    /* Kept for a stream that goes on (each record confirmed before the next
     * comes reuses one buffer), freed once it has stopped for a while. */
    ck_assert_uint_le(m2a_confirm_window_usage(cw).held, 4 * (BIG + 1));
    struct m2a_confirm_window_slot *s = m2a_confirm_window_push(cw, next++, big, BIG);
    bool reused = false;
    for (size_t k = 0; k < nseen && !reused; k++)
        reused = seen[k] == s->rec.data;
    ck_assert(reused);
    m2a_confirm_window_sent(cw, s, ++tag);
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, tag, false), 1);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    m2a_confirm_window_trim(cw, 100);
    m2a_confirm_window_trim(cw, 100 + M2A_CONFIRM_WINDOW_IDLE_MS);
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).held, 0);
    free(big);
    m2a_confirm_window_free(cw);
}
END_TEST

/* Issue 12: prepare + push_prepared take a record written straight into
 * the slot's buffer (the spool reads it there): the same record, the same
 * accounting and the same buffer reuse as push, without the copy. */
START_TEST(a_prepared_record_is_pushed_without_a_copy)
{
    enum { BIG = 1 << 20, INFLIGHT = 4, N = 40 };
    struct m2a_confirm_window *cw = m2a_confirm_window_new(8, 64u << 20);
    const void *seen[N];
    size_t nseen = 0;
    uint64_t tag = 0, seq = 0;
    for (int i = 0; i < N; i++) {
        if (i >= INFLIGHT) {
            ck_assert_uint_eq(m2a_confirm_window_ack(cw, (uint64_t)(i - INFLIGHT + 1), false), 1);
            ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
        }
        size_t len = BIG - (size_t)i; /* a little smaller each time: a pooled buffer fits */
        unsigned char *d = m2a_confirm_window_prepare(cw, len);
        ck_assert_ptr_nonnull(d);
        /* Prepared again (a damaged record was skipped): still room for len. */
        ck_assert_ptr_nonnull(d = m2a_confirm_window_prepare(cw, len));
        memset(d, 'a' + i % 26, len);
        uint64_t before = m2a_confirm_window_usage(cw).bytes;
        struct m2a_confirm_window_slot *s =
            m2a_confirm_window_push_prepared(cw, (uint64_t)i + 1, len);
        ck_assert_ptr_nonnull(s);
        ck_assert_ptr_eq(s->rec.data, d);
        ck_assert_uint_eq(s->rec.len, len);
        ck_assert_uint_eq(s->seq, (uint64_t)i + 1);
        ck_assert_int_eq(s->state, M2A_CONFIRM_WINDOW_UNSENT);
        ck_assert_uint_eq(s->rec.data[len - 1], 'a' + i % 26);
        ck_assert_uint_eq(m2a_confirm_window_usage(cw).bytes, before + len);
        m2a_confirm_window_sent(cw, s, ++tag);
        bool known = false;
        for (size_t k = 0; k < nseen && !known; k++)
            known = seen[k] == d;
        if (!known)
            seen[nseen++] = d;
    }
    ck_assert_uint_le(nseen, 2 * INFLIGHT); /* buffers reused, not N of them */
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, tag, true), INFLIGHT);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(seq, N);
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).bytes, 0);
    /* A record prepared and never pushed (its read failed): trimmed too. */
    ck_assert_ptr_nonnull(m2a_confirm_window_prepare(cw, 3 * BIG));
    ck_assert_uint_ge(m2a_confirm_window_usage(cw).held, 3 * BIG);
    m2a_confirm_window_trim(cw, 0);
    m2a_confirm_window_trim(cw, M2A_CONFIRM_WINDOW_IDLE_MS);
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).held, 0);
    /* Full: nothing to prepare. */
    for (uint64_t i = 0; i < 8; i++)
        ck_assert_ptr_nonnull(m2a_confirm_window_push(cw, 100 + i, "r", 1));
    ck_assert_ptr_null(m2a_confirm_window_prepare(cw, 1));
    m2a_confirm_window_free(cw);
}
END_TEST

/* amqp.max_inflight_bytes: a record is taken while what is held is below
 * the bound, so at most the bound plus one record is held; an empty
 * window takes any record, however large. */
START_TEST(window_holds_at_most_max_bytes_plus_one_record)
{
    enum { MAX = 64 << 20, REC = 10 << 20 };
    struct m2a_confirm_window *cw = m2a_confirm_window_new(1000, MAX);
    unsigned char *buf = calloc(1, 2 * (size_t)MAX);
    ck_assert_ptr_nonnull(buf);
    uint64_t seq = 0, tag = 0;
    while (!m2a_confirm_window_full(cw))
        ck_assert_ptr_nonnull(m2a_confirm_window_push(cw, ++seq, buf, REC));
    ck_assert_uint_eq(m2a_confirm_window_count(cw), 7); /* 60 MiB < 64 MiB: a 7th is taken */
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).bytes, 7u * REC);
    ck_assert_ptr_null(m2a_confirm_window_push(cw, ++seq, buf, 1));
    /* Room again once the first is confirmed. */
    m2a_confirm_window_sent(cw, m2a_confirm_window_at(cw, 0), ++tag);
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, tag, false), 1);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert(!m2a_confirm_window_full(cw));
    m2a_confirm_window_free(cw);

    cw = m2a_confirm_window_new(1000, 1024);
    ck_assert_ptr_nonnull(
        m2a_confirm_window_push(cw, 1, buf, 2 * (size_t)MAX)); /* one always fits */
    ck_assert(m2a_confirm_window_full(cw));
    m2a_confirm_window_free(cw);
    free(buf);
}
END_TEST

/* Random acks, nacks, retries and reconnects: every sequence number is
 * committed exactly once, in order, and the counters stay consistent. */
START_TEST(random_operations_commit_each_record_once_in_order)
{
    enum { CAP = 16, N = 20000 };
    struct m2a_confirm_window *cw = m2a_confirm_window_new(CAP, 0);
    unsigned rng = 12345;
    uint64_t tag = 0, next_seq = 1, committed = 0, now = 0;
    static unsigned char acked[N + CAP + 2];
    memset(acked, 0, sizeof(acked));
    while (committed < N) {
        rng = rng * 1103515245u + 12345u;
        unsigned op = (rng >> 16) % 10;
        now += 7;
        if (op < 4) {
            if (!m2a_confirm_window_full(cw) && next_seq <= N)
                ck_assert_ptr_nonnull(m2a_confirm_window_push(cw, next_seq++, "r", 1));
            struct m2a_confirm_window_slot *s = m2a_confirm_window_next_to_send(cw, now, NULL);
            if (s)
                m2a_confirm_window_sent(cw, s, ++tag);
        } else if (op < 8 && tag) {
            uint64_t back = (rng >> 8) % 5;
            uint64_t t = tag > back ? tag - back : tag;
            bool multiple = (rng >> 12) & 1;
            uint32_t before = m2a_confirm_window_usage(cw).inflight;
            size_t n = op < 7 ? m2a_confirm_window_ack(cw, t, multiple)
                              : m2a_confirm_window_nack(cw, t, multiple, now, fixed_delay, NULL);
            ck_assert_uint_eq(m2a_confirm_window_usage(cw).inflight, before - n);
        } else if (op == 8 && (rng >> 20) % 50 == 0) {
            m2a_confirm_window_requeue(cw);
            tag = 0;
        } else {
            uint64_t seq;
            uint64_t prev = committed;
            if (m2a_confirm_window_pop_confirmed(cw, &seq)) {
                ck_assert_uint_gt(seq, prev);
                for (uint64_t q = prev + 1; q <= seq; q++)
                    acked[q]++;
                committed = seq;
            }
        }
        ck_assert_uint_le(m2a_confirm_window_count(cw), CAP);
        ck_assert_uint_le(m2a_confirm_window_usage(cw).inflight, m2a_confirm_window_count(cw));
    }
    for (uint64_t q = 1; q <= N; q++)
        ck_assert_uint_eq(acked[q], 1);
    m2a_confirm_window_free(cw);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("amqp_window");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60); /* a loaded 2-core machine runs the random test for seconds */
    tcase_add_test(tc, multiple_ack_commits_the_contiguous_prefix);
    tcase_add_test(tc, repeated_and_unknown_tags_confirm_nothing);
    tcase_add_test(tc, window_is_bounded_and_wraps);
    tcase_add_test(tc, nack_schedules_a_retry_with_a_new_tag);
    tcase_add_test(tc, nack_multiple_backs_off_per_slot);
    tcase_add_test(tc, requeue_resends_unconfirmed_and_keeps_confirmed);
    tcase_add_test(tc, drop_counts_as_confirmed);
    tcase_add_test(tc, random_operations_commit_each_record_once_in_order);
    tcase_add_test(tc, large_records_are_released_once_confirmed);
    tcase_add_test(tc, a_stream_of_large_records_reuses_buffers);
    tcase_add_test(tc, the_pool_keeps_a_window_of_large_buffers_within_the_bound);
    tcase_add_test(tc, a_prepared_record_is_pushed_without_a_copy);
    tcase_add_test(tc, window_holds_at_most_max_bytes_plus_one_record);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
