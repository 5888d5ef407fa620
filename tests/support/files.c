/* files.c - temp dirs and whole-file reads and writes for every kind of
 * test; see files.h. Stateless, so safe from any thread (the temp dir base
 * is read from the environment on each call). */
#include "files.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

static void mkdir_p(const char *path)
{
    char *p = xstrdup(path);
    for (char *s = p + 1; *s; s++) {
        if (*s == '/') {
            *s = 0;
            mkdir(p, 0755);
            *s = '/';
        }
    }
    mkdir(p, 0755);
    free(p);
}

char *th_tmpdir_new(const char *tag)
{
    const char *env = getenv("M2A_TEST_TMPDIR");
    char *base = env && *env ? xstrdup(env) : xstrdup(M2A_TEST_STATE "/tmp");
    mkdir_p(base);
    char *t = xasprintf("%s/%s-XXXXXX", base, tag ? tag : "t");
    free(base);
    if (!mkdtemp(t)) {
        fprintf(stderr, "files: mkdtemp %s: %s\n", t, strerror(errno));
        abort();
    }
    return t;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    if (remove(path) != 0 && errno != ENOENT)
        fprintf(stderr, "files: remove %s: %s\n", path, strerror(errno));
    return 0;
}

int th_rmtree(const char *path)
{
    struct stat st;
    if (!path || lstat(path, &st) != 0)
        return 0;
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return lstat(path, &st) == 0 ? M2A_ERR_IO : 0;
}

bool th_keep_dirs(void)
{
    const char *k = getenv("M2A_TEST_KEEP");
    return k && strcmp(k, "0") != 0 && *k;
}

void th_tmpdir_remove(const char *what, const char *dir)
{
    if (!dir)
        return;
    if (th_keep_dirs())
        fprintf(stderr, "files: kept %s dir %s\n", what, dir);
    else
        th_rmtree(dir);
}

int th_write_bytes(const char *path, const void *data, size_t n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        fprintf(stderr, "files: open %s: %s\n", path, strerror(errno));
        return M2A_ERR_IO;
    }
    const char *p = data;
    int rc = 0;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "files: write %s: %s\n", path, strerror(errno));
            rc = M2A_ERR_IO;
            break;
        }
        p += w;
        n -= (size_t)w;
    }
    if (close(fd) != 0)
        rc = M2A_ERR_IO;
    return rc;
}

int th_write_file(const char *path, const char *text)
{
    return th_write_bytes(path, text, strlen(text));
}

char *th_read_file_from(const char *path, long from, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct m2a_buf b = {0};
    char chunk[65536];
    size_t n;
    if (from > 0 && fseek(f, from, SEEK_SET) != 0) {
        fclose(f);
        return NULL;
    }
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        m2a_buf_append(&b, chunk, n);
    fclose(f);
    m2a_buf_cstr(&b);
    if (len)
        *len = b.len;
    return (char *)b.data;
}

char *th_read_file(const char *path, size_t *len)
{
    return th_read_file_from(path, 0, len);
}

void th_dump_tail(const char *label, const char *path, int lines)
{
    size_t len = 0;
    char *s = path ? th_read_file(path, &len) : NULL;
    if (!s) {
        fprintf(stderr, "---- %s: (no log %s)\n", label, path ? path : "");
        return;
    }
    size_t i = len;
    int seen = 0;
    while (i > 0) {
        if (s[i - 1] == '\n' && i != len && ++seen >= lines)
            break;
        i--;
    }
    fprintf(stderr, "---- %s: last lines of %s\n%s%s---- end of %s\n", label, path, s + i,
            (len && s[len - 1] != '\n') ? "\n" : "", label);
    free(s);
}
