/* crash_check.c - the spool's power-loss checker; see crash_check.h.
 *
 * Three parts: the contents of records (a function of the run's seed and
 * the sequence number, so the checker needs nothing but the trace); the
 * recorded run (a writer thread and a reader thread on one spool, the
 * trace's mutex ordering their calls and markers); and the check, which
 * walks the trace with the model (crashfs.h), makes a bounded set of states
 * at each point where the possible states change, opens each distinct one
 * once, and holds each crash point's states against what was promised
 * before that point. Threads: the run's two threads only touch the spool,
 * the trace (under its mutex) and their own counters; the check runs on the
 * caller's thread. */
#include "crash_check.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/spool_format.h"
#include "mqtt2amqp/util.h"
#include "crashfs.h"
#include "files.h"

#define RUN_TIMEOUT_MS   120000
#define RECOVER_READ_MAX 10000000u

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t rnd(uint64_t *state)
{
    *state += 0x9e3779b97f4a7c15ull;
    return mix64(*state);
}

static double now_s(void)
{
    return (double)m2a_now_us() / 1e6;
}

/* --- record contents --- */

static struct m2a_envelope envelope_with(char *body, size_t len, uint64_t stamp)
{
    return (struct m2a_envelope){.timestamp_ms = 1700000000000ull + stamp,
                                 .route = {"r", 1},
                                 .exchange = {"ex", 2},
                                 .routing_key = {"k", 1},
                                 .topic = {"t", 1},
                                 .qos = 1,
                                 .persistent = true,
                                 .body = {body, len}};
}

struct m2a_envelope th_crash_envelope(uint64_t seed, unsigned max_body, uint64_t seq,
                                      unsigned version, char *body)
{
    uint64_t h = mix64(seed ^ mix64(seq) ^ ((uint64_t)version * 0x9e3779b97f4a7c15ull));
    /* Mostly small records, one in eight up to max_body: writes that cross
     * sectors and pages, records torn across them. */
    size_t cap = (h & 7) == 0 ? max_body : max_body / 8;
    size_t len = cap ? (size_t)((h >> 8) % (cap + 1)) : 0;
    int k = version ? snprintf(body, 32, "seq=%" PRIu64 ";v=%u;", seq, version)
                    : snprintf(body, 32, "seq=%" PRIu64 ";", seq);
    if (len < (size_t)k)
        len = (size_t)k;
    uint64_t w = 0;
    for (size_t i = (size_t)k; i < len; i++) {
        if ((i - (size_t)k) % 8 == 0)
            w = mix64(h + i);
        body[i] = (char)('a' + (w & 0xff) % 26);
        w >>= 8;
    }
    return envelope_with(body, len, seq);
}

/* The record appended after recovery, number i. */
static struct m2a_envelope after_envelope(unsigned i, char *body)
{
    int k = snprintf(body, 32, "after-crash-%u", i);
    return envelope_with(body, (size_t)k, 0);
}

static bool payload_is(const struct m2a_envelope *e, const void *data, size_t len,
                       struct m2a_buf *scratch)
{
    m2a_buf_reset(scratch);
    m2a_envelope_encode(e, scratch);
    return scratch->len == len && memcmp(scratch->data, data, len) == 0;
}

/* --- the recorded run --- */

struct run {
    const struct th_crash_traffic *tr;
    struct m2a_spool *s;
    struct th_crash_run_stats *st;
    uint64_t deadline_ms;
    unsigned *version; /* version[seq]: the content of seq's last attempt (set by the
                          writer before its flush, read by the reader after it) */
    _Atomic bool writer_done, failed;
    pthread_mutex_t mu; /* err */
};

static void run_fail(struct run *r, const char *fmt, ...)
{
    pthread_mutex_lock(&r->mu);
    if (!atomic_load(&r->failed)) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->st->err, sizeof(r->st->err), fmt, ap);
        va_end(ap);
        atomic_store(&r->failed, true);
    }
    pthread_mutex_unlock(&r->mu);
}

static bool run_over(struct run *r)
{
    if (atomic_load(&r->failed))
        return true;
    if (m2a_now_ms() > r->deadline_ms) {
        run_fail(r, "the run took longer than %d s", RUN_TIMEOUT_MS / 1000);
        return true;
    }
    return false;
}

static void wait_fd(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    (void)poll(&p, 1, ms);
}

/* Flushes the batch lo..hi, waiting for room as the MQTT side does. 0, or
 * 1 when a failure armed by the caller (w_arm) made it fail: the batch is
 * gone and its sequence numbers are reused, as when the MQTT side drops
 * the connection and the broker redelivers. */
static int w_flush(struct run *r, uint64_t lo, uint64_t hi, bool armed)
{
    th_iotrace_mark(TH_MARK_FLUSH, lo, hi);
    int rc = m2a_spool_flush(r->s);
    while (rc == M2A_ERR_FULL && !run_over(r)) {
        wait_fd(m2a_spool_room_fd(r->s), 20);
        rc = m2a_spool_flush(r->s);
    }
    if (armed && (rc == M2A_ERR_NOSPACE || rc == M2A_ERR_IO)) {
        th_iotrace_mark(TH_MARK_FAILED, lo, hi);
        r->st->failed_flushes++;
        return 1;
    }
    if (rc != 0) {
        run_fail(r, "flush of %" PRIu64 "..%" PRIu64 ": %s", lo, hi, m2a_strerror(rc));
        return 0;
    }
    th_iotrace_mark(TH_MARK_ACK, lo, hi);
    r->st->flushes++;
    return 0;
}

/* Arms a failure for the coming batch (its first append, which may start a
 * segment, and its flush): one of the first three writes fails half way
 * (disk full), or one of the first three syncs fails (EIO). nth 0 disarms. */
static void w_arm(unsigned nth, bool sync)
{
    th_iotrace_fail_pwrite(sync ? 0 : nth);
    th_iotrace_fail_sync(sync ? nth : 0);
}

/* The MQTT side's periodic call; under interval, a completed sync covers
 * every record flushed before it. */
