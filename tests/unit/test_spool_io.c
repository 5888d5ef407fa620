/* test_spool_io.c - the spool's file-system seam (spool_io.h), which issue
 * 13's power-loss checker will record: a recording table installed through
 * m2a_spool_opts.io must see every call with what it needs to rebuild the
 * files (the name behind each fd, offsets, lengths, bytes, sync barriers).
 *
 * Two checks keep the seam from rotting: the calls of an open, an append +
 * flush + commit and a close are seen in order, with the bytes the format
 * says; and replaying a whole recorded run (rotations, deletions, a reopen,
 * drop_oldest discards) on an in-memory model of the directory rebuilds
 * every file byte for byte, so a call that bypassed the seam would show. */
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
#include "files.h"

/* --- the recorder --- */

enum op {
    OPENAT,
    MKDIR,
    PREAD,
    PWRITE,
    FTRUNCATE,
    FSYNC,
    FDATASYNC,
    RENAMEAT,
    UNLINKAT,
    FLOCK,
    CLOSE
};

struct call {
    enum op op;
    int fd;        /* OPENAT/RENAMEAT/UNLINKAT: the directory fd; else the file's */
    int flags;     /* OPENAT flags, FLOCK op */
    int rc;        /* the result (an fd for OPENAT) */
    char name[80]; /* MKDIR path, OPENAT/UNLINKAT name, RENAMEAT old name */
    char name2[80];
    uint64_t off, len;
    unsigned char *data; /* PWRITE: a copy of what was written */
};

static pthread_mutex_t rec_mu = PTHREAD_MUTEX_INITIALIZER;
static struct call *calls;
static size_t ncalls, calls_cap;

static struct call *rec_add(enum op op, int fd, int rc)
{
    if (ncalls == calls_cap) {
        calls_cap = calls_cap ? 2 * calls_cap : 256;
        calls = xrealloc(calls, calls_cap * sizeof(*calls));
    }
    struct call *c = &calls[ncalls++];
    memset(c, 0, sizeof(*c));
    c->op = op;
    c->fd = fd;
    c->rc = rc;
    return c;
}

static void rec_clear(void)
{
    for (size_t i = 0; i < ncalls; i++)
        free(calls[i].data);
    ncalls = 0;
}

#define SYS m2a_spool_io_system
/* Forwards to the system call, records it, keeps errno. */
#define RECORD(op_, fd_, call_, ...)                                                               \
    int e_;                                                                                        \
    pthread_mutex_lock(&rec_mu);                                                                   \
    long rc_ = (long)(call_);                                                                      \
    e_ = errno;                                                                                    \
    struct call *c = rec_add(op_, fd_, (int)rc_);                                                  \
    (void)c;                                                                                       \
    __VA_ARGS__;                                                                                   \
    pthread_mutex_unlock(&rec_mu);                                                                 \
    errno = e_

static int r_openat(int dirfd, const char *name, int flags, mode_t mode)
{
    RECORD(OPENAT, dirfd, SYS.openat(dirfd, name, flags, mode), c->flags = flags,
           snprintf(c->name, sizeof(c->name), "%s", name));
    return (int)rc_;
}

static int r_mkdir(const char *path, mode_t mode)
{
    RECORD(MKDIR, -1, SYS.mkdir(path, mode), snprintf(c->name, sizeof(c->name), "%s", path));
    return (int)rc_;
}

static ssize_t r_pread(int fd, void *buf, size_t len, off_t off)
{
    RECORD(PREAD, fd, SYS.pread(fd, buf, len, off), c->off = (uint64_t)off, c->len = len);
    return rc_;
}

/* Set: the next pwrite writes half its bytes, then fails with ENOSPC (as a
 * full disk may); the call is recorded with what reached the file. */
static bool fail_next_pwrite;

static ssize_t r_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    size_t n = fail_next_pwrite && len > 1 ? len / 2 : len;
    fail_next_pwrite = false;
    RECORD(PWRITE, fd, SYS.pwrite(fd, buf, n, off), c->off = (uint64_t)off,
           c->len = rc_ > 0 ? (uint64_t)rc_ : 0, c->data = xmalloc(len ? len : 1),
           memcpy(c->data, buf, len));
    if (n < len && rc_ >= 0) {
        errno = ENOSPC;
        return -1;
    }
    return rc_;
}

static int r_ftruncate(int fd, off_t len)
{
    RECORD(FTRUNCATE, fd, SYS.ftruncate(fd, len), c->len = (uint64_t)len);
    return (int)rc_;
}

