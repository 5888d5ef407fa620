/* test_spool_io.c - the spool's file-system seam (spool_io.h), which the
 * power-loss checker records (tests/support/iotrace.h, crashfs.h,
 * test_crash_states): the recording table installed through
 * m2a_spool_opts.io must see every call with what it needs to rebuild the
 * files (the name behind each fd, offsets, lengths, bytes, sync barriers).
 *
 * Two checks keep the seam from rotting: the calls of an open, an append +
 * flush + commit and a close are seen in order, with the bytes the format
 * says; and replaying a whole recorded run (rotations, deletions, a reopen,
 * drop_oldest discards) on the checker's model of the directory, every
 * call kept, rebuilds every file byte for byte, so a call that bypassed the
 * seam would show. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/spool_format.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"
#include "crashfs.h"
#include "files.h"
#include "iotrace.h"

/* --- fixtures and helpers --- */

static char *tmpdir;
static char spooldir[512];

static void setup(void)
{
    tmpdir = th_tmpdir_new("spool-io");
    snprintf(spooldir, sizeof(spooldir), "%s/spool", tmpdir);
    th_iotrace_start(NULL, 0);
}

static void teardown(void)
{
    th_iotrace_stop();
    th_iotrace_reset();
    th_rmtree(tmpdir);
    free(tmpdir);
}

static struct m2a_spool *open_spool(uint64_t max_bytes, uint64_t segment_bytes,
                                    enum m2a_overflow overflow)
{
    struct m2a_spool_opts o = {.dir = spooldir,
                               .max_bytes = max_bytes,
                               .segment_bytes = segment_bytes,
                               .fsync = M2A_FSYNC_BATCH,
                               .overflow = overflow,
                               .io = &th_iotrace_io};
    struct m2a_spool *s = NULL;
    char err[256];
    int rc = m2a_spool_open(&o, &s, NULL, err, sizeof(err));
    ck_assert_msg(rc == 0, "open: %s", err);
    return s;
}

static struct m2a_envelope make_env(char *body, size_t len, uint64_t n)
{
    int k = snprintf(body, len, "n=%" PRIu64 ";", n);
    memset(body + k, 'a' + (int)(n % 26), len - (size_t)k);
    return (struct m2a_envelope){.timestamp_ms = 1700000000000ull + n,
                                 .route = {"r", 1},
                                 .exchange = {"ex", 2},
                                 .routing_key = {"k", 1},
                                 .topic = {"t", 1},
                                 .qos = 1,
                                 .persistent = true,
                                 .body = {body, len}};
}

/* Appends first..last, flushing every `batch`; a batch kept for room is
 * flushed again after the reader's part (m2a_spool_maintain), at most 100
 * times. */
static void append_range(struct m2a_spool *s, uint64_t first, uint64_t last, uint64_t batch)
{
    char body[512];
    for (uint64_t n = first; n <= last; n++) {
        struct m2a_envelope e = make_env(body, sizeof(body), n);
        uint64_t seq;
        ck_assert_int_eq(m2a_spool_append(s, &e, &seq), 0);
        if ((n - first + 1) % batch != 0 && n != last)
            continue;
        int rc = m2a_spool_flush(s);
        for (int i = 0; i < 100 && rc == M2A_ERR_FULL; i++) {
            ck_assert_int_eq(m2a_spool_maintain(s), 0);
            rc = m2a_spool_flush(s);
        }
        ck_assert_int_eq(rc, 0);
    }
}

static uint64_t read_all(struct m2a_spool *s)
{
    uint64_t seq, last = 0;
    const void *data;
    size_t len;
    while (m2a_spool_read(s, &seq, &data, &len) == 0)
        last = seq;
    return last;
}

/* The recorded calls so far. */
#define calls  (th_iotrace_get()->calls)
#define ncalls (th_iotrace_get()->n)

/* The index of the first call at or after from matching op (and name if
 * not NULL), or ncalls. */
