/* test_spool.c - the spool: round trips, replay after reopen, rotation and
 * deletion, recovery from torn and bit-flipped segments and a damaged
 * checkpoint, max_bytes, the directory lock, replay from the committed
 * position, a rolled-back failed write, and a writer and a reader thread
 * racing over 200,000 records (the writer waiting for room on the room fd,
 * the reader serving it in m2a_spool_maintain).
 *
 * Each test works in its own mkdtemp() directory, removed afterwards. Records
 * carry real envelopes (m2a_envelope_encode/decode); the n-th record appended
 * to a fresh spool has seq n, and its body names n, so every read is checked
 * against the sequence number it claims. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mqtt2amqp/crc32c.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"
#include "files.h"

#define REC_HDR 20 /* the spool's record header, for offsets into segments */

/* For helpers called per record: every passing ck_assert_* leaves a
 * location message for check's runner, and thousands of them broke its
 * message reader here ("Bad message type"). This one is silent on success. */
#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c))                                                                                  \
            ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #c);                                     \
    } while (0)

/* One directory for the run (removed by the unchecked teardown, which runs
 * in check's parent process even when a test fails and its child exits
 * early), and in it one mkdtemp() directory per test. */
static char *suitedir, *tmpdir, *spooldir;

static void suite_setup(void)
{
    suitedir = th_tmpdir_new("spool");
}

static void suite_teardown(void)
{
    th_rmtree(suitedir);
    free(suitedir);
}

static void setup(void)
{
    tmpdir = xasprintf("%s/t-XXXXXX", suitedir);
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    spooldir = xasprintf("%s/spool", tmpdir);
}

static void teardown(void)
{
    th_rmtree(tmpdir);
    free(tmpdir);
    free(spooldir);
}

static const struct m2a_header test_headers[] = {{{"x-src", 5}, {"unit", 4}}};

/* Body of record n: "n=<n>;" padded with a letter derived from n. */
static size_t make_body(char *buf, size_t len, uint64_t n)
{
    int k = snprintf(buf, len, "n=%" PRIu64 ";", n);
    for (size_t i = (size_t)k; i < len; i++)
        buf[i] = (char)('a' + n % 26);
    return len > (size_t)k ? len : (size_t)k;
}

static struct m2a_envelope make_env(char *body, size_t bodylen, uint64_t n)
{
    struct m2a_envelope e = {0};
    e.timestamp_ms = 1700000000000ull + n;
    e.route = (struct m2a_str){"r1", 2};
    e.exchange = (struct m2a_str){"ex", 2};
    e.routing_key = (struct m2a_str){"a.b", 3};
    e.topic = (struct m2a_str){"a/b", 3};
    e.qos = 1;
    e.persistent = true;
    e.nheaders = 1;
    e.headers = test_headers;
    e.body = (struct m2a_str){body, make_body(body, bodylen, n)};
    return e;
}

static size_t body_len = 100;

/* Appends e; refused for want of room, plays the reader's part once
 * (m2a_spool_maintain serves the request) and tries again. */
static int append_env(struct m2a_spool *s, const struct m2a_envelope *e, uint64_t *seq)
{
    int rc = m2a_spool_append(s, e, seq);
    if (rc == M2A_ERR_FULL) {
        REQUIRE(m2a_spool_maintain(s) == 0);
        rc = m2a_spool_append(s, e, seq);
    }
    return rc;
}

static uint64_t append_n(struct m2a_spool *s, uint64_t n)
{
    char body[4096];
    uint64_t seq = 0;
    struct m2a_envelope e = make_env(body, body_len, n);
    REQUIRE(append_env(s, &e, &seq) == 0);
    return seq;
}

/* Appends records first..last (their n equal to the expected seq), flushes. */
static void append_range(struct m2a_spool *s, uint64_t first, uint64_t last)
{
    for (uint64_t n = first; n <= last; n++)
        REQUIRE(append_n(s, n) == n);
    REQUIRE(m2a_spool_flush(s) == 0);
}

static size_t rec_size(void)
{
    char body[4096];
    struct m2a_envelope e = make_env(body, body_len, 1);
    return REC_HDR + m2a_envelope_encoded_size(&e);
}

/* Checks that data decodes to the envelope of record n. */
static void check_record(uint64_t n, const void *data, size_t len)
{
    static struct m2a_header *hb;
    static size_t hcap;
    struct m2a_envelope got;
    REQUIRE(m2a_envelope_decode(data, len, &got, &hb, &hcap) == 0);
    char body[4096];
    struct m2a_envelope want = make_env(body, body_len, n);
    REQUIRE(got.timestamp_ms == want.timestamp_ms);
    REQUIRE(got.body.len == want.body.len);
    REQUIRE(memcmp(got.body.ptr, want.body.ptr, want.body.len) == 0);
    REQUIRE(got.nheaders == 1);
    REQUIRE(got.headers[0].value.len == 4 && memcmp(got.headers[0].value.ptr, "unit", 4) == 0);
}

/* Reads until M2A_ERR_AGAIN, checking each record; returns the seqs. */
static size_t read_all(struct m2a_spool *s, uint64_t *seqs, size_t max)
{
    size_t n = 0;
    for (;;) {
        uint64_t seq;
        const void *data;
        size_t len;
        int rc = m2a_spool_read(s, &seq, &data, &len);
        if (rc == M2A_ERR_AGAIN)
            return n;
        REQUIRE(rc == 0);
        check_record(seq, data, len);
        REQUIRE(n < max);
        seqs[n++] = seq;
    }
}

