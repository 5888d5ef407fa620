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

int main(void)
{
    Suite *s = suite_create("crash_states");
    TCase *found = tcase_create("found");
    tcase_add_checked_fixture(found, setup, teardown);
    tcase_set_timeout(found, 60);
    tcase_add_test(found, spool_directory_made_at_start_survives_power_loss);
    suite_add_tcase(s, found);
    return m2a_check_run(s);
}
