/* iotrace.h - a recorder for the spool's file-system seam (spool_io.h).
 * Every call the spool makes through th_iotrace_io is forwarded to an inner
 * table and appended to one trace, with the name behind each open and the
 * bytes of every write; the test adds its own markers (a batch flushed, its
 * PUBACKs gone, a commit begun) to the same sequence. test_spool_io replays
 * a trace to prove the seam whole; the power-loss checker (crashfs.h,
 * crash_check.h) rebuilds from it the file states a crash could leave.
 *
 * One recording per process at a time (the seam's functions carry no
 * context): th_iotrace_start ... th_iotrace_stop, then th_iotrace_get.
 * Thread-safe: the spool's two threads and the test's markers are
 * serialised by one mutex held across each forwarded call, so the trace's
 * order is the order in which the calls took effect. */
#ifndef M2A_TEST_IOTRACE_H
#define M2A_TEST_IOTRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/spool_io.h"

enum th_io_op {
    TH_IO_OPENAT,
    TH_IO_MKDIR,
    TH_IO_PREAD,
    TH_IO_PWRITE,
    TH_IO_FTRUNCATE,
    TH_IO_FSYNC,
    TH_IO_FDATASYNC,
    TH_IO_RENAMEAT,
    TH_IO_UNLINKAT,
    TH_IO_FLOCK,
    TH_IO_CLOSE,
    TH_IO_MARK, /* added by the test, not a call */
};

#define TH_IO_NAME_MAX 256

struct th_io_call {
    enum th_io_op op;
    int fd;    /* OPENAT, RENAMEAT, UNLINKAT: the directory's fd (or AT_FDCWD); else the file's */
    int flags; /* OPENAT flags, FLOCK operation; MARK: its kind (the test's) */
    int rc;    /* the system call's result: an fd for OPENAT, bytes for PREAD and PWRITE */
    int err;   /* errno when rc < 0 */
    char name[TH_IO_NAME_MAX]; /* MKDIR path; OPENAT name (a path with AT_FDCWD);
                                  UNLINKAT name; RENAMEAT old name */
    char name2[64];            /* RENAMEAT new name */
    uint64_t off, len;         /* PREAD, PWRITE offset and length (PWRITE: the bytes that
                                  reached the file); FTRUNCATE length; MARK: two values */
    unsigned char *data;       /* PWRITE: a copy of the len bytes; owned by the trace */
};

struct th_iotrace {
    struct th_io_call *calls;
    size_t n, cap;
};

/* The recording table. Outside a recording it forwards without recording. */
extern const struct m2a_spool_io th_iotrace_io;

/* The system calls with fsync and fdatasync answered at once (0): for runs
 * whose durability the model decides, not the disk. */
extern const struct m2a_spool_io th_io_nosync;

/* Calls the recorder swallows (answers 0, neither forwards nor records): a
 * spool that forgot a barrier, for the checker's own tests. */
enum {
    TH_IO_SKIP_FDATASYNC = 1 << 0,
    TH_IO_SKIP_FSYNC_FILE = 1 << 1,
    TH_IO_SKIP_FSYNC_DIR = 1 << 2, /* an fsync of an fd opened with O_DIRECTORY */
};

/* Clears the trace and starts recording, forwarding to inner (NULL: the
 * system calls), swallowing the calls in skip (TH_IO_SKIP_*). */
void th_iotrace_start(const struct m2a_spool_io *inner, unsigned skip);
/* Stops recording; the trace stays until the next start or th_iotrace_reset. */
void th_iotrace_stop(void);
/* The trace so far (not a copy: read it while nothing records). */
const struct th_iotrace *th_iotrace_get(void);
/* Frees the trace's calls. */
void th_iotrace_reset(void);

/* Appends a marker of the test's kind with two values. */
void th_iotrace_mark(int kind, uint64_t a, uint64_t b);
/* Appends a call the spool did not make (a change behind its back), with a
 * copy of c->data (c->len bytes) when c->op is TH_IO_PWRITE. */
void th_iotrace_append(const struct th_io_call *c);
/* fsync and fdatasync calls this thread made through the table since its
 * start (swallowed ones excluded). */
uint64_t th_iotrace_thread_syncs(void);
/* The nth pwrite from now of the calling thread (1: the next; 0: none)
 * writes half its bytes, is recorded with what reached the file, then fails
 * with ENOSPC (as a full disk may). */
void th_iotrace_fail_pwrite(unsigned nth);
/* The nth fsync or fdatasync from now of the calling thread (0: none)
 * fails with EIO without reaching the file system; it is recorded with
 * rc -1 (a barrier that did not happen). */
void th_iotrace_fail_sync(unsigned nth);

/* Saves a trace to path / loads one (the checker re-runs a saved failure).
 * 0 or -1 with a message on stderr. th_iotrace_load fills *t (free it with
 * th_iotrace_free). */
int th_iotrace_save(const struct th_iotrace *t, const char *path);
int th_iotrace_load(struct th_iotrace *t, const char *path);
void th_iotrace_free(struct th_iotrace *t);

/* A readable line for call i: "pwrite(fd 7 = 00..21.seg, off 0, 512)". */
void th_iotrace_describe(const struct th_iotrace *t, size_t i, char *buf, size_t len);

#endif
