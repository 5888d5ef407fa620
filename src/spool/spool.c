/* spool.c - the persistent retry queue at run time: the writer half, the
 * reader half and the state they share. The formats are in spool_format.c,
 * what runs at open in spool_recover.c, the file-system seam in spool_io.c.
 *
 * Threads and ownership (one owner per resource):
 *  - The writer (the MQTT thread: append, flush, tick) owns the segment it
 *    appends to, the batch and the segment files a batch starts. It adds
 *    segments to the index and raises the byte count and the published end.
 *  - The reader (the AMQP thread: read, commit, maintain) owns the read
 *    cursor, the checkpoint file and every deletion: it alone moves the
 *    committed position, writes the checkpoint, unlinks segments (confirmed
 *    ones, and under drop_oldest discarded ones), counts drops and lowers
 *    the byte count.
 *  - Shared under s->mu: the segment index, the byte count, the published
 *    end, the committed position, the drop count, the gap list and the
 *    writer's request for room. Nobody holds mu across a system call.
 * When the writer needs room it never does the reader's work: it posts
 * room_want and writes maintfd; the reader serves the request in
 * m2a_spool_maintain (checkpoint, deletion, discards) and writes roomfd
 * when the request is met. If what it could free is the segment being
 * written, it says so (room_rotate, and roomfd) and the writer starts a new
 * segment. Otherwise it stays quiet until confirms change that: no ping-
 * pong between the threads while nothing can be freed.
 *
 * drop_oldest and the records the reader holds. Records handed to the
 * reader and not yet committed, (committed, r_taken], are in the AMQP side's
 * confirm window: they are never discarded, and the committed position
 * never moves past them without a commit. So a discard takes either every
 * unconfirmed record up to a segment's end when the reader holds none
 * (committed moves, as for a confirm, then the checkpoint and deletion
 * follow), or a whole segment beyond what the reader holds (its records
 * become a gap: counted, unlinked, never replayed). A crash then loses
 * exactly the counted records: the held ones are replayed.
 *
 * Segments are deleted only once the checkpoint on disk covers them or
 * their records were all counted as dropped, and the last segment never,
 * so the highest sequence number ever handed out survives on disk (in a
 * segment, its name, or the checkpoint) and is never reused for a
 * different message after a restart: message ids "<spool id>-<seq>" stay
 * unique. */
#include "mqtt2amqp/spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <unistd.h>

#include "mqtt2amqp/crc32c.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/spool_format.h"
#include "spool_internal.h"

#define REC_HDR    M2A_SPOOL_RECORD_HEADER
#define READ_CHUNK (256u * 1024u)
/* A record at least this large that is not all in r_buf is read straight
 * into the caller's buffer (m2a_spool_read_to), DIRECT_CHUNK at a time. */
#define DIRECT_MIN        (64u * 1024u)
#define DIRECT_CHUNK      (256u * 1024u)
#define HEAD_CHUNK        4096u
#define CKPT_INTERVAL_MS  100
#define FSYNC_INTERVAL_MS 100
#define DEFAULT_SEGMENT   (64u * 1024u * 1024u)

/* --- shared helpers --- */

static uint64_t max64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

static int errno_code(int e)
{
    return (e == ENOSPC || e == EDQUOT) ? M2A_ERR_NOSPACE : M2A_ERR_IO;
}