static void expect_seqs(struct m2a_spool *s, uint64_t first, uint64_t last)
{
    uint64_t seqs[1024];
    size_t n = read_all(s, seqs, 1024);
    size_t want = last >= first ? (size_t)(last - first + 1) : 0;
    if (n != want)
        ck_abort_msg("read %zu records, expected %zu (seq %" PRIu64 "..%" PRIu64 ")", n, want,
                     first, last);
    for (size_t i = 0; i < n; i++)
        if (seqs[i] != first + i)
            ck_abort_msg("record %zu has seq %" PRIu64 ", expected %" PRIu64, i, seqs[i],
                         first + i);
}

static struct m2a_spool_opts opts_default(void)
{
    struct m2a_spool_opts o = {spooldir, 0, 1u << 20, M2A_FSYNC_BATCH};
    return o;
}

static struct m2a_spool *open_ok(const struct m2a_spool_opts *o, struct m2a_spool_recovery *rec)
{
    struct m2a_spool *s = NULL;
    char err[256] = "";
    int rc = m2a_spool_open(o, &s, rec, err, sizeof(err));
    ck_assert_msg(rc == 0, "open failed: %s", err);
    return s;
}

static int count_files(const char *suffix)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "ls %s | grep -c '%s$'", spooldir, suffix);
    FILE *p = popen(cmd, "r");
    int n = -1;
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(fscanf(p, "%d", &n), 1);
    pclose(p);
    return n;
}

static char *seg_path(uint64_t first)
{
    static char path[192];
    snprintf(path, sizeof(path), "%s/%020" PRIu64 ".seg", spooldir, first);
    return path;
}

static off_t file_size(const char *path)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return -1;
    return sb.st_size;
}

static bool notified(struct m2a_spool *s)
{
    struct pollfd p = {m2a_spool_notify_fd(s), POLLIN, 0};
    return poll(&p, 1, 0) == 1;
}

START_TEST(round_trip_and_nothing_visible_before_flush)
{
    struct m2a_spool_opts o = opts_default();
    struct m2a_spool_recovery rec;
    struct m2a_spool *s = open_ok(&o, &rec);
    ck_assert_uint_eq(rec.segments, 0);
    ck_assert(!rec.checkpoint_invalid);
    ck_assert_uint_eq(strlen(m2a_spool_id(s)), 16);
    ck_assert(!notified(s));

    for (uint64_t n = 1; n <= 3; n++)
        ck_assert_uint_eq(append_n(s, n), n);
    uint64_t seq;
    const void *data;
    size_t len;
    ck_assert_int_eq(m2a_spool_read(s, &seq, &data, &len), M2A_ERR_AGAIN);
    ck_assert(!notified(s));
    struct m2a_spool_stats st;
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.next_seq, 4);
    ck_assert_uint_eq(st.bytes, 0);

    ck_assert_int_eq(m2a_spool_flush(s), 0);
    ck_assert(notified(s));
    m2a_spool_notify_clear(s);
    ck_assert(!notified(s));
    expect_seqs(s, 1, 3);
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.bytes, 3 * rec_size());
    ck_assert_uint_eq(st.messages, 3);
    ck_assert_uint_eq(st.segments, 1);
    ck_assert_int_eq(file_size(seg_path(1)), (off_t)(3 * rec_size()));

    /* An empty flush is harmless; reads continue where they were. */
    ck_assert_int_eq(m2a_spool_flush(s), 0);
    append_range(s, 4, 5);
    expect_seqs(s, 4, 5);
    ck_assert_int_eq(m2a_spool_commit(s, 6), M2A_ERR_ARG); /* never published */
    ck_assert_int_eq(m2a_spool_commit(s, 5), 0);
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.committed_seq, 5);
    m2a_spool_close(s);
    m2a_spool_close(NULL);
}
END_TEST

START_TEST(reopen_replays_exactly_the_unconfirmed_records)
{
    struct m2a_spool_opts o = opts_default();
    struct m2a_spool *s = open_ok(&o, NULL);
    char id[17];
    strcpy(id, m2a_spool_id(s));
    append_range(s, 1, 10);
    expect_seqs(s, 1, 10);
    ck_assert_int_eq(m2a_spool_commit(s, 6), 0);
    m2a_spool_close(s);

    struct m2a_spool_recovery rec;
    s = open_ok(&o, &rec);
    ck_assert_str_eq(m2a_spool_id(s), id);
    ck_assert_uint_eq(rec.segments, 1);
    ck_assert_uint_eq(rec.records, 10);
    ck_assert_uint_eq(rec.unconfirmed, 4);
    ck_assert_uint_eq(rec.truncated_bytes, 0);
    ck_assert_uint_eq(rec.corrupt_records, 0);
    ck_assert(notified(s));
    struct m2a_spool_stats st;
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.messages, 4);
    ck_assert_uint_eq(st.committed_seq, 6);
    ck_assert_uint_eq(st.next_seq, 11);
    expect_seqs(s, 7, 10);
    /* Sequence numbers continue; they are never reused. */
    append_range(s, 11, 12);
    expect_seqs(s, 11, 12);
    ck_assert_int_eq(m2a_spool_commit(s, 12), 0);
    m2a_spool_close(s);

    s = open_ok(&o, &rec);
    ck_assert_uint_eq(rec.unconfirmed, 0);
    expect_seqs(s, 1, 0);
    ck_assert_uint_eq(append_n(s, 13), 13);
    m2a_spool_close(s);
}
END_TEST