static int r_fsync(int fd)
{
    RECORD(FSYNC, fd, SYS.fsync(fd));
    return (int)rc_;
}

static int r_fdatasync(int fd)
{
    RECORD(FDATASYNC, fd, SYS.fdatasync(fd));
    return (int)rc_;
}

static int r_renameat(int olddirfd, const char *oldname, int newdirfd, const char *newname)
{
    RECORD(RENAMEAT, olddirfd, SYS.renameat(olddirfd, oldname, newdirfd, newname),
           snprintf(c->name, sizeof(c->name), "%s", oldname),
           snprintf(c->name2, sizeof(c->name2), "%s", newname));
    return (int)rc_;
}

static int r_unlinkat(int dirfd, const char *name, int flags)
{
    RECORD(UNLINKAT, dirfd, SYS.unlinkat(dirfd, name, flags),
           snprintf(c->name, sizeof(c->name), "%s", name));
    return (int)rc_;
}

static int r_flock(int fd, int op)
{
    RECORD(FLOCK, fd, SYS.flock(fd, op), c->flags = op);
    return (int)rc_;
}

static int r_close(int fd)
{
    RECORD(CLOSE, fd, SYS.close(fd));
    return (int)rc_;
}

static const struct m2a_spool_io recorder = {
    .openat = r_openat,
    .mkdir = r_mkdir,
    .pread = r_pread,
    .pwrite = r_pwrite,
    .ftruncate = r_ftruncate,
    .fsync = r_fsync,
    .fdatasync = r_fdatasync,
    .renameat = r_renameat,
    .unlinkat = r_unlinkat,
    .flock = r_flock,
    .close = r_close,
};

/* --- fixtures and helpers --- */

static char *tmpdir;
static char spooldir[512];

static void setup(void)
{
    tmpdir = th_tmpdir_new("spool-io");
    snprintf(spooldir, sizeof(spooldir), "%s/spool", tmpdir);
    rec_clear();
}

static void teardown(void)
{
    rec_clear();
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
                               .io = &recorder};
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

/* The index of the first call at or after from matching op (and name if
 * not NULL), or ncalls. */
static size_t find(size_t from, enum op op, const char *name)
{
    for (size_t i = from; i < ncalls; i++)
        if (calls[i].op == op && (!name || strcmp(calls[i].name, name) == 0))
            return i;
    return ncalls;
}

/* The fd a successful OPENAT of name returned at or after from, or -1. */
static int fd_of(size_t from, const char *name, size_t *at)
{
    *at = find(from, OPENAT, name);
    return *at < ncalls ? calls[*at].rc : -1;
}

/* --- an open, an append + flush + commit, a close --- */

