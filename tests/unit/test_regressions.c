/* test_regressions.c - one test per bug the fuzzers (tests/fuzz/) found,
 * named after what it guards, with the input that found it (minimised).
 * Each must fail on the code before its fix. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/spool_format.h"
#include "check_main.h"
#include "config_check.h"
#include "files.h"

/* fuzz_config: an input ending inside a flow collection, or an empty
 * document, without a final newline was reported one line below the last
 * line of the file ("t.yaml:4:1" for a 3-line file), in the position and in
 * the context. */
START_TEST(test_yaml_error_at_end_of_input_points_into_the_file)
{
    const char *e = th_config_error("mqtt:\n  hotd: x\nroutes: [  ");
    ck_assert_msg(strncmp(e, "t.yaml:3:12: ", 13) == 0, "got \"%s\"", e);
    ck_assert_msg(strstr(e, "line 3, column 12") != NULL, "got \"%s\"", e);

    /* Unterminated quoted scalar: end of the last line, not a new one. */
    e = th_config_error("routes:\n  - name: \"abc");
    ck_assert_msg(strncmp(e, "t.yaml:2:15: ", 13) == 0, "got \"%s\"", e);

    /* With CRLF line ends libyaml counts "\r\n" as one break. */
    e = th_config_error("a: b\r\nroutes: {x\r\n");
    ck_assert_msg(strncmp(e, "t.yaml:3:1: ", 12) == 0, "got \"%s\"", e);

    /* An empty document: libyaml's empty root node sits on the line below. */
    e = th_config_error("---");
    ck_assert_msg(strncmp(e, "t.yaml:1:4: ", 12) == 0, "got \"%s\"", e);

    /* A final newline puts the end on the (empty) next line: unchanged. */
    e = th_config_error("routes: [\n");
    ck_assert_msg(strncmp(e, "t.yaml:2:1: ", 12) == 0, "got \"%s\"", e);
}
END_TEST

/* Appends a CRC-valid spool record (layout: spool_format.h) holding a
 * small envelope to b. */
static void put_record(struct m2a_buf *b, uint64_t seq)
{
    struct m2a_envelope env = {.route = {"r", 1},
                               .exchange = {"ex", 2},
                               .routing_key = {"k", 1},
                               .topic = {"t", 1},
                               .qos = 1,
                               .body = {"x", 1}};
    size_t start = b->len;
    m2a_buf_reserve(b, M2A_SPOOL_RECORD_HEADER);
    b->len += M2A_SPOOL_RECORD_HEADER;
    m2a_envelope_encode(&env, b);
    m2a_spool_format_record_header(b->data + start, b->len - start - M2A_SPOOL_RECORD_HEADER, seq);
}

static void write_segment(const char *dir, uint64_t first, const uint64_t *seqs, size_t n)
{
    struct m2a_buf b = {0};
    for (size_t i = 0; i < n; i++)
        put_record(&b, seqs[i]);
    char name[M2A_SPOOL_NAME_MAX], path[512];
    m2a_spool_format_segment_name(name, sizeof(name), first);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    ck_assert_int_eq(th_write_bytes(path, b.data, b.len), 0);
    m2a_buf_free(&b);
}

/* fuzz_spool_record: a CRC-valid record in the middle of a segment whose
 * sequence number belongs to a later segment (seq 50 in segment 1..9) is
 * damage to recovery, which counts the records after it as unconfirmed; the
 * reader delivered it and then skipped every later record as out of order,
 * so 5, 10, 11 and 12 were never published. */
START_TEST(test_reader_skips_record_numbered_for_a_later_segment)
{
    char *dir = th_tmpdir_new("regressions");
    write_segment(dir, 1, (const uint64_t[]){1, 50, 5}, 3);
    write_segment(dir, 10, (const uint64_t[]){10, 11, 12}, 3);

    struct m2a_spool_opts o = {
        .dir = dir, .max_bytes = 1u << 20, .segment_bytes = 1u << 20, .fsync = M2A_FSYNC_NEVER};
    struct m2a_spool *s = NULL;
    struct m2a_spool_recovery rec;
    char err[256] = "";
    ck_assert_msg(m2a_spool_open(&o, &s, &rec, err, sizeof(err)) == 0, "%s", err);
    ck_assert_uint_eq(rec.corrupt_records, 1);
    ck_assert_uint_eq(rec.unconfirmed, 5);

    const uint64_t want[] = {1, 5, 10, 11, 12};
    uint64_t got[8], seq;
    size_t n = 0, len;
    const void *data;
    int rc;
    while (n < 8 && (rc = m2a_spool_read(s, &seq, &data, &len)) == 0)
        got[n++] = seq;
    ck_assert_int_eq(rc, M2A_ERR_AGAIN);
    ck_assert_uint_eq(n, 5);
    ck_assert_msg(memcmp(got, want, sizeof(want)) == 0, "read %llu %llu ...",
                  (unsigned long long)got[0], (unsigned long long)got[1]);
    ck_assert_int_eq(m2a_spool_commit(s, 12), 0);
    m2a_spool_close(s);

    ck_assert_int_eq(th_rmtree(dir), 0);
    free(dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("regressions");
    TCase *tc = tcase_create("fuzz");
    tcase_add_test(tc, test_yaml_error_at_end_of_input_points_into_the_file);
    tcase_add_test(tc, test_reader_skips_record_numbered_for_a_later_segment);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
