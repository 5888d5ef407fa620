/* fuzz_spool_record.c - libFuzzer target for what the bridge reads back from
 * disk: the envelope decoder and the spool's recovery of a damaged segment.
 *
 * Input: one flags byte, then the bytes P that are both decoded as an
 * envelope and written as the spool's segment file(s).
 * flags: bit 0 recompute the CRC of every framed record in P (so mutations
 * get past the CRC and reach what lies behind it), bit 1 split P into two
 * segments at a record boundary, bit 2 name the first segment after its
 * first record (else 1), bit 3 write a valid checkpoint confirming the first
 * record, bit 4 a tiny segment_bytes (the append after recovery rotates).
 * Sequence numbers the harness makes CRC-valid stay below 2^63, like every
 * one the spool writes.
 *
 * Properties checked beyond "no sanitizer report":
 *  - an envelope that decodes re-encodes to exactly the same bytes, and so
 *    does its MQTT 5 properties block (props.h) when that decodes, and the
 *    block's AMQP mapping never repeats a header name;
 *  - the spool always opens (the bridge always starts);
 *  - reading returns exactly the records recovery counted as unconfirmed,
 *    in increasing sequence order, and the stats count them too;
 *  - a record appended after recovery reads back with the sequence number
 *    the stats promised and the bytes written;
 *  - after committing everything and closing, a second open finds nothing
 *    to replay and no torn tail, and reads nothing.
 *
 * The layout comes from spool_format.h, the one the spool uses. The spool
 * lives in one temp dir per process (th_tmpdir_new; scripts/fuzz.sh puts it
 * on /dev/shm, so fsync costs nothing), emptied before each input and
 * removed at exit.
 * Single-threaded (libFuzzer's thread). */
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "files.h"
#include "fuzz.h"
#include "mqtt2amqp/bytes.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/props.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/spool_format.h"
#include "mqtt2amqp/util.h"

#define REC_HDR   M2A_SPOOL_RECORD_HEADER
#define MAX_READS 100000

static char *g_dir;

/* Before each input: an empty spool dir. */
static void clean_dir(void)
{
    th_rmtree(g_dir);
    FUZZ_CHECK(mkdir(g_dir, 0700) == 0, "cannot create %s", g_dir);
}

static void remove_dir(void)
{
    th_rmtree(g_dir);
    free(g_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    g_dir = th_tmpdir_new("fuzz-spool");
    atexit(remove_dir);
    return 0;
}

static void write_file(const char *name, const void *p, size_t n)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", g_dir, name);
    FUZZ_CHECK(th_write_bytes(path, p, n) == 0, "cannot write %s", path);
}

static void write_segment(uint64_t first, const uint8_t *p, size_t n)
{
    char name[M2A_SPOOL_NAME_MAX];
    m2a_spool_format_segment_name(name, sizeof(name), first);
    write_file(name, p, n);
}

/* The MQTT 5 properties block (props.h) of a decoded envelope: what decodes
 * re-encodes to the same bytes and maps to AMQP without a sanitizer report. */
static void check_props(struct m2a_str props)
{
    static struct m2a_header *ub;
    static size_t ucap;
    static struct m2a_props_amqp a;
    static struct m2a_buf enc;
    struct m2a_props p;
    if (props.len == 0 || m2a_props_decode(props.ptr, props.len, &p, &ub, &ucap) != 0)
        return;
    m2a_buf_reset(&enc);
    m2a_props_encode(&p, &enc);
    FUZZ_CHECK(enc.len == props.len && memcmp(enc.data, props.ptr, props.len) == 0,
               "decoded properties re-encode differently");
    m2a_props_to_amqp(&p, 1700000000000ull, 1700000001000ull, true, &a);
    for (size_t i = 1; i < a.nheaders; i++)
        FUZZ_CHECK(
            a.headers[i - 1].key.len != a.headers[i].key.len ||
                memcmp(a.headers[i - 1].key.ptr, a.headers[i].key.ptr, a.headers[i].key.len) != 0,
            "mapped headers repeat a name");
}