START_TEST(segments_rotate_and_confirmed_ones_are_deleted)
{
    struct m2a_spool_opts o = opts_default();
    size_t rs = rec_size();
    o.segment_bytes = 4 * rs; /* four records per segment */
    struct m2a_spool *s = open_ok(&o, NULL);
    /* Batches of 10 span several segments: one flush writes a few files. */
    for (uint64_t n = 1; n <= 100; n += 10)
        append_range(s, n, n + 9);
    ck_assert_int_eq(count_files(".seg"), 25);
    for (uint64_t first = 1; first <= 97; first += 4)
        ck_assert_int_eq(file_size(seg_path(first)), (off_t)(4 * rs));
    struct m2a_spool_stats st;
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.segments, 25);
    ck_assert_uint_eq(st.bytes, 100 * rs);
    expect_seqs(s, 1, 100);

    /* Confirming 1..50 deletes the 12 segments holding 1..48 only. */
    ck_assert_int_eq(m2a_spool_commit(s, 50), 0);
    ck_assert_int_eq(count_files(".seg"), 13);
    ck_assert_int_eq(file_size(seg_path(45)), -1);
    ck_assert_int_eq(file_size(seg_path(49)), (off_t)(4 * rs));
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.segments, 13);
    ck_assert_uint_eq(st.bytes, 52 * rs);
    ck_assert_uint_eq(st.messages, 50);
    m2a_spool_close(s);

    /* The reopened spool replays 51..100 from the middle of a segment. */
    struct m2a_spool_recovery rec;
    s = open_ok(&o, &rec);
    ck_assert_uint_eq(rec.segments, 13);
    ck_assert_uint_eq(rec.unconfirmed, 50);
    expect_seqs(s, 51, 100);
    ck_assert_int_eq(m2a_spool_commit(s, 100), 0);
    m2a_spool_close(s);
    /* Everything confirmed: only the last segment stays (it holds the
     * highest seq), and the next open deletes nothing more. */
    s = open_ok(&o, &rec);
    ck_assert_int_eq(count_files(".seg"), 1);
    ck_assert_uint_eq(rec.unconfirmed, 0);
    ck_assert_uint_eq(append_n(s, 101), 101);
    m2a_spool_close(s);
}
END_TEST

START_TEST(torn_tail_is_truncated_and_earlier_records_survive)
{
    struct m2a_spool_opts o = opts_default();
    struct m2a_spool *s = open_ok(&o, NULL);
    append_range(s, 1, 3);
    m2a_spool_close(s);
    size_t rs = rec_size();
    ck_assert_int_eq(truncate(seg_path(1), (off_t)(3 * rs - 5)), 0);

    struct m2a_spool_recovery rec;
    s = open_ok(&o, &rec);
    ck_assert_uint_eq(rec.records, 2);
    ck_assert_uint_eq(rec.unconfirmed, 2);
    ck_assert_uint_eq(rec.truncated_bytes, rs - 5);
    ck_assert_uint_eq(rec.corrupt_records, 0);
    ck_assert_int_eq(file_size(seg_path(1)), (off_t)(2 * rs));
    expect_seqs(s, 1, 2);
    /* The torn record was never acknowledged: its seq is given again. */
    append_range(s, 3, 4);
    expect_seqs(s, 3, 4);
    m2a_spool_close(s);
    s = open_ok(&o, &rec);
    ck_assert_uint_eq(rec.records, 4);
    ck_assert_uint_eq(rec.truncated_bytes, 0);
    m2a_spool_close(s);
}
END_TEST

START_TEST(garbage_tail_of_the_last_segment_is_truncated)
{
    struct m2a_spool_opts o = opts_default();
    struct m2a_spool *s = open_ok(&o, NULL);
    append_range(s, 1, 2);
    m2a_spool_close(s);
    FILE *f = fopen(seg_path(1), "ab");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 1000; i++)
        fputc(i * 7, f);
    fclose(f);
    struct m2a_spool_recovery rec;
    s = open_ok(&o, &rec);
    ck_assert_uint_eq(rec.truncated_bytes, 1000);
    ck_assert_uint_eq(rec.records, 2);
    expect_seqs(s, 1, 2);
    m2a_spool_close(s);
}
END_TEST

/* Byte offsets inside the middle record of a segment to damage: magic,
 * length, CRC, seq, payload. */
static const size_t flip_offsets[] = {0, 4, 9, 14, REC_HDR + 30};

START_TEST(bit_flip_in_a_middle_record_is_quarantined_and_skipped)
{
    struct m2a_spool_opts o = opts_default();
    size_t rs = rec_size();
    o.segment_bytes = 3 * rs; /* 1..3 in the first segment, 4..6 in the next */
    struct m2a_spool *s = open_ok(&o, NULL);
    append_range(s, 1, 6);
    m2a_spool_close(s);

    FILE *f = fopen(seg_path(1), "r+b");
    ck_assert_ptr_nonnull(f);
    long at = (long)(rs + flip_offsets[_i]);
    ck_assert_int_eq(fseek(f, at, SEEK_SET), 0);
    int c = fgetc(f);
    ck_assert_int_eq(fseek(f, at, SEEK_SET), 0);
    fputc(c ^ 0x10, f);
    fclose(f);

    struct m2a_spool_recovery rec;
    s = open_ok(&o, &rec);
    ck_assert_uint_eq(rec.segments, 2);
    ck_assert_uint_eq(rec.records, 5);
    ck_assert_uint_eq(rec.unconfirmed, 5);
    ck_assert_uint_eq(rec.corrupt_records, 1);
    ck_assert_uint_eq(rec.truncated_bytes, 0);
    char q[192];
    snprintf(q, sizeof(q), "%s/quarantine-%020d.bad", spooldir, 2);
    ck_assert_int_eq(file_size(q), (off_t)rs);
    struct m2a_spool_stats st;
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.messages, 5);

    uint64_t seqs[16];
    size_t n = read_all(s, seqs, 16);
    ck_assert_uint_eq(n, 5);
    const uint64_t want[] = {1, 3, 4, 5, 6};
    for (size_t i = 0; i < n; i++)
        ck_assert_uint_eq(seqs[i], want[i]);
    /* Once confirmed, the damaged segment goes away like any other. */
    ck_assert_int_eq(m2a_spool_commit(s, 6), 0);
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_int_eq(file_size(seg_path(1)), -1);
    m2a_spool_close(s);
}
END_TEST