static void w_tick(struct run *r, uint64_t flushed)
{
    uint64_t before = th_iotrace_thread_syncs();
    int rc = m2a_spool_tick(r->s);
    if (rc != 0) {
        run_fail(r, "tick: %s", m2a_strerror(rc));
        return;
    }
    if (r->tr->fsync == M2A_FSYNC_INTERVAL && th_iotrace_thread_syncs() != before) {
        th_iotrace_mark(TH_MARK_SYNCED, flushed, 0);
        r->st->interval_syncs++;
    }
}

static void sleep_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    nanosleep(&ts, NULL); /* pacing of the traffic, not synchronisation */
}

/* Appends record next, flushing what came before it while the spool is
 * full (overflow block). 0, 1 when an armed failure made it fail (nothing
 * was added), or -1. */
static int w_append(struct run *r, uint64_t *lo, uint64_t next, unsigned version, char *body,
                    bool armed)
{
    const struct th_crash_traffic *tr = r->tr;
    r->version[next] = version;
    struct m2a_envelope e = th_crash_envelope(tr->seed, tr->max_body, next, version, body);
    uint64_t seq = 0;
    int rc = m2a_spool_append(r->s, &e, &seq);
    while (rc == M2A_ERR_FULL && !run_over(r)) {
        if (*lo < next)
            w_flush(r, *lo, next - 1, false);
        *lo = next;
        wait_fd(m2a_spool_room_fd(r->s), 20);
        w_tick(r, next - 1);
        rc = m2a_spool_append(r->s, &e, &seq);
    }
    if (armed && rc == M2A_ERR_IO)
        return 1;
    if (rc != 0 || seq != next) {
        run_fail(r, "append of %" PRIu64 ": %s (seq %" PRIu64 ")", next, m2a_strerror(rc), seq);
        return -1;
    }
    return 0;
}

static void *writer(void *arg)
{
    struct run *r = arg;
    const struct th_crash_traffic *tr = r->tr;
    char *body = xmalloc(tr->max_body + 32);
    uint64_t next = 1, rng = tr->seed ^ 0x77726974ull;
    uint64_t batches = tr->records / ((tr->max_batch + 1) / 2 + 1) + 1;
    uint64_t pace_us = tr->min_ms * 1000 / batches;
    unsigned version = 0;
    while (next <= tr->records && !run_over(r)) {
        uint64_t b = 1 + rnd(&rng) % tr->max_batch, lo = next;
        bool armed =
            tr->fail_every && version < TH_CRASH_VERSIONS - 1 && rnd(&rng) % tr->fail_every == 0;
        int failed = 0;
        if (armed)
            w_arm(1 + (unsigned)(rnd(&rng) % 3), rnd(&rng) & 1);
        for (uint64_t i = 0; i < b && next <= tr->records && failed == 0; i++, next++)
            failed = w_append(r, &lo, next, version, body, armed);
        if (failed == 1) /* that record was not added: the batch ends before it */
            next--;
        if (failed >= 0 && lo < next && !atomic_load(&r->failed))
            failed |= w_flush(r, lo, next - 1, armed);
        w_arm(0, false);
        if (failed == 1) {
            next = lo; /* redelivered: the same messages again, other bytes */
            th_iotrace_mark(TH_MARK_VERSION, ++version, 0);
        }
        w_tick(r, next - 1);
        if (pace_us)
            sleep_us(pace_us / 2 + rnd(&rng) % pace_us);
    }
    /* Under interval, tick until a sync covers the last batch too. */
    for (int i = 0; tr->fsync == M2A_FSYNC_INTERVAL && i < 100 && !atomic_load(&r->failed); i++) {
        uint64_t syncs = r->st->interval_syncs;
        w_tick(r, next - 1);
        if (r->st->interval_syncs != syncs)
            break;
        sleep_us(10000);
    }
    r->st->appended = next - 1;
    free(body);
    atomic_store(&r->writer_done, true);
    return NULL;
}

struct reader {
    struct run *r;
    uint64_t *win; /* read, not yet committed, ascending */
    size_t nwin, cap;
    uint64_t last, rng;
    struct m2a_buf scratch;
    char *body;
};

static void r_maintain(struct reader *rd)
{
    struct m2a_spool_stats before, st;
    m2a_spool_get_stats(rd->r->s, &before);
    th_iotrace_mark(TH_MARK_MAINT, 0, 0);
    int rc = m2a_spool_maintain(rd->r->s);
    m2a_spool_get_stats(rd->r->s, &st);
    th_iotrace_mark(TH_MARK_MAINT_END, st.dropped, 0);
    /* Drops that did not move the committed position: a segment beyond the
     * records held went, leaving a gap. */
    if (st.dropped > before.dropped && st.committed_seq == before.committed_seq)
        rd->r->st->gap_discards++;
    if (rc != 0)
        run_fail(rd->r, "maintain: %s", m2a_strerror(rc));
}

/* Reads up to k records; how many it got. */
static unsigned r_read(struct reader *rd, unsigned k)
{
    const struct th_crash_traffic *tr = rd->r->tr;
    unsigned got = 0;
    while (got < k) {
        uint64_t seq;
        const void *data;
        size_t len;
        int rc = m2a_spool_read(rd->r->s, &seq, &data, &len);
        if (rc == M2A_ERR_AGAIN)
            break;
        unsigned v = rd->r->version ? rd->r->version[seq] : 0;
        struct m2a_envelope e = th_crash_envelope(tr->seed, tr->max_body, seq, v, rd->body);
        if (rc != 0 || seq <= rd->last || !payload_is(&e, data, len, &rd->scratch)) {
            run_fail(rd->r, "read: %s, seq %" PRIu64 " after %" PRIu64 " (or other bytes)",
                     m2a_strerror(rc), seq, rd->last);
            break;
        }
        th_iotrace_mark(TH_MARK_READ, seq, 0);
        rd->last = seq;
        if (rd->nwin == rd->cap) {
            rd->cap = rd->cap ? 2 * rd->cap : 256;
            rd->win = xrealloc(rd->win, rd->cap * sizeof(*rd->win));
        }
        rd->win[rd->nwin++] = seq;
        rd->r->st->read++;
        got++;
    }
    return got;
}

