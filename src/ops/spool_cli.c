/* spool_cli.c - `mqtt2amqp spool stat|dump|requeue-quarantine` (see
 * spool_cli.h): the spool's files read back with the record layout of
 * spool_format.c and the envelope decoder, for an operator.
 *
 * stat and dump never lock, write or mmap anything: each segment is read
 * with read(2) into memory, so a segment unlinked by the bridge after the
 * listing is skipped (ENOENT), one unlinked after the open is still read
 * whole, and a record half written by the bridge's writer is the tail in
 * flight (counted, never an error). Damaged bytes in the middle are skipped
 * to the next valid record, as recovery does. requeue-quarantine goes
 * through m2a_spool_open/append/flush like the bridge, holding its lock.
 *
 * Threads: one, the process's main thread. */
#include "mqtt2amqp/spool_cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mqtt2amqp/app.h"
#include "mqtt2amqp/config.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/props.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/spool_format.h"
#include "mqtt2amqp/util.h"

#define QUARANTINE_PREFIX "quarantine-"
#define QUARANTINE_SUFFIX ".bad"
#define REQUEUED_SUFFIX   ".requeued"

/* ---- the directory, read only ------------------------------------------- */

struct names {
    uint64_t *segs; /* first seq of each segment, ascending */
    size_t nsegs;
    char **quar; /* quarantine file names, sorted */
    size_t nquar;
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static bool is_quarantine(const char *name)
{
    return strncmp(name, QUARANTINE_PREFIX, strlen(QUARANTINE_PREFIX)) == 0 &&
           has_suffix(name, QUARANTINE_SUFFIX);
}

static void names_free(struct names *n)
{
    free(n->segs);
    for (size_t i = 0; i < n->nquar; i++)
        free(n->quar[i]);
    free(n->quar);
    memset(n, 0, sizeof(*n));
}

static int list_dir(int dirfd, struct names *out)
{
    int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
    if (!d) {
        if (fd >= 0)
            close(fd);
        return M2A_ERR_IO;
    }
    size_t scap = 0, qcap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        uint64_t first;
        if (m2a_spool_format_segment_parse(e->d_name, &first)) {
            if (out->nsegs == scap) {
                scap = scap ? scap * 2 : 16;
                out->segs = xrealloc(out->segs, scap * sizeof(*out->segs));
            }
            out->segs[out->nsegs++] = first;
        } else if (is_quarantine(e->d_name)) {
            if (out->nquar == qcap) {
                qcap = qcap ? qcap * 2 : 4;
                out->quar = xrealloc(out->quar, qcap * sizeof(*out->quar));
            }
            out->quar[out->nquar++] = xstrdup(e->d_name);
        }
    }
    closedir(d);
    if (out->nsegs)
        qsort(out->segs, out->nsegs, sizeof(*out->segs), cmp_u64);
    if (out->nquar)
        qsort(out->quar, out->nquar, sizeof(*out->quar), cmp_str);
    return 0;
}

/* The whole file into *buf (xmalloc'ed, caller frees). 0; 1 when it does
 * not exist (any more); M2A_ERR_IO. */
static int slurp(int dirfd, const char *name, unsigned char **buf, size_t *len)
{
    *buf = NULL;
    *len = 0;
    int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 1 : M2A_ERR_IO;
    size_t cap = 0;
    int rc = 0;
    for (;;) {
        if (cap - *len < 65536) {
            cap = cap ? cap * 2 : 1 << 20;
            *buf = xrealloc(*buf, cap);
        }
        ssize_t n = read(fd, *buf + *len, cap - *len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = M2A_ERR_IO;
            break;
        }
        if (n == 0)
            break;
        *len += (size_t)n;
    }
    close(fd);
    return rc;
}

/* The committed seq of the checkpoint; 0 when missing or damaged (*valid). */
static uint64_t read_checkpoint(int dirfd, bool *valid)
{
    unsigned char *b;
    size_t n;
    uint64_t seq = 0;
    *valid = slurp(dirfd, M2A_SPOOL_CHECKPOINT_FILE, &b, &n) == 0 &&
             m2a_spool_format_checkpoint_decode(b, n, &seq);
    free(b);
    return *valid ? seq : 0;
}

