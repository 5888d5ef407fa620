/* test_crash_states.c - the spool against power loss (issue 13): short runs
 * of the crash-state checker (crash_check.h) with traffic through the real
 * spool, every crash point of each checked, with the figures printed; the
 * checker's own tests (a spool that skips a barrier, a record rewritten
 * with a valid CRC: both must be caught); and the regression tests of what
 * it found. The long run is scripts/crash-states.sh.
 *
 * Each run must also have exercised what it is there for (torn writes,
 * directory changes, rotations, deletions, drops, interval syncs), so a
 * change that made the traffic too tame to test anything fails too. */
#include <check.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/spool_format.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"
#include "crash_check.h"
#include "files.h"

static char *tmpdir;
static char spooldir[512];

static void setup(void)
{
    tmpdir = th_tmpdir_new("crash-states");
    snprintf(spooldir, sizeof(spooldir), "%s/spool", tmpdir);
}

static void teardown(void)
{
    th_iotrace_reset();
    th_tmpdir_remove("crash-states", tmpdir);
    free(tmpdir);
}

static const struct th_crash_budget ci_budget = {
    .states_per_point = 24, .exhaustive_units = 4, .seed = 13, .max_reports = 3};

/* Records tr (again, with the next seed, while it did not exercise what
 * `wanted` asks, at most 4 times: the interleaving of the two threads is
 * up to the scheduler), checks every crash point, prints the figures. */
static void run_and_check_until(const char *what, struct th_crash_traffic tr,
                                const struct th_crash_budget *b, struct th_crash_run_stats *st,
                                struct th_crash_report *r,
                                bool (*wanted)(const struct th_crash_run_stats *))
{
    for (int attempt = 0;; attempt++, tr.seed++) {
        ck_assert_msg(th_crash_record(&tr, spooldir, st) == 0, "%s: the run failed: %s", what,
                      st->err);
        if (!wanted || wanted(st) || attempt == 3)
            break;
        th_iotrace_reset();
        ck_assert_int_eq(th_rmtree(spooldir), 0);
    }
    ck_assert_msg(th_crash_check(th_iotrace_get(), b, r) == 0, "%s: %s", what, r->first);
    char line[1024];
    th_crash_report_line(r, line, sizeof(line));
    fprintf(stderr,
            "crash-states: %s: run %" PRIu64 " records, %" PRIu64 " flushes (%" PRIu64
            " failed), %" PRIu64 " dropped (%" PRIu64 " times behind held records), %" PRIu64
            " segments made, %" PRIu64 " deleted, %" PRIu64 " interval syncs; %s\n",
            what, st->appended, st->flushes, st->failed_flushes, st->dropped, st->gap_discards,
            st->segments_made, st->segments_deleted, st->interval_syncs, line);
}

static void run_and_check(const char *what, const struct th_crash_traffic *tr,
                          const struct th_crash_budget *b, struct th_crash_run_stats *st,
                          struct th_crash_report *r)
{
    run_and_check_until(what, *tr, b, st, r, NULL);
}

/* What every run must have exercised. */
static void assert_coverage(const char *what, const struct th_crash_run_stats *st,
                            const struct th_crash_report *r, size_t min_states)
{
    ck_assert_msg(r->states >= min_states, "%s: only %zu states", what, r->states);
    ck_assert_msg(r->torn_points > 0 && r->dir_points > 0 && r->max_units >= 4,
                  "%s: no torn writes or directory changes pending at any point", what);
    ck_assert_msg(st->segments_made >= 5 && st->segments_deleted >= 3,
                  "%s: too few rotations (%" PRIu64 ") or deletions (%" PRIu64 ")", what,
                  st->segments_made, st->segments_deleted);
}

/* --- the spool under power loss --- */

START_TEST(power_loss_fsync_batch)
{
    struct th_crash_traffic tr = {.fsync = M2A_FSYNC_BATCH,
                                  .overflow = M2A_OVERFLOW_BLOCK,
                                  .max_bytes = 48 * 1024,
                                  .segment_bytes = 4096,
                                  .records = 240,
                                  .max_batch = 8,
                                  .max_body = 2048,
                                  .seed = 1};
    struct th_crash_run_stats st;
    struct th_crash_report r;
    run_and_check("fsync batch, overflow block", &tr, &ci_budget, &st, &r);
    assert_coverage("fsync batch", &st, &r, 400);
    ck_assert_msg(r.failures == 0, "%zu failed checks; the first: %s", r.failures, r.first);
}
END_TEST

