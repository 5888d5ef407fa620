/* crash_states.c - the spool's power-loss checker from the command line
 * (scripts/crash-states.sh runs it for minutes; the unit test
 * test_crash_states runs a short version in CI). Each round records a run
 * with traffic through the real spool (crash_check.h) and checks every
 * crash point of it; prints one line of figures per round and the totals.
 * Exit status 1 if any check failed, 2 on a usage or setup error.
 *
 *   crash_states [options]
 *     --fsync batch|interval|never   (batch)
 *     --overflow block|drop_oldest   (block)
 *     --max-bytes N --segment-bytes N (0, 8192)
 *     --records N --max-batch N --max-body N --min-ms N   (400, 8, 2048, 0)
 *     --stall-ms N                   the reader pauses for up to N ms now and then (20)
 *     --fail-every N                 about one flush in N fails half way (disk full) (0: none)
 *     --seed N --rounds N            rounds use seeds seed, seed+1, ... (1, 1)
 *     --states N --exhaustive N      states per crash point, all subsets up to N units (64, 6)
 *     --seconds N                    keep starting rounds until N seconds passed
 *     --existing-dir                 the spool's directory exists before the run
 *     --writer-only                  no reader thread (a trace the seed alone decides)
 *     --reopen                       also reopen each recovered spool
 *     --reports N                    failures described (5)
 *     --skip fdatasync|fsync-file|fsync-dir  swallow a barrier (the checker must fail)
 *     --save-trace FILE              keep the last round's trace
 *     --trace FILE                   check a saved trace instead of recording
 *     --dump FROM:TO                 print the calls FROM..TO of the (last) trace */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/util.h"
#include "crash_check.h"
#include "files.h"

struct args {
    struct th_crash_traffic tr;
    struct th_crash_budget b;
    unsigned rounds;
    uint64_t seconds;
    const char *save, *load;
    long dump_from, dump_to;
};

static int usage(const char *bad)
{
    fprintf(stderr, "crash_states: bad or missing value: %s (see the source's opening comment)\n",
            bad);
    return 2;
}

static int parse(int argc, char **argv, struct args *a)
{
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t n = v ? strtoull(v, NULL, 0) : 0;
        bool takes = true;
        if (strcmp(k, "--fsync") == 0 && v)
            a->tr.fsync = strcmp(v, "interval") == 0 ? M2A_FSYNC_INTERVAL
                          : strcmp(v, "never") == 0  ? M2A_FSYNC_NEVER
                                                     : M2A_FSYNC_BATCH;
        else if (strcmp(k, "--overflow") == 0 && v)
            a->tr.overflow =
                strcmp(v, "drop_oldest") == 0 ? M2A_OVERFLOW_DROP_OLDEST : M2A_OVERFLOW_BLOCK;
        else if (strcmp(k, "--max-bytes") == 0 && v)
            a->tr.max_bytes = n;
        else if (strcmp(k, "--segment-bytes") == 0 && v)
            a->tr.segment_bytes = n;
        else if (strcmp(k, "--records") == 0 && v)
            a->tr.records = n;
        else if (strcmp(k, "--max-batch") == 0 && v && n > 0)
            a->tr.max_batch = (unsigned)n;
        else if (strcmp(k, "--max-body") == 0 && v)
            a->tr.max_body = (unsigned)n;
        else if (strcmp(k, "--stall-ms") == 0 && v)
            a->tr.stall_ms = (unsigned)n;
        else if (strcmp(k, "--fail-every") == 0 && v)
            a->tr.fail_every = (unsigned)n;
        else if (strcmp(k, "--min-ms") == 0 && v)
            a->tr.min_ms = n;
        else if (strcmp(k, "--seed") == 0 && v)
            a->tr.seed = n;
        else if (strcmp(k, "--rounds") == 0 && v && n > 0)
            a->rounds = (unsigned)n;
        else if (strcmp(k, "--seconds") == 0 && v)
            a->seconds = n;
        else if (strcmp(k, "--states") == 0 && v && n >= 2)
            a->b.states_per_point = (unsigned)n;
        else if (strcmp(k, "--exhaustive") == 0 && v)
            a->b.exhaustive_units = (unsigned)n;
        else if (strcmp(k, "--reports") == 0 && v)
            a->b.max_reports = (unsigned)n;
        else if (strcmp(k, "--skip") == 0 && v)
            a->tr.skip = strcmp(v, "fdatasync") == 0   ? TH_IO_SKIP_FDATASYNC
                         : strcmp(v, "fsync-dir") == 0 ? TH_IO_SKIP_FSYNC_DIR
                                                       : TH_IO_SKIP_FSYNC_FILE;
        else if (strcmp(k, "--save-trace") == 0 && v)
            a->save = v;
        else if (strcmp(k, "--trace") == 0 && v)
            a->load = v;
        else if (strcmp(k, "--dump") == 0 && v &&
                 sscanf(v, "%ld:%ld", &a->dump_from, &a->dump_to) == 2)
            ;
        else if (strcmp(k, "--writer-only") == 0)
            a->tr.writer_only = true, takes = false;
        else if (strcmp(k, "--existing-dir") == 0)
            a->tr.existing_dir = true, takes = false;
        else if (strcmp(k, "--reopen") == 0)
            a->b.reopen = true, takes = false;
        else
            return usage(k);
        i += takes;
    }
    return 0;
}