/* ---- records of the segments -------------------------------------------- */

struct walk {
    int dirfd;
    uint64_t committed;
    uint64_t from; /* records below are passed over */
    /* called per valid record; returns false to stop the walk */
    bool (*cb)(void *ud, uint64_t seq, const unsigned char *payload, size_t len);
    void *ud;
    /* what the walk found */
    uint64_t segments, vanished, bytes, records, tail_bytes, damaged_bytes, damaged_ranges;
    uint64_t first_seq, last_seq;
};

/* Walks one segment's bytes; false when the callback stopped the walk. */
static bool walk_bytes(struct walk *w, const unsigned char *p, size_t size, uint64_t first,
                       uint64_t next_first)
{
    size_t pos = 0;
    uint64_t prev = first - 1;
    while (pos < size) {
        uint64_t seq;
        size_t rl;
        enum m2a_spool_format_check c =
            m2a_spool_format_record_parse(p + pos, size - pos, prev, next_first, &seq, &rl);
        if (c == M2A_SPOOL_RECORD_OK) {
            prev = seq;
            w->records++;
            if (!w->first_seq)
                w->first_seq = seq;
            w->last_seq = seq;
            if (seq >= w->from &&
                !w->cb(w->ud, seq, p + pos + M2A_SPOOL_RECORD_HEADER, rl - M2A_SPOOL_RECORD_HEADER))
                return false;
            pos += rl;
            continue;
        }
        size_t next = m2a_spool_format_record_find(p, size, pos + 1, prev, next_first);
        if (next == size && (c == M2A_SPOOL_RECORD_SHORT || next_first == UINT64_MAX)) {
            /* Nothing valid follows: a record being appended (or torn by a
             * crash: the next start cuts it off). */
            w->tail_bytes += size - pos;
        } else {
            w->damaged_bytes += next - pos;
            w->damaged_ranges++;
        }
        pos = next;
    }
    return true;
}

static int walk_segments(struct walk *w, const struct names *nm)
{
    for (size_t i = 0; i < nm->nsegs; i++) {
        uint64_t next_first = i + 1 < nm->nsegs ? nm->segs[i + 1] : UINT64_MAX;
        if (next_first != UINT64_MAX && next_first <= w->from)
            continue; /* every record in it is below --from */
        char name[M2A_SPOOL_NAME_MAX];
        m2a_spool_format_segment_name(name, sizeof(name), nm->segs[i]);
        unsigned char *buf;
        size_t len;
        int rc = slurp(w->dirfd, name, &buf, &len);
        if (rc == 1) {
            w->vanished++; /* confirmed and deleted since the listing */
            continue;
        }
        if (rc != 0) {
            fprintf(stderr, "mqtt2amqp: cannot read spool segment %s: %s\n", name, strerror(errno));
            return M2A_ERR_IO;
        }
        w->segments++;
        w->bytes += len;
        bool more = walk_bytes(w, buf, len, nm->segs[i], next_first);
        free(buf);
        if (!more)
            break;
    }
    return 0;
}

/* ---- JSON --------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (no overlongs, surrogates or
 * code points above U+10FFFF), 0 if invalid. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    size_t len = c >= 0xc2 && c <= 0xdf   ? 2
                 : c >= 0xe0 && c <= 0xef ? 3
                 : c >= 0xf0 && c <= 0xf4 ? 4
                                          : 0;
    if (!len || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    if ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f) || (c == 0xf0 && p[1] < 0x90) ||
        (c == 0xf4 && p[1] > 0x8f))
        return 0;
    return len;
}

static bool utf8_valid(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        size_t l = utf8_len(p + i, n - i);
        if (!l)
            return false;
        i += l;
    }
    return true;
}

/* A JSON string; bytes that are not UTF-8 become \u00XX (the string stays
 * valid JSON; only the body keeps exact bytes, in base64). */
