/* iotrace.c - the recorder of the spool's file-system seam; see iotrace.h.
 * One trace per process, under one mutex held across each forwarded call
 * (so the order recorded is the order of effect); the per-thread count of
 * syncs is thread-local. */
#include "iotrace.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mqtt2amqp/util.h"

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct th_iotrace trace;
static const struct m2a_spool_io *inner = &m2a_spool_io_system;
static bool recording;
static unsigned skip_ops;
static bool dir_fds[4096]; /* fds opened with O_DIRECTORY, for TH_IO_SKIP_FSYNC_DIR */
static _Thread_local uint64_t thread_syncs;
static _Thread_local unsigned fail_pwrite; /* fail the nth pwrite from now */
static _Thread_local unsigned fail_sync;   /* fail the nth fsync or fdatasync from now */

static int sync_failed(int fd)
{
    (void)fd;
    errno = EIO;
    return -1;
}

/* The sync to forward: the inner one, or a failure if this is the one. */
static int (*sync_call(int (*inner_sync)(int)))(int)
{
    return fail_sync > 0 && --fail_sync == 0 ? sync_failed : inner_sync;
}

static struct th_io_call *add(enum th_io_op op, int fd, long rc, int err)
{
    if (trace.n == trace.cap) {
        trace.cap = trace.cap ? 2 * trace.cap : 1024;
        trace.calls = xrealloc(trace.calls, trace.cap * sizeof(*trace.calls));
    }
    struct th_io_call *c = &trace.calls[trace.n++];
    memset(c, 0, sizeof(*c));
    c->op = op;
    c->fd = fd;
    c->rc = (int)rc;
    c->err = rc < 0 ? err : 0;
    return c;
}

/* Runs call_ under the mutex, records it when recording (the statements
 * after it fill in the call c), keeps errno. */
#define RECORD(op_, fd_, call_, ...)                                                               \
    pthread_mutex_lock(&mu);                                                                       \
    long rc_ = (long)(call_);                                                                      \
    int e_ = errno;                                                                                \
    if (recording) {                                                                               \
        struct th_io_call *c = add(op_, fd_, rc_, e_);                                             \
        (void)c;                                                                                   \
        __VA_ARGS__;                                                                               \
    }                                                                                              \
    pthread_mutex_unlock(&mu);                                                                     \
    errno = e_

static void set_name(char *dst, size_t len, const char *src)
{
    snprintf(dst, len, "%s", src);
}

static int r_openat(int dirfd, const char *name, int flags, mode_t mode)
{
    RECORD(TH_IO_OPENAT, dirfd, inner->openat(dirfd, name, flags, mode), c->flags = flags,
           set_name(c->name, sizeof(c->name), name));
    if (rc_ >= 0 && rc_ < (long)(sizeof(dir_fds) / sizeof(dir_fds[0])))
        dir_fds[rc_] = (flags & O_DIRECTORY) != 0;
    return (int)rc_;
}

static int r_mkdir(const char *path, mode_t mode)
{
    RECORD(TH_IO_MKDIR, -1, inner->mkdir(path, mode), set_name(c->name, sizeof(c->name), path));
    return (int)rc_;
}

static ssize_t r_pread(int fd, void *buf, size_t len, off_t off)
{
    RECORD(TH_IO_PREAD, fd, inner->pread(fd, buf, len, off), c->off = (uint64_t)off, c->len = len);
    return rc_;
}

static ssize_t r_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    bool fail = fail_pwrite > 0 && --fail_pwrite == 0 && len > 1;
    size_t n = fail ? len / 2 : len;
    RECORD(TH_IO_PWRITE, fd, inner->pwrite(fd, buf, n, off), c->off = (uint64_t)off,
           c->len = rc_ > 0 ? (uint64_t)rc_ : 0, c->data = xmalloc(c->len ? c->len : 1),
           memcpy(c->data, buf, c->len));
    if (fail && rc_ >= 0) {
        errno = ENOSPC;
        return -1;
    }
    return rc_;
}

static int r_ftruncate(int fd, off_t len)
{
    RECORD(TH_IO_FTRUNCATE, fd, inner->ftruncate(fd, len), c->len = (uint64_t)len);
    return (int)rc_;
}

static bool skipped(int fd, bool data_only)
{
    bool dir = fd >= 0 && fd < (int)(sizeof(dir_fds) / sizeof(dir_fds[0])) && dir_fds[fd];
    if (data_only)
        return skip_ops & TH_IO_SKIP_FDATASYNC;
    return skip_ops & (dir ? TH_IO_SKIP_FSYNC_DIR : TH_IO_SKIP_FSYNC_FILE);
}

static int r_fsync(int fd)
{
    if (skipped(fd, false))
        return 0;
    int (*call)(int) = sync_call(inner->fsync);
    thread_syncs += call != sync_failed;
    RECORD(TH_IO_FSYNC, fd, call(fd));
    return (int)rc_;
}