static const char *fsync_name(enum m2a_fsync_policy p)
{
    return p == M2A_FSYNC_BATCH ? "batch" : p == M2A_FSYNC_INTERVAL ? "interval" : "never";
}

/* Adds r to the totals. */
static void add(struct th_crash_report *tot, const struct th_crash_report *r)
{
    tot->calls += r->calls;
    tot->points += r->points;
    tot->changes += r->changes;
    tot->checks += r->checks;
    tot->states += r->states;
    tot->failures += r->failures;
    tot->fail_open += r->fail_open;
    tot->fail_lost += r->fail_lost;
    tot->fail_altered += r->fail_altered;
    tot->fail_unusable += r->fail_unusable;
    tot->fail_reused += r->fail_reused;
    tot->reused_noted += r->reused_noted;
    tot->max_units = r->max_units > tot->max_units ? r->max_units : tot->max_units;
    tot->torn_points += r->torn_points;
    tot->dir_points += r->dir_points;
    tot->seconds += r->seconds;
    if (!tot->first[0])
        memcpy(tot->first, r->first, sizeof(tot->first));
}

static void dump(const struct args *a, const struct th_iotrace *t)
{
    char line[1024];
    for (long i = a->dump_from; i <= a->dump_to && i >= 0 && (size_t)i < t->n; i++) {
        th_iotrace_describe(t, (size_t)i, line, sizeof(line));
        printf("%6ld  %s\n", i, line);
    }
}

static int check_loaded(struct args *a)
{
    struct th_iotrace t;
    if (th_iotrace_load(&t, a->load) != 0)
        return 2;
    dump(a, &t);
    struct th_crash_report r;
    int rc = th_crash_check(&t, &a->b, &r);
    char line[1024];
    th_crash_report_line(&r, line, sizeof(line));
    printf("crash-states: trace %s: %s\n", a->load, line);
    if (rc != 0)
        printf("crash-states: %s\n", r.first);
    th_iotrace_free(&t);
    return rc != 0 ? 2 : r.failures ? 1 : 0;
}

int main(int argc, char **argv)
{
    struct args a = {.tr = {.fsync = M2A_FSYNC_BATCH,
                            .overflow = M2A_OVERFLOW_BLOCK,
                            .segment_bytes = 8192,
                            .records = 400,
                            .max_batch = 8,
                            .max_body = 2048,
                            .seed = 1},
                     .b = {.states_per_point = 64, .exhaustive_units = 6, .max_reports = 5},
                     .rounds = 1,
                     .dump_from = -1,
                     .dump_to = -2};
    if (parse(argc, argv, &a) != 0)
        return 2;
    if (a.load)
        return check_loaded(&a);
    struct th_crash_report tot = {0};
    uint64_t t0 = m2a_now_ms();
    unsigned rounds = 0;
    int status = 0;
    for (unsigned i = 0; i < a.rounds || (a.seconds && m2a_now_ms() - t0 < a.seconds * 1000); i++) {
        struct th_crash_traffic tr = a.tr;
        tr.seed = a.tr.seed + i;
        a.b.seed = tr.seed;
        char *dir = th_tmpdir_new("crash-states");
        char *spool = xasprintf("%s/spool", dir);
        struct th_crash_run_stats st;
        if (th_crash_record(&tr, spool, &st) != 0) {
            fprintf(stderr, "crash-states: seed %" PRIu64 ": the run failed: %s\n", tr.seed,
                    st.err);
            status = 2;
        }
        struct th_crash_report r;
        int rc = status ? 0 : th_crash_check(th_iotrace_get(), &a.b, &r);
        if (status == 0) {
            char line[1024];
            th_crash_report_line(&r, line, sizeof(line));
            printf("crash-states: fsync %s, overflow %s, seed %" PRIu64 ": run %" PRIu64
                   " records in %" PRIu64 " flushes (%" PRIu64 " failed), %" PRIu64
                   " read, %" PRIu64 " dropped (%" PRIu64 " times behind held records), %" PRIu64
                   " segments made, %" PRIu64 " deleted, %" PRIu64
                   " interval syncs, %.1f s; check: %s\n",
                   fsync_name(tr.fsync),
                   tr.overflow == M2A_OVERFLOW_BLOCK ? "block" : "drop_oldest", tr.seed,
                   st.appended, st.flushes, st.failed_flushes, st.read, st.dropped, st.gap_discards,
                   st.segments_made, st.segments_deleted, st.interval_syncs, st.seconds, line);
            fflush(stdout);
            add(&tot, &r);
            if (rc != 0) {
                fprintf(stderr, "crash-states: %s\n", r.first);
                status = 2;
            } else if (r.failures && !status) {
                status = 1;
            }
        }
        if (a.save)
            th_iotrace_save(th_iotrace_get(), a.save);
        dump(&a, th_iotrace_get());
        th_iotrace_reset();
        th_rmtree(dir);
        free(spool);
        free(dir);
        rounds++;
        if (status == 2)
            break;
    }
    char line[1024];
    th_crash_report_line(&tot, line, sizeof(line));
    printf("crash-states: TOTAL %u round(s) in %.1f s: %s\n", rounds,
           (double)(m2a_now_ms() - t0) / 1000.0, line);
    if (tot.first[0])
        printf("crash-states: first failure: %s\n", tot.first);
    return status;
}