static void check_envelope(const uint8_t *p, size_t n, struct m2a_header **hbuf, size_t *hcap,
                           struct m2a_buf *enc)
{
    struct m2a_envelope env;
    if (m2a_envelope_decode(p, n, &env, hbuf, hcap) != 0)
        return;
    check_props(env.properties);
    m2a_buf_reset(enc);
    m2a_envelope_encode(&env, enc);
    /* A version 1 envelope (an older spool) re-encodes as version 2: 4 bytes
     * of route id more, the rest after them the same but for the flags. */
    if (p[0] == 1) {
        FUZZ_CHECK(enc->len == n + 4 &&
                       memcmp(enc->data + 1 + 4 + 8 + 2, p + 1 + 8 + 2, n - 11) == 0,
                   "decoded version 1 envelope re-encodes differently");
        return;
    }
    FUZZ_CHECK(enc->len == n && memcmp(enc->data, p, n) == 0,
               "decoded envelope re-encodes differently (%zu bytes, was %zu)", enc->len, n);
}

/* Frames records in p the way recovery does; fixes their CRC if asked.
 * Returns the number found; offsets and seqs of the first two in out. */
static size_t frame_records(uint8_t *p, size_t n, bool fix, size_t off[2], uint64_t seq[2],
                            size_t *mid)
{
    size_t count = 0, pos = 0;
    size_t offs[64];
    while (pos + REC_HDR <= n) {
        uint32_t len = m2a_get_le32(p + pos + 4);
        if (m2a_get_le32(p + pos) != M2A_SPOOL_RECORD_MAGIC || len > n - pos - REC_HDR) {
            pos++;
            continue;
        }
        if (fix) {
            /* CRC-valid records come from the spool itself, whose sequence
             * numbers never get near 2^63 (centuries at a million a second):
             * keep the ones made valid here in that range too. */
            uint64_t sq = m2a_get_le64(p + pos + 12) & INT64_MAX;
            m2a_spool_format_record_header(p + pos, len, sq);
        }
        if (count < 2) {
            off[count] = pos;
            seq[count] = m2a_get_le64(p + pos + 12);
        }
        if (count < 64)
            offs[count] = pos;
        count++;
        pos += REC_HDR + len;
    }
    *mid = count >= 2 ? offs[(count < 64 ? count : 64) / 2] : n / 2;
    return count;
}

static void checkpoint(uint64_t seq)
{
    uint8_t b[M2A_SPOOL_CHECKPOINT_SIZE];
    /* as for records: the spool never wrote more */
    m2a_spool_format_checkpoint_encode(b, seq & INT64_MAX);
    write_file(M2A_SPOOL_CHECKPOINT_FILE, b, sizeof(b));
}

static struct m2a_spool *open_spool(unsigned flags, struct m2a_spool_recovery *rec)
{
    struct m2a_spool_opts o = {
        .dir = g_dir,
        .max_bytes = 1ull << 30,
        .segment_bytes = (flags & 16) ? 64 : 1u << 20,
        .fsync = M2A_FSYNC_NEVER,
    };
    struct m2a_spool *s = NULL;
    char err[512] = "";
    int rc = m2a_spool_open(&o, &s, rec, err, sizeof(err));
    FUZZ_CHECK(rc == 0 && s, "spool did not open: %d %s", rc, err);
    return s;
}

/* Reads everything available; returns the count and the last seq. */
static uint64_t read_all(struct m2a_spool *s, uint64_t after, uint64_t *last,
                         struct m2a_header **hbuf, size_t *hcap, struct m2a_buf *enc)
{
    uint64_t n = 0, seq;
    const void *p;
    size_t len;
    int rc;
    *last = after;
    while ((rc = m2a_spool_read(s, &seq, &p, &len)) == 0) {
        FUZZ_CHECK(seq > *last, "read seq %llu after %llu", (unsigned long long)seq,
                   (unsigned long long)*last);
        FUZZ_CHECK(++n < MAX_READS, "reader does not stop");
        *last = seq;
        check_envelope(p, len, hbuf, hcap, enc);
    }
    FUZZ_CHECK(rc == M2A_ERR_AGAIN, "read failed: %d", rc);
    return n;
}