START_TEST(recorder_sees_append_flush_commit)
{
    struct m2a_spool *s = open_spool(0, 1u << 20, M2A_OVERFLOW_BLOCK);
    /* open: the directory made, opened and locked; the id written atomically */
    ck_assert_uint_lt(find(0, MKDIR, spooldir), ncalls);
    size_t i = find(0, OPENAT, spooldir);
    ck_assert_int_eq(calls[i].fd, AT_FDCWD);
    ck_assert_uint_lt(i, ncalls);
    int dirfd = calls[i].rc;
    ck_assert_int_ge(dirfd, 0);
    size_t at;
    int lockfd = fd_of(0, M2A_SPOOL_LOCK_FILE, &at);
    ck_assert_int_ge(lockfd, 0);
    i = find(at, FLOCK, NULL);
    ck_assert_uint_lt(i, ncalls);
    ck_assert_int_eq(calls[i].fd, lockfd);
    ck_assert_int_eq(calls[i].flags, LOCK_EX | LOCK_NB);
    int idfd = fd_of(0, M2A_SPOOL_ID_FILE ".tmp", &at);
    ck_assert_int_ge(idfd, 0);
    i = find(at, PWRITE, NULL);
    ck_assert_int_eq(calls[i].fd, idfd);
    ck_assert_uint_eq(calls[i].off, 0);
    ck_assert_uint_eq(calls[i].len, M2A_SPOOL_ID_LEN + 1);
    ck_assert_int_eq(memcmp(calls[i].data, m2a_spool_id(s), M2A_SPOOL_ID_LEN), 0);
    i = find(i, FSYNC, NULL);
    ck_assert_int_eq(calls[i].fd, idfd);
    i = find(i, RENAMEAT, M2A_SPOOL_ID_FILE ".tmp");
    ck_assert_str_eq(calls[i].name2, M2A_SPOOL_ID_FILE);
    i = find(i, FSYNC, NULL);
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
    i = find(before, PWRITE, NULL);
    ck_assert_uint_lt(i, ncalls);
    ck_assert_int_eq(calls[i].fd, segfd);
    ck_assert_uint_eq(calls[i].off, 0);
    ck_assert_uint_eq(calls[i].len, want.len);
    ck_assert_int_eq(memcmp(calls[i].data, want.data, want.len), 0);
    i = find(i, FDATASYNC, NULL);
    ck_assert_uint_lt(i, ncalls);
    ck_assert_int_eq(calls[i].fd, segfd);

    /* read + commit: the checkpoint written atomically, its bytes as the
     * format says */
    before = ncalls;
    ck_assert_uint_eq(read_all(s), 3);
    int rfd = fd_of(before, seg, &at);
    ck_assert_int_ge(rfd, 0);
    ck_assert_int_eq(calls[at].flags & O_ACCMODE, O_RDONLY);
    ck_assert_uint_lt(find(at, PREAD, NULL), ncalls);
    before = ncalls;
    ck_assert_int_eq(m2a_spool_commit(s, 3), 0);
    int ckfd = fd_of(before, M2A_SPOOL_CHECKPOINT_FILE ".tmp", &at);
    ck_assert_int_ge(ckfd, 0);
    i = find(at, PWRITE, NULL);
    unsigned char ck[M2A_SPOOL_CHECKPOINT_SIZE];
    m2a_spool_format_checkpoint_encode(ck, 3);
    ck_assert_int_eq(calls[i].fd, ckfd);
    ck_assert_uint_eq(calls[i].len, sizeof(ck));
    ck_assert_int_eq(memcmp(calls[i].data, ck, sizeof(ck)), 0);
    ck_assert_int_eq(calls[find(i, FSYNC, NULL)].fd, ckfd);
    ck_assert_int_eq(calls[find(i, CLOSE, NULL)].fd, ckfd);
    i = find(i, RENAMEAT, M2A_SPOOL_CHECKPOINT_FILE ".tmp");
    ck_assert_str_eq(calls[i].name2, M2A_SPOOL_CHECKPOINT_FILE);
    ck_assert_int_eq(calls[find(i, FSYNC, NULL)].fd, dirfd);

    /* close: every descriptor the seam opened, it closed */
    m2a_spool_close(s);
    int open_fds = 0;
    for (size_t k = 0; k < ncalls; k++) {
        if (calls[k].op == OPENAT && calls[k].rc >= 0)
            open_fds++;
        if (calls[k].op == CLOSE && calls[k].rc == 0)
            open_fds--;
    }
    ck_assert_int_eq(open_fds, 0);
    m2a_buf_free(&want);
}
END_TEST

/* --- replaying a run on a model of the directory --- */

struct mfile {
    struct m2a_buf b;
};

struct mentry {
    char name[80];
    struct mfile *f;
};

struct model {
    struct mentry e[256];
    size_t n;
    struct {
        int fd;
        struct mfile *f;
    } fds[64];
    size_t nfds;
    struct mfile *files[1024];
    size_t nfiles;
};

static struct mentry *m_lookup(struct model *m, const char *name)
{
    for (size_t i = 0; i < m->n; i++)
        if (strcmp(m->e[i].name, name) == 0)
            return &m->e[i];
    return NULL;
}

static void m_unlink(struct model *m, const char *name)
{
    struct mentry *e = m_lookup(m, name);
    if (e)
        *e = m->e[--m->n];
}

static struct mfile **m_fd(struct model *m, int fd)
{
    for (size_t i = 0; i < m->nfds; i++)
        if (m->fds[i].fd == fd)
            return &m->fds[i].f;
    return NULL;
}

static void m_write(struct mfile *f, const unsigned char *p, uint64_t off, uint64_t len)
{
    if (off + len > f->b.len) {
        m2a_buf_reserve(&f->b, off + len - f->b.len);
        memset(f->b.data + f->b.len, 0, off + len - f->b.len);
        f->b.len = off + len;
    }
    if (len > 0)
        memcpy(f->b.data + off, p, len);
}

/* Applies one recorded call to the model (the spool's directory only: the
 * directory's own fd is the one its OPENAT returned). */