static size_t find(size_t from, enum th_io_op op, const char *name)
{
    for (size_t i = from; i < ncalls; i++)
        if (calls[i].op == op && (!name || strcmp(calls[i].name, name) == 0))
            return i;
    return ncalls;
}

/* The fd a successful TH_IO_OPENAT of name returned at or after from, or -1. */
static int fd_of(size_t from, const char *name, size_t *at)
{
    *at = find(from, TH_IO_OPENAT, name);
    return *at < ncalls ? calls[*at].rc : -1;
}

/* --- an open, an append + flush + commit, a close --- */

START_TEST(recorder_sees_append_flush_commit)
{
    struct m2a_spool *s = open_spool(0, 1u << 20, M2A_OVERFLOW_BLOCK);
    /* open: the directory made, opened and locked; the id written atomically */
    ck_assert_uint_lt(find(0, TH_IO_MKDIR, spooldir), ncalls);
    size_t i = find(0, TH_IO_OPENAT, spooldir);
    ck_assert_int_eq(calls[i].fd, AT_FDCWD);
    ck_assert_uint_lt(i, ncalls);
    int dirfd = calls[i].rc;
    ck_assert_int_ge(dirfd, 0);
    size_t at;
    int lockfd = fd_of(0, M2A_SPOOL_LOCK_FILE, &at);
    ck_assert_int_ge(lockfd, 0);
    i = find(at, TH_IO_FLOCK, NULL);
    ck_assert_uint_lt(i, ncalls);
    ck_assert_int_eq(calls[i].fd, lockfd);
    ck_assert_int_eq(calls[i].flags, LOCK_EX | LOCK_NB);
    int idfd = fd_of(0, M2A_SPOOL_ID_FILE ".tmp", &at);
    ck_assert_int_ge(idfd, 0);
    i = find(at, TH_IO_PWRITE, NULL);
    ck_assert_int_eq(calls[i].fd, idfd);
    ck_assert_uint_eq(calls[i].off, 0);
    ck_assert_uint_eq(calls[i].len, M2A_SPOOL_ID_LEN + 1);
    ck_assert_int_eq(memcmp(calls[i].data, m2a_spool_id(s), M2A_SPOOL_ID_LEN), 0);
    i = find(i, TH_IO_FSYNC, NULL);
    ck_assert_int_eq(calls[i].fd, idfd);
    i = find(i, TH_IO_RENAMEAT, M2A_SPOOL_ID_FILE ".tmp");
    ck_assert_str_eq(calls[i].name2, M2A_SPOOL_ID_FILE);
    i = find(i, TH_IO_FSYNC, NULL);
    ck_assert_int_eq(calls[i].fd, dirfd);

    /* append + flush: one pwrite of the whole batch at its offset, then a
     * data sync of that segment before the flush returns */
    char seg[M2A_SPOOL_NAME_MAX];
    m2a_spool_format_segment_name(seg, sizeof(seg), 1);
    int segfd = fd_of(0, seg, &at);
    ck_assert_int_ge(segfd, 0);
    ck_assert(calls[at].flags & O_CREAT);
    size_t before = ncalls;
    char body[512];
    struct m2a_buf want = {0};
    for (uint64_t n = 1; n <= 3; n++) {
        struct m2a_envelope e = make_env(body, sizeof(body), n);
        uint64_t seq;
        ck_assert_int_eq(m2a_spool_append(s, &e, &seq), 0);
        size_t start = want.len;
        m2a_buf_reserve(&want, M2A_SPOOL_RECORD_HEADER);
        want.len += M2A_SPOOL_RECORD_HEADER;
        m2a_envelope_encode(&e, &want);
        m2a_spool_format_record_header(want.data + start,
                                       want.len - start - M2A_SPOOL_RECORD_HEADER, seq);
    }
    ck_assert_uint_eq(ncalls, before); /* nothing before the flush */
    ck_assert_int_eq(m2a_spool_flush(s), 0);
    i = find(before, TH_IO_PWRITE, NULL);
    ck_assert_uint_lt(i, ncalls);
    ck_assert_int_eq(calls[i].fd, segfd);
    ck_assert_uint_eq(calls[i].off, 0);
    ck_assert_uint_eq(calls[i].len, want.len);
    ck_assert_int_eq(memcmp(calls[i].data, want.data, want.len), 0);
    i = find(i, TH_IO_FDATASYNC, NULL);
    ck_assert_uint_lt(i, ncalls);
    ck_assert_int_eq(calls[i].fd, segfd);

    /* read + commit: the checkpoint written atomically, its bytes as the
     * format says */
    before = ncalls;
    ck_assert_uint_eq(read_all(s), 3);
    int rfd = fd_of(before, seg, &at);
    ck_assert_int_ge(rfd, 0);
    ck_assert_int_eq(calls[at].flags & O_ACCMODE, O_RDONLY);
    ck_assert_uint_lt(find(at, TH_IO_PREAD, NULL), ncalls);
    before = ncalls;
    ck_assert_int_eq(m2a_spool_commit(s, 3), 0);
    int ckfd = fd_of(before, M2A_SPOOL_CHECKPOINT_FILE ".tmp", &at);
    ck_assert_int_ge(ckfd, 0);
    i = find(at, TH_IO_PWRITE, NULL);
    unsigned char ck[M2A_SPOOL_CHECKPOINT_SIZE];
    m2a_spool_format_checkpoint_encode(ck, 3);
    ck_assert_int_eq(calls[i].fd, ckfd);
    ck_assert_uint_eq(calls[i].len, sizeof(ck));
    ck_assert_int_eq(memcmp(calls[i].data, ck, sizeof(ck)), 0);
    ck_assert_int_eq(calls[find(i, TH_IO_FSYNC, NULL)].fd, ckfd);
    ck_assert_int_eq(calls[find(i, TH_IO_CLOSE, NULL)].fd, ckfd);
    i = find(i, TH_IO_RENAMEAT, M2A_SPOOL_CHECKPOINT_FILE ".tmp");
    ck_assert_str_eq(calls[i].name2, M2A_SPOOL_CHECKPOINT_FILE);
    ck_assert_int_eq(calls[find(i, TH_IO_FSYNC, NULL)].fd, dirfd);

    /* close: every descriptor the seam opened, it closed */
    m2a_spool_close(s);
    int open_fds = 0;
    for (size_t k = 0; k < ncalls; k++) {
        if (calls[k].op == TH_IO_OPENAT && calls[k].rc >= 0)
            open_fds++;
        if (calls[k].op == TH_IO_CLOSE && calls[k].rc == 0)
            open_fds--;
    }
    ck_assert_int_eq(open_fds, 0);
    m2a_buf_free(&want);
}
END_TEST

