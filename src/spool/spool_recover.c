/* spool_recover.c - what runs when the spool opens: the spool id, the
 * checkpoint, and the scan that verifies every record of every segment,
 * cuts off a torn tail, keeps a copy of damaged bytes (quarantine), notes
 * the sequence numbers that have no record (gaps), deletes the segments the
 * checkpoint covers, and sets the positions the writer and reader start
 * from.
 *
 * Threads: runs once, inside m2a_spool_open, on the opening thread, after
 * the directory is locked and before the writer and reader threads exist;
 * so it touches the shared state without the mutex. Every file-system call
 * goes through s->io (spool_io.h), except the read-only listing of the
 * directory and the fstat + mmap of the segment being verified. Damage never
 * makes recovery fail: only an I/O error does. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/spool_format.h"
#include "spool_internal.h"

/* Verified pages are handed back to the kernel in steps of this size. */
#define SCAN_RELEASE_BYTES (4u * 1024u * 1024u)
/* A checkpoint beyond this and every record on disk is not one the spool
 * wrote: 2^62 sequence numbers take 146,000 years at a million a second. */
#define CKPT_SEQ_MAX (UINT64_C(1) << 62)

static uint64_t max64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

static int spool_id_init(struct m2a_spool *s, char *err, size_t errlen)
{
    char b[M2A_SPOOL_ID_LEN + 16];
    int fd = s->io->openat(s->dirfd, M2A_SPOOL_ID_FILE, O_RDONLY | O_CLOEXEC, 0);
    if (fd >= 0) {
        ssize_t n = s->io->pread(fd, b, sizeof(b), 0);
        s->io->close(fd);
        if (n > 0 && m2a_spool_format_id_decode(b, (size_t)n, s->id))
            return 0;
        /* Damaged: a new id only weakens deduplication of replayed messages. */
    }
    unsigned char r[M2A_SPOOL_ID_LEN / 2];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
        snprintf(err, errlen, "cannot get random bytes for the spool id: %s", strerror(errno));
        return M2A_ERR_IO;
    }
    for (size_t i = 0; i < sizeof(r); i++)
        snprintf(s->id + 2 * i, 3, "%02x", r[i]);
    m2a_spool_format_id_encode(b, s->id);
    int rc = m2a_spool_write_atomic(s, M2A_SPOOL_ID_FILE, b, M2A_SPOOL_ID_LEN + 1);
    if (rc != 0)
        snprintf(err, errlen, "cannot write %s/%s: %s", s->dir, M2A_SPOOL_ID_FILE, strerror(errno));
    return rc;
}

/* Reads the committed seq; 0 when missing. *invalid when present but damaged. */
static void checkpoint_read(struct m2a_spool *s, uint64_t *seq, bool *invalid)
{
    *seq = 0;
    *invalid = false;
    int fd = s->io->openat(s->dirfd, M2A_SPOOL_CHECKPOINT_FILE, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0) {
        *invalid = errno != ENOENT;
        return;
    }
    unsigned char b[M2A_SPOOL_CHECKPOINT_SIZE + 1];
    ssize_t n;
    do
        n = s->io->pread(fd, b, sizeof(b), 0);
    while (n < 0 && errno == EINTR);
    s->io->close(fd);
    *invalid = n < 0 || !m2a_spool_format_checkpoint_decode(b, (size_t)n, seq);
    if (*invalid)
        *seq = 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The first sequence numbers of the segment files, ascending. A read-only
 * listing: its descriptor is not one of s->io's. */
static int list_segments(struct m2a_spool *s, uint64_t **out, size_t *nout, char *err,
                         size_t errlen)
{
    int fd = openat(s->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        snprintf(err, errlen, "cannot list spool directory %s: %s", s->dir, strerror(errno));
        if (fd >= 0)
            close(fd);
        return M2A_ERR_IO;
    }
    uint64_t *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        uint64_t first;
        if (!m2a_spool_format_segment_parse(e->d_name, &first))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            v = xrealloc(v, cap * sizeof(*v));
        }
        v[n++] = first;
    }
    closedir(d);
    if (n)
        qsort(v, n, sizeof(*v), cmp_u64);
    *out = v;
    *nout = n;
    return 0;
}