static bool discarded_behind_held(const struct th_crash_run_stats *st)
{
    return st->gap_discards > 0;
}

START_TEST(power_loss_fsync_batch_drop_oldest)
{
    struct th_crash_traffic tr = {.fsync = M2A_FSYNC_BATCH,
                                  .overflow = M2A_OVERFLOW_DROP_OLDEST,
                                  .max_bytes = 16 * 1024,
                                  .segment_bytes = 4096,
                                  .records = 400,
                                  .max_batch = 8,
                                  .max_body = 1024,
                                  .stall_ms = 40,
                                  .seed = 2};
    struct th_crash_run_stats st;
    struct th_crash_report r;
    run_and_check_until("fsync batch, overflow drop_oldest", tr, &ci_budget, &st, &r,
                        discarded_behind_held);
    assert_coverage("drop_oldest", &st, &r, 400);
    ck_assert_msg(st.dropped > 0 && st.gap_discards > 0,
                  "drop_oldest discarded %" PRIu64 " records, %" PRIu64 " times behind held ones",
                  st.dropped, st.gap_discards);
    ck_assert_msg(r.failures == 0, "%zu failed checks; the first: %s", r.failures, r.first);
}
END_TEST

START_TEST(power_loss_fsync_interval)
{
    struct th_crash_traffic tr = {.fsync = M2A_FSYNC_INTERVAL,
                                  .overflow = M2A_OVERFLOW_BLOCK,
                                  .segment_bytes = 4096,
                                  .records = 200,
                                  .max_batch = 6,
                                  .max_body = 1024,
                                  .min_ms = 450,
                                  .seed = 3};
    struct th_crash_run_stats st;
    struct th_crash_report r;
    run_and_check("fsync interval, overflow block", &tr, &ci_budget, &st, &r);
    assert_coverage("fsync interval", &st, &r, 400);
    ck_assert_msg(st.interval_syncs >= 3, "only %" PRIu64 " interval syncs", st.interval_syncs);
    ck_assert_msg(r.failures == 0, "%zu failed checks; the first: %s", r.failures, r.first);
}
END_TEST

/* Flushes that fail half way (a write or a sync), their batches written
 * again with other bytes under the same sequence numbers. */
START_TEST(power_loss_fsync_batch_failed_flushes)
{
    struct th_crash_traffic tr = {.fsync = M2A_FSYNC_BATCH,
                                  .overflow = M2A_OVERFLOW_BLOCK,
                                  .segment_bytes = 4096,
                                  .records = 200,
                                  .max_batch = 8,
                                  .max_body = 2048,
                                  .fail_every = 4,
                                  .seed = 5};
    struct th_crash_run_stats st;
    struct th_crash_report r;
    run_and_check("fsync batch, failed flushes", &tr, &ci_budget, &st, &r);
    assert_coverage("failed flushes", &st, &r, 400);
    ck_assert_msg(st.failed_flushes >= 3, "only %" PRIu64 " failed flushes", st.failed_flushes);
    ck_assert_msg(r.failures == 0, "%zu failed checks; the first: %s", r.failures, r.first);
}
END_TEST

/* --- the checker catches what it is there to catch --- */

/* A run whose spool skips the barriers in skip loses promised records. */
static void assert_caught(const char *what, unsigned skip)
{
    struct th_crash_traffic tr = {.fsync = M2A_FSYNC_BATCH,
                                  .overflow = M2A_OVERFLOW_BLOCK,
                                  .segment_bytes = 4096,
                                  .records = 60,
                                  .max_batch = 4,
                                  .max_body = 1024,
                                  .seed = 4,
                                  .skip = skip,
                                  .existing_dir = true};
    struct th_crash_budget b = ci_budget;
    b.max_reports = 0;
    struct th_crash_run_stats st;
    struct th_crash_report r;
    run_and_check(what, &tr, &b, &st, &r);
    ck_assert_msg(r.fail_lost > 0, "%s: not caught", what);
}