static void json_str(FILE *out, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    fputc('"', out);
    for (size_t i = 0; i < n;) {
        unsigned char c = p[i];
        size_t l = utf8_len(p + i, n - i);
        if (c == '"' || c == '\\') {
            fputc('\\', out);
            fputc(c, out);
        } else if (c == '\n') {
            fputs("\\n", out);
        } else if (c == '\r') {
            fputs("\\r", out);
        } else if (c == '\t') {
            fputs("\\t", out);
        } else if (c < 0x20 || c == 0x7f || l == 0) {
            fprintf(out, "\\u%04x", c);
            l = 1;
        } else {
            fwrite(p + i, 1, l, out);
        }
        i += l ? l : 1;
    }
    fputc('"', out);
}

static void json_mstr(FILE *out, struct m2a_str s)
{
    json_str(out, s.ptr ? s.ptr : "", s.len);
}

static void base64(FILE *out, const unsigned char *p, size_t n)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            v |= p[i + 2];
        char q[4] = {t[(v >> 18) & 63], t[(v >> 12) & 63], i + 1 < n ? t[(v >> 6) & 63] : '=',
                     i + 2 < n ? t[v & 63] : '='};
        fwrite(q, 1, 4, out);
    }
}

/* "2026-12-04T12:00:00.123Z" */
static void iso_time(char *buf, size_t len, uint64_t ms)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03uZ", (unsigned)(ms % 1000));
}

/* The MQTT 5 properties block (props.h) as "mqtt5":{...}: what the publish
 * will carry, before the AMQP mapping (expiry as received, correlation data
 * in base64). A block that does not decode is shown as base64 with
 * "mqtt5_error" (the publish then goes without properties). */
static void dump_props(FILE *out, struct m2a_str blob, struct m2a_header **ubuf, size_t *ucap)
{
    struct m2a_props p;
    if (m2a_props_decode(blob.ptr, blob.len, &p, ubuf, ucap) != 0) {
        fputs(",\"mqtt5_error\":\"corrupt properties block\",\"mqtt5_base64\":\"", out);
        base64(out, (const unsigned char *)blob.ptr, blob.len);
        fputc('"', out);
        return;
    }
    fputs(",\"mqtt5\":{", out);
    const char *sep = "";
    if (p.present & M2A_PROPS_EXPIRY) {
        fprintf(out, "\"message_expiry_s\":%" PRIu32, p.expiry_s);
        sep = ",";
    }
    if (p.present & M2A_PROPS_CONTENT_TYPE) {
        fprintf(out, "%s\"content_type\":", sep);
        json_mstr(out, p.content_type);
        sep = ",";
    }
    if (p.present & M2A_PROPS_RESPONSE_TOPIC) {
        fprintf(out, "%s\"response_topic\":", sep);
        json_mstr(out, p.response_topic);
        sep = ",";
    }
    if (p.present & M2A_PROPS_CORRELATION) {
        fprintf(out, "%s\"correlation_data_base64\":\"", sep);
        base64(out, (const unsigned char *)p.correlation.ptr, p.correlation.len);
        fputc('"', out);
        sep = ",";
    }
    if (p.nuser) {
        fprintf(out, "%s\"user_properties\":{", sep);
        for (size_t i = 0; i < p.nuser; i++) {
            if (i)
                fputc(',', out);
            json_mstr(out, p.user[i].key);
            fputc(':', out);
            json_mstr(out, p.user[i].value);
        }
        fputc('}', out);
    }
    fputc('}', out);
}

