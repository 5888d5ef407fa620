/* spool.c - the persistent retry queue: segment files of CRC-protected
 * records, the checkpoint of the confirmed position, and recovery at open.
 *
 * Threads. The writer half (append, flush, tick; the current segment's fd,
 * the batch buffer) belongs to the MQTT thread. The reader half (read,
 * rewind, commit; the read fd and read buffer) belongs to the AMQP thread.
 * They share only the segment index, the published end, the committed
 * position and the byte count, under s->mu. Nobody holds s->mu across
 * write(), fsync() or a checkpoint write. The checkpoint file is written by
 * whichever thread finds it due (commit, tick, or a writer reclaiming space
 * when the spool is full while the AMQP side idles); s->ckpt_mu serialises
 * those writes and is always taken before s->mu, never while holding it.
 *
 * On disk (all integers little-endian):
 *   record     = magic u32 | len u32 | crc u32 | seq u64 | payload[len]
 *                crc = CRC32C over len, seq and payload, so a damaged length
 *                cannot pass for a record; len <= M2A_SPOOL_MAX_PAYLOAD, so a
 *                damaged length never makes us allocate gigabytes.
 *   NNNN.seg   = records, named %020llu by the first sequence number the
 *                segment may hold: every record in it has seq >= its name
 *                and < the next segment's name.
 *   checkpoint = magic u32 | version u32 | committed seq u64 | crc u32
 *                (written to a temp file, fsynced, renamed, directory fsynced).
 *   spool.id   = 16 hex digits from getrandom(), created the same way.
 *   lock       = flock()ed for as long as the spool is open.
 *
 * Segments are deleted only once the checkpoint on disk covers them, so the
 * highest sequence number ever handed out survives on disk (in a segment or
 * in the checkpoint) and is never reused for a different message after a
 * restart: message ids "<spool id>-<seq>" stay unique. */
#include "mqtt2amqp/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mqtt2amqp/bytes.h"
#include "mqtt2amqp/crc32c.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

/* Recovery returns verified pages to the kernel in steps of this size. */
#define SCAN_RELEASE_BYTES (4u * 1024u * 1024u)
#define REC_MAGIC          0x5251324du /* "M2QR" on disk */
#define CKPT_MAGIC         0x4b43324du /* "M2CK" on disk */
#define CKPT_VERSION       1u
#define CKPT_SIZE          20
#define CKPT_SEQ_MAX       (UINT64_C(1) << 62) /* larger: the checkpoint is not ours */
#define REC_HDR            20
#define READ_CHUNK         (256u * 1024u)
#define CKPT_INTERVAL_MS   100
#define FSYNC_INTERVAL_MS  100
#define DEFAULT_SEGMENT    (64u * 1024u * 1024u)
#define SEG_NAME_LEN       24 /* 20 digits + ".seg" */

struct seg {
    uint64_t first; /* from the file name */
    uint64_t last;  /* highest seq published in it; first - 1 when none */
    uint64_t size;  /* bytes published (the reader never reads past it) */
};

struct gap { /* sequence numbers missing at open (damaged records) */
    uint64_t lo, hi;
};

struct split { /* a record in the batch that starts a new segment */
    size_t off;
    uint64_t seq;
    int fd;
};

struct m2a_spool {
    /* Immutable after open. */
    struct m2a_spool_opts opts;
    char *dir;
    int dirfd;
    int lockfd;
    int notifyfd;
    char id[17];
    struct gap *gaps; /* clipped to above the committed seq found at open */
    size_t ngaps;

    /* Shared, under mu. */
    pthread_mutex_t mu;
    struct seg *segs; /* ascending; the last one is the writer's */
    size_t nsegs, segs_cap;
    uint64_t bytes;         /* sum of segs[].size */
    uint64_t pub_seq;       /* highest seq visible to the reader */
    uint64_t committed;     /* highest confirmed seq (in memory) */
    uint64_t ckpt_durable;  /* committed seq in the checkpoint on disk */
    uint64_t ckpt_ms;       /* when the checkpoint was last written */
    _Atomic uint64_t w_seq; /* copy of w_next for stats */
    uint64_t r_taken;       /* drop_oldest: highest seq handed to the reader */
    uint64_t dropped;       /* drop_oldest: records discarded unread */

    /* Checkpoint writing, under ckpt_mu. */
    pthread_mutex_t ckpt_mu;
    uint64_t *doomed; /* segments to unlink */
    size_t doomed_cap;

    char pad1[64]; /* keep the writer's and reader's hot fields apart */

    /* Writer thread. */
    struct m2a_buf batch;
    struct split *splits;
    size_t nsplits, splits_cap;
    uint64_t w_next;        /* seq the next append gets */
    uint64_t w_batch_first; /* seq of the batch's first record */
    int w_fd;               /* current segment */
    uint64_t w_first, w_last, w_size;
    uint64_t w_bytes; /* s->bytes as last seen: only the reader lowers it */
    uint64_t w_sync_ms;
    bool w_unsynced, w_dir_unsynced;
    bool w_force_rotate; /* truncation after a failed write failed */

    char pad2[64];

    /* Reader thread. */
    int r_fd;
    bool r_positioned;
    bool r_has_next; /* a later segment exists: r_first's size is final */
    uint64_t r_first, r_limit;
    unsigned char *r_buf;
    size_t r_cap, r_pos, r_len;
    uint64_t r_base;  /* file offset of r_buf[0] */
    uint64_t r_prev;  /* seq of the last valid record passed */
    uint64_t r_floor; /* records <= this are skipped (confirmed) */
    uint64_t r_hi;    /* records >= this belong to a later segment: damage */
};

/* --- small helpers --- */

static uint64_t max64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

static uint32_t rec_crc(const unsigned char *rec, size_t payload_len)
{
    uint32_t crc = m2a_crc32c(0, rec + 4, 4);
    return m2a_crc32c(crc, rec + 12, 8 + payload_len);
}

static void seg_name(char *buf, size_t len, uint64_t first)
{
    snprintf(buf, len, "%020" PRIu64 ".seg", first);
}