struct scan {
    uint64_t committed;
    uint64_t prev;            /* highest valid seq so far */
    uint64_t last_quarantine; /* seq of the quarantine file written last */
    uint64_t quarantine_end;  /* its size */
    struct m2a_spool_recovery rec;
};

/* Sequence numbers with no record (damage), noted above the checkpoint. */
static void scan_gap(struct m2a_spool *s, struct scan *st, uint64_t lo, uint64_t hi)
{
    m2a_spool_gap_push(s, max64(lo, st->committed + 1), hi);
}

static void scan_record(struct m2a_spool *s, struct scan *st, uint64_t seq)
{
    if (seq > st->prev + 1)
        scan_gap(s, st, st->prev + 1, seq - 1);
    st->prev = seq;
    st->rec.records++;
    if (seq > st->committed)
        st->rec.unconfirmed++;
}

/* Keeps a copy of damaged bytes for a human, named after the first sequence
 * number they should have held. Best effort: damage never stops the spool. */
static void quarantine(struct m2a_spool *s, struct scan *st, const void *p, size_t n)
{
    char name[M2A_SPOOL_NAME_MAX];
    uint64_t seq = st->prev + 1;
    m2a_spool_format_quarantine_name(name, sizeof(name), seq);
    /* Two damaged ranges around the same seq (a segment's tail and the next
     * one's head) go into one file; a later open rewrites it identically. */
    bool more = seq == st->last_quarantine;
    int fd =
        s->io->openat(s->dirfd, name, O_WRONLY | O_CREAT | O_CLOEXEC | (more ? 0 : O_TRUNC), 0640);
    if (fd < 0)
        return;
    uint64_t off = more ? st->quarantine_end : 0;
    (void)m2a_spool_pwrite_all(s, fd, p, n, off);
    s->io->close(fd);
    st->last_quarantine = seq;
    st->quarantine_end = off + n;
}

/* Verifies every record of one segment; cuts off a damaged tail. */
static int scan_segment(struct m2a_spool *s, struct scan *st, uint64_t first, uint64_t next_first,
                        bool is_last, struct m2a_spool_seg *out, char *err, size_t errlen)
{
    char name[M2A_SPOOL_NAME_MAX];
    m2a_spool_format_segment_name(name, sizeof(name), first);
    *out = (struct m2a_spool_seg){first, first - 1, 0};
    int fd = s->io->openat(s->dirfd, name, O_RDWR | O_CLOEXEC, 0);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        snprintf(err, errlen, "cannot open spool segment %s/%s: %s", s->dir, name, strerror(errno));
        if (fd >= 0)
            s->io->close(fd);
        return M2A_ERR_IO;
    }
    size_t size = (size_t)sb.st_size;
    if (size == 0) {
        s->io->close(fd);
        return 0;
    }
    const unsigned char *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "cannot map spool segment %s/%s: %s", s->dir, name, strerror(errno));
        s->io->close(fd);
        return M2A_ERR_IO;
    }
    /* Pages already verified are handed back as the scan goes (they stay in
     * the page cache), so recovering a spool of many full segments keeps the
     * bridge's RSS at a few MiB instead of one whole mapped segment. */
    size_t pos = 0, released = 0;
    while (pos < size) {
        if (pos - released >= SCAN_RELEASE_BYTES) {
            size_t upto = pos & ~(size_t)(SCAN_RELEASE_BYTES - 1);
            madvise((void *)(map + released), upto - released, MADV_DONTNEED);
            released = upto;
        }
        uint64_t lo = max64(st->prev, first - 1), seq;
        size_t rl;
        if (m2a_spool_format_record_parse(map + pos, size - pos, lo, next_first, &seq, &rl) ==
            M2A_SPOOL_RECORD_OK) {
            scan_record(s, st, seq);
            out->last = seq;
            pos += rl;
            continue;
        }
        size_t next = m2a_spool_format_record_find(map, size, pos + 1, lo, next_first);
        if (next < size || !is_last) {
            st->rec.corrupt_records++;
            quarantine(s, st, map + pos, next - pos);
        } else {
            st->rec.truncated_bytes += size - pos;
        }
        if (next == size)
            break;
        pos = next;
    }
    munmap((void *)map, size);
    int rc = 0;
    if (pos < size) {
        /* Nothing valid follows: cut it off so appends and reads start clean. */
        if (s->io->ftruncate(fd, (off_t)pos) != 0 || s->io->fsync(fd) != 0) {
            snprintf(err, errlen, "cannot truncate spool segment %s/%s: %s", s->dir, name,
                     strerror(errno));
            rc = M2A_ERR_IO;
        }
    }
    out->size = pos;
    s->io->close(fd);
    return rc;
}