START_TEST(checker_catches_a_spool_that_skips_fdatasync)
{
    assert_caught("fdatasync swallowed", TH_IO_SKIP_FDATASYNC);
}
END_TEST

START_TEST(checker_catches_a_spool_that_skips_directory_fsync)
{
    assert_caught("directory fsync swallowed", TH_IO_SKIP_FSYNC_DIR);
}
END_TEST

/* The index of the trace's first open of name, or the trace's length. */
static size_t find_open(const struct th_iotrace *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->calls[i].op == TH_IO_OPENAT && strcmp(t->calls[i].name, name) == 0)
            return i;
    return t->n;
}

/* Record 2 rewritten in place with other bytes and a valid CRC, and synced,
 * behind the spool's back: its CRC cannot tell; the checker must. */
START_TEST(checker_catches_a_record_rewritten_with_a_valid_crc)
{
    ck_assert_int_eq(mkdir(spooldir, 0750), 0);
    th_iotrace_start(&th_io_nosync, 0);
    struct m2a_spool_opts o = {
        .dir = spooldir, .segment_bytes = 1 << 20, .fsync = M2A_FSYNC_BATCH, .io = &th_iotrace_io};
    th_crash_mark_run(&o, 5, 64);
    struct m2a_spool *s;
    char err[256];
    ck_assert_int_eq(m2a_spool_open(&o, &s, NULL, err, sizeof(err)), 0);
    ck_assert_int_eq(th_crash_append_flush(s, 5, 64, 0, 3), 0);

    /* Record 2 starts where record 1 ends. */
    char body[96];
    struct m2a_buf rec = {0};
    struct m2a_envelope e = th_crash_envelope(5, 64, 1, 0, body);
    size_t off = M2A_SPOOL_RECORD_HEADER + m2a_envelope_encoded_size(&e);
    e = th_crash_envelope(5, 64, 2, 0, body);
    body[e.body.len - 1] ^= 1;
    m2a_buf_reserve(&rec, M2A_SPOOL_RECORD_HEADER);
    rec.len = M2A_SPOOL_RECORD_HEADER;
    m2a_envelope_encode(&e, &rec);
    m2a_spool_format_record_header(rec.data, rec.len - M2A_SPOOL_RECORD_HEADER, 2);

    char seg[M2A_SPOOL_NAME_MAX];
    m2a_spool_format_segment_name(seg, sizeof(seg), 1);
    const struct th_iotrace *t = th_iotrace_get();
    size_t at = find_open(t, seg);
    ck_assert_uint_lt(at, t->n);
    const int fake = 100000;
    struct th_io_call c = {.op = TH_IO_OPENAT, .fd = t->calls[at].fd, .rc = fake};
    snprintf(c.name, sizeof(c.name), "%s", seg);
    th_iotrace_append(&c);
    c = (struct th_io_call){.op = TH_IO_PWRITE,
                            .fd = fake,
                            .off = off,
                            .len = rec.len,
                            .rc = (int)rec.len,
                            .data = rec.data};
    th_iotrace_append(&c);
    th_iotrace_append(&(struct th_io_call){.op = TH_IO_FDATASYNC, .fd = fake});
    th_iotrace_append(&(struct th_io_call){.op = TH_IO_CLOSE, .fd = fake});
    m2a_buf_free(&rec);
    m2a_spool_close(s);
    th_iotrace_stop();

    struct th_crash_budget b = ci_budget;
    b.max_reports = 0;
    struct th_crash_report r;
    ck_assert_int_eq(th_crash_check(t, &b, &r), 0);
    ck_assert_msg(r.fail_altered > 0, "a rewritten record was not caught");
}
END_TEST

/* --- what the checker found --- */

/* The first start makes the spool's directory. The name of a new directory
 * is durable only once the directory holding it is synced (fsync(2)); the
 * spool synced its own directory, never the parent, so a power loss after
 * the first PUBACKs could leave no spool directory at all: every
 * acknowledged record gone ("no spool directory" in the checker's report,
 * at every crash point of a run on a fresh spool). */