static int errno_code(int e)
{
    return (e == ENOSPC || e == EDQUOT) ? M2A_ERR_NOSPACE : M2A_ERR_IO;
}

static int write_all(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = pwrite(fd, p, n, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return -1;
        p += w;
        n -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

enum parse_rc { PARSE_OK, PARSE_BAD, PARSE_SHORT };

/* Checks the record that would start at p, of which avail bytes are at hand.
 * A record is valid only with lo < seq < hi. PARSE_SHORT sets *reclen to the
 * bytes needed to decide. */
static enum parse_rc rec_parse(const unsigned char *p, size_t avail, uint64_t lo, uint64_t hi,
                               uint64_t *seq, size_t *reclen)
{
    if (avail < REC_HDR) {
        *reclen = REC_HDR;
        return PARSE_SHORT;
    }
    if (m2a_get_le32(p) != REC_MAGIC)
        return PARSE_BAD;
    uint32_t len = m2a_get_le32(p + 4);
    if (len > M2A_SPOOL_MAX_PAYLOAD)
        return PARSE_BAD;
    *reclen = REC_HDR + (size_t)len;
    if (avail < *reclen)
        return PARSE_SHORT;
    if (rec_crc(p, len) != m2a_get_le32(p + 8))
        return PARSE_BAD;
    uint64_t sq = m2a_get_le64(p + 12);
    if (sq <= lo || sq >= hi)
        return PARSE_BAD;
    *seq = sq;
    return PARSE_OK;
}

/* Where the next valid record starts in p[from..size), or size if none. */
static size_t find_next_valid(const unsigned char *p, size_t size, size_t from, uint64_t lo,
                              uint64_t hi)
{
    unsigned char magic[4];
    m2a_put_le32(magic, REC_MAGIC);
    size_t pos = from;
    while (pos + REC_HDR <= size) {
        const unsigned char *q = memmem(p + pos, size - pos, magic, sizeof(magic));
        if (!q)
            break;
        pos = (size_t)(q - p);
        uint64_t seq;
        size_t rl;
        if (rec_parse(p + pos, size - pos, lo, hi, &seq, &rl) == PARSE_OK)
            return pos;
        pos++;
    }
    return size;
}

static void seg_push(struct m2a_spool *s, struct seg g)
{
    if (s->nsegs == s->segs_cap) {
        s->segs_cap = s->segs_cap ? s->segs_cap * 2 : 16;
        s->segs = xrealloc(s->segs, s->segs_cap * sizeof(*s->segs));
    }
    s->segs[s->nsegs++] = g;
}

/* Writes name atomically: temp file, fsync, rename, fsync of the directory. */
static int write_file_atomic(struct m2a_spool *s, const char *name, const void *data, size_t len)
{
    char tmp[64];
    snprintf(tmp, sizeof(tmp), "%s.tmp", name);
    int fd = openat(s->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return errno_code(errno);
    int rc = 0;
    if (write_all(fd, data, len) != 0 || fsync(fd) != 0)
        rc = errno_code(errno);
    if (close(fd) != 0 && rc == 0)
        rc = errno_code(errno);
    if (rc == 0 && renameat(s->dirfd, tmp, s->dirfd, name) != 0)
        rc = errno_code(errno);
    if (rc == 0 && fsync(s->dirfd) != 0)
        rc = errno_code(errno);
    if (rc != 0)
        unlinkat(s->dirfd, tmp, 0);
    return rc;
}

static void notify(struct m2a_spool *s)
{
    uint64_t one = 1;
    /* Only fails when the counter would overflow: the reader is awake anyway. */
    (void)!write(s->notifyfd, &one, sizeof(one));
}

/* --- checkpoint --- */

static int checkpoint_write(struct m2a_spool *s, uint64_t seq)
{
    unsigned char b[CKPT_SIZE];
    m2a_put_le32(b, CKPT_MAGIC);
    m2a_put_le32(b + 4, CKPT_VERSION);
    m2a_put_le64(b + 8, seq);
    m2a_put_le32(b + 16, m2a_crc32c(0, b, 16));
    return write_file_atomic(s, "checkpoint", b, sizeof(b));
}

/* Reads the committed seq; 0 when missing. *invalid when present but damaged. */
static void checkpoint_read(struct m2a_spool *s, uint64_t *seq, bool *invalid)
{
    *seq = 0;
    *invalid = false;
    int fd = openat(s->dirfd, "checkpoint", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *invalid = errno != ENOENT;
        return;
    }
    unsigned char b[CKPT_SIZE + 1];
    ssize_t n;
    do
        n = read(fd, b, sizeof(b));
    while (n < 0 && errno == EINTR);
    close(fd);
    if (n != CKPT_SIZE || m2a_get_le32(b) != CKPT_MAGIC || m2a_get_le32(b + 4) != CKPT_VERSION ||
        m2a_get_le32(b + 16) != m2a_crc32c(0, b, 16)) {
        *invalid = true;
        return;
    }
    *seq = m2a_get_le64(b + 8);
}

/* Unlinks the segments (never the writer's, always the last) whose records
 * are all covered by the checkpoint on disk. Caller holds ckpt_mu. */
static void delete_confirmed_segments(struct m2a_spool *s)
{
    size_t n = 0;
    pthread_mutex_lock(&s->mu);
    while (n + 1 < s->nsegs && s->segs[n].last <= s->ckpt_durable)
        n++;
    if (n > s->doomed_cap) {
        s->doomed_cap = n;
        s->doomed = xrealloc(s->doomed, n * sizeof(*s->doomed));
    }
    for (size_t i = 0; i < n; i++) {
        s->doomed[i] = s->segs[i].first;
        s->bytes -= s->segs[i].size;
    }
    memmove(s->segs, s->segs + n, (s->nsegs - n) * sizeof(*s->segs));
    s->nsegs -= n;
    pthread_mutex_unlock(&s->mu);
    for (size_t i = 0; i < n; i++) {
        char name[32];
        seg_name(name, sizeof(name), s->doomed[i]);
        /* A leftover is ignored; it is confirmed and the next open deletes it. */
        unlinkat(s->dirfd, name, 0);
    }
}

/* Writes the checkpoint if it is behind, then deletes what it covers. With
 * wait false, gives up at once if another thread is writing it. */
static int checkpoint_sync(struct m2a_spool *s, bool wait)
{
    if (wait)
        pthread_mutex_lock(&s->ckpt_mu);
    else if (pthread_mutex_trylock(&s->ckpt_mu) != 0)
        return 0;
    pthread_mutex_lock(&s->mu);
    uint64_t c = s->committed;
    bool behind = c != s->ckpt_durable;
    pthread_mutex_unlock(&s->mu);
    int rc = 0;
    if (behind) {
        rc = checkpoint_write(s, c);
        pthread_mutex_lock(&s->mu);
        s->ckpt_ms = m2a_now_ms(); /* also after a failure: retry on the next interval */
        if (rc == 0)
            s->ckpt_durable = c;
        pthread_mutex_unlock(&s->mu);
    }
    delete_confirmed_segments(s);
    pthread_mutex_unlock(&s->ckpt_mu);
    return rc;
}

/* --- open and recovery --- */

static int spool_id_init(struct m2a_spool *s, char *err, size_t errlen)
{
    char b[32];
    int fd = openat(s->dirfd, "spool.id", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, b, sizeof(b));
        close(fd);
        bool ok = n == 16 || (n == 17 && b[16] == '\n');
        for (int i = 0; ok && i < 16; i++)
            ok = (b[i] >= '0' && b[i] <= '9') || (b[i] >= 'a' && b[i] <= 'f');
        if (ok) {
            memcpy(s->id, b, 16);
            s->id[16] = '\0';
            return 0;
        }
        /* Damaged: a new id only weakens deduplication of replayed messages. */
    }
    unsigned char r[8];
    if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r)) {
        snprintf(err, errlen, "cannot get random bytes for the spool id: %s", strerror(errno));
        return M2A_ERR_IO;
    }
    for (int i = 0; i < 8; i++)
        snprintf(s->id + 2 * i, 3, "%02x", r[i]);
    snprintf(b, sizeof(b), "%s\n", s->id);
    int rc = write_file_atomic(s, "spool.id", b, 17);
    if (rc != 0)
        snprintf(err, errlen, "cannot write %s/spool.id: %s", s->dir, strerror(errno));
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The first sequence numbers of the segment files, ascending. */
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
        const char *nm = e->d_name;
        if (strlen(nm) != SEG_NAME_LEN || strcmp(nm + 20, ".seg") != 0)
            continue;
        uint64_t first = 0;
        bool ok = true;
        for (int i = 0; i < 20 && ok; i++) {
            ok = nm[i] >= '0' && nm[i] <= '9' && first <= (UINT64_MAX - 9) / 10;
            first = first * 10 + (uint64_t)(nm[i] - '0');
        }
        if (!ok || first == 0)
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
    struct gap *gaps;
    size_t ngaps, gaps_cap;
    struct m2a_spool_recovery rec;
};