START_TEST(damaged_checkpoint_means_full_replay)
{
    struct m2a_spool_opts o = opts_default();
    struct m2a_spool *s = open_ok(&o, NULL);
    append_range(s, 1, 5);
    expect_seqs(s, 1, 5);
    ck_assert_int_eq(m2a_spool_commit(s, 3), 0);
    m2a_spool_close(s);

    char path[192];
    snprintf(path, sizeof(path), "%s/checkpoint", spooldir);
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, 9, SEEK_SET), 0);
    fputc(0x55, f);
    fclose(f);

    struct m2a_spool_recovery rec;
    s = open_ok(&o, &rec);
    ck_assert(rec.checkpoint_invalid);
    ck_assert_uint_eq(rec.unconfirmed, 5);
    expect_seqs(s, 1, 5);
    ck_assert_int_eq(m2a_spool_commit(s, 5), 0);
    m2a_spool_close(s);

    /* Garbage of the wrong size, then no checkpoint at all. */
    f = fopen(path, "wb");
    fputs("not a checkpoint", f);
    fclose(f);
    s = open_ok(&o, &rec);
    ck_assert(rec.checkpoint_invalid);
    ck_assert_uint_eq(rec.unconfirmed, 5);
    m2a_spool_close(s);
    ck_assert_int_eq(unlink(path), 0);
    s = open_ok(&o, &rec);
    ck_assert(!rec.checkpoint_invalid);
    expect_seqs(s, 1, 5);
    m2a_spool_close(s);
}
END_TEST

/* A checkpoint with a valid CRC but a sequence number no spool reaches
 * (here 2^64 - 1, which would make the next one wrap to 0). */
START_TEST(impossible_checkpoint_means_full_replay)
{
    struct m2a_spool_opts o = opts_default();
    struct m2a_spool *s = open_ok(&o, NULL);
    append_range(s, 1, 5);
    ck_assert_int_eq(m2a_spool_commit(s, 3), 0);
    m2a_spool_close(s);

    unsigned char b[20];
    char path[192];
    snprintf(path, sizeof(path), "%s/checkpoint", spooldir);
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fread(b, 1, sizeof(b), f), sizeof(b));
    fclose(f);
    memset(b + 8, 0xff, 8);
    uint32_t crc = m2a_crc32c(0, b, 16);
    for (int i = 0; i < 4; i++)
        b[16 + i] = (unsigned char)(crc >> (8 * i));
    f = fopen(path, "wb");
    ck_assert_uint_eq(fwrite(b, 1, sizeof(b), f), sizeof(b));
    fclose(f);

    struct m2a_spool_recovery rec;
    s = open_ok(&o, &rec);
    ck_assert(rec.checkpoint_invalid);
    ck_assert_uint_eq(rec.unconfirmed, 5);
    expect_seqs(s, 1, 5);
    ck_assert_uint_eq(append_n(s, 6), 6); /* numbering goes on, no wrap */
    m2a_spool_close(s);
}
END_TEST

START_TEST(damaged_spool_id_is_replaced)
{
    struct m2a_spool_opts o = opts_default();
    struct m2a_spool *s = open_ok(&o, NULL);
    m2a_spool_close(s);
    char path[192];
    snprintf(path, sizeof(path), "%s/spool.id", spooldir);
    FILE *f = fopen(path, "wb");
    fputs("zz", f);
    fclose(f);
    s = open_ok(&o, NULL);
    const char *id = m2a_spool_id(s);
    ck_assert_uint_eq(strspn(id, "0123456789abcdef"), 16);
    ck_assert_int_eq(file_size(path), 17);
    m2a_spool_close(s);
}
END_TEST

/* Fills the spool to max_bytes, confirms everything, fills it again. */
static void fill_confirm_refill(uint64_t segment_bytes)
{
    struct m2a_spool_opts o = opts_default();
    size_t rs = rec_size();
    o.max_bytes = 10 * rs + rs / 2;
    o.segment_bytes = segment_bytes;
    struct m2a_spool *s = open_ok(&o, NULL);
    char body[4096];
    uint64_t n = 1, seq;
    for (;; n++) {
        struct m2a_envelope e = make_env(body, body_len, n);
        int rc = append_env(s, &e, &seq);
        if (rc == M2A_ERR_FULL)
            break;
        ck_assert_int_eq(rc, 0);
        if (n % 3 == 0)
            ck_assert_int_eq(m2a_spool_flush(s), 0);
    }
    ck_assert_uint_eq(n, 11); /* ten fit, the pending batch counts */
    ck_assert_int_eq(m2a_spool_flush(s), 0);
    struct m2a_spool_stats st;
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.next_seq, 11); /* the refused append took no seq */
    expect_seqs(s, 1, 10);
    ck_assert_int_eq(m2a_spool_commit(s, 10), 0);

    for (n = 11; n <= 20; n++)
        ck_assert_uint_eq(append_n(s, n), n);
    struct m2a_envelope e = make_env(body, body_len, 21);
    ck_assert_int_eq(append_env(s, &e, &seq), M2A_ERR_FULL);
    ck_assert_int_eq(m2a_spool_flush(s), 0);
    expect_seqs(s, 11, 20);
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_le(st.bytes, o.max_bytes);

    /* A record that could never fit is refused outright, not "full". */
    char big[2048];
    body_len = sizeof(big);
    e = make_env(big, sizeof(big), 99);
    ck_assert_int_eq(m2a_spool_append(s, &e, &seq), M2A_ERR_ARG);
    body_len = 100;
    m2a_spool_close(s);
}

/* Issue 12: a payload of exactly mqtt.max_message_bytes' default (16 MiB)
 * fits one record with its routing data; the record limit used to be
 * 16 MiB for the whole encoding and refused it (M2A_ERR_ARG: too_large). */