/* ubuf / ucap: scratch for the user properties (grown as needed). */
static void dump_envelope(FILE *out, uint64_t seq, bool confirmed, const struct m2a_envelope *e,
                          struct m2a_header **ubuf, size_t *ucap)
{
    char when[48];
    iso_time(when, sizeof(when), e->timestamp_ms);
    fprintf(out, "{\"seq\":%" PRIu64 ",\"confirmed\":%s,\"time\":\"%s\",\"time_ms\":%" PRIu64, seq,
            confirmed ? "true" : "false", when, e->timestamp_ms);
    fputs(",\"route\":", out);
    json_mstr(out, e->route);
    fputs(",\"exchange\":", out);
    json_mstr(out, e->exchange);
    fputs(",\"routing_key\":", out);
    json_mstr(out, e->routing_key);
    fputs(",\"properties\":{\"content_type\":", out);
    if (e->content_type.len)
        json_mstr(out, e->content_type);
    else
        fputs("null", out);
    fprintf(out, ",\"persistent\":%s,\"topic\":", e->persistent ? "true" : "false");
    json_mstr(out, e->topic);
    fprintf(out, ",\"qos\":%u,\"retain\":%s,\"dead_letter\":%s", e->qos,
            e->retain ? "true" : "false", e->dead_letter ? "true" : "false");
    if (e->properties.len)
        dump_props(out, e->properties, ubuf, ucap);
    fputs("},\"headers\":{", out);
    for (size_t i = 0; i < e->nheaders; i++) {
        if (i)
            fputc(',', out);
        json_mstr(out, e->headers[i].key);
        fputc(':', out);
        json_mstr(out, e->headers[i].value);
    }
    fputs("},\"body\":", out);
    const unsigned char *b = (const unsigned char *)e->body.ptr;
    if (utf8_valid(b, e->body.len)) {
        json_str(out, e->body.ptr ? e->body.ptr : "", e->body.len);
        fputs(",\"encoding\":\"utf8\"", out);
    } else {
        fputc('"', out);
        base64(out, b, e->body.len);
        fputs("\",\"encoding\":\"base64\"", out);
    }
    fprintf(out, ",\"body_bytes\":%zu}\n", e->body.len);
}

/* ---- the commands ------------------------------------------------------- */

struct ctx {
    const struct m2a_config *cfg;
    int dirfd;
    struct names names;
    uint64_t committed;
    bool checkpoint_valid;
    /* decoding */
    struct m2a_header *hbuf;
    size_t hcap;
    struct m2a_header *ubuf; /* the MQTT 5 user properties of a dumped record */
    size_t ucap;
    /* stat */
    uint64_t pending, undecodable, oldest_ms, newest_ms, oldest_seq, newest_seq;
    /* dump */
    uint64_t limit, dumped;
};

static bool stat_cb(void *ud, uint64_t seq, const unsigned char *p, size_t len)
{
    struct ctx *c = ud;
    if (seq <= c->committed)
        return true;
    c->pending++;
    struct m2a_envelope e;
    if (m2a_envelope_decode(p, len, &e, &c->hbuf, &c->hcap) != 0) {
        c->undecodable++;
        return true;
    }
    if (!c->oldest_seq || e.timestamp_ms < c->oldest_ms) {
        c->oldest_ms = e.timestamp_ms;
        c->oldest_seq = seq;
    }
    if (!c->newest_seq || e.timestamp_ms >= c->newest_ms) {
        c->newest_ms = e.timestamp_ms;
        c->newest_seq = seq;
    }
    return true;
}

static bool dump_cb(void *ud, uint64_t seq, const unsigned char *p, size_t len)
{
    struct ctx *c = ud;
    struct m2a_envelope e;
    if (m2a_envelope_decode(p, len, &e, &c->hbuf, &c->hcap) != 0) {
        /* CRC passed but the envelope does not decode: a format this
         * version does not read. Said, not hidden. */
        printf("{\"seq\":%" PRIu64 ",\"confirmed\":%s,\"error\":\"undecodable envelope\","
               "\"payload_bytes\":%zu}\n",
               seq, seq <= c->committed ? "true" : "false", len);
        c->undecodable++;
    } else {
        dump_envelope(stdout, seq, seq <= c->committed, &e, &c->ubuf, &c->ucap);
    }
    c->dumped++;
    return !(c->limit && c->dumped >= c->limit);
}

static void print_age(const char *label, uint64_t seq, uint64_t ms)
{
    char when[48];
    if (!seq) {
        printf("%-20s none\n", label);
        return;
    }
    uint64_t now = m2a_wall_ms();
    iso_time(when, sizeof(when), ms);
    printf("%-20s %.1f s (seq %" PRIu64 ", received %s)\n", label,
           now > ms ? (double)(now - ms) / 1000.0 : 0.0, seq, when);
}

