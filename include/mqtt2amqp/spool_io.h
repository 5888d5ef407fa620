/* spool_io.h - the seam through which the spool makes its file-system
 * calls, so that a test can record them and rebuild the file states a
 * power loss could leave (issue 13). The spool's only cost is one indirect
 * call per system call.
 *
 * Every call that creates, changes, syncs, renames, removes, locks or
 * closes a file or directory of the spool goes through the table, and every
 * read of a file's contents too: openat (the directory itself with AT_FDCWD
 * and its path, everything else relative to the directory's fd with a
 * plain file name), mkdir, pread,
 * pwrite (always with an explicit offset; the spool never uses write(2) or
 * O_APPEND on its files), ftruncate, fsync (files and the directory),
 * fdatasync, renameat, unlinkat, flock and close. So a recorder sees the
 * name behind every fd it saw opened, every byte written at its offset, and
 * every sync barrier. Outside the table, read-only: the directory listing
 * at open (its own descriptor, fdopendir/readdir/closedir) and fstat + mmap
 * of each segment while recovery verifies it; and the eventfds that wake
 * the threads, which are not files.
 *
 * Each function has the system call's signature and its contract: the
 * return value and errno are what the spool acts on, so a recorder must
 * forward to m2a_spool_io_system (or fail on purpose) and keep errno. The
 * spool calls them from the thread that owns the file (spool.h), so a
 * recorder shared by both threads must lock. */
#ifndef MQTT2AMQP_SPOOL_IO_H
#define MQTT2AMQP_SPOOL_IO_H

#include <sys/types.h>

struct m2a_spool_io {
    int (*openat)(int dirfd, const char *name, int flags, mode_t mode);
    int (*mkdir)(const char *path, mode_t mode);
    ssize_t (*pread)(int fd, void *buf, size_t len, off_t off);
    ssize_t (*pwrite)(int fd, const void *buf, size_t len, off_t off);
    int (*ftruncate)(int fd, off_t len);
    int (*fsync)(int fd);
    int (*fdatasync)(int fd);
    int (*renameat)(int olddirfd, const char *oldname, int newdirfd, const char *newname);
    int (*unlinkat)(int dirfd, const char *name, int flags);
    int (*flock)(int fd, int op);
    int (*close)(int fd);
};

/* The system calls themselves: what a NULL m2a_spool_opts.io means. */
extern const struct m2a_spool_io m2a_spool_io_system;

#endif