START_TEST(a_16_mib_payload_fits_one_record)
{
    struct m2a_spool_opts o = opts_default();
    struct m2a_spool *s = open_ok(&o, NULL);
    size_t n = 16u << 20;
    char *big = xmalloc(n);
    struct m2a_envelope e = make_env(big, n, 1);
    ck_assert_uint_eq(e.body.len, n);
    uint64_t seq;
    ck_assert_int_eq(m2a_spool_append(s, &e, &seq), 0);
    ck_assert_int_eq(m2a_spool_flush(s), 0);
    const void *data;
    size_t len;
    ck_assert_int_eq(m2a_spool_read(s, &seq, &data, &len), 0);
    ck_assert_uint_eq(len, m2a_envelope_encoded_size(&e));
    struct m2a_envelope d;
    struct m2a_header *h = NULL;
    size_t hcap = 0;
    ck_assert_int_eq(m2a_envelope_decode(data, len, &d, &h, &hcap), 0);
    ck_assert_uint_eq(d.body.len, n);
    ck_assert(memcmp(d.body.ptr, big, n) == 0);
    free(h);
    free(big);
    m2a_spool_close(s);
}
END_TEST

/* m2a_spool_read_to's sink: a buffer of the test's, grown as asked; counts
 * the calls. */
struct sink {
    struct m2a_buf buf;
    int calls;
};

static void *sink_fn(void *ctx, size_t len)
{
    struct sink *k = ctx;
    k->calls++;
    k->buf.len = 0;
    m2a_buf_reserve(&k->buf, len);
    return k->buf.data;
}

/* Bodies of mixed sizes around the reader's thresholds (its 64 KiB direct
 * minimum, its 256 KiB chunk): record n's body is big_len(n) bytes. */
static size_t big_len(uint64_t n)
{
    static const size_t lens[] = {100, 300u << 10, 1u << 20, 70u << 10, 5000, 256u << 10, 2u << 20};
    return lens[(n - 1) % (sizeof(lens) / sizeof(lens[0]))];
}

static void append_big(struct m2a_spool *s, uint64_t first, uint64_t last)
{
    char *body = xmalloc(2u << 20);
    for (uint64_t n = first; n <= last; n++) {
        struct m2a_envelope e = make_env(body, big_len(n), n);
        uint64_t seq;
        REQUIRE(m2a_spool_append(s, &e, &seq) == 0 && seq == n);
    }
    REQUIRE(m2a_spool_flush(s) == 0);
    free(body);
}

/* Reads with m2a_spool_read_to until AGAIN; checks every record's body
 * against its seq; returns the seqs. */
static size_t read_all_to(struct m2a_spool *s, uint64_t *seqs, size_t max)
{
    struct sink k = {0};
    struct m2a_header *hb = NULL;
    size_t hcap = 0, n = 0;
    char *want = xmalloc(2u << 20);
    for (;;) {
        uint64_t seq;
        size_t len;
        int calls = k.calls;
        int rc = m2a_spool_read_to(s, &seq, &len, sink_fn, &k);
        if (rc == M2A_ERR_AGAIN)
            break;
        REQUIRE(rc == 0);
        REQUIRE(k.calls > calls && len <= k.buf.cap);
        struct m2a_envelope got;
        REQUIRE(m2a_envelope_decode(k.buf.data, len, &got, &hb, &hcap) == 0);
        size_t wl = make_body(want, big_len(seq), seq);
        REQUIRE(got.body.len == wl && memcmp(got.body.ptr, want, wl) == 0);
        REQUIRE(n < max);
        seqs[n++] = seq;
    }
    free(want);
    free(hb);
    m2a_buf_free(&k.buf);
    return n;
}

START_TEST(read_to_puts_large_and_small_records_in_the_callers_buffer)
{
    struct m2a_spool_opts o = opts_default();
    o.segment_bytes = 4u << 20; /* a few records per segment: reads cross segments */
    struct m2a_spool *s = open_ok(&o, NULL);
    append_big(s, 1, 10);
    append_big(s, 11, 15);
    uint64_t seqs[32];
    size_t n = read_all_to(s, seqs, 32);
    ck_assert_uint_eq(n, 15);
    for (size_t i = 0; i < n; i++)
        ck_assert_uint_eq(seqs[i], i + 1);
    /* Records published later are read on from where the reader stopped. */
    append_big(s, 16, 21);
    n = read_all_to(s, seqs, 32);
    ck_assert_uint_eq(n, 6);
    ck_assert_uint_eq(seqs[0], 16);
    ck_assert_uint_eq(seqs[5], 21);
    m2a_spool_close(s);
    /* Reopened: everything is replayed (nothing was committed), the same way. */
    s = open_ok(&o, NULL);
    n = read_all_to(s, seqs, 32);
    ck_assert_uint_eq(n, 21);
    m2a_spool_close(s);
}
END_TEST

/* Issue 12: a record with a large body (>= 64 KiB) is written at append
 * time from the caller's buffer, not copied into the batch: the caller may
 * reuse the buffer as soon as append returns (libmosquitto frees the
 * payload after on_message), nothing is visible before the flush, and a
 * write that fails at append or at flush leaves nothing behind. */
static void append_big_one(struct m2a_spool *s, char *body, uint64_t n, int want_rc)
{
    struct m2a_envelope e = make_env(body, big_len(n), n);
    uint64_t seq = 0;
    int rc = m2a_spool_append(s, &e, &seq);
    if (rc != want_rc)
        ck_abort_msg("append %" PRIu64 ": %d, expected %d", n, rc, want_rc);
    REQUIRE(rc != 0 || seq == n);
    memset(body, 'X', 2u << 20); /* the caller's buffer is reused at once */
}