START_TEST(spool_directory_made_at_start_survives_power_loss)
{
    struct th_crash_traffic tr = {.fsync = M2A_FSYNC_BATCH,
                                  .overflow = M2A_OVERFLOW_BLOCK,
                                  .segment_bytes = 4096,
                                  .records = 20,
                                  .max_batch = 4,
                                  .max_body = 256,
                                  .seed = 6};
    struct th_crash_run_stats st;
    struct th_crash_report r;
    run_and_check("a spool made at start", &tr, &ci_budget, &st, &r);
    ck_assert_msg(r.failures == 0, "%zu failed checks; the first: %s", r.failures, r.first);
}
END_TEST

/* If the parent cannot be synced, the start fails and takes the new
 * directory away again, so that the next start tries the sync again
 * instead of finding the directory there and skipping it. */
START_TEST(spool_directory_not_kept_if_its_parent_cannot_be_synced)
{
    struct m2a_spool_opts o = {.dir = spooldir, .fsync = M2A_FSYNC_BATCH, .io = &th_iotrace_io};
    struct m2a_spool *s;
    char err[512];
    th_iotrace_start(&th_io_nosync, 0);
    th_iotrace_fail_sync(1); /* the first sync of an open is the parent's */
    ck_assert_int_eq(m2a_spool_open(&o, &s, NULL, err, sizeof(err)), M2A_ERR_IO);
    th_iotrace_fail_sync(0);
    ck_assert_msg(strstr(err, "cannot sync the directory holding") != NULL, "%s", err);
    struct stat sb;
    ck_assert_int_ne(stat(spooldir, &sb), 0);
    ck_assert_int_eq(m2a_spool_open(&o, &s, NULL, err, sizeof(err)), 0);
    m2a_spool_close(s);
    th_iotrace_stop();
    const struct th_iotrace *t = th_iotrace_get();
    size_t synced = 0;
    for (size_t i = 1; i < t->n; i++)
        synced += t->calls[i].op == TH_IO_FSYNC && t->calls[i].rc == 0 &&
                  t->calls[i - 1].op == TH_IO_OPENAT && strcmp(t->calls[i - 1].name, tmpdir) == 0;
    ck_assert_uint_eq(synced, 1);
}
END_TEST

/* A scripted run: records 1 and 2 flushed into the first segment, then the
 * caller's failure and redelivery, then a check of every crash point. The
 * seed is the first whose record sizes make the case (shorter_version). */
#define MAX_BODY 256
static uint64_t seed;

static size_t size_of(uint64_t seq, unsigned version)
{
    return th_crash_record_size(seed, MAX_BODY, seq, version);
}

static struct m2a_spool *scripted_open(uint64_t segment_bytes)
{
    struct m2a_spool_opts o = {.dir = spooldir,
                               .segment_bytes = segment_bytes,
                               .fsync = M2A_FSYNC_BATCH,
                               .io = &th_iotrace_io};
    th_iotrace_start(&th_io_nosync, 0);
    th_crash_mark_run(&o, seed, MAX_BODY);
    struct m2a_spool *s;
    char err[256];
    ck_assert_msg(m2a_spool_open(&o, &s, NULL, err, sizeof(err)) == 0, "%s", err);
    ck_assert_int_eq(th_crash_append_flush(s, seed, MAX_BODY, 0, 2), 0);
    return s;
}

static void scripted_check(struct m2a_spool *s, const char *what)
{
    m2a_spool_close(s);
    th_iotrace_stop();
    struct th_crash_budget b = ci_budget;
    b.states_per_point = 64;
    b.exhaustive_units = 6;
    struct th_crash_report r;
    ck_assert_int_eq(th_crash_check(th_iotrace_get(), &b, &r), 0);
    char line[1024];
    th_crash_report_line(&r, line, sizeof(line));
    fprintf(stderr, "crash-states: %s: %s\n", what, line);
    ck_assert_msg(r.failures == 0, "%s: %zu failed checks; the first: %s", what, r.failures,
                  r.first);
}

/* Sets the seed and returns a content version in which each of records 3
 * and 4 is no longer than in version 0 and record `smaller` is shorter. */
static unsigned shorter_version(uint64_t smaller)
{
    for (seed = 1; seed < 1000; seed++)
        for (unsigned v = 1; v < TH_CRASH_VERSIONS; v++)
            if (size_of(3, v) <= size_of(3, 0) && size_of(4, v) <= size_of(4, 0) &&
                size_of(smaller, v) < size_of(smaller, 0))
                return v;
    ck_abort_msg("no shorter version of record %" PRIu64, smaller);
    return 0;
}