/* --- replaying a run on the checker's model of the directory --- */

/* Replays every call recorded so far on the model, keeps them all (the
 * state before any crash), and compares with the directory. */
static void replay_and_check(void)
{
    struct th_crashfs *fs = th_crashfs_new(th_iotrace_get());
    while (th_crashfs_step(fs) >= 0)
        ;
    ck_assert_msg(th_crashfs_point(fs) == ncalls, "the replay stopped: %s", th_crashfs_error(fs));
    struct th_crashfs_state st = {0};
    th_crashfs_build(fs, NULL, TH_CRASHFS_ABSENT, 0, &st);
    char why[512];
    ck_assert_msg(th_crashfs_state_compare(&st, spooldir, why, sizeof(why)) == 0, "%s", why);
    th_crashfs_state_free(&st);
    th_crashfs_free(fs);
}

/* Appends garbage to the last segment behind the spool's back, and records
 * it as if the seam had seen it (so the model has it too): recovery must
 * cut it off through the seam. */
static void tear_last_segment(void)
{
    char cmd[1024], name[64] = "";
    snprintf(cmd, sizeof(cmd), "ls %s | grep 'seg$' | tail -1", spooldir);
    FILE *p = popen(cmd, "r");
    ck_assert_int_eq(fscanf(p, "%63s", name), 1);
    pclose(p);
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", spooldir, name);
    struct stat sb;
    ck_assert_int_eq(stat(path, &sb), 0);
    int fd = open(path, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, "garbage", 7, sb.st_size), 7);
    close(fd);
    const int fake_dir = 100001, fake = 100000;
    struct th_io_call c = {
        .op = TH_IO_OPENAT, .fd = AT_FDCWD, .flags = O_DIRECTORY, .rc = fake_dir};
    ck_assert_uint_lt(strlen(spooldir), sizeof(c.name));
    memcpy(c.name, spooldir, strlen(spooldir) + 1);
    th_iotrace_append(&c);
    c = (struct th_io_call){.op = TH_IO_OPENAT, .fd = fake_dir, .flags = O_WRONLY, .rc = fake};
    snprintf(c.name, sizeof(c.name), "%s", name);
    th_iotrace_append(&c);
    c = (struct th_io_call){.op = TH_IO_PWRITE,
                            .fd = fake,
                            .rc = 7,
                            .off = (uint64_t)sb.st_size,
                            .len = 7,
                            .data = (unsigned char *)"garbage"};
    th_iotrace_append(&c);
    th_iotrace_append(&(struct th_io_call){.op = TH_IO_CLOSE, .fd = fake});
    th_iotrace_append(&(struct th_io_call){.op = TH_IO_CLOSE, .fd = fake_dir});
}