START_TEST(a_large_body_is_written_at_append_from_where_it_is)
{
    struct m2a_spool_opts o = opts_default();
    o.segment_bytes = 64u << 20;
    struct m2a_spool *s = open_ok(&o, NULL);
    char *body = xmalloc(2u << 20);
    uint64_t seqs[16];
    for (uint64_t n = 1; n <= 3; n++) /* 100 B, 300 KiB, 1 MiB */
        append_big_one(s, body, n, 0);
    ck_assert_uint_eq(read_all_to(s, seqs, 16), 0); /* not before the flush */
    ck_assert_int_eq(m2a_spool_flush(s), 0);
    ck_assert_uint_eq(read_all_to(s, seqs, 16), 3);
    off_t good = file_size(seg_path(1));

    signal(SIGXFSZ, SIG_IGN);
    struct rlimit old, lim;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    /* At append: 4 (70 KiB) is written, 5 (5000 B) waits in the batch, 6
     * (256 KiB) crosses the limit: refused, and nothing of it stays. */
    lim.rlim_cur = (rlim_t)good + (200u << 10);
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    append_big_one(s, body, 4, 0);
    append_big_one(s, body, 5, 0);
    append_big_one(s, body, 6, M2A_ERR_IO);
    struct m2a_spool_stats st;
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.next_seq, 6);
    ck_assert_int_eq(m2a_spool_flush(s), 0); /* 4 and 5 */
    ck_assert_uint_eq(read_all_to(s, seqs, 16), 2);
    ck_assert_uint_eq(seqs[1], 5);
    good = file_size(seg_path(1));

    /* At flush: 6 and 7 (2 MiB) are written at append, 8 (100 B) fails in
     * the flush: the whole batch goes, the early bytes too. */
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    append_big_one(s, body, 6, 0);
    append_big_one(s, body, 7, 0);
    ck_assert_int_gt(file_size(seg_path(1)), good + (2 << 20));
    lim.rlim_cur = (rlim_t)file_size(seg_path(1)) + 10;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    append_big_one(s, body, 8, 0);
    ck_assert_int_eq(m2a_spool_flush(s), M2A_ERR_IO);
    ck_assert_int_eq(file_size(seg_path(1)), good);
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.next_seq, 6);
    ck_assert_uint_eq(read_all_to(s, seqs, 16), 0);

    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    for (uint64_t n = 6; n <= 8; n++)
        append_big_one(s, body, n, 0);
    ck_assert_int_eq(m2a_spool_flush(s), 0);
    ck_assert_uint_eq(read_all_to(s, seqs, 16), 3);
    ck_assert_uint_eq(seqs[2], 8);
    /* A batch with a large record that is never flushed (close refused
     * nothing here: the flush in close publishes it) is replayed whole. */
    append_big_one(s, body, 9, 0);
    m2a_spool_close(s);
    struct m2a_spool_recovery rec;
    s = open_ok(&o, &rec);
    ck_assert_uint_eq(rec.records, 9);
    ck_assert_uint_eq(rec.corrupt_records, 0);
    ck_assert_uint_eq(rec.truncated_bytes, 0);
    ck_assert_uint_eq(read_all_to(s, seqs, 16), 9);
    m2a_spool_close(s);
    free(body);
}
END_TEST

/* Where the byte flipped after open goes, in record 3 (a 1 MiB body):
 * within the first piece the reader buffers, past it (read straight into
 * the caller's buffer), and in the header's length and seq. */
static const size_t direct_flips[] = {REC_HDR + 200, REC_HDR + (700u << 10), 5, 13};

START_TEST(read_to_checks_the_crc_of_a_record_read_straight_into_the_callers_buffer)
{
    struct m2a_spool_opts o = opts_default();
    o.segment_bytes = 64u << 20;
    struct m2a_spool *s = open_ok(&o, NULL);
    append_big(s, 1, 5);
    /* Damaged while the spool is open, after recovery checked it: the
     * reader's own check is all that stands between it and RabbitMQ. */
    char *body = xmalloc(2u << 20);
    off_t at = 0;
    for (uint64_t n = 1; n < 3; n++) {
        struct m2a_envelope e = make_env(body, big_len(n), n);
        at += (off_t)(REC_HDR + m2a_envelope_encoded_size(&e));
    }
    free(body);
    at += (off_t)direct_flips[_i];
    int fd = open(seg_path(1), O_RDWR);
    ck_assert_int_ge(fd, 0);
    unsigned char c;
    ck_assert_int_eq(pread(fd, &c, 1, at), 1);
    c ^= 0x10;
    ck_assert_int_eq(pwrite(fd, &c, 1, at), 1);
    close(fd);

    uint64_t seqs[16];
    size_t n = read_all_to(s, seqs, 16);
    ck_assert_uint_eq(n, 4);
    const uint64_t want[] = {1, 2, 4, 5};
    for (size_t i = 0; i < n; i++)
        ck_assert_uint_eq(seqs[i], want[i]);
    m2a_spool_close(s);
}
END_TEST

START_TEST(max_bytes_refuses_then_recovers_after_commit)
{
    fill_confirm_refill(1u << 20); /* one segment holds everything */
}
END_TEST

START_TEST(max_bytes_with_small_segments)
{
    fill_confirm_refill(2 * rec_size());
}
END_TEST

START_TEST(second_open_of_the_same_directory_is_refused)
{
    struct m2a_spool_opts o = opts_default();
    struct m2a_spool *a = open_ok(&o, NULL), *b = NULL;
    char err[256] = "";
    int rc = m2a_spool_open(&o, &b, NULL, err, sizeof(err));
    ck_assert_int_ne(rc, 0);
    ck_assert_ptr_null(b);
    ck_assert_msg(strstr(err, "in use by another") != NULL, "message: %s", err);
    ck_assert_msg(strstr(err, spooldir) != NULL, "message: %s", err);
    m2a_spool_close(a);
    b = open_ok(&o, NULL);
    m2a_spool_close(b);
}
END_TEST