/* A batch (3, 4) needs a new segment for record 4; the write of that
 * segment fails half way (disk full), so the spool truncates and unlinks
 * it, the batch is not acknowledged, and the broker redelivers: records 3
 * and 4 again, shorter this time, fit the first segment and are
 * acknowledged after its fdatasync. The crash state: the new segment's
 * creation reached the disk, its unlink had not (no directory sync since),
 * so 00000000000000000004.seg comes back, empty or partly written; recovery
 * then bounds the first segment's records by 4 and drops the acknowledged
 * record 4 as damage. */
START_TEST(acked_batch_survives_the_segment_a_failed_flush_unlinked)
{
    unsigned v = shorter_version(4);
    size_t used = size_of(1, 0) + size_of(2, 0);
    struct m2a_spool *s = scripted_open(used + size_of(3, 0) + size_of(4, v));
    th_iotrace_fail_pwrite(2); /* the new segment's */
    ck_assert_int_eq(th_crash_append_flush(s, seed, MAX_BODY, 0, 2), M2A_ERR_NOSPACE);
    th_iotrace_mark(TH_MARK_VERSION, v, 0);
    ck_assert_int_eq(th_crash_append_flush(s, seed, MAX_BODY, v, 2), 0);
    struct m2a_spool_stats st;
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.segments, 1); /* the redelivered batch went into the first segment */
    scripted_check(s, "a flush failed after starting a segment");
}
END_TEST

/* The same with the segment a batch's first append starts at once: its
 * directory sync fails (EIO), the spool unlinks it, the append fails; the
 * redelivered record 3, shorter, fits the first segment and is
 * acknowledged. The crash state: 00000000000000000003.seg back from the
 * dead, empty, and the acknowledged record 3 dropped by recovery. */
START_TEST(acked_batch_survives_the_segment_a_failed_rotation_unlinked)
{
    unsigned v = shorter_version(3);
    size_t used = size_of(1, 0) + size_of(2, 0);
    struct m2a_spool *s = scripted_open(used + size_of(3, v));
    th_iotrace_fail_sync(1); /* the directory's, after creating the segment */
    ck_assert_int_eq(th_crash_append_flush(s, seed, MAX_BODY, 0, 1), M2A_ERR_IO);
    th_iotrace_fail_sync(0);
    th_iotrace_mark(TH_MARK_VERSION, v, 0);
    ck_assert_int_eq(th_crash_append_flush(s, seed, MAX_BODY, v, 1), 0);
    struct m2a_spool_stats st;
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.segments, 1);
    scripted_check(s, "a rotation failed");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("crash_states");
    TCase *tc = tcase_create("power_loss");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 110);
    tcase_add_test(tc, power_loss_fsync_batch);
    tcase_add_test(tc, power_loss_fsync_batch_drop_oldest);
    tcase_add_test(tc, power_loss_fsync_interval);
    tcase_add_test(tc, power_loss_fsync_batch_failed_flushes);
    suite_add_tcase(s, tc);
    TCase *self = tcase_create("checker");
    tcase_add_checked_fixture(self, setup, teardown);
    tcase_set_timeout(self, 60);
    tcase_add_test(self, checker_catches_a_spool_that_skips_fdatasync);
    tcase_add_test(self, checker_catches_a_spool_that_skips_directory_fsync);
    tcase_add_test(self, checker_catches_a_record_rewritten_with_a_valid_crc);
    suite_add_tcase(s, self);
    TCase *found = tcase_create("found");
    tcase_add_checked_fixture(found, setup, teardown);
    tcase_set_timeout(found, 60);
    tcase_add_test(found, spool_directory_made_at_start_survives_power_loss);
    tcase_add_test(found, spool_directory_not_kept_if_its_parent_cannot_be_synced);
    tcase_add_test(found, acked_batch_survives_the_segment_a_failed_flush_unlinked);
    tcase_add_test(found, acked_batch_survives_the_segment_a_failed_rotation_unlinked);
    suite_add_tcase(s, found);
    return m2a_check_run(s);
}