int m2a_spool_pwrite_all(struct m2a_spool *s, int fd, const void *buf, size_t n, uint64_t off)
{
    const unsigned char *p = buf;
    while (n > 0) {
        ssize_t w = s->io->pwrite(fd, p, n, (off_t)off);
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

int m2a_spool_write_atomic(struct m2a_spool *s, const char *name, const void *data, size_t len)
{
    char tmp[M2A_SPOOL_NAME_MAX];
    snprintf(tmp, sizeof(tmp), "%s.tmp", name);
    int fd = s->io->openat(s->dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return errno_code(errno);
    int rc = 0;
    if (m2a_spool_pwrite_all(s, fd, data, len, 0) != 0 || s->io->fsync(fd) != 0)
        rc = errno_code(errno);
    if (s->io->close(fd) != 0 && rc == 0)
        rc = errno_code(errno);
    if (rc == 0 && s->io->renameat(s->dirfd, tmp, s->dirfd, name) != 0)
        rc = errno_code(errno);
    if (rc == 0 && s->io->fsync(s->dirfd) != 0)
        rc = errno_code(errno);
    if (rc != 0)
        s->io->unlinkat(s->dirfd, tmp, 0);
    return rc;
}

void m2a_spool_seg_push(struct m2a_spool *s, struct m2a_spool_seg g)
{
    if (s->nsegs == s->segs_cap) {
        s->segs_cap = s->segs_cap ? s->segs_cap * 2 : 16;
        s->segs = xrealloc(s->segs, s->segs_cap * sizeof(*s->segs));
    }
    s->segs[s->nsegs++] = g;
}

/* Wakes whoever polls the eventfd fd. */
static void kick(int fd)
{
    uint64_t one = 1;
    /* Only fails when the counter would overflow: the other side is awake anyway. */
    (void)!write(fd, &one, sizeof(one));
}

static void drain(int fd)
{
    uint64_t v;
    (void)!read(fd, &v, sizeof(v));
}

static void unlink_segment(struct m2a_spool *s, uint64_t first)
{
    char name[M2A_SPOOL_NAME_MAX];
    m2a_spool_format_segment_name(name, sizeof(name), first);
    /* A leftover is harmless: confirmed or dropped, the next open deletes
     * it or counts it as replayable again. */
    s->io->unlinkat(s->dirfd, name, 0);
}

/* Records with lo <= seq <= hi that exist: the range minus the gaps.
 * Caller holds mu or is the reader (the only one changing the gaps). */
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

/* --- open and close --- */

/* Opens the last segment for appending, creating the first one if none. */
static int writer_init(struct m2a_spool *s, char *err, size_t errlen)
{
    char name[M2A_SPOOL_NAME_MAX];
    if (s->nsegs == 0) {
        m2a_spool_format_segment_name(name, sizeof(name), s->w_next);
        s->w_fd = s->io->openat(s->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
        if (s->w_fd < 0 || s->io->fsync(s->dirfd) != 0)
            goto fail;
        m2a_spool_seg_push(s, (struct m2a_spool_seg){s->w_next, s->w_next - 1, 0});
    } else {
        m2a_spool_format_segment_name(name, sizeof(name), s->segs[s->nsegs - 1].first);
        s->w_fd = s->io->openat(s->dirfd, name, O_WRONLY | O_CLOEXEC, 0);
        if (s->w_fd < 0)
            goto fail;
    }
    struct m2a_spool_seg *cur = &s->segs[s->nsegs - 1];
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

static int make_eventfds(struct m2a_spool *s, char *err, size_t errlen)
{
    int *fds[] = {&s->notifyfd, &s->maintfd, &s->roomfd};
    for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
        *fds[i] = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (*fds[i] < 0) {
            snprintf(err, errlen, "cannot create eventfd: %s", strerror(errno));
            return M2A_ERR_IO;
        }
    }
    return 0;
}

/* Syncs the directory holding the spool's: the name of a directory just
 * made is durable only then (fsync(2)), and with it everything the spool
 * will sync inside. 0 or -1 with errno. */
static int sync_parent(struct m2a_spool *s)
{
    size_t n = strlen(s->dir);
    while (n > 1 && s->dir[n - 1] == '/')
        n--;
    while (n > 0 && s->dir[n - 1] != '/')
        n--;
    while (n > 1 && s->dir[n - 1] == '/')
        n--;
    char *parent = n ? xstrndup(s->dir, n) : xstrdup(".");
    int fd = s->io->openat(AT_FDCWD, parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    int rc = fd >= 0 && s->io->fsync(fd) == 0 ? 0 : -1, e = errno;
    if (fd >= 0)
        s->io->close(fd);
    free(parent);
    errno = e;
    return rc;
}

/* Locks the directory (creating it if needed): one bridge per spool. */
static int lock_dir(struct m2a_spool *s, char *err, size_t errlen)
{
    if (s->io->mkdir(s->dir, 0750) == 0) {
        if (sync_parent(s) != 0) {
            int e = errno;
            /* Gone again, so that the next start does not skip the sync. */
            s->io->unlinkat(AT_FDCWD, s->dir, AT_REMOVEDIR);
            snprintf(err, errlen,
                     "cannot sync the directory holding spool directory %s: %s (the name of a"
                     " directory the bridge makes must be synced to survive a power loss;"
                     " or create the directory beforehand)",
                     s->dir, strerror(e));
            return M2A_ERR_IO;
        }
    } else if (errno != EEXIST) {
        snprintf(err, errlen, "cannot create spool directory %s: %s", s->dir, strerror(errno));
        return M2A_ERR_IO;
    }
    s->dirfd = s->io->openat(AT_FDCWD, s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0);
    if (s->dirfd < 0) {
        snprintf(err, errlen, "cannot open spool directory %s: %s", s->dir, strerror(errno));
        return M2A_ERR_IO;
    }
    s->lockfd = s->io->openat(s->dirfd, M2A_SPOOL_LOCK_FILE, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
    if (s->lockfd >= 0 && s->io->flock(s->lockfd, LOCK_EX | LOCK_NB) == 0)
        return 0;
    if (errno == EWOULDBLOCK)
        snprintf(err, errlen,
                 "spool directory %s is in use by another mqtt2amqp process "
                 "(its lock file is held); give each instance its own spool.dir",
                 s->dir);
    else
        snprintf(err, errlen, "cannot lock spool directory %s: %s", s->dir, strerror(errno));
    return M2A_ERR_IO;
}

static void spool_free(struct m2a_spool *s)
{
    int files[] = {s->w_fd, s->r_fd, s->lockfd /* releases the flock */, s->dirfd};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        if (files[i] >= 0)
            s->io->close(files[i]);
    int events[] = {s->notifyfd, s->maintfd, s->roomfd};
    for (size_t i = 0; i < sizeof(events) / sizeof(events[0]); i++)
        if (events[i] >= 0)
            close(events[i]);
    pthread_mutex_destroy(&s->mu);
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
    s->io = opts->io ? opts->io : &m2a_spool_io_system;
    s->dir = xstrdup(opts->dir);
    s->opts.dir = s->dir;
    if (!s->opts.segment_bytes)
        s->opts.segment_bytes = DEFAULT_SEGMENT;
    s->dirfd = s->lockfd = s->notifyfd = s->maintfd = s->roomfd = s->w_fd = s->r_fd = -1;
    s->r_cap = READ_CHUNK;
    s->r_buf = xmalloc(s->r_cap);
    s->r_hi = UINT64_MAX;
    pthread_mutex_init(&s->mu, NULL);

    int rc = lock_dir(s, err, errlen);
    if (rc == 0)
        rc = m2a_spool_recover(s, rec, err, errlen);
    if (rc == 0)
        rc = writer_init(s, err, errlen);
    if (rc == 0)
        rc = make_eventfds(s, err, errlen);
    if (rc != 0) {
        spool_free(s);
        return rc;
    }
    if (s->pub_seq > s->committed)
        kick(s->notifyfd);
    *out = s;
    return 0;
}

static int checkpoint_sync(struct m2a_spool *s);

void m2a_spool_close(struct m2a_spool *s)
{
    if (!s)
        return;
    /* A batch still waiting for room goes with s, and its early bytes too. */
    if (m2a_spool_flush(s) != 0 && s->w_early > 0)
        (void)s->io->ftruncate(s->w_fd, (off_t)s->w_size);
    if (s->opts.fsync != M2A_FSYNC_NEVER) {
        if (s->w_unsynced)
            (void)s->io->fdatasync(s->w_fd);
        if (s->w_dir_unsynced)
            (void)s->io->fsync(s->dirfd);
    }
    (void)checkpoint_sync(s);
    spool_free(s);
}

const char *m2a_spool_id(const struct m2a_spool *s)
{
    return s->id;
}

/* --- writer thread --- */

/* The batch's bytes: written early and in batch.data. */
static uint64_t batch_len(const struct m2a_spool *s)
{
    return s->w_early + s->batch.len;
}

/* Starts a new, empty segment now, named after the first record of the
 * pending batch (or the next seq): that batch, if any, goes into it. */
static int writer_rotate_now(struct m2a_spool *s)
{
    char name[M2A_SPOOL_NAME_MAX];
    uint64_t first = s->w_batch_first;
    m2a_spool_format_segment_name(name, sizeof(name), first);
    int fd = s->io->openat(s->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (fd < 0)
        return errno_code(errno);
    if (s->opts.fsync != M2A_FSYNC_NEVER &&
        ((s->w_unsynced && s->io->fdatasync(s->w_fd) != 0) || s->io->fsync(s->dirfd) != 0)) {
        int rc = errno_code(errno);
        s->io->close(fd);
        s->io->unlinkat(s->dirfd, name, 0);
        s->w_dir_unsynced = true; /* see flush_fail */
        return rc;
    }
    pthread_mutex_lock(&s->mu);
    m2a_spool_seg_push(s, (struct m2a_spool_seg){first, first - 1, 0});
    pthread_mutex_unlock(&s->mu);
    s->io->close(s->w_fd);
    s->w_fd = fd;
    s->w_first = first;
    s->w_last = first - 1;
    s->w_size = 0;
    s->w_unsynced = s->w_dir_unsynced = false;
    s->w_force_rotate = false;
    return 0;
}

/* When the current segment holds only confirmed records, moves on to a new
 * one so that the reader can delete the old one: without this, a spool
 * whose max_bytes is near segment_bytes would stay full after everything
 * was confirmed. force: do it even if the spool is less than half full. */
static int writer_reclaim(struct m2a_spool *s, bool force)
{
    if (batch_len(s) != 0 || s->w_size == 0)
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

static bool fits(const struct m2a_spool *s, uint64_t add)
{
    return s->w_bytes + add <= s->opts.max_bytes;
}

static void writer_refresh(struct m2a_spool *s)
{
    pthread_mutex_lock(&s->mu);
    s->w_bytes = s->bytes;
    pthread_mutex_unlock(&s->mu);
}

/* Asks the reader for room for need bytes beyond what is published. A new
 * or larger request, or again (the writer just started a segment, which
 * may let the reader free the previous one) wakes the reader. */
static void room_request(struct m2a_spool *s, uint64_t need, bool again)
{
    pthread_mutex_lock(&s->mu);
    bool wake = again || need > s->room_want;
    if (need > s->room_want)
        s->room_want = need;
    pthread_mutex_unlock(&s->mu);
    if (wake)
        kick(s->maintfd);
}

/* Starts a new segment if the reader said that this frees the current one
 * (block: all its records confirmed; drop_oldest: none of them held), and
 * asks the reader for room for need bytes. */
static int writer_ask_room(struct m2a_spool *s, uint64_t need)
{
    pthread_mutex_lock(&s->mu);
    bool rotate = s->room_rotate;
    s->room_rotate = false;
    pthread_mutex_unlock(&s->mu);
    uint64_t before = s->w_first;
    /* Never with bytes written early: they are in this segment (see
     * m2a_spool_append: it writes none when a flush can wait for room). */
    int rc =
        rotate && s->w_size > 0 && s->w_early == 0 ? writer_rotate_now(s) : writer_reclaim(s, true);
    if (rc == 0)
        room_request(s, need, s->w_first != before);
    return rc;
}

/* The batch plus the next record, need bytes, may not fit. Block: FULL
 * unless it does after all. Drop_oldest: the record may join the batch
 * (the flush waits for the room) unless need alone exceeds max_bytes.
 * Either way the reader is asked for room. */
static int writer_want_room(struct m2a_spool *s, uint64_t need)
{
    drain(s->roomfd); /* from here on, a wake-up is news */
    writer_refresh(s);
    if (fits(s, need))
        return 0;
    if (batch_len(s) == 0) {
        int rc = writer_ask_room(s, need);
        if (rc != 0)
            return rc;
    } else {
        room_request(s, need, false);
    }
    if (s->opts.overflow == M2A_OVERFLOW_DROP_OLDEST && need <= s->opts.max_bytes)
        return 0;
    return M2A_ERR_FULL;
}

static void split_push(struct m2a_spool *s)
{
    if (s->nsplits == s->splits_cap) {
        s->splits_cap = s->splits_cap ? s->splits_cap * 2 : 4;
        s->splits = xrealloc(s->splits, s->splits_cap * sizeof(*s->splits));
    }
    s->splits[s->nsplits++] = (struct m2a_spool_split){s->batch.len, s->w_next, -1};
}

/* Appends a record with a large body: its header and envelope head go into
 * the batch, which is then written (pwrite) after the batch's early bytes,
 * and the body after it straight from env. Nothing is synced or published:
 * m2a_spool_flush does that (or truncates it all away on failure). On
 * failure the record is not added and the batch is as it was. */
static int append_direct(struct m2a_spool *s, const struct m2a_envelope *env, uint64_t *seq)
{
    size_t start = s->batch.len;
    s->batch.len += REC_HDR;
    m2a_buf_reserve(&s->batch, m2a_envelope_encoded_size(env) - env->body.len);
    m2a_envelope_encode_head(env, &s->batch);
    size_t head = s->batch.len - start - REC_HDR;
    if (head + env->body.len > M2A_SPOOL_MAX_PAYLOAD) {
        s->batch.len = start;
        return M2A_ERR_ARG;
    }
    m2a_spool_format_record_header_tail(s->batch.data + start, head, env->body.ptr, env->body.len,
                                        s->w_next);
    uint64_t off = s->w_size + s->w_early;
    if (m2a_spool_pwrite_all(s, s->w_fd, s->batch.data, s->batch.len, off) != 0 ||
        m2a_spool_pwrite_all(s, s->w_fd, env->body.ptr, env->body.len, off + s->batch.len) != 0) {
        int e = errno;
        s->batch.len = start;
        if (s->io->ftruncate(s->w_fd, (off_t)off) != 0)
            s->w_force_rotate = true; /* see flush_fail */
        return errno_code(e);
    }
    s->w_early += s->batch.len + env->body.len;
    s->batch.len = 0;
    if (seq)
        *seq = s->w_next;
    s->w_next++;
    atomic_store_explicit(&s->w_seq, s->w_next, memory_order_relaxed);
    return 0;
}

int m2a_spool_append(struct m2a_spool *s, const struct m2a_envelope *env, uint64_t *seq)
{
    size_t plen = m2a_envelope_encoded_size(env);
    size_t rl = REC_HDR + plen;
    if (plen > M2A_SPOOL_MAX_PAYLOAD || (s->opts.max_bytes && rl > s->opts.max_bytes))
        return M2A_ERR_ARG;
    if (s->opts.max_bytes && !fits(s, batch_len(s) + rl)) {
        int rc = writer_want_room(s, batch_len(s) + rl);
        if (rc != 0)
            return rc;
    }
    /* Rotate before a record that would take the segment past segment_bytes. */
    uint64_t fill =
        s->nsplits ? s->batch.len - s->splits[s->nsplits - 1].off : s->w_size + batch_len(s);
    bool forced = s->w_force_rotate && s->nsplits == 0 && s->w_first != s->w_next;
    if (forced || (fill > 0 && fill + rl > s->opts.segment_bytes)) {
        /* Between batches the new segment is made at once: the finished one
         * can then be deleted as soon as it is confirmed. */
        if (batch_len(s) == 0) {
            int rc = writer_rotate_now(s);
            if (rc != 0)
                return rc;
        } else {
            split_push(s);
        }
    }
    /* A large body is written from where it is, now, with the batch before
     * it: no copy into the batch. Not across a segment rotation in this
     * batch, and not under drop_oldest with a bound: there a batch may wait
     * for room in m2a_spool_flush, which may start a new segment for it
     * (writer_ask_room), so it stays in memory. Under block every append
     * fitted, so the flush never waits. */
    if (env->body.len >= DIRECT_MIN && s->nsplits == 0 &&
        (!s->opts.max_bytes || s->opts.overflow != M2A_OVERFLOW_DROP_OLDEST))
        return append_direct(s, env, seq);

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
    m2a_spool_format_record_header(s->batch.data + start, got, s->w_next);
    if (seq)
        *seq = s->w_next;
    s->w_next++;
    atomic_store_explicit(&s->w_seq, s->w_next, memory_order_relaxed);
    return 0;
}

/* Undoes a batch that could not be written: the segment goes back to its
 * last good end, the batch's new segments disappear (they were never
 * published: the writer's own files), sequence numbers are reused. */
static int flush_fail(struct m2a_spool *s, int e, size_t opened)
{
    if (s->io->ftruncate(s->w_fd, (off_t)s->w_size) != 0)
        s->w_force_rotate = true; /* never append after bytes we could not remove */
    for (size_t i = 0; i < opened; i++) {
        (void)!s->io->ftruncate(s->splits[i].fd, 0);
        s->io->close(s->splits[i].fd);
        unlink_segment(s, s->splits[i].seq);
    }
    /* Until the directory is synced, a power loss can bring the unlinked
     * segment back; its name would then bound the current segment, and
     * recovery would drop as damage the records the next batches put there
     * with the same sequence numbers. The next flush syncs it first. */
    if (opened > 0)
        s->w_dir_unsynced = true;
    s->w_next = s->w_batch_first;
    atomic_store_explicit(&s->w_seq, s->w_next, memory_order_relaxed);
    s->batch.len = 0;
    s->w_early = 0;
    s->nsplits = 0;
    return errno_code(e);
}

static int flush_sync(struct m2a_spool *s, uint64_t end0)
{
    size_t n = s->nsplits;
    if (s->opts.fsync == M2A_FSYNC_NEVER)
        return 0;
    bool batch = s->opts.fsync == M2A_FSYNC_BATCH;
    /* Under interval, a segment we stop writing is synced before its fd goes. */
    if ((batch && end0 > 0) || (n > 0 && (end0 > 0 || s->w_unsynced)))
        if (s->io->fdatasync(s->w_fd) != 0)
            return -1;
    for (size_t i = 0; i < n; i++)
        if ((batch || i + 1 < n) && s->io->fdatasync(s->splits[i].fd) != 0)
            return -1;
    if (batch && (n > 0 || s->w_dir_unsynced)) {
        if (s->io->fsync(s->dirfd) != 0)
            return -1;
        s->w_dir_unsynced = false;
    }
    if (!batch) {
        s->w_unsynced = true;
        s->w_dir_unsynced |= n > 0;
    }
    return 0;
}

static void flush_publish(struct m2a_spool *s, uint64_t end0)
{
    size_t n = s->nsplits;
    pthread_mutex_lock(&s->mu);
    struct m2a_spool_seg *cur = &s->segs[s->nsegs - 1];
    cur->size += end0;
    if (end0 > 0)
        cur->last = (n ? s->splits[0].seq : s->w_next) - 1;
    for (size_t i = 0; i < n; i++) {
        size_t a = s->splits[i].off, b = i + 1 < n ? s->splits[i + 1].off : s->batch.len;
        uint64_t last = (i + 1 < n ? s->splits[i + 1].seq : s->w_next) - 1;
        m2a_spool_seg_push(s, (struct m2a_spool_seg){s->splits[i].seq, last, b - a});
    }
    uint64_t total = batch_len(s);
    s->bytes += total;
    s->pub_seq = s->w_next - 1;
    s->w_bytes = s->bytes;
    /* This batch got its room; what is left is a refused append's. */
    s->room_want = s->room_want > total ? s->room_want - total : 0;
    s->room_rotate = false;
    pthread_mutex_unlock(&s->mu);

    if (n > 0) {
        s->io->close(s->w_fd);
        for (size_t i = 0; i + 1 < n; i++)
            s->io->close(s->splits[i].fd);
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
    if (batch_len(s) == 0)
        return 0;
    if (s->opts.max_bytes && !fits(s, batch_len(s))) {
        drain(s->roomfd); /* from here on, a wake-up is news */
        writer_refresh(s);
        if (!fits(s, batch_len(s))) { /* the batch stays: the caller retries */
            int rc = writer_ask_room(s, batch_len(s));
            if (rc == 0)
                return M2A_ERR_FULL;
            (void)flush_fail(s, 0, 0); /* nothing was written: the batch goes */
            return rc;
        }
    }
    size_t n = s->nsplits, opened = 0;
    size_t end0 = n ? s->splits[0].off : s->batch.len;
    if (end0 > 0 &&
        m2a_spool_pwrite_all(s, s->w_fd, s->batch.data, end0, s->w_size + s->w_early) != 0)
        return flush_fail(s, errno, 0);
    for (size_t i = 0; i < n; i++) {
        char name[M2A_SPOOL_NAME_MAX];
        m2a_spool_format_segment_name(name, sizeof(name), s->splits[i].seq);
        int fd = s->io->openat(s->dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
        if (fd < 0)
            return flush_fail(s, errno, opened);
        s->splits[i].fd = fd;
        opened++;
        size_t a = s->splits[i].off, b = i + 1 < n ? s->splits[i + 1].off : s->batch.len;
        if (m2a_spool_pwrite_all(s, fd, s->batch.data + a, b - a, 0) != 0)
            return flush_fail(s, errno, opened);
    }
    if (flush_sync(s, s->w_early + end0) != 0)
        return flush_fail(s, errno, opened);
    flush_publish(s, s->w_early + end0);
    kick(s->notifyfd);
    s->batch.len = 0;
    s->w_early = 0;
    s->nsplits = 0;
    s->w_batch_first = s->w_next;
    return 0;
}

int m2a_spool_room_fd(const struct m2a_spool *s)
{
    return s->roomfd;
}

int m2a_spool_tick(struct m2a_spool *s)
{
    int rc = 0;
    uint64_t now = m2a_now_ms();
    if (s->opts.fsync == M2A_FSYNC_INTERVAL && (s->w_unsynced || s->w_dir_unsynced) &&
        now - s->w_sync_ms >= FSYNC_INTERVAL_MS) {
        if (s->w_unsynced && s->io->fdatasync(s->w_fd) != 0)
            rc = M2A_ERR_IO;
        else
            s->w_unsynced = false;
        if (s->w_dir_unsynced && s->io->fsync(s->dirfd) != 0)
            rc = M2A_ERR_IO;
        else
            s->w_dir_unsynced = false;
        s->w_sync_ms = now;
    }
    int r = writer_reclaim(s, false);
    return rc ? rc : r;
}

/* --- reader thread --- */

/* Opens the segment to read: the one holding the first record after
 * r_floor (next false), or the one after r_first. */
static int reader_enter(struct m2a_spool *s, bool next)
{
    pthread_mutex_lock(&s->mu);
    size_t i = 0;
    if (!next) {
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
    s->r_first = s->segs[i].first;
    s->r_limit = s->segs[i].size;
    s->r_has_next = i + 1 < s->nsegs;
    /* Recovery counts such records as damage (and replays what follows
     * them); reading one would skip every later record as out of order
     * (found by fuzz_spool_record). */
    s->r_hi = s->r_has_next ? s->segs[i + 1].first : UINT64_MAX;
    pthread_mutex_unlock(&s->mu);
    /* Outside mu: only this thread deletes segments. */
    char name[M2A_SPOOL_NAME_MAX];
    m2a_spool_format_segment_name(name, sizeof(name), s->r_first);
    int fd = s->io->openat(s->dirfd, name, O_RDONLY | O_CLOEXEC, 0);
    if (fd < 0)
        return M2A_ERR_IO;
    if (s->r_fd >= 0)
        s->io->close(s->r_fd);
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
        /* A segment discarded after this one must not widen the bound. */
        if (s->r_has_next && s->segs[i + 1].first < s->r_hi)
            s->r_hi = s->segs[i + 1].first;
    } else {
        s->r_has_next = true; /* deleted: it was not the last */
    }
    pthread_mutex_unlock(&s->mu);
}

/* The segment being read was deleted or discarded: whatever it still held
 * is not to be handed out, so reading goes on with the next segment. */
static void reader_leave(struct m2a_spool *s)
{
    s->r_base = 0;
    s->r_pos = s->r_len = 0;
    s->r_limit = 0;
    s->r_has_next = true;
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
    /* After a large record, the next is likely large too: read its header
     * (and a little) only, so that its payload goes straight where the
     * caller wants it rather than through r_buf. */
    size_t chunk = s->r_after_direct ? HEAD_CHUNK : READ_CHUNK;
    uint64_t want = need > chunk ? need : chunk;
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
        ssize_t n = s->io->pread(s->r_fd, s->r_buf + s->r_len, want - s->r_len,
                                 (off_t)(s->r_base + s->r_len));
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
    s->r_pos++;
    if (s->r_pos >= s->r_len)
        return;
    size_t at = m2a_spool_format_magic_find(s->r_buf, s->r_len, s->r_pos);
    if (at < s->r_len)
        s->r_pos = at;
    else if (s->r_len - s->r_pos > 3)
        s->r_pos = s->r_len - 3; /* may be the start of a magic */
}

/* Reads the rest of the large record at r_pos (its header checked: rl
 * bytes in all, sequence number sq) from the file straight into the
 * buffer sink gives, checking its CRC on the way, chunk by chunk while the
 * bytes are in the cache. 1: the record is there and sound, the cursor
 * past it; 0: it is not (not all published, cut short, or its CRC is
 * wrong): damage, the cursor unmoved; or M2A_ERR_IO. */
static int reader_direct(struct m2a_spool *s, size_t rl, m2a_spool_sink_fn sink, void *ctx,
                         void **out)
{
    const unsigned char *hdr = s->r_buf + s->r_pos;
    uint64_t at = s->r_base + s->r_pos;
    if (at + rl > s->r_limit)
        reader_refresh(s);
    if (at + rl > s->r_limit)
        return 0; /* published bytes are whole records: a partial one is damage */
    size_t plen = rl - REC_HDR, have = s->r_len - s->r_pos - REC_HDR;
    unsigned char *dst = sink(ctx, plen);
    uint32_t crc = m2a_spool_format_record_crc_start(hdr);
    if (have > 0) {
        memcpy(dst, hdr + REC_HDR, have);
        crc = m2a_crc32c(crc, dst, have);
    }
    uint64_t off = at + REC_HDR + have;
    while (have < plen) {
        size_t want = plen - have < DIRECT_CHUNK ? plen - have : DIRECT_CHUNK;
        ssize_t n = s->io->pread(s->r_fd, dst + have, want, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return M2A_ERR_IO;
        if (n == 0)
            return 0; /* shorter than published: damage */
        crc = m2a_crc32c(crc, dst + have, (size_t)n);
        have += (size_t)n;
        off += (uint64_t)n;
    }
    if (crc != m2a_spool_format_record_crc_stored(hdr))
        return 0;
    /* Every byte buffered belonged to this record: start afresh after it. */
    s->r_base = at + rl;
    s->r_pos = s->r_len = 0;
    s->r_after_direct = true;
    *out = dst;
    return 1;
}

/* The next record after the cursor: in r_buf (*data points there, and
 * with a sink it is copied to the sink's buffer), or, with a sink, for a
 * large record not all in r_buf, read straight into the sink's buffer. */
static int reader_next(struct m2a_spool *s, uint64_t *seq, const void **data, size_t *len,
                       m2a_spool_sink_fn sink, void *ctx)
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
        enum m2a_spool_format_check pr =
            m2a_spool_format_record_parse(p, avail, s->r_prev, s->r_hi, &sq, &rl);
        if (pr == M2A_SPOOL_RECORD_SHORT && sink && avail >= REC_HDR && rl >= DIRECT_MIN &&
            m2a_spool_format_record_head(p, avail, s->r_prev, s->r_hi, &sq, &rl) ==
                M2A_SPOOL_RECORD_OK) {
            void *dst;
            int d = reader_direct(s, rl, sink, ctx, &dst);
            if (d < 0)
                return d;
            if (d == 0) {
                reader_skip(s);
                continue;
            }
            s->r_prev = sq;
            if (sq <= s->r_floor)
                continue;
            s->r_taken = sq;
            *seq = sq;
            *data = dst;
            *len = rl - REC_HDR;
            return 0;
        }
        if (pr == M2A_SPOOL_RECORD_OK) {
            s->r_pos += rl;
            s->r_prev = sq;
            s->r_after_direct = false;
            if (sq <= s->r_floor)
                continue;
            s->r_taken = sq;
            *seq = sq;
            *data = p + REC_HDR;
            *len = rl - REC_HDR;
            if (sink) {
                void *dst = sink(ctx, *len);
                if (*len > 0)
                    memcpy(dst, *data, *len);
                *data = dst;
            }
            return 0;
        }
        if (pr == M2A_SPOOL_RECORD_SHORT) {
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

int m2a_spool_read(struct m2a_spool *s, uint64_t *seq, const void **data, size_t *len)
{
    return reader_next(s, seq, data, len, NULL, NULL);
}

int m2a_spool_read_to(struct m2a_spool *s, uint64_t *seq, size_t *len, m2a_spool_sink_fn sink,
                      void *ctx)
{
    const void *data;
    return reader_next(s, seq, &data, len, sink, ctx);
}

/* Unlinks the segments (never the last) whose records are all covered by
 * the checkpoint on disk. */
static void delete_covered(struct m2a_spool *s)
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
        unlink_segment(s, s->doomed[i]);
        if (s->r_positioned && s->doomed[i] == s->r_first)
            reader_leave(s);
    }
}

/* Writes the checkpoint if it is behind, then deletes what it covers. */
static int checkpoint_sync(struct m2a_spool *s)
{
    int rc = 0;
    uint64_t c = s->committed; /* ours: no lock to read it */
    if (c != s->ckpt_durable) {
        unsigned char b[M2A_SPOOL_CHECKPOINT_SIZE];
        m2a_spool_format_checkpoint_encode(b, c);
        rc = m2a_spool_write_atomic(s, M2A_SPOOL_CHECKPOINT_FILE, b, sizeof(b));
        s->ckpt_ms = m2a_now_ms(); /* also after a failure: retry on the next interval */
        if (rc == 0)
            s->ckpt_durable = c;
    }
    delete_covered(s);
    return rc;
}

int m2a_spool_commit(struct m2a_spool *s, uint64_t seq)
{
    pthread_mutex_lock(&s->mu);
    if (seq > s->pub_seq) {
        pthread_mutex_unlock(&s->mu);
        return M2A_ERR_ARG;
    }
    bool moved = seq > s->committed;
    if (moved)
        s->committed = seq;
    pthread_mutex_unlock(&s->mu);
    if (!moved)
        return 0;
    s->r_floor = max64(s->r_floor, seq);
    return m2a_now_ms() - s->ckpt_ms >= CKPT_INTERVAL_MS ? checkpoint_sync(s) : 0;
}

/* The index of the oldest segment, never the writer's, that drop_oldest
 * may discard (unconfirmed records, none of them held by the reader), or
 * -1. With current: whether the writer's segment could be freed (discarded,
 * or deleted once all its records are confirmed) if it were not the last,
 * as an index or -1. Caller holds mu. */
static long discard_victim(const struct m2a_spool *s, bool current)
{
    bool none_held = s->r_taken <= s->committed;
    bool drop = s->opts.overflow == M2A_OVERFLOW_DROP_OLDEST;
    size_t i = current ? s->nsegs - 1 : 0, end = current ? s->nsegs : s->nsegs - 1;
    for (; i < end; i++) {
        const struct m2a_spool_seg *g = &s->segs[i];
        bool confirmed = g->last <= s->committed;
        if (current && g->size == 0)
            break;
        if (current && confirmed)
            return (long)i;
        if (!confirmed && drop && (none_held || g->first > s->r_taken))
            return (long)i;
    }
    return -1;
}

void m2a_spool_gap_push(struct m2a_spool *s, uint64_t lo, uint64_t hi)
{
    if (lo > hi)
        return;
    if (s->ngaps == s->gaps_cap) {
        s->gaps_cap = s->gaps_cap ? s->gaps_cap * 2 : 4;
        s->gaps = xrealloc(s->gaps, s->gaps_cap * sizeof(*s->gaps));
    }
    s->gaps[s->ngaps++] = (struct m2a_spool_gap){lo, hi};
}

/* Gaps at or below the committed position count for nothing any more. */
static void gaps_prune(struct m2a_spool *s)
{
    size_t k = 0;
    for (size_t i = 0; i < s->ngaps; i++)
        if (s->gaps[i].hi > s->committed)
            s->gaps[k++] = s->gaps[i];
    s->ngaps = k;
}

/* Discards segs[i] (see the opening comment); called with mu held, returns
 * with it released. */
static int discard(struct m2a_spool *s, size_t i)
{
    struct m2a_spool_seg g = s->segs[i];
    if (s->r_taken <= s->committed) {
        /* The reader holds nothing: give up every unconfirmed record up to
         * the segment's end, as a confirm would, and let the checkpoint
         * delete what it covers. */
        s->dropped += count_records(s, s->committed + 1, g.last);
        s->committed = g.last;
        pthread_mutex_unlock(&s->mu);
        s->r_floor = max64(s->r_floor, g.last);
        return checkpoint_sync(s);
    }
    /* Behind records the reader holds: this segment alone goes, its
     * sequence numbers become a gap. */
    s->dropped += count_records(s, g.first, g.last);
    gaps_prune(s);
    m2a_spool_gap_push(s, g.first, g.last);
    memmove(s->segs + i, s->segs + i + 1, (s->nsegs - i - 1) * sizeof(*s->segs));
    s->nsegs--;
    s->bytes -= g.size;
    pthread_mutex_unlock(&s->mu);
    unlink_segment(s, g.first);
    if (s->r_positioned && g.first == s->r_first)
        reader_leave(s);
    return 0;
}

/* Serves the writer's request for room: discards under drop_oldest until
 * it fits, then wakes the writer. If it does not fit and the segment being
 * written could be freed were it not the writer's, tells the writer so
 * (once). Otherwise the request waits for confirms. */
static int serve_room(struct m2a_spool *s)
{
    for (;;) {
        pthread_mutex_lock(&s->mu);
        if (s->room_want == 0) { /* the writer flushed meanwhile */
            pthread_mutex_unlock(&s->mu);
            return 0;
        }
        if (s->bytes + s->room_want <= s->opts.max_bytes) {
            s->room_want = 0;
            s->room_rotate = false;
            pthread_mutex_unlock(&s->mu);
            kick(s->roomfd);
            return 0;
        }
        long v = discard_victim(s, false);
        if (v < 0) {
            bool news = !s->room_rotate && discard_victim(s, true) >= 0;
            s->room_rotate |= news;
            pthread_mutex_unlock(&s->mu);
            if (news)
                kick(s->roomfd);
            return 0;
        }
        int rc = discard(s, (size_t)v);
        if (rc != 0)
            return rc;
    }
}

int m2a_spool_maintain(struct m2a_spool *s)
{
    drain(s->maintfd); /* a flag beside it could not be set with the write */
    pthread_mutex_lock(&s->mu);
    bool want = s->room_want != 0;
    bool freeable = s->nsegs > 1 && s->segs[0].last <= s->committed;
    bool covered = s->nsegs > 1 && s->segs[0].last <= s->ckpt_durable;
    pthread_mutex_unlock(&s->mu);
    int rc = 0;
    bool behind = s->committed != s->ckpt_durable;
    if (covered || (behind && want && freeable) ||
        (behind && m2a_now_ms() - s->ckpt_ms >= CKPT_INTERVAL_MS))
        rc = checkpoint_sync(s);
    /* Not while checkpoints fail: a discard would count drops that a
     * restart replays. */
    return rc == 0 && want ? serve_room(s) : rc;
}

int m2a_spool_maint_fd(const struct m2a_spool *s)
{
    return s->maintfd;
}

int m2a_spool_notify_fd(const struct m2a_spool *s)
{
    return s->notifyfd;
}

void m2a_spool_notify_clear(struct m2a_spool *s)
{
    drain(s->notifyfd);
}

/* --- any thread --- */

void m2a_spool_get_stats(struct m2a_spool *s, struct m2a_spool_stats *out)
{
    uint64_t next = atomic_load_explicit(&s->w_seq, memory_order_relaxed);
    pthread_mutex_lock(&s->mu);
    uint64_t last = next - 1, c = s->committed;
    out->messages = last > c ? count_records(s, c + 1, last) : 0;
    out->bytes = s->bytes;
    out->segments = s->nsegs;
    out->next_seq = next;
    out->committed_seq = c;
    out->dropped = s->dropped;
    pthread_mutex_unlock(&s->mu);
}