static int r_fdatasync(int fd)
{
    if (skipped(fd, true))
        return 0;
    int (*call)(int) = sync_call(inner->fdatasync);
    thread_syncs += call != sync_failed;
    RECORD(TH_IO_FDATASYNC, fd, call(fd));
    return (int)rc_;
}

static int r_renameat(int olddirfd, const char *oldname, int newdirfd, const char *newname)
{
    RECORD(TH_IO_RENAMEAT, olddirfd, inner->renameat(olddirfd, oldname, newdirfd, newname),
           set_name(c->name, sizeof(c->name), oldname),
           set_name(c->name2, sizeof(c->name2), newname));
    return (int)rc_;
}

static int r_unlinkat(int dirfd, const char *name, int flags)
{
    RECORD(TH_IO_UNLINKAT, dirfd, inner->unlinkat(dirfd, name, flags),
           set_name(c->name, sizeof(c->name), name));
    return (int)rc_;
}

static int r_flock(int fd, int op)
{
    RECORD(TH_IO_FLOCK, fd, inner->flock(fd, op), c->flags = op);
    return (int)rc_;
}

static int r_close(int fd)
{
    RECORD(TH_IO_CLOSE, fd, inner->close(fd));
    return (int)rc_;
}

const struct m2a_spool_io th_iotrace_io = {
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

static int no_sync(int fd)
{
    (void)fd;
    return 0;
}

/* The system table with the two syncs replaced (m2a_spool_io_system is not
 * a constant expression, so the rest are forwarders). */
static int ns_openat(int dirfd, const char *name, int flags, mode_t mode)
{
    return m2a_spool_io_system.openat(dirfd, name, flags, mode);
}

static int ns_mkdir(const char *path, mode_t mode)
{
    return m2a_spool_io_system.mkdir(path, mode);
}

static ssize_t ns_pread(int fd, void *buf, size_t len, off_t off)
{
    return m2a_spool_io_system.pread(fd, buf, len, off);
}

static ssize_t ns_pwrite(int fd, const void *buf, size_t len, off_t off)
{
    return m2a_spool_io_system.pwrite(fd, buf, len, off);
}

static int ns_ftruncate(int fd, off_t len)
{
    return m2a_spool_io_system.ftruncate(fd, len);
}

static int ns_renameat(int a, const char *b, int c, const char *d)
{
    return m2a_spool_io_system.renameat(a, b, c, d);
}

static int ns_unlinkat(int dirfd, const char *name, int flags)
{
    return m2a_spool_io_system.unlinkat(dirfd, name, flags);
}

static int ns_flock(int fd, int op)
{
    return m2a_spool_io_system.flock(fd, op);
}

static int ns_close(int fd)
{
    return m2a_spool_io_system.close(fd);
}

const struct m2a_spool_io th_io_nosync = {
    .openat = ns_openat,
    .mkdir = ns_mkdir,
    .pread = ns_pread,
    .pwrite = ns_pwrite,
    .ftruncate = ns_ftruncate,
    .fsync = no_sync,
    .fdatasync = no_sync,
    .renameat = ns_renameat,
    .unlinkat = ns_unlinkat,
    .flock = ns_flock,
    .close = ns_close,
};

void th_iotrace_free(struct th_iotrace *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->calls[i].data);
    free(t->calls);
    memset(t, 0, sizeof(*t));
}

void th_iotrace_reset(void)
{
    pthread_mutex_lock(&mu);
    th_iotrace_free(&trace);
    pthread_mutex_unlock(&mu);
}

void th_iotrace_start(const struct m2a_spool_io *io, unsigned skip)
{
    pthread_mutex_lock(&mu);
    th_iotrace_free(&trace);
    inner = io ? io : &m2a_spool_io_system;
    skip_ops = skip;
    recording = true;
    pthread_mutex_unlock(&mu);
}

void th_iotrace_stop(void)
{
    pthread_mutex_lock(&mu);
    recording = false;
    skip_ops = 0;
    inner = &m2a_spool_io_system;
    pthread_mutex_unlock(&mu);
}

const struct th_iotrace *th_iotrace_get(void)
{
    return &trace;
}

void th_iotrace_mark(int kind, uint64_t a, uint64_t b)
{
    pthread_mutex_lock(&mu);
    struct th_io_call *c = add(TH_IO_MARK, -1, 0, 0);
    c->flags = kind;
    c->off = a;
    c->len = b;
    pthread_mutex_unlock(&mu);
}

void th_iotrace_append(const struct th_io_call *src)
{
    pthread_mutex_lock(&mu);
    struct th_io_call *c = add(src->op, src->fd, src->rc, src->err);
    *c = *src;
    c->data = NULL;
    if (src->op == TH_IO_PWRITE) {
        c->data = xmalloc(src->len ? src->len : 1);
        memcpy(c->data, src->data, src->len);
    }
    pthread_mutex_unlock(&mu);
}

uint64_t th_iotrace_thread_syncs(void)
{
    return thread_syncs;
}