static void scan_gap(struct scan *st, uint64_t lo, uint64_t hi)
{
    lo = max64(lo, st->committed + 1);
    if (lo > hi)
        return;
    if (st->ngaps == st->gaps_cap) {
        st->gaps_cap = st->gaps_cap ? st->gaps_cap * 2 : 4;
        st->gaps = xrealloc(st->gaps, st->gaps_cap * sizeof(*st->gaps));
    }
    st->gaps[st->ngaps++] = (struct gap){lo, hi};
}

static void scan_record(struct scan *st, uint64_t seq)
{
    if (seq > st->prev + 1)
        scan_gap(st, st->prev + 1, seq - 1);
    st->prev = seq;
    st->rec.records++;
    if (seq > st->committed)
        st->rec.unconfirmed++;
}

/* Keeps a copy of damaged bytes for a human, named after the first sequence
 * number they should have held. Best effort: damage never stops the spool. */
static void quarantine(struct m2a_spool *s, struct scan *st, const void *p, size_t n)
{
    char name[64];
    uint64_t seq = st->prev + 1;
    snprintf(name, sizeof(name), "quarantine-%020" PRIu64 ".bad", seq);
    /* Two damaged ranges around the same seq (a segment's tail and the next
     * one's head) go into one file; a later open rewrites it identically. */
    int flags = seq == st->last_quarantine ? O_APPEND : O_TRUNC;
    int fd = openat(s->dirfd, name, O_WRONLY | O_CREAT | O_CLOEXEC | flags, 0640);
    if (fd < 0)
        return;
    (void)write_all(fd, p, n);
    close(fd);
    st->last_quarantine = seq;
}

/* Verifies every record of one segment; cuts off a damaged tail. */
static int scan_segment(struct m2a_spool *s, struct scan *st, uint64_t first, uint64_t next_first,
                        bool is_last, struct seg *out, char *err, size_t errlen)
{
    char name[32];
    seg_name(name, sizeof(name), first);
    *out = (struct seg){first, first - 1, 0};
    int fd = openat(s->dirfd, name, O_RDWR | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        snprintf(err, errlen, "cannot open spool segment %s/%s: %s", s->dir, name, strerror(errno));
        if (fd >= 0)
            close(fd);
        return M2A_ERR_IO;
    }
    size_t size = (size_t)sb.st_size;
    if (size == 0) {
        close(fd);
        return 0;
    }
    const unsigned char *map = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        snprintf(err, errlen, "cannot map spool segment %s/%s: %s", s->dir, name, strerror(errno));
        close(fd);
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
        if (rec_parse(map + pos, size - pos, lo, next_first, &seq, &rl) == PARSE_OK) {
            scan_record(st, seq);
            out->last = seq;
            pos += rl;
            continue;
        }
        size_t next = find_next_valid(map, size, pos + 1, lo, next_first);
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
        if (ftruncate(fd, (off_t)pos) != 0 || fsync(fd) != 0) {
            snprintf(err, errlen, "cannot truncate spool segment %s/%s: %s", s->dir, name,
                     strerror(errno));
            rc = M2A_ERR_IO;
        }
    }
    out->size = pos;
    close(fd);
    return rc;
}