static void append_one(struct m2a_spool *s, struct m2a_buf *enc)
{
    struct m2a_spool_stats before;
    m2a_spool_get_stats(s, &before);
    const char *body = "{\"t\":21.5}";
    struct m2a_envelope env = {
        .timestamp_ms = 1700000000000ull,
        .route = {"r", 1},
        .exchange = {"ex", 2},
        .routing_key = {"a.b", 3},
        .topic = {"a/b", 3},
        .qos = 1,
        .persistent = true,
        .body = {body, strlen(body)},
    };
    uint64_t seq = 0;
    if (m2a_spool_append(s, &env, &seq) != 0)
        return; /* e.g. sequence numbers exhausted by a damaged name */
    FUZZ_CHECK(seq == before.next_seq, "append got seq %llu, stats said %llu",
               (unsigned long long)seq, (unsigned long long)before.next_seq);
    int rc = m2a_spool_flush(s);
    FUZZ_CHECK(rc == 0, "flush after recovery: %d", rc);
    uint64_t rseq;
    const void *p;
    size_t len;
    rc = m2a_spool_read(s, &rseq, &p, &len);
    FUZZ_CHECK(rc == 0 && rseq == seq, "appended seq %llu, read rc %d seq %llu",
               (unsigned long long)seq, rc, (unsigned long long)rseq);
    m2a_buf_reset(enc);
    m2a_envelope_encode(&env, enc);
    FUZZ_CHECK(len == enc->len && memcmp(p, enc->data, len) == 0, "appended record changed");
}

static void check_spool(unsigned flags, uint8_t *p, size_t n, struct m2a_header **hbuf,
                        size_t *hcap, struct m2a_buf *enc)
{
    clean_dir();
    size_t off[2], mid;
    uint64_t seq[2];
    size_t nrec = frame_records(p, n, flags & 1, off, seq, &mid);
    uint64_t s0 = nrec > 0 ? seq[0] & INT64_MAX : 0;
    uint64_t first = (flags & 4) && s0 > 0 ? s0 : 1;
    if ((flags & 2) && nrec >= 2) {
        uint64_t second = m2a_get_le64(p + mid + 12) & INT64_MAX;
        write_segment(first, p, mid);
        write_segment(second > first ? second : first + 1, p + mid, n - mid);
    } else {
        write_segment(first, p, n);
    }
    if ((flags & 8) && nrec > 0)
        checkpoint(seq[0]);

    struct m2a_spool_recovery rec;
    struct m2a_spool *s = open_spool(flags, &rec);
    struct m2a_spool_stats st;
    m2a_spool_get_stats(s, &st);
    uint64_t last;
    uint64_t nread = read_all(s, st.committed_seq, &last, hbuf, hcap, enc);
    FUZZ_CHECK(nread == rec.unconfirmed, "read %llu records, recovery counted %llu unconfirmed",
               (unsigned long long)nread, (unsigned long long)rec.unconfirmed);
    FUZZ_CHECK(st.messages == nread, "stats count %llu messages, %llu read",
               (unsigned long long)st.messages, (unsigned long long)nread);
    append_one(s, enc);
    m2a_spool_get_stats(s, &st);
    uint64_t top = st.next_seq - 1;
    if (top > st.committed_seq)
        FUZZ_CHECK(m2a_spool_commit(s, top) == 0, "commit %llu", (unsigned long long)top);
    m2a_spool_close(s);

    s = open_spool(flags, &rec);
    FUZZ_CHECK(rec.unconfirmed == 0 && rec.truncated_bytes == 0,
               "second open: %llu unconfirmed, %llu bytes truncated",
               (unsigned long long)rec.unconfirmed, (unsigned long long)rec.truncated_bytes);
    m2a_spool_get_stats(s, &st);
    nread = read_all(s, st.committed_seq, &last, hbuf, hcap, enc);
    FUZZ_CHECK(nread == 0, "second open replays %llu records", (unsigned long long)nread);
    m2a_spool_close(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    struct m2a_header *hbuf = NULL;
    size_t hcap = 0;
    struct m2a_buf enc = {0};
    size_t n = size - 1;
    uint8_t *p = xmalloc(n ? n : 1);
    memcpy(p, data + 1, n);
    check_envelope(p, n, &hbuf, &hcap, &enc);
    check_spool(data[0], p, n, &hbuf, &hcap, &enc);
    free(p);
    free(hbuf);
    m2a_buf_free(&enc);
    return 0;
}
