/* spool_io.c - the default table of the spool's file-system seam
 * (spool_io.h): the system calls. Immutable, shared by every thread. */
#include "mqtt2amqp/spool_io.h"

#include <fcntl.h>
#include <stdio.h> /* renameat */
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/* openat is variadic in libc: wrapped with a fixed mode. */
static int sys_openat(int dirfd, const char *name, int flags, mode_t mode)
{
    return openat(dirfd, name, flags, mode);
}

const struct m2a_spool_io m2a_spool_io_system = {
    .openat = sys_openat,
    .mkdir = mkdir,
    .pread = pread,
    .pwrite = pwrite,
    .ftruncate = ftruncate,
    .fsync = fsync,
    .fdatasync = fdatasync,
    .renameat = renameat,
    .unlinkat = unlinkat,
    .flock = flock,
    .close = close,
};