/* Scans the segments firsts[0..n) in order into s->segs and st. */
static int scan_segments(struct m2a_spool *s, struct scan *st, const uint64_t *firsts, size_t n,
                         char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        struct seg g;
        uint64_t next_first = i + 1 < n ? firsts[i + 1] : UINT64_MAX;
        int rc = scan_segment(s, st, firsts[i], next_first, i + 1 == n, &g, err, errlen);
        if (rc != 0)
            return rc;
        seg_push(s, g);
    }
    return 0;
}

static int recover(struct m2a_spool *s, struct m2a_spool_recovery *rec, char *err, size_t errlen)
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
        /* A checkpoint far beyond every record on disk (2^62 sequence
         * numbers take 146,000 years at a million a second) is not one the
         * spool wrote: taking it would count every record confirmed and
         * make the numbering wrap and reuse message ids. Scan again without
         * it: everything is replayed (at least once). The first scan cut
         * the torn tails off (counted here); damaged records are found and
         * counted again. */
        uint64_t truncated = st.rec.truncated_bytes;
        free(st.gaps);
        memset(&st, 0, sizeof(st));
        s->nsegs = 0;
        ckpt_invalid = true;
        rc = scan_segments(s, &st, firsts, n, err, errlen);
        st.rec.truncated_bytes += truncated;
    }
    if (rc != 0)
        goto out;
    uint64_t next = max64(max64(st.prev, st.committed) + 1, n ? firsts[n - 1] : 1);
    if (next - 1 > st.prev)
        scan_gap(&st, st.prev + 1, next - 1);

    /* Fully confirmed segments go now; the last one stays: it is appended to
     * and it keeps the highest seq on disk. */
    size_t del = 0;
    while (del + 1 < s->nsegs && s->segs[del].last <= st.committed) {
        char name[32];
        seg_name(name, sizeof(name), s->segs[del].first);
        unlinkat(s->dirfd, name, 0);
        del++;
    }
    if (del > 0)
        memmove(s->segs, s->segs + del, (s->nsegs - del) * sizeof(*s->segs));
    s->nsegs -= del;
    for (size_t i = 0; i < s->nsegs; i++)
        s->bytes += s->segs[i].size;

    s->committed = s->ckpt_durable = s->r_taken = st.committed;
    s->pub_seq = next - 1;
    s->w_next = s->w_batch_first = next;
    atomic_store(&s->w_seq, next);
    s->gaps = st.gaps;
    s->ngaps = st.ngaps;
    st.gaps = NULL;
    st.rec.segments = n;
    st.rec.checkpoint_invalid = ckpt_invalid;
    if (rec)
        *rec = st.rec;
out:
    free(st.gaps);
    free(firsts);
    return rc;
}

/* Opens the last segment for appending, creating the first one if none. */
static int writer_init(struct m2a_spool *s, char *err, size_t errlen)
{
    char name[32];
    if (s->nsegs == 0) {
        seg_name(name, sizeof(name), s->w_next);
        s->w_fd = openat(s->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
        if (s->w_fd < 0 || fsync(s->dirfd) != 0)
            goto fail;
        seg_push(s, (struct seg){s->w_next, s->w_next - 1, 0});
    } else {
        seg_name(name, sizeof(name), s->segs[s->nsegs - 1].first);
        s->w_fd = openat(s->dirfd, name, O_WRONLY | O_CLOEXEC);
        if (s->w_fd < 0)
            goto fail;
    }
    struct seg *cur = &s->segs[s->nsegs - 1];
    s->w_first = cur->first;
    s->w_last = cur->last;
    s->w_size = cur->size;
    s->w_bytes = s->bytes;
    s->w_sync_ms = m2a_now_ms();
    return 0;
fail:
    snprintf(err, errlen, "cannot open spool segment %s/%s: %s", s->dir, name, strerror(errno));
    return errno_code(errno);
}

static void spool_free(struct m2a_spool *s)
{
    if (s->w_fd >= 0)
        close(s->w_fd);
    if (s->r_fd >= 0)
        close(s->r_fd);
    if (s->notifyfd >= 0)
        close(s->notifyfd);
    if (s->lockfd >= 0)
        close(s->lockfd); /* releases the flock */
    if (s->dirfd >= 0)
        close(s->dirfd);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->ckpt_mu);
    m2a_buf_free(&s->batch);
    free(s->splits);
    free(s->segs);
    free(s->gaps);
    free(s->doomed);
    free(s->r_buf);
    free(s->dir);
    free(s);
}

int m2a_spool_open(const struct m2a_spool_opts *opts, struct m2a_spool **out,
                   struct m2a_spool_recovery *rec, char *err, size_t errlen)
{
    *out = NULL;
    if (rec)
        memset(rec, 0, sizeof(*rec));
    if (!opts || !opts->dir || !*opts->dir) {
        snprintf(err, errlen, "spool directory not set");
        return M2A_ERR_ARG;
    }
    struct m2a_spool *s = xcalloc(1, sizeof(*s));
    s->opts = *opts;
    s->dir = xstrdup(opts->dir);
    s->opts.dir = s->dir;
    if (!s->opts.segment_bytes)
        s->opts.segment_bytes = DEFAULT_SEGMENT;
    s->dirfd = s->lockfd = s->notifyfd = s->w_fd = s->r_fd = -1;
    s->r_cap = READ_CHUNK;
    s->r_buf = xmalloc(s->r_cap);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->ckpt_mu, NULL);
    int rc = M2A_ERR_IO;

    if (mkdir(s->dir, 0750) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create spool directory %s: %s", s->dir, strerror(errno));
        goto out;
    }
    s->dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (s->dirfd < 0) {
        snprintf(err, errlen, "cannot open spool directory %s: %s", s->dir, strerror(errno));
        goto out;
    }
    s->lockfd = openat(s->dirfd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (s->lockfd < 0 || flock(s->lockfd, LOCK_EX | LOCK_NB) != 0) {
        if (errno == EWOULDBLOCK)
            snprintf(err, errlen,
                     "spool directory %s is in use by another mqtt2amqp process "
                     "(its lock file is held); give each instance its own spool.dir",
                     s->dir);
        else
            snprintf(err, errlen, "cannot lock spool directory %s: %s", s->dir, strerror(errno));
        goto out;
    }
    rc = spool_id_init(s, err, errlen);
    if (rc != 0)
        goto out;
    /* Leftovers of a crash in the middle of an atomic rewrite. */
    unlinkat(s->dirfd, "checkpoint.tmp", 0);
    unlinkat(s->dirfd, "spool.id.tmp", 0);
    rc = recover(s, rec, err, errlen);
    if (rc != 0)
        goto out;
    rc = writer_init(s, err, errlen);
    if (rc != 0)
        goto out;
    s->notifyfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->notifyfd < 0) {
        snprintf(err, errlen, "cannot create eventfd: %s", strerror(errno));
        rc = M2A_ERR_IO;
        goto out;
    }
    if (s->pub_seq > s->committed)
        notify(s);
    *out = s;
    s = NULL;