static struct m2a_spool *reopen(struct m2a_spool *s, const struct m2a_spool_opts *o)
{
    m2a_spool_close(s);
    return open_ok(o, NULL);
}

/* What is replayed after a restart starts right after the committed
 * position, also inside a segment; a commit that is not the newest still
 * counts, an older one is ignored. */
START_TEST(replay_starts_after_the_committed_position)
{
    struct m2a_spool_opts o = opts_default();
    o.segment_bytes = 5 * rec_size();
    struct m2a_spool *s = open_ok(&o, NULL);
    append_range(s, 1, 5);
    expect_seqs(s, 1, 5);
    ck_assert_int_eq(m2a_spool_commit(s, 2), 0);
    s = reopen(s, &o);
    expect_seqs(s, 3, 5);

    /* Across segments, starting inside one. */
    append_range(s, 6, 40);
    expect_seqs(s, 6, 40);
    ck_assert_int_eq(m2a_spool_commit(s, 27), 0);
    s = reopen(s, &o);
    expect_seqs(s, 28, 40);
    s = reopen(s, &o);
    s = reopen(s, &o);
    expect_seqs(s, 28, 40);
    ck_assert_int_eq(m2a_spool_commit(s, 35), 0);
    ck_assert_int_eq(m2a_spool_commit(s, 30), 0);
    s = reopen(s, &o);
    expect_seqs(s, 36, 40);
    m2a_spool_close(s);
}
END_TEST

START_TEST(interval_and_never_policies_work)
{
    for (int p = 0; p < 2; p++) {
        struct m2a_spool_opts o = opts_default();
        o.fsync = p ? M2A_FSYNC_NEVER : M2A_FSYNC_INTERVAL;
        o.segment_bytes = 3 * rec_size();
        struct m2a_spool *s = open_ok(&o, NULL);
        append_range(s, 1, 10);
        ck_assert_int_eq(m2a_spool_tick(s), 0);
        expect_seqs(s, 1, 10);
        m2a_spool_close(s);
        s = open_ok(&o, NULL);
        expect_seqs(s, 1, 10);
        ck_assert_int_eq(m2a_spool_commit(s, 10), 0);
        m2a_spool_close(s);
        teardown();
        setup();
    }
}
END_TEST

/* A write that fails half way (here: RLIMIT_FSIZE, so EFBIG; a full disk
 * takes the same path with ENOSPC) is rolled back: the segment is cut back,
 * a segment the batch started is removed, its seqs are given again, and the
 * next batch works once the limit is gone. */
START_TEST(failed_write_is_rolled_back)
{
    struct m2a_spool_opts o = opts_default();
    size_t rs = rec_size();
    o.segment_bytes = 8 * rs;
    struct m2a_spool *s = open_ok(&o, NULL);
    append_range(s, 1, 5);
    signal(SIGXFSZ, SIG_IGN);
    struct rlimit old, lim;
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    lim = old;
    lim.rlim_cur = 6 * rs + 10;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);

    /* 6 and 7 fit, 8 crosses the limit: nothing of the batch stays. */
    for (uint64_t n = 6; n <= 8; n++)
        ck_assert_uint_eq(append_n(s, n), n);
    ck_assert_int_eq(m2a_spool_flush(s), M2A_ERR_IO);
    ck_assert_int_eq(file_size(seg_path(1)), (off_t)(5 * rs));
    struct m2a_spool_stats st;
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.next_seq, 6);
    ck_assert_uint_eq(st.bytes, 5 * rs);
    expect_seqs(s, 1, 5);

    /* A batch that rotates, then fails in the new segment: 6..8 fill the
     * first segment, a big 9 starts the next one and crosses the limit. */
    lim.rlim_cur = 8 * rs + 1;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
    for (uint64_t n = 6; n <= 8; n++)
        ck_assert_uint_eq(append_n(s, n), n);
    body_len = 12 * rs;
    ck_assert_uint_eq(append_n(s, 9), 9);
    body_len = 100;
    ck_assert_int_eq(m2a_spool_flush(s), M2A_ERR_IO);
    ck_assert_int_eq(file_size(seg_path(1)), (off_t)(5 * rs));
    ck_assert_int_eq(file_size(seg_path(9)), -1);
    ck_assert_int_eq(count_files(".seg"), 1);

    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    append_range(s, 6, 13);
    expect_seqs(s, 6, 13);
    m2a_spool_close(s);
    struct m2a_spool_recovery rec;
    s = open_ok(&o, &rec);
    ck_assert_uint_eq(rec.records, 13);
    ck_assert_uint_eq(rec.corrupt_records, 0);
    ck_assert_uint_eq(rec.truncated_bytes, 0);
    expect_seqs(s, 1, 13);
    m2a_spool_close(s);
}
END_TEST

/* --- a writer thread and a reader thread --- */

#define THREADED_RECORDS 200000

struct race {
    struct m2a_spool *s;
    uint64_t errors;
    uint64_t full; /* appends refused with M2A_ERR_FULL, then retried */
};