static int cmd_stat(struct ctx *c)
{
    struct walk w = {.dirfd = c->dirfd, .committed = c->committed, .cb = stat_cb, .ud = c};
    int rc = walk_segments(&w, &c->names);
    if (rc != 0)
        return M2A_EXIT_RUNTIME;
    printf("%-20s %s\n", "spool:", c->cfg->spool.dir);
    printf("%-20s %" PRIu64 "%s\n", "segments:", w.segments,
           w.vanished ? " (more deleted while reading: confirmed)" : "");
    printf("%-20s %" PRIu64 " (of max_bytes %" PRIu64 ")\n", "bytes:", w.bytes,
           c->cfg->spool.max_bytes);
    printf("%-20s %" PRIu64 " on disk, %" PRIu64 " unconfirmed\n", "records:", w.records,
           c->pending);
    if (w.records)
        printf("%-20s %" PRIu64 " .. %" PRIu64 "\n", "sequence numbers:", w.first_seq, w.last_seq);
    printf("%-20s %" PRIu64 "%s\n", "confirmed position:", c->committed,
           c->checkpoint_valid ? "" : " (no valid checkpoint: all records replay)");
    print_age("oldest unconfirmed:", c->oldest_seq, c->oldest_ms);
    print_age("newest unconfirmed:", c->newest_seq, c->newest_ms);
    printf("%-20s %" PRIu64 " bytes\n", "tail in flight:", w.tail_bytes);
    printf("%-20s %" PRIu64 " bytes in %" PRIu64 " ranges\n", "damaged:", w.damaged_bytes,
           w.damaged_ranges);
    if (c->undecodable)
        printf("%-20s %" PRIu64 "\n", "undecodable:", c->undecodable);
    printf("%-20s %zu\n", "quarantine files:", c->names.nquar);
    for (size_t i = 0; i < c->names.nquar; i++) {
        struct stat sb;
        if (fstatat(c->dirfd, c->names.quar[i], &sb, 0) == 0)
            printf("  %s %lld bytes\n", c->names.quar[i], (long long)sb.st_size);
    }
    return M2A_EXIT_OK;
}

static int cmd_dump(struct ctx *c, uint64_t from)
{
    struct walk w = {
        .dirfd = c->dirfd, .committed = c->committed, .from = from, .cb = dump_cb, .ud = c};
    int rc = walk_segments(&w, &c->names);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "mqtt2amqp: cannot write the dump: %s\n", strerror(errno));
        return M2A_EXIT_RUNTIME;
    }
    if (w.tail_bytes || w.damaged_bytes)
        fprintf(stderr,
                "mqtt2amqp: skipped %" PRIu64 " bytes of tail in flight and %" PRIu64
                " damaged bytes\n",
                w.tail_bytes, w.damaged_bytes);
    return rc == 0 ? M2A_EXIT_OK : M2A_EXIT_RUNTIME;
}

/* The records of one quarantine file whose CRC passes and that are not
 * confirmed, appended to the spool; counts into the totals. */
struct requeue_counts {
    uint64_t requeued, confirmed, undecodable, damaged_bytes;
};

static int requeue_file(struct m2a_spool *spool, uint64_t committed, const unsigned char *p,
                        size_t size, struct requeue_counts *n, struct m2a_header **hbuf,
                        size_t *hcap)
{
    size_t pos = 0;
    while (pos < size) {
        size_t at = m2a_spool_format_record_find(p, size, pos, 0, UINT64_MAX);
        n->damaged_bytes += at - pos;
        if (at == size)
            break;
        uint64_t seq;
        size_t rl;
        (void)m2a_spool_format_record_parse(p + at, size - at, 0, UINT64_MAX, &seq, &rl);
        pos = at + rl;
        struct m2a_envelope e;
        if (seq <= committed) {
            n->confirmed++;
            continue;
        }
        if (m2a_envelope_decode(p + at + M2A_SPOOL_RECORD_HEADER, rl - M2A_SPOOL_RECORD_HEADER, &e,
                                hbuf, hcap) != 0) {
            n->undecodable++;
            continue;
        }
        e.route_id = M2A_ROUTE_NONE; /* resolved by name by the next bridge */
        int rc = m2a_spool_append(spool, &e, NULL);
        if (rc != 0)
            return rc;
        n->requeued++;
    }
    return m2a_spool_flush(spool);
}