out:
    if (s)
        spool_free(s);
    return rc;
}

void m2a_spool_close(struct m2a_spool *s)
{
    if (!s)
        return;
    (void)m2a_spool_flush(s);
    if (s->opts.fsync != M2A_FSYNC_NEVER) {
        if (s->w_unsynced)
            (void)fdatasync(s->w_fd);
        if (s->w_dir_unsynced)
            (void)fsync(s->dirfd);
    }
    (void)checkpoint_sync(s, true);
    spool_free(s);
}

const char *m2a_spool_id(const struct m2a_spool *s)
{
    return s->id;
}

/* --- writer thread --- */

/* Starts a new, empty segment now (between batches). */
static int writer_rotate_now(struct m2a_spool *s)
{
    char name[32];
    seg_name(name, sizeof(name), s->w_next);
    int fd = openat(s->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return errno_code(errno);
    if (s->opts.fsync != M2A_FSYNC_NEVER &&
        ((s->w_unsynced && fdatasync(s->w_fd) != 0) || fsync(s->dirfd) != 0)) {
        int rc = errno_code(errno);
        close(fd);
        unlinkat(s->dirfd, name, 0);
        return rc;
    }
    pthread_mutex_lock(&s->mu);
    seg_push(s, (struct seg){s->w_next, s->w_next - 1, 0});
    pthread_mutex_unlock(&s->mu);
    close(s->w_fd);
    s->w_fd = fd;
    s->w_first = s->w_next;
    s->w_last = s->w_next - 1;
    s->w_size = 0;
    s->w_unsynced = s->w_dir_unsynced = false;
    s->w_force_rotate = false;
    return 0;
}

/* When the current segment holds only confirmed records, moves on to a new
 * one so that the old one can be deleted: without this, a spool whose
 * max_bytes is near segment_bytes would stay full after everything was
 * confirmed. force: do it even if the spool is less than half full. */
static int writer_reclaim(struct m2a_spool *s, bool force)
{
    if (s->batch.len != 0 || s->w_size == 0)
        return 0;
    pthread_mutex_lock(&s->mu);
    uint64_t committed = s->committed, bytes = s->bytes;
    pthread_mutex_unlock(&s->mu);
    if (committed < s->w_last)
        return 0;
    if (!force && (!s->opts.max_bytes || bytes <= s->opts.max_bytes / 2))
        return 0;
    return writer_rotate_now(s);
}

static bool fits(const struct m2a_spool *s, size_t rl)
{
    return s->w_bytes + s->batch.len + rl <= s->opts.max_bytes;
}

/* Records with lo <= seq <= hi that exist: the range minus the gaps found
 * at open (the gap list never changes after open). */
static uint64_t count_records(const struct m2a_spool *s, uint64_t lo, uint64_t hi)
{
    if (lo > hi)
        return 0;
    uint64_t n = hi - lo + 1;
    for (size_t i = 0; i < s->ngaps; i++) {
        uint64_t a = max64(s->gaps[i].lo, lo), b = s->gaps[i].hi < hi ? s->gaps[i].hi : hi;
        if (a <= b)
            n -= b - a + 1;
    }
    return n;
}

/* overflow drop_oldest: discards the oldest segment, again and again, until
 * rl fits. Discarding is committing without a confirm: the committed
 * position moves past the segment's last record, checkpoint_sync writes the
 * checkpoint and deletes the segment (as for a confirmed one), and the
 * reader skips whatever is at or below the committed position (it checks
 * under mu before handing a record out, see reader_take). Counted as
 * dropped: the records the reader had not taken yet; those it took are in
 * the AMQP side's window and still get published. The segment being
 * written is never discarded; between batches it is closed first (rotated)
 * so that a spool of two segments can still make room. */
static int writer_drop_oldest(struct m2a_spool *s, size_t rl)
{
    while (!fits(s, rl)) {
        pthread_mutex_lock(&s->mu);
        size_t nsegs = s->nsegs;
        pthread_mutex_unlock(&s->mu);
        if (nsegs < 2) {
            if (s->batch.len != 0 || s->w_size == 0)
                return M2A_ERR_FULL;
            int rc = writer_rotate_now(s);
            if (rc != 0)
                return rc;
            continue;
        }
        pthread_mutex_lock(&s->mu);
        uint64_t upto = s->segs[0].last;
        if (upto > s->committed) {
            s->dropped += count_records(s, max64(s->committed, s->r_taken) + 1, upto);
            s->committed = upto;
        }
        pthread_mutex_unlock(&s->mu);
        int rc = checkpoint_sync(s, true);
        if (rc != 0)
            return rc;
        pthread_mutex_lock(&s->mu);
        bool freed = s->nsegs < nsegs;
        s->w_bytes = s->bytes;
        pthread_mutex_unlock(&s->mu);
        if (!freed)
            return M2A_ERR_FULL;
    }
    return 0;
}

static int writer_make_room(struct m2a_spool *s, size_t rl)
{
    pthread_mutex_lock(&s->mu);
    s->w_bytes = s->bytes;
    pthread_mutex_unlock(&s->mu);
    if (fits(s, rl))
        return 0;
    int rc = writer_reclaim(s, true);
    if (rc != 0)
        return rc;
    /* Confirmed segments may be waiting for a checkpoint (commit writes it
     * at most every 100 ms): write it now rather than refuse, but only when
     * that frees something, or a full spool would fsync on every append. */
    pthread_mutex_lock(&s->mu);
    bool freeable = s->nsegs > 1 && s->segs[0].last <= s->committed;
    pthread_mutex_unlock(&s->mu);
    if (freeable) {
        rc = checkpoint_sync(s, true);
        if (rc != 0)
            return rc;
    }
    pthread_mutex_lock(&s->mu);
    s->w_bytes = s->bytes;
    pthread_mutex_unlock(&s->mu);
    if (fits(s, rl))
        return 0;
    return s->opts.overflow == M2A_OVERFLOW_DROP_OLDEST ? writer_drop_oldest(s, rl) : M2A_ERR_FULL;
}

static void split_push(struct m2a_spool *s)
{
    if (s->nsplits == s->splits_cap) {
        s->splits_cap = s->splits_cap ? s->splits_cap * 2 : 4;
        s->splits = xrealloc(s->splits, s->splits_cap * sizeof(*s->splits));
    }
    s->splits[s->nsplits++] = (struct split){s->batch.len, s->w_next, -1};
}

int m2a_spool_append(struct m2a_spool *s, const struct m2a_envelope *env, uint64_t *seq)
{
    size_t plen = m2a_envelope_encoded_size(env);
    size_t rl = REC_HDR + plen;
    if (plen > M2A_SPOOL_MAX_PAYLOAD || (s->opts.max_bytes && rl > s->opts.max_bytes))
        return M2A_ERR_ARG;
    if (s->opts.max_bytes && !fits(s, rl)) {
        int rc = writer_make_room(s, rl);
        if (rc != 0)
            return rc;
    }
    /* Rotate before a record that would take the segment past segment_bytes. */
    uint64_t fill =
        s->nsplits ? s->batch.len - s->splits[s->nsplits - 1].off : s->w_size + s->batch.len;
    bool forced = s->w_force_rotate && s->nsplits == 0 && s->w_first != s->w_next;
    if (forced || (fill > 0 && fill + rl > s->opts.segment_bytes)) {
        /* Between batches the new segment is made at once: the finished one
         * can then be deleted as soon as it is confirmed. */
        if (s->batch.len == 0) {
            int rc = writer_rotate_now(s);
            if (rc != 0)
                return rc;
        } else {
            split_push(s);
        }
    }

    m2a_buf_reserve(&s->batch, rl);
    size_t start = s->batch.len;
    s->batch.len += REC_HDR;
    m2a_envelope_encode(env, &s->batch);
    size_t got = s->batch.len - start - REC_HDR; /* trust the encoder over its estimate */
    if (got > M2A_SPOOL_MAX_PAYLOAD) {
        s->batch.len = start;
        if (s->nsplits && s->splits[s->nsplits - 1].off == start)
            s->nsplits--;
        return M2A_ERR_ARG;
    }
    unsigned char *h = s->batch.data + start;
    m2a_put_le32(h, REC_MAGIC);
    m2a_put_le32(h + 4, (uint32_t)got);
    m2a_put_le64(h + 12, s->w_next);
    m2a_put_le32(h + 8, rec_crc(h, got));
    if (seq)
        *seq = s->w_next;
    s->w_next++;
    atomic_store_explicit(&s->w_seq, s->w_next, memory_order_relaxed);
    return 0;
}

/* Undoes a batch that could not be written: the segment goes back to its
 * last good end, new segments disappear, sequence numbers are reused. */
static int flush_fail(struct m2a_spool *s, int e, size_t opened)
{
    if (ftruncate(s->w_fd, (off_t)s->w_size) != 0)
        s->w_force_rotate = true; /* never append after bytes we could not remove */
    for (size_t i = 0; i < opened; i++) {
        char name[32];
        seg_name(name, sizeof(name), s->splits[i].seq);
        (void)!ftruncate(s->splits[i].fd, 0);
        close(s->splits[i].fd);
        unlinkat(s->dirfd, name, 0);
    }
    s->w_next = s->w_batch_first;
    atomic_store_explicit(&s->w_seq, s->w_next, memory_order_relaxed);
    s->batch.len = 0;
    s->nsplits = 0;
    return errno_code(e);
}

static int flush_sync(struct m2a_spool *s, size_t end0)
{
    size_t n = s->nsplits;
    if (s->opts.fsync == M2A_FSYNC_NEVER)
        return 0;
    bool batch = s->opts.fsync == M2A_FSYNC_BATCH;
    /* Under interval, a segment we stop writing is synced before its fd goes. */
    if ((batch && end0 > 0) || (n > 0 && (end0 > 0 || s->w_unsynced)))
        if (fdatasync(s->w_fd) != 0)
            return -1;
    for (size_t i = 0; i < n; i++)
        if ((batch || i + 1 < n) && fdatasync(s->splits[i].fd) != 0)
            return -1;
    if (batch && n > 0 && fsync(s->dirfd) != 0)
        return -1;
    if (!batch) {
        s->w_unsynced = true;
        s->w_dir_unsynced |= n > 0;
    }
    return 0;
}

static void flush_publish(struct m2a_spool *s, size_t end0)
{
    size_t n = s->nsplits;
    pthread_mutex_lock(&s->mu);
    struct seg *cur = &s->segs[s->nsegs - 1];
    cur->size += end0;
    if (end0 > 0)
        cur->last = (n ? s->splits[0].seq : s->w_next) - 1;
    for (size_t i = 0; i < n; i++) {
        size_t a = s->splits[i].off, b = i + 1 < n ? s->splits[i + 1].off : s->batch.len;
        uint64_t last = (i + 1 < n ? s->splits[i + 1].seq : s->w_next) - 1;
        seg_push(s, (struct seg){s->splits[i].seq, last, b - a});
    }
    s->bytes += s->batch.len;
    s->pub_seq = s->w_next - 1;
    s->w_bytes = s->bytes;
    pthread_mutex_unlock(&s->mu);

    if (n > 0) {
        close(s->w_fd);
        for (size_t i = 0; i + 1 < n; i++)
            close(s->splits[i].fd);
        s->w_fd = s->splits[n - 1].fd;
        s->w_first = s->splits[n - 1].seq;
        s->w_size = s->batch.len - s->splits[n - 1].off;
        s->w_force_rotate = false;
        if (s->opts.fsync == M2A_FSYNC_BATCH)
            s->w_unsynced = false;
    } else {
        s->w_size += end0;
    }
    s->w_last = s->w_next - 1;
}

int m2a_spool_flush(struct m2a_spool *s)
{
    if (s->batch.len == 0)
        return 0;
    size_t n = s->nsplits, opened = 0;
    size_t end0 = n ? s->splits[0].off : s->batch.len;
    if (end0 > 0 && pwrite_all(s->w_fd, s->batch.data, end0, s->w_size) != 0)
        return flush_fail(s, errno, 0);
    for (size_t i = 0; i < n; i++) {
        char name[32];
        seg_name(name, sizeof(name), s->splits[i].seq);
        int fd = openat(s->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
        if (fd < 0)
            return flush_fail(s, errno, opened);
        s->splits[i].fd = fd;
        opened++;
        size_t a = s->splits[i].off, b = i + 1 < n ? s->splits[i + 1].off : s->batch.len;
        if (pwrite_all(fd, s->batch.data + a, b - a, 0) != 0)
            return flush_fail(s, errno, opened);
    }
    if (flush_sync(s, end0) != 0)
        return flush_fail(s, errno, opened);
    flush_publish(s, end0);
    notify(s);
    s->batch.len = 0;
    s->nsplits = 0;
    s->w_batch_first = s->w_next;
    return 0;
}

int m2a_spool_tick(struct m2a_spool *s)
{
    int rc = 0;
    uint64_t now = m2a_now_ms();
    if (s->opts.fsync == M2A_FSYNC_INTERVAL && (s->w_unsynced || s->w_dir_unsynced) &&
        now - s->w_sync_ms >= FSYNC_INTERVAL_MS) {
        if (s->w_unsynced && fdatasync(s->w_fd) != 0)
            rc = M2A_ERR_IO;
        else
            s->w_unsynced = false;
        if (s->w_dir_unsynced && fsync(s->dirfd) != 0)
            rc = M2A_ERR_IO;
        else
            s->w_dir_unsynced = false;
        s->w_sync_ms = now;
    }
    int r = writer_reclaim(s, false);
    if (rc == 0)
        rc = r;
    /* A checkpoint left dirty by the last commit before the AMQP side went
     * idle, or segments it covers that stopped being the writer's since:
     * handled here, or they would wait for a commit that may not come. */
    pthread_mutex_lock(&s->mu);
    bool due = (s->committed != s->ckpt_durable && now - s->ckpt_ms >= CKPT_INTERVAL_MS) ||
               (s->nsegs > 1 && s->segs[0].last <= s->ckpt_durable);
    pthread_mutex_unlock(&s->mu);
    if (due) {
        r = checkpoint_sync(s, false);
        if (rc == 0)
            rc = r;
    }
    return rc;
}

/* --- reader thread --- */

/* Opens the segment to read: the one holding the first unconfirmed record
 * (next false), or the one after r_first. The open happens under mu, so a
 * segment seen in the index cannot be unlinked before we hold it. */
static int reader_enter(struct m2a_spool *s, bool next)
{
    pthread_mutex_lock(&s->mu);
    size_t i = 0;
    if (!next) {
        s->r_floor = s->committed;
        while (i + 1 < s->nsegs && s->segs[i + 1].first <= s->r_floor + 1)
            i++;
    } else {
        while (i < s->nsegs && s->segs[i].first <= s->r_first)
            i++;
    }
    if (i >= s->nsegs) {
        pthread_mutex_unlock(&s->mu);
        return M2A_ERR_AGAIN;
    }
    char name[32];
    seg_name(name, sizeof(name), s->segs[i].first);
    int fd = openat(s->dirfd, name, O_RDONLY | O_CLOEXEC);
    s->r_first = s->segs[i].first;
    s->r_limit = s->segs[i].size;
    s->r_has_next = i + 1 < s->nsegs;
    /* Recovery counts such records as damage (and replays what follows
     * them); reading one would skip every later record as out of order
     * (found by fuzz_spool_record). */
    s->r_hi = s->r_has_next ? s->segs[i + 1].first : UINT64_MAX;
    pthread_mutex_unlock(&s->mu);
    if (fd < 0)
        return M2A_ERR_IO;
    if (s->r_fd >= 0)
        close(s->r_fd);
    s->r_fd = fd;
    s->r_base = 0;
    s->r_pos = s->r_len = 0;
    s->r_prev = max64(s->r_prev, s->r_first - 1);
    s->r_positioned = true;
    return 0;
}

static void reader_refresh(struct m2a_spool *s)
{
    pthread_mutex_lock(&s->mu);
    size_t i = 0;
    while (i < s->nsegs && s->segs[i].first < s->r_first)
        i++;
    if (i < s->nsegs && s->segs[i].first == s->r_first) {
        s->r_limit = s->segs[i].size;
        s->r_has_next = i + 1 < s->nsegs;
        s->r_hi = s->r_has_next ? s->segs[i + 1].first : UINT64_MAX;
    } else {
        s->r_has_next = true; /* deleted: it was not the last */
    }
    pthread_mutex_unlock(&s->mu);
}

/* Makes at least need bytes available at r_pos if the published part of the
 * segment has them, reading big chunks. Returns 1 if bytes were added, 0 if
 * no more are available now, or M2A_ERR_IO. */
static int reader_fill(struct m2a_spool *s, size_t need)
{
    size_t avail = s->r_len - s->r_pos;
    uint64_t off = s->r_base + s->r_pos;
    if (off + need > s->r_limit)
        reader_refresh(s);
    if (off + avail >= s->r_limit)
        return 0;
    uint64_t want = need > READ_CHUNK ? need : READ_CHUNK;
    if (want > s->r_limit - off)
        want = s->r_limit - off;
    if (s->r_pos > 0) {
        memmove(s->r_buf, s->r_buf + s->r_pos, avail);
        s->r_base += s->r_pos;
        s->r_pos = 0;
        s->r_len = avail;
    }
    if (want > s->r_cap) {
        s->r_cap = want;
        s->r_buf = xrealloc(s->r_buf, s->r_cap);
    }
    while (s->r_len < want) {
        ssize_t n =
            pread(s->r_fd, s->r_buf + s->r_len, want - s->r_len, (off_t)(s->r_base + s->r_len));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return M2A_ERR_IO;
        if (n == 0)
            break;
        s->r_len += (size_t)n;
    }
    return s->r_len > avail;
}

/* Steps over damaged bytes to the next possible record start. Recovery
 * already counted and quarantined them; this only keeps reading going. */
static void reader_skip(struct m2a_spool *s)
{
    unsigned char magic[4];
    m2a_put_le32(magic, REC_MAGIC);
    s->r_pos++;
    if (s->r_pos >= s->r_len)
        return;
    const unsigned char *q = memmem(s->r_buf + s->r_pos, s->r_len - s->r_pos, magic, 4);
    if (q)
        s->r_pos = (size_t)(q - s->r_buf);
    else if (s->r_len - s->r_pos > 3)
        s->r_pos = s->r_len - 3; /* may be the start of a magic */
}

/* drop_oldest: claims record seq for the reader unless the writer has
 * discarded it (the committed position passed it without a commit from us).
 * Taking and discarding both happen under mu, so every record is either
 * handed out or counted as dropped, never both. */
static bool reader_take(struct m2a_spool *s, uint64_t seq)
{
    pthread_mutex_lock(&s->mu);
    bool kept = seq > s->committed;
    if (kept)
        s->r_taken = seq;
    pthread_mutex_unlock(&s->mu);
    return kept;
}

int m2a_spool_read(struct m2a_spool *s, uint64_t *seq, const void **data, size_t *len)
{
    if (!s->r_positioned) {
        int rc = reader_enter(s, false);
        if (rc != 0)
            return rc;
    }
    for (;;) {
        const unsigned char *p = s->r_buf + s->r_pos;
        size_t avail = s->r_len - s->r_pos, rl = 0;
        uint64_t sq;
        enum parse_rc pr = rec_parse(p, avail, s->r_prev, s->r_hi, &sq, &rl);
        if (pr == PARSE_OK) {
            s->r_pos += rl;
            s->r_prev = sq;
            if (sq <= s->r_floor)
                continue;
            if (s->opts.overflow == M2A_OVERFLOW_DROP_OLDEST && !reader_take(s, sq)) {
                /* Discarded: start again at the first record still kept, like
                 * a rewind (but what was taken stays taken). */
                s->r_prev = 0;
                int rc = reader_enter(s, false);
                if (rc != 0)
                    return rc;
                continue;
            }
            *seq = sq;
            *data = p + REC_HDR;
            *len = rl - REC_HDR;
            return 0;
        }
        if (pr == PARSE_SHORT) {
            int f = reader_fill(s, rl);
            if (f < 0)
                return f;
            if (f > 0)
                continue;
            if (avail == 0) {
                if (!s->r_has_next)
                    return M2A_ERR_AGAIN;
                int rc = reader_enter(s, true);
                if (rc != 0)
                    return rc;
                continue;
            }
            /* Published bytes are whole records: a partial one is damage. */
        }
        reader_skip(s);
    }
}

void m2a_spool_rewind(struct m2a_spool *s)
{
    pthread_mutex_lock(&s->mu);
    s->r_taken = s->committed; /* what follows is read, and taken, again */
    pthread_mutex_unlock(&s->mu);
    s->r_positioned = false;
    s->r_prev = 0;
    s->r_pos = s->r_len = 0;
}

int m2a_spool_commit(struct m2a_spool *s, uint64_t seq)
{
    pthread_mutex_lock(&s->mu);
    if (seq > s->pub_seq) {
        pthread_mutex_unlock(&s->mu);
        return M2A_ERR_ARG;
    }
    if (seq <= s->committed) {
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    s->committed = seq;
    bool due = m2a_now_ms() - s->ckpt_ms >= CKPT_INTERVAL_MS;
    pthread_mutex_unlock(&s->mu);
    return due ? checkpoint_sync(s, true) : 0;
}

int m2a_spool_notify_fd(const struct m2a_spool *s)
{
    return s->notifyfd;
}

void m2a_spool_notify_clear(struct m2a_spool *s)
{
    uint64_t v;
    (void)!read(s->notifyfd, &v, sizeof(v));
}

/* --- any thread --- */

void m2a_spool_get_stats(struct m2a_spool *s, struct m2a_spool_stats *out)
{
    uint64_t next = atomic_load_explicit(&s->w_seq, memory_order_relaxed);
    pthread_mutex_lock(&s->mu);
    uint64_t last = next - 1, c = s->committed;
    uint64_t msgs = last > c ? last - c : 0;
    for (size_t i = 0; i < s->ngaps; i++) {
        uint64_t lo = max64(s->gaps[i].lo, c + 1), hi = s->gaps[i].hi < last ? s->gaps[i].hi : last;
        if (lo <= hi)
            msgs -= hi - lo + 1;
    }
    out->messages = msgs;
    out->bytes = s->bytes;
    out->segments = s->nsegs;
    out->next_seq = next;
    out->committed_seq = c;
    out->dropped = s->dropped;
    pthread_mutex_unlock(&s->mu);
}
