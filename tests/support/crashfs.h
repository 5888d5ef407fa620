/* crashfs.h - the file states a power loss could leave in the spool's
 * directory, rebuilt from a trace of the spool's file-system calls
 * (iotrace.h). The model replays the trace call by call; at any point it
 * knows, for each file, what is durable (everything up to its last
 * completed sync) and what is pending, cut into units that may each have
 * reached the disk or not; th_crashfs_build makes the state in which a
 * chosen set of units did. The method of ALICE and CrashMonkey.
 *
 * What Linux guarantees, and what we assume instead. ext4 (data=ordered,
 * the default) journals metadata in one ordered stream: an fsync of any
 * file commits every earlier create, rename and unlink of the whole file
 * system, a rename is atomic, and appended data reaches the disk before the
 * size that exposes it (no garbage after a crash, at worst zeros with
 * delayed allocation). XFS and btrfs are ordered in similar ways. None of
 * that is promised by POSIX or by fsync(2), which says only that fsync
 * flushes the file's data and metadata and "does not necessarily ensure
 * that the entry in the directory containing the file has also reached
 * disk"; for that the directory must be fsynced. The model takes the weaker
 * reading, so a spool that passes it passes on any of them:
 *  - a file's data and size are durable up to its last completed fsync or
 *    fdatasync (the two are the same here: fdatasync also flushes the size
 *    a read needs); nothing else makes them durable;
 *  - each later write may reach the disk whole, not at all, or in part, in
 *    units of one 512-byte sector (a device writes a sector or not; the
 *    page cache writes back 4 KiB pages, whose sectors are units too), in
 *    any order and any combination across writes and files: a later write
 *    may persist while an earlier one did not. A truncation is one unit. A
 *    dropped write past the end of the file may still have extended it:
 *    the new bytes then read as zeros or as junk (fill);
 *  - a directory's entries (creates, renames, unlinks, mkdir in the parent)
 *    are durable up to its last completed fsync; each later change may or
 *    may not have reached the disk, in any combination, a rename being one
 *    atomic unit. An fsync of a file says nothing of its name.
 * Calls that failed (rc < 0) changed nothing. */
#ifndef M2A_TEST_CRASHFS_H
#define M2A_TEST_CRASHFS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "iotrace.h"

#define TH_CRASHFS_SECTOR 512u
#define TH_CRASHFS_PAGE   4096u

struct th_crashfs;

enum th_crashfs_unit_kind {
    TH_CRASHFS_DATA,  /* the part of one write that falls in one sector */
    TH_CRASHFS_TRUNC, /* a truncation (ftruncate, or O_TRUNC at open) */
    TH_CRASHFS_DIROP, /* a create, rename or unlink in a directory */
};

struct th_crashfs_unit {
    enum th_crashfs_unit_kind kind;
    size_t call;       /* index in the trace of the call it comes from */
    int node;          /* the file (DATA, TRUNC) or the directory (DIROP) */
    uint64_t off, len; /* DATA: the bytes in the file; TRUNC: len, the new length;
                          DIROP: off, its index among the directory's changes */
};

/* What a dropped write past the end of the file leaves. */
enum th_crashfs_fill {
    TH_CRASHFS_ABSENT, /* nothing: the size did not grow */
    TH_CRASHFS_ZEROS,  /* the size grew, the data did not come: zeros */
    TH_CRASHFS_JUNK,   /* the size grew over stale blocks: arbitrary bytes */
};

struct th_crashfs_entry {
    char name[TH_IO_NAME_MAX];
    unsigned char *data;
    size_t len;
};

/* One state of the spool's directory. */
struct th_crashfs_state {
    bool dir_exists;
    struct th_crashfs_entry *e; /* sorted by name */
    size_t n, cap;
    uint64_t hash[2]; /* of dir_exists, the names and the contents */
};

/* A model of the trace t (not copied: it must outlive the model), before
 * its first call. The spool's directory is the first one the trace opens
 * a file in (before that, a state has no directory). */
struct th_crashfs *th_crashfs_new(const struct th_iotrace *t);
void th_crashfs_free(struct th_crashfs *fs);

/* Applies the next call. 1: the states a crash could leave changed; 0: they
 * did not (a read, a marker, a failed call ...); -1: the end of the trace,
 * or a call the model cannot explain (th_crashfs_error says which). */
int th_crashfs_step(struct th_crashfs *fs);
/* Calls applied so far: a crash now comes before call th_crashfs_point. */
size_t th_crashfs_point(const struct th_crashfs *fs);
const char *th_crashfs_error(const struct th_crashfs *fs);

/* The pending units at this point, in trace order (then by offset); valid
 * until the next step. */
const struct th_crashfs_unit *th_crashfs_units(struct th_crashfs *fs, size_t *n);

/* The state in which exactly the units with keep[i] reached the disk
 * (keep NULL: all of them, the state before any crash: what is on disk
 * while the spool runs); fill says what dropped writes past the end left,
 * junk_seed which junk. out is reset and filled. */
void th_crashfs_build(struct th_crashfs *fs, const bool *keep, enum th_crashfs_fill fill,
                      uint64_t junk_seed, struct th_crashfs_state *out);
void th_crashfs_state_free(struct th_crashfs_state *s);

/* Compares the state with what is in dir now: 0 if the same files with the
 * same bytes (and no other file), else -1 with the first difference in why. */
int th_crashfs_state_compare(const struct th_crashfs_state *s, const char *dir, char *why,
                             size_t len);

/* Writes the state into dir (created if the state has the directory; its
 * parent must exist). 0 or -1 with a message on stderr. */
int th_crashfs_state_write(const struct th_crashfs_state *s, const char *dir);

#endif
