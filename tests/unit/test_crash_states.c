/* test_crash_states.c - the spool against power loss (issue 13): the
 * regression tests of what the crash-state checker (crash_check.h) found,
 * each a run whose every crash point is checked. */
#include <check.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "check_main.h"
#include "crash_check.h"
#include "files.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/spool_format.h"
#include "mqtt2amqp/util.h"

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

/* Records tr, checks every crash point, prints the figures. */
static void run_and_check(const char *what, const struct th_crash_traffic *tr,
                          const struct th_crash_budget *b, struct th_crash_run_stats *st,
                          struct th_crash_report *r)
{
    ck_assert_msg(th_crash_record(tr, spooldir, st) == 0, "%s: the run failed: %s", what, st->err);
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
    TCase *found = tcase_create("found");
    tcase_add_checked_fixture(found, setup, teardown);
    tcase_set_timeout(found, 60);
    tcase_add_test(found, spool_directory_made_at_start_survives_power_loss);
    tcase_add_test(found, acked_batch_survives_the_segment_a_failed_flush_unlinked);
    tcase_add_test(found, acked_batch_survives_the_segment_a_failed_rotation_unlinked);
    suite_add_tcase(s, found);
    return m2a_check_run(s);
}