/* Confirms the window up to its j-th record, as a basic.ack would. */
static void r_commit(struct reader *rd, size_t j)
{
    uint64_t seq = rd->win[j];
    th_iotrace_mark(TH_MARK_COMMIT, seq, 0);
    int rc = m2a_spool_commit(rd->r->s, seq);
    if (rc != 0)
        run_fail(rd->r, "commit %" PRIu64 ": %s", seq, m2a_strerror(rc));
    memmove(rd->win, rd->win + j + 1, (rd->nwin - j - 1) * sizeof(*rd->win));
    rd->nwin -= j + 1;
    rd->r->st->commits++;
}

/* Done when the writer is, and every record was read and confirmed or
 * dropped. */
static bool r_done(struct reader *rd)
{
    if (!atomic_load(&rd->r->writer_done) || rd->nwin > 0)
        return false;
    struct m2a_spool_stats st;
    m2a_spool_get_stats(rd->r->s, &st);
    return st.messages == 0 && st.next_seq == rd->r->tr->records + 1;
}

static void *reader(void *arg)
{
    struct reader rd = {.r = arg, .rng = ((struct run *)arg)->tr->seed ^ 0x72656164ull};
    rd.body = xmalloc(rd.r->tr->max_body + 32);
    uint64_t stall_until = 0;
    while (!run_over(rd.r)) {
        r_maintain(&rd);
        uint64_t now = m2a_now_ms();
        if (now < stall_until) { /* RabbitMQ slow: records pile up, held ones stay held */
            wait_fd(m2a_spool_maint_fd(rd.r->s), 2);
            continue;
        }
        unsigned got = r_read(&rd, 1 + (unsigned)(rnd(&rd.rng) % 16));
        bool drain = atomic_load(&rd.r->writer_done) && got == 0;
        if (rd.nwin > 0 && (drain || rnd(&rd.rng) % 3 == 0))
            r_commit(&rd, drain ? rd.nwin - 1 : (size_t)(rnd(&rd.rng) % rd.nwin));
        if (rnd(&rd.rng) % 48 == 0) {
            /* A slow broker with publishes in flight: records held unconfirmed
             * while the spool fills (drop_oldest then discards behind them). */
            got += r_read(&rd, 1 + (unsigned)(rnd(&rd.rng) % 4));
            stall_until = now + 1 + rnd(&rd.rng) % (rd.r->tr->stall_ms ? rd.r->tr->stall_ms : 20);
        }
        if (got == 0) {
            if (r_done(&rd))
                break;
            m2a_spool_notify_clear(rd.r->s);
            struct pollfd p[2] = {{.fd = m2a_spool_notify_fd(rd.r->s), .events = POLLIN},
                                  {.fd = m2a_spool_maint_fd(rd.r->s), .events = POLLIN}};
            (void)poll(p, 2, 5);
        }
    }
    free(rd.win);
    free(rd.body);
    m2a_buf_free(&rd.scratch);
    return NULL;
}