static void m_apply(struct model *m, const struct call *c, int dirfd)
{
    if (c->rc < 0)
        return;
    struct mfile **fp = m_fd(m, c->fd);
    switch (c->op) {
    case OPENAT: {
        if (c->fd != dirfd || strcmp(c->name, ".") == 0)
            return;
        struct mentry *e = m_lookup(m, c->name);
        if (!e) {
            ck_assert_msg(c->flags & O_CREAT, "%s opened without O_CREAT, missing", c->name);
            e = &m->e[m->n++];
            snprintf(e->name, sizeof(e->name), "%s", c->name);
            e->f = m->files[m->nfiles++] = xcalloc(1, sizeof(struct mfile));
        }
        if (c->flags & O_TRUNC)
            e->f->b.len = 0;
        m->fds[m->nfds].fd = c->rc;
        m->fds[m->nfds++].f = e->f;
        break;
    }
    case PWRITE:
        ck_assert_ptr_nonnull(fp);
        m_write(*fp, c->data, c->off, c->len);
        break;
    case FTRUNCATE:
        ck_assert_ptr_nonnull(fp);
        if (c->len < (*fp)->b.len)
            (*fp)->b.len = c->len;
        else
            m_write(*fp, (const unsigned char *)"", c->len, 0);
        break;
    case RENAMEAT: {
        struct mentry *e = m_lookup(m, c->name);
        ck_assert_ptr_nonnull(e);
        m_unlink(m, c->name2);
        e = m_lookup(m, c->name); /* m_unlink may have moved it */
        snprintf(e->name, sizeof(e->name), "%s", c->name2);
        break;
    }
    case UNLINKAT:
        m_unlink(m, c->name);
        break;
    case CLOSE:
        for (size_t i = 0; i < m->nfds; i++)
            if (m->fds[i].fd == c->fd) {
                m->fds[i] = m->fds[--m->nfds];
                break;
            }
        break;
    default:
        break;
    }
}

/* Every file in the spool directory has exactly the model's bytes, and the
 * model has no other file. */
static void check_model(struct model *m)
{
    size_t seen = 0;
    char path[1024];
    for (size_t i = 0; i < m->n; i++) {
        snprintf(path, sizeof(path), "%s/%s", spooldir, m->e[i].name);
        FILE *f = fopen(path, "rb");
        ck_assert_msg(f != NULL, "%s is in the replay, not on disk", m->e[i].name);
        struct m2a_buf b = {0};
        char chunk[4096];
        size_t k;
        while ((k = fread(chunk, 1, sizeof(chunk), f)) > 0)
            m2a_buf_append(&b, chunk, k);
        fclose(f);
        ck_assert_msg(b.len == m->e[i].f->b.len &&
                          (b.len == 0 || memcmp(b.data, m->e[i].f->b.data, b.len) == 0),
                      "%s: %zu bytes on disk, %zu replayed, or other bytes", m->e[i].name, b.len,
                      m->e[i].f->b.len);
        m2a_buf_free(&b);
        seen++;
    }
    snprintf(path, sizeof(path), "ls -A %s | wc -l", spooldir);
    FILE *p = popen(path, "r");
    size_t on_disk = 0;
    ck_assert_int_eq(fscanf(p, "%zu", &on_disk), 1);
    pclose(p);
    ck_assert_uint_eq(on_disk, seen);
}

/* Replays every call recorded so far on an empty model and compares. */
static void replay_and_check(void)
{
    static struct model m;
    memset(&m, 0, sizeof(m));
    int dirfd = -1;
    for (size_t i = 0; i < ncalls; i++) {
        if (calls[i].op == OPENAT && calls[i].fd == AT_FDCWD)
            dirfd = calls[i].rc; /* a new open, a new fd */
        m_apply(&m, &calls[i], dirfd);
    }
    check_model(&m);
    for (size_t i = 0; i < m.nfiles; i++) {
        m2a_buf_free(&m.files[i]->b);
        free(m.files[i]);
    }
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
    int dirfd = -1;
    for (size_t i = 0; i < ncalls; i++)
        if (calls[i].op == OPENAT && calls[i].fd == AT_FDCWD)
            dirfd = calls[i].rc;
    const int fake = 100000;
    struct call *c = rec_add(OPENAT, dirfd, fake);
    snprintf(c->name, sizeof(c->name), "%s", name);
    c = rec_add(PWRITE, fake, 7);
    c->off = (uint64_t)sb.st_size;
    c->len = 7;
    c->data = xmalloc(7);
    memcpy(c->data, "garbage", 7);
    rec_add(CLOSE, fake, 0);
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
        fail_next_pwrite = true;
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