static int cmd_requeue(struct ctx *c)
{
    const struct m2a_conf_spool *sp = &c->cfg->spool;
    struct m2a_spool_opts so = {.dir = sp->dir,
                                .max_bytes = sp->max_bytes,
                                .segment_bytes = sp->segment_bytes,
                                .fsync = M2A_FSYNC_BATCH,
                                .overflow = M2A_OVERFLOW_BLOCK};
    struct m2a_spool *spool = NULL;
    struct m2a_spool_recovery rec;
    char err[1024];
    int rc = m2a_spool_open(&so, &spool, &rec, err, sizeof(err));
    if (rc != 0) {
        fprintf(stderr, "mqtt2amqp: %s\n", err);
        return M2A_EXIT_RUNTIME;
    }
    /* The open may have quarantined more: list again under the lock. */
    names_free(&c->names);
    struct m2a_spool_stats ss;
    m2a_spool_get_stats(spool, &ss);
    int exit_code = M2A_EXIT_OK;
    if (list_dir(c->dirfd, &c->names) != 0) {
        fprintf(stderr, "mqtt2amqp: cannot list %s: %s\n", sp->dir, strerror(errno));
        exit_code = M2A_EXIT_RUNTIME;
    }
    size_t done_files = 0;
    for (size_t i = 0; i < c->names.nquar && exit_code == M2A_EXIT_OK; i++) {
        const char *name = c->names.quar[i];
        unsigned char *buf;
        size_t len;
        struct requeue_counts n = {0};
        if (slurp(c->dirfd, name, &buf, &len) != 0) {
            fprintf(stderr, "mqtt2amqp: cannot read %s: %s\n", name, strerror(errno));
            exit_code = M2A_EXIT_RUNTIME;
            break;
        }
        rc = requeue_file(spool, ss.committed_seq, buf, len, &n, &c->hbuf, &c->hcap);
        free(buf);
        if (rc != 0) {
            fprintf(stderr, "mqtt2amqp: %s: cannot append to the spool: %s (file kept as is)\n",
                    name, m2a_strerror(rc));
            exit_code = M2A_EXIT_RUNTIME;
            break;
        }
        done_files = i + 1;
        printf("%s: %" PRIu64 " records requeued, %" PRIu64 " already confirmed, %" PRIu64
               " undecodable, %" PRIu64 " damaged bytes\n",
               name, n.requeued, n.confirmed, n.undecodable, n.damaged_bytes);
    }
    if (c->names.nquar == 0)
        printf("no quarantine file in %s\n", sp->dir);
    /* Durable first (the close fsyncs the segment and the directory), then
     * the files are marked done, so a crash in between requeues them again
     * (at least once) rather than never. */
    m2a_spool_close(spool);
    for (size_t i = 0; i < done_files; i++) {
        char done[M2A_SPOOL_NAME_MAX + 16];
        snprintf(done, sizeof(done), "%s%s", c->names.quar[i], REQUEUED_SUFFIX);
        if (renameat(c->dirfd, c->names.quar[i], c->dirfd, done) != 0) {
            fprintf(stderr, "mqtt2amqp: cannot rename %s: %s\n", c->names.quar[i], strerror(errno));
            exit_code = M2A_EXIT_RUNTIME;
        } else {
            printf("renamed %s to %s\n", c->names.quar[i], done);
        }
    }
    if (done_files && fsync(c->dirfd) != 0) {
        fprintf(stderr, "mqtt2amqp: cannot sync %s: %s\n", sp->dir, strerror(errno));
        exit_code = M2A_EXIT_RUNTIME;
    }
    return exit_code;
}