/* A run with segment rotations, batches across segments, commits that
 * delete segments, a torn tail cut off by a reopen, and drop_oldest
 * discarding (a record the reader holds included), replayed from its
 * recorded calls alone. */
START_TEST(replaying_the_recorded_calls_rebuilds_every_file)
{
    for (int round = 0; round < 2; round++) {
        enum m2a_overflow ov = round ? M2A_OVERFLOW_DROP_OLDEST : M2A_OVERFLOW_BLOCK;
        struct m2a_spool *s = open_spool(round ? 64 * 1024 : 0, 16 * 1024, ov);
        append_range(s, 1, 100, 7);
        uint64_t seq;
        const void *data;
        size_t len;
        ck_assert_int_eq(m2a_spool_read(s, &seq, &data, &len), 0);
        ck_assert_int_eq(m2a_spool_commit(s, 1), 0);
        ck_assert_int_eq(m2a_spool_read(s, &seq, &data, &len), 0); /* held from here */
        append_range(s, 101, 300, 9);
        read_all(s);
        struct m2a_spool_stats st;
        m2a_spool_get_stats(s, &st);
        ck_assert(round ? st.dropped > 0 : st.dropped == 0);
        ck_assert_int_eq(m2a_spool_commit(s, 150), 0);
        ck_assert_int_eq(m2a_spool_maintain(s), 0);
        /* A flush that fails half way is rolled back through the seam too. */
        char body[512];
        struct m2a_envelope e = make_env(body, sizeof(body), 301);
        ck_assert_int_eq(m2a_spool_append(s, &e, &seq), 0);
        th_iotrace_fail_pwrite(1);
        ck_assert_int_eq(m2a_spool_flush(s), M2A_ERR_NOSPACE);
        m2a_spool_close(s);
        replay_and_check();
        tear_last_segment();
        s = open_spool(round ? 64 * 1024 : 0, 16 * 1024, ov);
        replay_and_check(); /* the torn tail is gone, through the seam */
        append_range(s, 301, 400, 11);
        ck_assert_uint_eq(read_all(s), 400);
        ck_assert_int_eq(m2a_spool_commit(s, 380), 0);
        m2a_spool_close(s);
        m2a_spool_close(open_spool(round ? 64 * 1024 : 0, 16 * 1024, ov)); /* deletes at open */
        replay_and_check();
        teardown();
        setup();
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("spool_io");
    TCase *tc = tcase_create("seam");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, recorder_sees_append_flush_commit);
    tcase_add_test(tc, replaying_the_recorded_calls_rebuilds_every_file);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
