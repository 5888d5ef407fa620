/* files.h - files and temp dirs for every kind of test: unit, integration,
 * fault and fuzz (so no check, no brokers, no processes here: a fuzz target
 * links it without libcheck's runner and a unit test without the harness).
 *
 * Temp dirs live under $M2A_TEST_TMPDIR when set (scripts/fuzz.sh points it
 * at a work dir on /dev/shm), else under M2A_TEST_STATE/tmp of the build
 * dir, so nothing a test leaves behind lands in /tmp. Functions that fail
 * print why to stderr. Not thread-safe where they say "static". */
#ifndef M2A_TEST_FILES_H
#define M2A_TEST_FILES_H

#include <stdbool.h>
#include <stddef.h>

/* Creates a fresh directory <base>/<tag>-XXXXXX (base as above, created if
 * missing); the caller frees the string and removes the tree with
 * th_rmtree or th_tmpdir_remove. Aborts the process (a failed test) if it
 * cannot. */
char *th_tmpdir_new(const char *tag);
/* rm -rf path (does not follow symlinks). 0, or M2A_ERR_IO if something
 * remains. A missing path or NULL is 0. */
int th_rmtree(const char *path);
/* True if M2A_TEST_KEEP=1: the _free functions keep their dirs and say where. */
bool th_keep_dirs(void);
/* th_rmtree(dir) unless th_keep_dirs(), in which case it prints
 * "kept <what> dir <dir>". NULL is a no-op. */
void th_tmpdir_remove(const char *what, const char *dir);

/* Writes text to path (truncating). 0 or M2A_ERR_IO. */
int th_write_file(const char *path, const char *text);
/* Writes n bytes to path (created 0600 or truncated). 0 or M2A_ERR_IO. */
int th_write_bytes(const char *path, const void *data, size_t n);
/* Reads a whole file into a NUL-terminated string (len may be NULL);
 * NULL if it cannot be read. Caller frees. */
char *th_read_file(const char *path, size_t *len);
/* The same from byte offset `from` on (e.g. a log since a restart). */
char *th_read_file_from(const char *path, long from, size_t *len);
/* Prints the last `lines` lines of path to stderr, prefixed with label. */
void th_dump_tail(const char *label, const char *path, int lines);

#endif