static void mark_opts(const struct m2a_spool_opts *o, uint64_t seed, unsigned max_body)
{
    th_iotrace_mark(TH_MARK_RUN, seed, max_body);
    th_iotrace_mark(TH_MARK_POLICY, (uint64_t)o->fsync, (uint64_t)o->overflow);
    th_iotrace_mark(TH_MARK_LIMITS, o->max_bytes, o->segment_bytes);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

int th_crash_record(const struct th_crash_traffic *tr, const char *dir,
                    struct th_crash_run_stats *st)
{
    memset(st, 0, sizeof(*st));
    double t0 = now_s();
    struct m2a_spool_opts o = {.dir = dir,
                               .max_bytes = tr->max_bytes,
                               .segment_bytes = tr->segment_bytes,
                               .fsync = tr->fsync,
                               .overflow = tr->overflow,
                               .io = &th_iotrace_io};
    if (tr->existing_dir && mkdir(dir, 0750) != 0) {
        snprintf(st->err, sizeof(st->err), "mkdir: %s", strerror(errno));
        return -1;
    }
    th_iotrace_start(&th_io_nosync, tr->skip);
    mark_opts(&o, tr->seed, tr->max_body);
    struct run r = {.tr = tr,
                    .st = st,
                    .deadline_ms = m2a_now_ms() + RUN_TIMEOUT_MS,
                    .version = xcalloc(tr->records + 2, sizeof(*r.version))};
    pthread_mutex_init(&r.mu, NULL);
    char err[256];
    if (m2a_spool_open(&o, &r.s, NULL, err, sizeof(err)) != 0) {
        snprintf(st->err, sizeof(st->err), "open: %.240s", err);
        th_iotrace_stop();
        pthread_mutex_destroy(&r.mu);
        free(r.version);
        return -1;
    }
    pthread_t w, rd;
    pthread_create(&w, NULL, writer, &r);
    if (!tr->writer_only)
        pthread_create(&rd, NULL, reader, &r);
    pthread_join(w, NULL);
    if (!tr->writer_only)
        pthread_join(rd, NULL);
    struct m2a_spool_stats ss;
    m2a_spool_get_stats(r.s, &ss);
    st->dropped = ss.dropped;
    if (!atomic_load(&r.failed) && !tr->writer_only)
        th_iotrace_mark(TH_MARK_DRAINED, st->appended, 0);
    m2a_spool_close(r.s);
    th_iotrace_stop();
    pthread_mutex_destroy(&r.mu);
    free(r.version);

    const struct th_iotrace *t = th_iotrace_get();
    for (size_t i = 0; i < t->n; i++) {
        const struct th_io_call *c = &t->calls[i];
        if (c->op == TH_IO_OPENAT && c->rc >= 0 && (c->flags & O_CREAT) &&
            ends_with(c->name, ".seg"))
            st->segments_made++;
        if (c->op == TH_IO_UNLINKAT && c->rc == 0 && ends_with(c->name, ".seg"))
            st->segments_deleted++;
    }
    st->seconds = now_s() - t0;
    if (!atomic_load(&r.failed) && !tr->writer_only && st->read + st->dropped != st->appended)
        snprintf(st->err, sizeof(st->err),
                 "%" PRIu64 " appended, %" PRIu64 " read, %" PRIu64 " counted dropped",
                 st->appended, st->read, st->dropped);
    return st->err[0] ? -1 : 0;
}

void th_crash_mark_run(const struct m2a_spool_opts *o, uint64_t seed, unsigned max_body)
{
    mark_opts(o, seed, max_body);
}

size_t th_crash_record_size(uint64_t seed, unsigned max_body, uint64_t seq, unsigned version)
{
    char *body = xmalloc(max_body + 32);
    struct m2a_envelope e = th_crash_envelope(seed, max_body, seq, version, body);
    size_t n = M2A_SPOOL_RECORD_HEADER + m2a_envelope_encoded_size(&e);
    free(body);
    return n;
}

int th_crash_append_flush(struct m2a_spool *s, uint64_t seed, unsigned max_body, unsigned version,
                          uint64_t n)
{
    char *body = xmalloc(max_body + 32);
    struct m2a_spool_stats st;
    m2a_spool_get_stats(s, &st);
    uint64_t lo = st.next_seq;
    int rc = 0;
    for (uint64_t i = 0; i < n && rc == 0; i++) {
        struct m2a_envelope e = th_crash_envelope(seed, max_body, lo + i, version, body);
        rc = m2a_spool_append(s, &e, NULL);
    }
    free(body);
    if (rc != 0)
        return rc;
    th_iotrace_mark(TH_MARK_FLUSH, lo, lo + n - 1);
    rc = m2a_spool_flush(s);
    th_iotrace_mark(rc == 0 ? TH_MARK_ACK : TH_MARK_FAILED, lo, lo + n - 1);
    return rc;
}

int th_crash_read_commit(struct m2a_spool *s, uint64_t seed, unsigned max_body, bool commit)
{
    struct run r = {.st = &(struct th_crash_run_stats){0},
                    .tr = &(struct th_crash_traffic){.seed = seed, .max_body = max_body},
                    .s = s,
                    .deadline_ms = UINT64_MAX};
    pthread_mutex_init(&r.mu, NULL);
    struct reader rd = {.r = &r, .body = xmalloc(max_body + 32)};
    r_maintain(&rd);
    r_read(&rd, UINT32_MAX);
    if (commit && rd.nwin > 0)
        r_commit(&rd, rd.nwin - 1);
    free(rd.win);
    free(rd.body);
    m2a_buf_free(&rd.scratch);
    pthread_mutex_destroy(&r.mu);
    return atomic_load(&r.failed) ? M2A_ERR_IO : 0;
}

/* --- the check --- */

/* What had been promised by a crash point (a crash before call P). */
struct req {
    uint64_t promised;  /* records <= this must survive (acked / interval-synced) */
    uint64_t committed; /* records <= this were confirmed: they may go */
    uint64_t dropped;   /* records counted dropped, counting a maintain under way */
    uint64_t written;   /* the highest record whose flush had begun */
    uint64_t handed;    /* the highest record handed to the reader */
};

struct range {
    uint64_t lo, hi;
};

/* What opening one state gave. */
struct result {
    uint64_t h[2];
    bool open_ok, content_ok, usable_ok;
    uint64_t next_seq; /* the first record appended after recovery */
    struct range *r;   /* the records replayed */
    size_t nr;
    uint64_t *stale; /* ... of them, those replayed in the bytes of a failed flush */
    size_t nstale;
    char *why; /* the first problem found */
};

struct slot { /* a state of the current crash point */
    size_t res;
    const char *label;
    enum th_crashfs_fill fill;
    struct th_crashfs_state st;
};

struct ck {
    const struct th_iotrace *t;
    const struct th_crash_budget *b;
    struct th_crash_report *rep;
    struct req *req;
    bool *gone;    /* gone[seq]: the run counted it dropped (never read) */
    uint64_t last; /* records 1..last were written in the run */
    enum m2a_fsync_policy fsync;
    struct m2a_spool_opts opts;
    uint64_t seed;
    unsigned max_body;
    struct th_crashfs *fs;
    struct result *res;
    size_t nres, rescap;
    size_t *table; /* open addressing by hash: result index + 1 */
    size_t tcap;
    struct slot *cur;
    size_t ncur, curcap;
    struct th_crashfs_state scratch_state;
    char *work, *sdir, *spath;
    bool own_work;
    struct m2a_buf scratch;
    uint64_t *versions;     /* versions[seq]: bit v set if version v of seq was written */
    unsigned char *final;   /* final[seq]: the version last written, the one acked */
    struct m2a_buf *expect; /* expect[seq]: its payload, made once */
    char *body;
    bool *keep;
    size_t keepcap;
    unsigned reports;
};

static void why_set(struct result *res, const char *fmt, ...)
{
    if (res->why)
        return;
    char b[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof(b), fmt, ap);
    va_end(ap);
    res->why = xstrdup(b);
}

static void range_add(struct result *res, uint64_t seq)
{
    if (res->nr > 0 && res->r[res->nr - 1].hi + 1 == seq) {
        res->r[res->nr - 1].hi = seq;
        return;
    }
    res->r = xrealloc(res->r, (res->nr + 1) * sizeof(*res->r));
    res->r[res->nr++] = (struct range){seq, seq};
}

static void stale_add(struct result *res, uint64_t seq)
{
    res->stale = xrealloc(res->stale, (res->nstale + 1) * sizeof(*res->stale));
    res->stale[res->nstale++] = seq;
}

static bool is_stale(const struct result *res, uint64_t seq)
{
    for (size_t i = 0; i < res->nstale; i++)
        if (res->stale[i] == seq)
            return true;
    return false;
}

static uint64_t replayed_max(const struct result *res)
{
    return res->nr ? res->r[res->nr - 1].hi : 0;
}

/* Appends the records of after_envelope, flushes, reads them back and
 * confirms them: the recovered spool works. */
static void check_usable(struct ck *c, struct m2a_spool *s, uint64_t replayed, struct result *res)
{
    uint64_t seqs[2];
    int rc = 0;
    if (replayed > 0)
        rc = m2a_spool_commit(s, replayed);
    if (rc == 0)
        rc = m2a_spool_maintain(s);
    for (unsigned i = 0; i < 2 && rc == 0; i++) {
        struct m2a_envelope e = after_envelope(i, c->body);
        rc = m2a_spool_append(s, &e, &seqs[i]);
        for (int k = 0; k < 10 && rc == M2A_ERR_FULL; k++) {
            (void)m2a_spool_maintain(s);
            rc = m2a_spool_append(s, &e, &seqs[i]);
        }
    }
    if (rc == 0)
        rc = m2a_spool_flush(s);
    for (int k = 0; k < 10 && rc == M2A_ERR_FULL; k++) {
        (void)m2a_spool_maintain(s);
        rc = m2a_spool_flush(s);
    }
    if (rc != 0) {
        why_set(res, "after recovery, append and flush: %s", m2a_strerror(rc));
        return;
    }
    for (unsigned i = 0; i < 2; i++) {
        uint64_t seq;
        const void *data;
        size_t len;
        struct m2a_envelope e = after_envelope(i, c->body);
        rc = m2a_spool_read(s, &seq, &data, &len);
        if (rc != 0 || seq != seqs[i] || seq <= replayed ||
            !payload_is(&e, data, len, &c->scratch)) {
            why_set(res,
                    "after recovery, read of appended record %u: %s, seq %" PRIu64
                    " (appended as %" PRIu64 ", replayed up to %" PRIu64 ")",
                    i, m2a_strerror(rc), rc == 0 ? seq : 0, seqs[i], replayed);
            return;
        }
    }
    rc = m2a_spool_commit(s, seqs[1]);
    if (rc == 0)
        rc = m2a_spool_maintain(s);
    if (rc != 0) {
        why_set(res, "after recovery, commit: %s", m2a_strerror(rc));
        return;
    }
    res->next_seq = seqs[0];
    res->usable_ok = true;
}

/* Reopens the closed spool: nothing is left to replay. */
static void check_reopen(struct ck *c, struct result *res)
{
    struct m2a_spool *s;
    char err[256];
    if (m2a_spool_open(&c->opts, &s, NULL, err, sizeof(err)) != 0) {
        why_set(res, "reopen after recovery: %s", err);
        res->usable_ok = false;
        return;
    }
    uint64_t seq;
    const void *data;
    size_t len;
    int rc = m2a_spool_read(s, &seq, &data, &len);
    if (rc != M2A_ERR_AGAIN) {
        why_set(res, "reopen after recovery replays %" PRIu64 ": %s", rc == 0 ? seq : 0,
                m2a_strerror(rc));
        res->usable_ok = false;
    }
    m2a_spool_close(s);
}

/* The version of record seq whose bytes are data, or -1 if the run never
 * wrote them. The last version written is kept encoded. */
static int version_of(struct ck *c, uint64_t seq, const void *data, size_t len)
{
    if (seq == 0 || seq > c->last)
        return -1;
    struct m2a_buf *x = &c->expect[seq];
    if (x->len == 0) {
        struct m2a_envelope e =
            th_crash_envelope(c->seed, c->max_body, seq, c->final[seq], c->body);
        m2a_envelope_encode(&e, x);
    }
    if (x->len == len && memcmp(x->data, data, len) == 0)
        return c->final[seq];
    for (unsigned v = 0; v < TH_CRASH_VERSIONS; v++) {
        if (v == c->final[seq] || !(c->versions[seq] >> v & 1))
            continue;
        struct m2a_envelope e = th_crash_envelope(c->seed, c->max_body, seq, v, c->body);
        if (payload_is(&e, data, len, &c->scratch))
            return (int)v;
    }
    return -1;
}

/* Opens the state as the bridge does at start and reads what it replays. */
static void recover(struct ck *c, const struct th_crashfs_state *st, struct result *res)
{
    th_rmtree(c->sdir);
    if (mkdir(c->sdir, 0750) != 0 || th_crashfs_state_write(st, c->spath) != 0) {
        why_set(res, "cannot write the state into %s", c->sdir);
        return;
    }
    struct m2a_spool *s;
    char err[256];
    if (m2a_spool_open(&c->opts, &s, NULL, err, sizeof(err)) != 0) {
        why_set(res, "open: %s", err);
        return;
    }
    res->open_ok = res->content_ok = true;
    uint64_t prev = 0;
    for (unsigned n = 0; n < RECOVER_READ_MAX; n++) {
        uint64_t seq;
        const void *data;
        size_t len;
        int rc = m2a_spool_read(s, &seq, &data, &len);
        if (rc == M2A_ERR_AGAIN)
            break;
        if (rc != 0) {
            why_set(res, "read while replaying: %s", m2a_strerror(rc));
            m2a_spool_close(s);
            return;
        }
        int v = version_of(c, seq, data, len);
        if (v >= 0 && (unsigned)v != c->final[seq]) /* a failed flush's: never acked */
            stale_add(res, seq);
        if (seq <= prev || v < 0) {
            res->content_ok = false;
            why_set(res,
                    "replayed record %" PRIu64 " (after %" PRIu64 ", %zu bytes) is not one the"
                    " run wrote, or not in order",
                    seq, prev, len);
        }
        range_add(res, seq);
        prev = seq;
    }
    check_usable(c, s, prev, res);
    m2a_spool_close(s);
    if (res->usable_ok && c->b->reopen)
        check_reopen(c, res);
}

static size_t result_for(struct ck *c, const struct th_crashfs_state *st)
{
    if (c->nres * 2 >= c->tcap) {
        size_t ncap = c->tcap ? 2 * c->tcap : 4096;
        size_t *nt = xcalloc(ncap, sizeof(*nt));
        for (size_t i = 0; i < c->nres; i++) {
            size_t k = c->res[i].h[0] & (ncap - 1);
            while (nt[k])
                k = (k + 1) & (ncap - 1);
            nt[k] = i + 1;
        }
        free(c->table);
        c->table = nt;
        c->tcap = ncap;
    }
    size_t k = st->hash[0] & (c->tcap - 1);
    for (; c->table[k]; k = (k + 1) & (c->tcap - 1)) {
        const struct result *r = &c->res[c->table[k] - 1];
        if (r->h[0] == st->hash[0] && r->h[1] == st->hash[1])
            return c->table[k] - 1;
    }
    if (c->nres == c->rescap) {
        c->rescap = c->rescap ? 2 * c->rescap : 1024;
        c->res = xrealloc(c->res, c->rescap * sizeof(*c->res));
    }
    struct result *r = &c->res[c->nres];
    memset(r, 0, sizeof(*r));
    r->h[0] = st->hash[0];
    r->h[1] = st->hash[1];
    recover(c, st, r);
    c->table[k] = ++c->nres;
    c->rep->states++;
    return c->nres - 1;
}

/* --- the states of one crash point --- */

struct gen {
    struct ck *c;
    const struct th_crashfs_unit *u;
    size_t nu;
    bool *keep;
    unsigned made, tries, budget;
    uint64_t rng;
};

static void slots_clear(struct ck *c)
{
    for (size_t i = 0; i < c->ncur; i++)
        th_crashfs_state_free(&c->cur[i].st);
    c->ncur = 0;
}

/* Builds the state keep/fill says, opens it unless known; false once the
 * point's budget is spent. */
static bool emit(struct gen *g, const char *label, enum th_crashfs_fill fill)
{
    struct ck *c = g->c;
    if (g->made >= g->budget || g->tries >= 8 * g->budget)
        return false;
    g->tries++;
    th_crashfs_build(c->fs, g->keep, fill, g->rng, &c->scratch_state);
    for (size_t i = 0; i < c->ncur; i++)
        if (c->cur[i].st.hash[0] == c->scratch_state.hash[0] &&
            c->cur[i].st.hash[1] == c->scratch_state.hash[1])
            return true;
    size_t r = result_for(c, &c->scratch_state);
    if (c->ncur == c->curcap) {
        c->curcap = c->curcap ? 2 * c->curcap : 64;
        c->cur = xrealloc(c->cur, c->curcap * sizeof(*c->cur));
    }
    c->cur[c->ncur++] = (struct slot){r, label, fill, c->scratch_state};
    memset(&c->scratch_state, 0, sizeof(c->scratch_state));
    g->made++;
    return true;
}

static void keep_all(struct gen *g, bool v)
{
    for (size_t i = 0; i < g->nu; i++)
        g->keep[i] = v;
}

/* Every subset of the units (few of them). */
static void gen_subsets(struct gen *g)
{
    for (uint64_t m = 1; m + 1 < (1ull << g->nu); m++) {
        for (size_t i = 0; i < g->nu; i++)
            g->keep[i] = (m >> i) & 1;
        if (!emit(g, "subset", TH_CRASHFS_ABSENT))
            return;
    }
}

/* Every subset of the directory changes (the first six), with the data
 * all kept and all dropped. */
static void gen_dirops(struct gen *g)
{
    size_t idx[6], n = 0;
    for (size_t i = 0; i < g->nu && n < 6; i++)
        if (g->u[i].kind == TH_CRASHFS_DIROP)
            idx[n++] = i;
    for (int data = 0; n > 0 && data < 2; data++)
        for (uint64_t m = 0; m < (1ull << n); m++) {
            keep_all(g, data);
            for (size_t k = 0; k < n; k++)
                g->keep[idx[k]] = (m >> k) & 1;
            if (!emit(g,
                      data ? "data kept, some directory changes"
                           : "data dropped, some directory changes",
                      TH_CRASHFS_ABSENT))
                return;
        }
}

/* Each call alone kept, and each alone dropped: a later write on disk, an
 * earlier one not. */
static void gen_per_call(struct gen *g)
{
    for (int alone = 1; alone >= 0; alone--)
        for (size_t i = 0; i < g->nu; i++) {
            if (i > 0 && g->u[i].call == g->u[i - 1].call)
                continue;
            for (size_t k = 0; k < g->nu; k++)
                g->keep[k] = (g->u[k].call == g->u[i].call) == alone;
            if (!emit(g, alone ? "one call kept" : "one call dropped", TH_CRASHFS_ABSENT))
                return;
        }
}

/* In order up to a point: everything before unit k kept (a write torn at a
 * sector, with all before it on disk and nothing after). */
static void gen_prefixes(struct gen *g, unsigned share)
{
    size_t step = g->nu / (share ? share : 1) + 1;
    for (size_t k = 1; k < g->nu; k += step) {
        for (size_t i = 0; i < g->nu; i++)
            g->keep[i] = i < k;
        if (!emit(g, "in order, torn", TH_CRASHFS_ABSENT))
            return;
    }
}

/* Each 4 KiB page of each write alone dropped, the rest kept. */
static void gen_pages(struct gen *g)
{
    for (size_t i = 0; i < g->nu; i++) {
        const struct th_crashfs_unit *a = &g->u[i];
        if (a->kind != TH_CRASHFS_DATA ||
            (i > 0 && g->u[i - 1].call == a->call &&
             g->u[i - 1].off / TH_CRASHFS_PAGE == a->off / TH_CRASHFS_PAGE))
            continue;
        bool multi = false;
        for (size_t k = 0; k < g->nu; k++) {
            bool same = g->u[k].call == a->call && g->u[k].kind == TH_CRASHFS_DATA &&
                        g->u[k].off / TH_CRASHFS_PAGE == a->off / TH_CRASHFS_PAGE;
            g->keep[k] = !same;
            multi |= g->u[k].call == a->call && !same;
        }
        if (multi && !emit(g, "one page of a write dropped", TH_CRASHFS_ABSENT))
            return;
    }
}

static void gen_random(struct gen *g)
{
    static const enum th_crashfs_fill fills[] = {TH_CRASHFS_ABSENT, TH_CRASHFS_ABSENT,
                                                 TH_CRASHFS_ZEROS, TH_CRASHFS_JUNK};
    for (;;) {
        for (size_t i = 0; i < g->nu; i++)
            g->keep[i] = rnd(&g->rng) & 1;
        if (!emit(g, "random subset", fills[rnd(&g->rng) % 4]))
            return;
    }
}

static void gen_point(struct ck *c)
{
    slots_clear(c);
    struct gen g = {.c = c, .budget = c->b->states_per_point < 2 ? 2 : c->b->states_per_point};
    g.u = th_crashfs_units(c->fs, &g.nu);
    g.rng = c->b->seed ^ mix64(th_crashfs_point(c->fs));
    if (c->keepcap < g.nu + 1) {
        c->keepcap = g.nu + 1;
        c->keep = xrealloc(c->keep, c->keepcap * sizeof(*c->keep));
    }
    g.keep = c->keep;
    keep_all(&g, false);
    emit(&g, "nothing pending kept", TH_CRASHFS_ABSENT);
    keep_all(&g, true);
    emit(&g, "everything kept", TH_CRASHFS_ABSENT);
    if (g.nu == 0)
        return;
    keep_all(&g, false);
    emit(&g, "nothing kept, sizes grown (zeros)", TH_CRASHFS_ZEROS);
    emit(&g, "nothing kept, sizes grown (junk)", TH_CRASHFS_JUNK);

    bool torn = false, dir = false;
    for (size_t i = 0; i < g.nu; i++) {
        dir |= g.u[i].kind == TH_CRASHFS_DIROP;
        torn |= i > 0 && g.u[i].kind == TH_CRASHFS_DATA && g.u[i - 1].call == g.u[i].call;
    }
    c->rep->torn_points += torn;
    c->rep->dir_points += dir;
    if (g.nu > c->rep->max_units)
        c->rep->max_units = g.nu;

    if (g.nu <= c->b->exhaustive_units && g.nu < 20 && (1ull << g.nu) <= g.budget) {
        gen_subsets(&g);
        return;
    }
    gen_dirops(&g);
    gen_per_call(&g);
    gen_prefixes(&g, g.budget / 4);
    gen_pages(&g);
    gen_random(&g);
}

/* --- holding a crash point's states against its promises --- */

static void describe(struct ck *c, size_t point, const struct slot *sl, const char *what)
{
    char prev[600] = "nothing", files[700] = "";
    if (point > 0)
        th_iotrace_describe(c->t, point - 1, prev, sizeof(prev));
    size_t o = 0;
    if (!sl->st.dir_exists)
        o += (size_t)snprintf(files, sizeof(files), "no spool directory");
    for (size_t i = 0; i < sl->st.n && o < sizeof(files) - 80; i++)
        o += (size_t)snprintf(files + o, sizeof(files) - o, "%s%s (%zu B)", i ? ", " : "",
                              sl->st.e[i].name, sl->st.e[i].len);
    static const char *const fills[] = {"", ", dropped appends absent", ", sizes grown (zeros)",
                                        ", sizes grown (junk)"};
    char line[2048];
    snprintf(line, sizeof(line),
             "crash before call %zu (after %.300s); state: %s%s; files: %.700s; %.600s", point,
             prev, sl->label, fills[sl->fill], files, what);
    if (!c->rep->first[0])
        snprintf(c->rep->first, sizeof(c->rep->first), "%s", line);
    if (c->reports < c->b->max_reports) {
        fprintf(stderr, "crash-check: FAIL: %s\n", line);
        c->reports++;
    }
}

/* Records in (lo, hi] missing from res (or replayed in the bytes of a
 * failed flush, not the acked ones): how many, the first, and whether each
 * was counted dropped by the run. */
static uint64_t missing(const struct ck *c, const struct result *res, uint64_t lo, uint64_t hi,
                        uint64_t *first, bool *all_gone)
{
    uint64_t n = 0;
    *all_gone = true;
    size_t k = 0;
    for (uint64_t s = lo + 1; s <= hi; s++) {
        while (k < res->nr && res->r[k].hi < s)
            k++;
        if (k < res->nr && res->r[k].lo <= s && !is_stale(res, s))
            continue;
        if (n++ == 0)
            *first = s;
        if (s > c->last || !c->gone[s])
            *all_gone = false;
    }
    return n;
}

static void evaluate(struct ck *c, size_t point)
{
    const struct req *q = &c->req[point];
    for (size_t i = 0; i < c->ncur; i++) {
        const struct slot *sl = &c->cur[i];
        const struct result *res = &c->res[sl->res];
        char what[600] = "";
        size_t *bucket = NULL;
        c->rep->checks++;
        if (!res->open_ok) {
            bucket = &c->rep->fail_open;
            snprintf(what, sizeof(what), "the spool did not open: %s", res->why);
        } else if (!res->content_ok || replayed_max(res) > q->written) {
            bucket = &c->rep->fail_altered;
            snprintf(what, sizeof(what), "%s",
                     res->why ? res->why : "replays a record written after the crash");
        } else {
            uint64_t first = 0;
            bool gone;
            uint64_t lost = q->promised > q->committed
                                ? missing(c, res, q->committed, q->promised, &first, &gone)
                                : 0;
            if (lost > 0 && (!gone || lost > q->dropped)) {
                bucket = &c->rep->fail_lost;
                snprintf(what, sizeof(what),
                         "lost %" PRIu64 " promised record(s), the first %" PRIu64
                         " (promised up to %" PRIu64 ", confirmed up to %" PRIu64 ", %" PRIu64
                         " counted dropped by then%s)",
                         lost, first, q->promised, q->committed, q->dropped,
                         gone ? "" : ", and not all of them ever dropped");
            } else if (!res->usable_ok) {
                bucket = &c->rep->fail_unusable;
                snprintf(what, sizeof(what), "%s", res->why ? res->why : "not usable");
            } else if (res->next_seq <= q->handed) {
                if (c->fsync == M2A_FSYNC_BATCH) {
                    bucket = &c->rep->fail_reused;
                    snprintf(what, sizeof(what),
                             "the next record gets seq %" PRIu64 ", but records up to %" PRIu64
                             " were handed out: a message id used twice",
                             res->next_seq, q->handed);
                } else {
                    c->rep->reused_noted++;
                }
            }
        }
        if (bucket) {
            (*bucket)++;
            c->rep->failures++;
            describe(c, point, sl, what);
        }
    }
}

/* --- setting up --- */

static uint64_t max64(uint64_t a, uint64_t b)
{
    return a > b ? a : b;
}

/* The promises at every crash point, the run's parameters, and the
 * records the run counted dropped. */
static void read_marks(struct ck *c)
{
    const struct th_iotrace *t = c->t;
    c->req = xcalloc(t->n + 1, sizeof(*c->req));
    struct req q = {0};
    uint64_t drained = 0;
    unsigned version = 0;
    bool *read = NULL;
    c->fsync = M2A_FSYNC_BATCH;
    for (size_t i = 0; i < t->n; i++)
        if (t->calls[i].op == TH_IO_MARK && t->calls[i].flags == TH_MARK_FLUSH)
            c->last = max64(c->last, t->calls[i].len);
    c->versions = xcalloc(c->last + 2, sizeof(*c->versions));
    c->final = xcalloc(c->last + 2, sizeof(*c->final));
    for (size_t i = 0; i < t->n; i++) {
        c->req[i] = q;
        const struct th_io_call *m = &t->calls[i];
        if (m->op != TH_IO_MARK)
            continue;
        switch (m->flags) {
        case TH_MARK_RUN:
            c->seed = m->off;
            c->max_body = (unsigned)m->len;
            break;
        case TH_MARK_POLICY:
            c->fsync = (enum m2a_fsync_policy)m->off;
            c->opts.fsync = c->fsync;
            c->opts.overflow = (enum m2a_overflow)m->len;
            break;
        case TH_MARK_LIMITS:
            c->opts.max_bytes = m->off;
            c->opts.segment_bytes = m->len;
            break;
        case TH_MARK_FLUSH:
            q.written = max64(q.written, m->len);
            for (uint64_t k = m->off; k <= m->len && k <= c->last; k++) {
                c->versions[k] |= 1ull << version;
                c->final[k] = (unsigned char)version;
            }
            break;
        case TH_MARK_VERSION:
            version = m->off < TH_CRASH_VERSIONS ? (unsigned)m->off : TH_CRASH_VERSIONS - 1;
            break;
        case TH_MARK_ACK:
            if (c->fsync == M2A_FSYNC_BATCH)
                q.promised = max64(q.promised, m->len);
            break;
        case TH_MARK_SYNCED:
            if (c->fsync != M2A_FSYNC_NEVER)
                q.promised = max64(q.promised, m->off);
            break;
        case TH_MARK_READ:
            q.handed = max64(q.handed, m->off);
            break;
        case TH_MARK_COMMIT:
            q.committed = max64(q.committed, m->off);
            break;
        case TH_MARK_MAINT: /* counts from here what the maintain will have counted */
            for (size_t k = i + 1; k < t->n; k++)
                if (t->calls[k].op == TH_IO_MARK && t->calls[k].flags == TH_MARK_MAINT_END) {
                    q.dropped = max64(q.dropped, t->calls[k].off);
                    break;
                }
            break;
        case TH_MARK_DRAINED:
            drained = m->off;
            break;
        default:
            break;
        }
    }
    c->req[t->n] = q;
    c->gone = xcalloc(c->last + 2, sizeof(*c->gone));
    c->expect = xcalloc(c->last + 2, sizeof(*c->expect));
    read = xcalloc(c->last + 2, sizeof(*read));
    for (size_t i = 0; i < t->n; i++)
        if (t->calls[i].op == TH_IO_MARK && t->calls[i].flags == TH_MARK_READ &&
            t->calls[i].off <= c->last)
            read[t->calls[i].off] = true;
    for (uint64_t s = 1; drained && s <= drained && s <= c->last; s++)
        c->gone[s] = !read[s];
    free(read);
}

static void ck_free(struct ck *c)
{
    slots_clear(c);
    free(c->cur);
    th_crashfs_state_free(&c->scratch_state);
    for (size_t i = 0; i < c->nres; i++) {
        free(c->res[i].r);
        free(c->res[i].stale);
        free(c->res[i].why);
    }
    free(c->res);
    free(c->table);
    free(c->req);
    free(c->gone);
    for (uint64_t i = 0; c->expect && i <= c->last + 1; i++)
        m2a_buf_free(&c->expect[i]);
    free(c->expect);
    free(c->versions);
    free(c->final);
    free(c->keep);
    free(c->body);
    m2a_buf_free(&c->scratch);
    th_crashfs_free(c->fs);
    if (c->own_work)
        th_rmtree(c->work);
    else
        th_rmtree(c->sdir);
    if (c->own_work)
        free(c->work);
    free(c->sdir);
    free(c->spath);
}

/* States are written and removed by the thousand: on tmpfs when there is
 * one (ext4 took four times as long here, waiting on its journal), unless
 * M2A_TEST_TMPDIR says where. */
static char *scratch_dir(void)
{
    const char *env = getenv("M2A_TEST_TMPDIR");
    if ((!env || !*env) && access("/dev/shm", W_OK) == 0) {
        char *t = xstrdup("/dev/shm/m2a-crash-check-XXXXXX");
        if (mkdtemp(t))
            return t;
        free(t);
    }
    return th_tmpdir_new("crash-check");
}

int th_crash_check(const struct th_iotrace *t, const struct th_crash_budget *b,
                   struct th_crash_report *r)
{
    memset(r, 0, sizeof(*r));
    double t0 = now_s();
    struct ck c = {.t = t, .b = b, .rep = r};
    read_marks(&c);
    c.body = xmalloc(c.max_body + 32);
    c.own_work = b->work_dir == NULL;
    c.work = c.own_work ? scratch_dir() : (char *)b->work_dir;
    c.sdir = xasprintf("%s/state", c.work);
    c.spath = xasprintf("%s/spool", c.sdir);
    c.opts.dir = c.spath;
    c.opts.io = &th_io_nosync;
    c.fs = th_crashfs_new(t);
    r->calls = t->n;
    int rc = 0;
    gen_point(&c);
    evaluate(&c, 0);
    r->points = 1;
    for (;;) {
        int s = th_crashfs_step(c.fs);
        if (s < 0) {
            if (th_crashfs_point(c.fs) < t->n) {
                snprintf(r->first, sizeof(r->first), "the model cannot follow the trace: %s",
                         th_crashfs_error(c.fs));
                rc = -1;
            }
            break;
        }
        r->points++;
        if (s > 0) {
            r->changes++;
            gen_point(&c);
        }
        evaluate(&c, th_crashfs_point(c.fs));
    }
    ck_free(&c);
    r->seconds = now_s() - t0;
    return rc;
}

void th_crash_report_line(const struct th_crash_report *r, char *buf, size_t len)
{
    snprintf(buf, len,
             "calls %zu, crash points %zu (%zu where the states change), states opened %zu, "
             "checks %zu, failures %zu (open %zu, lost %zu, altered %zu, unusable %zu, id reused "
             "%zu), ids reused where allowed %zu, most units pending %zu, points with torn "
             "writes %zu, with directory changes %zu, %.1f s",
             r->calls, r->points, r->changes, r->states, r->checks, r->failures, r->fail_open,
             r->fail_lost, r->fail_altered, r->fail_unusable, r->fail_reused, r->reused_noted,
             r->max_units, r->torn_points, r->dir_points, r->seconds);
}