void th_iotrace_fail_pwrite(unsigned nth)
{
    fail_pwrite = nth;
}

void th_iotrace_fail_sync(unsigned nth)
{
    fail_sync = nth;
}

/* --- save and load: a header, then each call and its data --- */

#define TRACE_MAGIC 0x314f4954u /* "TIO1" */

int th_iotrace_save(const struct th_iotrace *t, const char *path)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "iotrace: cannot write %s: %s\n", path, strerror(errno));
        return -1;
    }
    uint32_t magic = TRACE_MAGIC;
    uint64_t n = t->n;
    bool ok = fwrite(&magic, sizeof(magic), 1, f) == 1 && fwrite(&n, sizeof(n), 1, f) == 1;
    for (size_t i = 0; ok && i < t->n; i++) {
        struct th_io_call c = t->calls[i];
        c.data = NULL;
        ok = fwrite(&c, sizeof(c), 1, f) == 1;
        if (ok && t->calls[i].op == TH_IO_PWRITE && c.len > 0)
            ok = fwrite(t->calls[i].data, c.len, 1, f) == 1;
    }
    if (fclose(f) != 0 || !ok) {
        fprintf(stderr, "iotrace: cannot write %s\n", path);
        return -1;
    }
    return 0;
}

int th_iotrace_load(struct th_iotrace *t, const char *path)
{
    memset(t, 0, sizeof(*t));
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "iotrace: cannot read %s: %s\n", path, strerror(errno));
        return -1;
    }
    uint32_t magic = 0;
    uint64_t n = 0;
    bool ok = fread(&magic, sizeof(magic), 1, f) == 1 && magic == TRACE_MAGIC &&
              fread(&n, sizeof(n), 1, f) == 1 && n < (1u << 30);
    if (ok) {
        t->calls = xcalloc(n ? n : 1, sizeof(*t->calls));
        t->cap = n;
    }
    for (uint64_t i = 0; ok && i < n; i++) {
        struct th_io_call *c = &t->calls[i];
        ok = fread(c, sizeof(*c), 1, f) == 1 && c->len < (1u << 30);
        c->data = NULL;
        t->n = i + 1;
        if (ok && c->op == TH_IO_PWRITE) {
            c->data = xmalloc(c->len ? c->len : 1);
            ok = c->len == 0 || fread(c->data, c->len, 1, f) == 1;
        }
    }
    fclose(f);
    if (!ok) {
        fprintf(stderr, "iotrace: %s is not a whole trace\n", path);
        th_iotrace_free(t);
        return -1;
    }
    return 0;
}

/* The name the most recent open before call i gave fd, or "?". */
static const char *fd_name(const struct th_iotrace *t, size_t i, int fd)
{
    while (i-- > 0)
        if (t->calls[i].op == TH_IO_OPENAT && t->calls[i].rc == fd)
            return t->calls[i].name;
    return "?";
}

void th_iotrace_describe(const struct th_iotrace *t, size_t i, char *buf, size_t len)
{
    static const char *const names[] = {"openat",    "mkdir", "pread",     "pwrite",
                                        "ftruncate", "fsync", "fdatasync", "renameat",
                                        "unlinkat",  "flock", "close",     "mark"};
    if (i >= t->n) {
        snprintf(buf, len, "(end of trace)");
        return;
    }
    const struct th_io_call *c = &t->calls[i];
    const char *op = names[c->op];
    switch (c->op) {
    case TH_IO_OPENAT:
        snprintf(buf, len, "openat(%s, flags 0%o) = %d", c->name, (unsigned)c->flags, c->rc);
        break;
    case TH_IO_MKDIR:
        snprintf(buf, len, "mkdir(%s) = %d", c->name, c->rc);
        break;
    case TH_IO_PREAD:
    case TH_IO_PWRITE:
        snprintf(buf, len, "%s(fd %d = %s, off %llu, %llu bytes) = %d", op, c->fd,
                 fd_name(t, i, c->fd), (unsigned long long)c->off, (unsigned long long)c->len,
                 c->rc);
        break;
    case TH_IO_FTRUNCATE:
        snprintf(buf, len, "ftruncate(fd %d = %s, %llu) = %d", c->fd, fd_name(t, i, c->fd),
                 (unsigned long long)c->len, c->rc);
        break;
    case TH_IO_RENAMEAT:
        snprintf(buf, len, "renameat(%s, %s) = %d", c->name, c->name2, c->rc);
        break;
    case TH_IO_UNLINKAT:
        snprintf(buf, len, "unlinkat(%s) = %d", c->name, c->rc);
        break;
    case TH_IO_MARK:
        snprintf(buf, len, "mark %d (%llu, %llu)", c->flags, (unsigned long long)c->off,
                 (unsigned long long)c->len);
        break;
    default:
        snprintf(buf, len, "%s(fd %d = %s) = %d", op, c->fd, fd_name(t, i, c->fd), c->rc);
        break;
    }
}