static void usage(FILE *out, const char *default_config)
{
    fprintf(out,
            "Usage: mqtt2amqp spool stat [-c FILE]\n"
            "       mqtt2amqp spool dump [-c FILE] [--from SEQ] [--limit N]\n"
            "       mqtt2amqp spool requeue-quarantine [-c FILE]\n"
            "\n"
            "  stat                what the spool holds (read only, safe while the bridge runs)\n"
            "  dump                each record as one JSON object a line (read only)\n"
            "  requeue-quarantine  append the intact records of the quarantine files to the\n"
            "                      spool; the bridge must be stopped (takes the spool's lock)\n"
            "  -c, --config FILE   configuration file (default %s): spool.dir\n"
            "  -f, --from SEQ      dump: start at sequence number SEQ\n"
            "  -n, --limit N       dump: at most N records\n",
            default_config);
}

static bool parse_u64_arg(const char *s, uint64_t *v)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || end == s || *end || *s == '-')
        return false;
    *v = x;
    return true;
}

int m2a_spool_cli_main(int argc, char **argv, const char *default_config)
{
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"from", required_argument, NULL, 'f'},
                                         {"limit", required_argument, NULL, 'n'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *path = default_config, *cmd = argc > 1 ? argv[1] : NULL;
    uint64_t from = 0, limit = 0;
    if (!cmd || strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0) {
        usage(cmd ? stdout : stderr, default_config);
        return cmd ? M2A_EXIT_OK : M2A_EXIT_CONFIG;
    }
    bool is_dump = strcmp(cmd, "dump") == 0;
    if (!is_dump && strcmp(cmd, "stat") != 0 && strcmp(cmd, "requeue-quarantine") != 0) {
        fprintf(stderr, "mqtt2amqp: unknown spool command '%s'\n", cmd);
        usage(stderr, default_config);
        return M2A_EXIT_CONFIG;
    }
    optind = 2;
    int o;
    while ((o = getopt_long(argc, argv, "c:f:n:h", opts, NULL)) != -1) {
        bool ok = true;
        if (o == 'c')
            path = optarg;
        else if (o == 'f' && is_dump)
            ok = parse_u64_arg(optarg, &from);
        else if (o == 'n' && is_dump)
            ok = parse_u64_arg(optarg, &limit) && limit > 0;
        else if (o == 'h') {
            usage(stdout, default_config);
            return M2A_EXIT_OK;
        } else
            ok = false;
        if (!ok) {
            usage(stderr, default_config);
            return M2A_EXIT_CONFIG;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "mqtt2amqp: unexpected argument '%s'\n", argv[optind]);
        return M2A_EXIT_CONFIG;
    }

    char err[1024];
    struct m2a_config *cfg = NULL;
    if (m2a_config_load(path, &cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return M2A_EXIT_CONFIG;
    }
    struct ctx c = {.cfg = cfg, .limit = limit};
    int rc = M2A_EXIT_RUNTIME;
    c.dirfd = open(cfg->spool.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (c.dirfd < 0) {
        fprintf(stderr, "mqtt2amqp: cannot open the spool directory %s: %s\n", cfg->spool.dir,
                strerror(errno));
        goto out;
    }
    /* The checkpoint before the listing: a segment listed is then never
     * older than the position it is judged against. */
    c.committed = read_checkpoint(c.dirfd, &c.checkpoint_valid);
    if (list_dir(c.dirfd, &c.names) != 0) {
        fprintf(stderr, "mqtt2amqp: cannot list %s: %s\n", cfg->spool.dir, strerror(errno));
        goto out;
    }
    if (is_dump)
        rc = cmd_dump(&c, from);
    else if (strcmp(cmd, "stat") == 0)
        rc = cmd_stat(&c);
    else
        rc = cmd_requeue(&c);
out:
    names_free(&c.names);
    free(c.hbuf);
    free(c.ubuf);
    if (c.dirfd >= 0)
        close(c.dirfd);
    m2a_config_free(cfg);
    return rc;
}