/* Scans the segments firsts[0..n) in order into s->segs and st. */
static int scan_segments(struct m2a_spool *s, struct scan *st, const uint64_t *firsts, size_t n,
                         char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        struct m2a_spool_seg g;
        uint64_t next_first = i + 1 < n ? firsts[i + 1] : UINT64_MAX;
        int rc = scan_segment(s, st, firsts[i], next_first, i + 1 == n, &g, err, errlen);
        if (rc != 0)
            return rc;
        m2a_spool_seg_push(s, g);
    }
    return 0;
}

/* Fully confirmed segments go now; the last one stays: it is appended to
 * and it keeps the highest seq on disk. */
static void delete_confirmed(struct m2a_spool *s, uint64_t committed)
{
    size_t del = 0;
    while (del + 1 < s->nsegs && s->segs[del].last <= committed) {
        char name[M2A_SPOOL_NAME_MAX];
        m2a_spool_format_segment_name(name, sizeof(name), s->segs[del].first);
        s->io->unlinkat(s->dirfd, name, 0);
        del++;
    }
    if (del > 0)
        memmove(s->segs, s->segs + del, (s->nsegs - del) * sizeof(*s->segs));
    s->nsegs -= del;
}

static int recover_segments(struct m2a_spool *s, struct m2a_spool_recovery *rec, char *err,
                            size_t errlen)
{
    struct scan st = {0};
    bool ckpt_invalid;
    checkpoint_read(s, &st.committed, &ckpt_invalid);
    uint64_t *firsts = NULL;
    size_t n = 0;
    int rc = list_segments(s, &firsts, &n, err, errlen);
    if (rc != 0)
        goto out;
    rc = scan_segments(s, &st, firsts, n, err, errlen);
    if (rc == 0 && st.committed > CKPT_SEQ_MAX && st.committed > st.prev) {
        /* Not a checkpoint the spool wrote: taking it would count every
         * record confirmed and make the numbering wrap and reuse message
         * ids. Scan again without it: everything is replayed (at least
         * once). The first scan cut the torn tails off (counted here);
         * damaged records are found and counted again. */
        uint64_t truncated = st.rec.truncated_bytes;
        memset(&st, 0, sizeof(st));
        s->nsegs = s->ngaps = 0;
        ckpt_invalid = true;
        rc = scan_segments(s, &st, firsts, n, err, errlen);
        st.rec.truncated_bytes += truncated;
    }
    if (rc != 0)
        goto out;
    uint64_t next = max64(max64(st.prev, st.committed) + 1, n ? firsts[n - 1] : 1);
    if (next - 1 > st.prev)
        scan_gap(s, &st, st.prev + 1, next - 1);
    delete_confirmed(s, st.committed);
    for (size_t i = 0; i < s->nsegs; i++)
        s->bytes += s->segs[i].size;

    s->committed = s->ckpt_durable = s->r_floor = s->r_taken = st.committed;
    s->pub_seq = next - 1;
    s->w_next = s->w_batch_first = next;
    atomic_store(&s->w_seq, next);
    st.rec.segments = n;
    st.rec.checkpoint_invalid = ckpt_invalid;
    if (rec)
        *rec = st.rec;
out:
    free(firsts);
    return rc;
}

int m2a_spool_recover(struct m2a_spool *s, struct m2a_spool_recovery *rec, char *err, size_t errlen)
{
    int rc = spool_id_init(s, err, errlen);
    if (rc != 0)
        return rc;
    /* Leftovers of a crash in the middle of an atomic rewrite. */
    s->io->unlinkat(s->dirfd, M2A_SPOOL_CHECKPOINT_FILE ".tmp", 0);
    s->io->unlinkat(s->dirfd, M2A_SPOOL_ID_FILE ".tmp", 0);
    return recover_segments(s, rec, err, errlen);
}