static void *race_writer(void *arg)
{
    struct race *r = arg;
    char body[64];
    uint64_t n = 1;
    unsigned seed = 7;
    while (n <= THREADED_RECORDS) {
        uint64_t batch = 1 + (uint64_t)(rand_r(&seed) % 400);
        for (uint64_t i = 0; i < batch && n <= THREADED_RECORDS; i++, n++) {
            struct m2a_envelope e = make_env(body, 20 + n % 40, n);
            uint64_t seq = 0;
            int rc;
            /* Full: publish what is pending so the reader can confirm it,
             * wait until the reader made room, and try again (the bridge
             * would pause MQTT instead). */
            while ((rc = m2a_spool_append(r->s, &e, &seq)) == M2A_ERR_FULL) {
                r->full++;
                if (m2a_spool_flush(r->s) != 0 || m2a_spool_tick(r->s) != 0)
                    r->errors++;
                struct pollfd p = {m2a_spool_room_fd(r->s), POLLIN, 0};
                if (poll(&p, 1, 10000) != 1) /* a timeout is a lost wake-up */
                    r->errors++;
            }
            if (rc != 0 || seq != n)
                r->errors++;
        }
        if (m2a_spool_flush(r->s) != 0)
            r->errors++;
        if (n % 16 == 0 && m2a_spool_tick(r->s) != 0)
            r->errors++;
    }
    return NULL;
}

/* _i == 1: max_bytes (32 KiB) below the larger batches (up to 400 records
 * of ~120 bytes), so the writer must hit FULL, and space comes back only
 * through the reader's commits, segment deletion and reclaim. */
START_TEST(writer_and_reader_threads_deliver_every_seq_once_in_order)
{
    struct m2a_spool_opts o = opts_default();
    o.fsync = M2A_FSYNC_NEVER;
    o.segment_bytes = _i ? 8 * 1024 : 64 * 1024;
    o.max_bytes = _i ? 32 * 1024 : 0;
    struct m2a_spool *s = open_ok(&o, NULL);
    struct race r = {s, 0, 0};
    pthread_t wt;
    ck_assert_int_eq(pthread_create(&wt, NULL, race_writer, &r), 0);

    static struct m2a_header *hb;
    static size_t hcap;
    uint64_t expect = 1, bad = 0, errors = 0;
    while (expect <= THREADED_RECORDS) {
        m2a_spool_notify_clear(s);
        uint64_t seq;
        const void *data;
        size_t len;
        int rc;
        while ((rc = m2a_spool_read(s, &seq, &data, &len)) == 0) {
            struct m2a_envelope e;
            char want[64];
            size_t wl = make_body(want, 20 + seq % 40, seq);
            if (seq != expect || m2a_envelope_decode(data, len, &e, &hb, &hcap) != 0 ||
                e.body.len != wl || memcmp(e.body.ptr, want, wl) != 0)
                bad++;
            expect = seq + 1;
            if (seq % 1000 == 0 && m2a_spool_commit(s, seq) != 0)
                errors++;
        }
        REQUIRE(rc == M2A_ERR_AGAIN);
        if (expect > 1 && m2a_spool_commit(s, expect - 1) != 0)
            errors++;
        if (m2a_spool_maintain(s) != 0)
            errors++;
        if (expect <= THREADED_RECORDS) {
            struct pollfd p[2] = {{m2a_spool_notify_fd(s), POLLIN, 0},
                                  {m2a_spool_maint_fd(s), POLLIN, 0}};
            REQUIRE(poll(p, 2, 10000) >= 1); /* a timeout is a lost wake-up */
        }
    }
    pthread_join(wt, NULL);
    ck_assert_uint_eq(r.errors, 0);
    ck_assert_uint_eq(errors, 0);
    ck_assert_uint_eq(bad, 0);
    ck_assert_uint_eq(expect, THREADED_RECORDS + 1);
    if (_i)
        ck_assert_uint_gt(r.full, 0);
    struct m2a_spool_stats st;
    m2a_spool_get_stats(s, &st);
    ck_assert_uint_eq(st.messages, 0);
    ck_assert_uint_eq(st.committed_seq, THREADED_RECORDS);
    m2a_spool_close(s);
    /* The checkpoint written at close lets the next open drop all but one. */
    struct m2a_spool_recovery rec;
    s = open_ok(&o, &rec);
    ck_assert_uint_eq(rec.unconfirmed, 0);
    ck_assert_int_eq(count_files(".seg"), 1);
    m2a_spool_close(s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("spool");
    TCase *tc = tcase_create("core");
    tcase_add_unchecked_fixture(tc, suite_setup, suite_teardown);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, round_trip_and_nothing_visible_before_flush);
    tcase_add_test(tc, reopen_replays_exactly_the_unconfirmed_records);
    tcase_add_test(tc, segments_rotate_and_confirmed_ones_are_deleted);
    tcase_add_test(tc, torn_tail_is_truncated_and_earlier_records_survive);
    tcase_add_test(tc, garbage_tail_of_the_last_segment_is_truncated);
    tcase_add_loop_test(tc, bit_flip_in_a_middle_record_is_quarantined_and_skipped, 0,
                        (int)(sizeof(flip_offsets) / sizeof(flip_offsets[0])));
    tcase_add_test(tc, damaged_checkpoint_means_full_replay);
    tcase_add_test(tc, impossible_checkpoint_means_full_replay);
    tcase_add_test(tc, damaged_spool_id_is_replaced);
    tcase_add_test(tc, max_bytes_refuses_then_recovers_after_commit);
    tcase_add_test(tc, max_bytes_with_small_segments);
    tcase_add_test(tc, second_open_of_the_same_directory_is_refused);
    tcase_add_test(tc, replay_starts_after_the_committed_position);
    tcase_add_test(tc, interval_and_never_policies_work);
    tcase_add_test(tc, failed_write_is_rolled_back);
    tcase_add_test(tc, a_16_mib_payload_fits_one_record);
    tcase_add_test(tc, read_to_puts_large_and_small_records_in_the_callers_buffer);
    tcase_add_test(tc, a_large_body_is_written_at_append_from_where_it_is);
    tcase_add_loop_test(tc,
                        read_to_checks_the_crc_of_a_record_read_straight_into_the_callers_buffer, 0,
                        (int)(sizeof(direct_flips) / sizeof(direct_flips[0])));
    tcase_add_loop_test(tc, writer_and_reader_threads_deliver_every_seq_once_in_order, 0, 2);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
