/* test_spool_cli.c - `mqtt2amqp spool stat|dump|requeue-quarantine` (issue
 * 14, item 3), the real binary on real spools:
 *  - a spool written through the spool API, then damaged as a crash and a
 *    bad disk would: a record with a flipped byte in the middle of the
 *    segment, a torn record at its end, and a quarantine file holding
 *    garbage around two intact records (one confirmed, one not). stat
 *    counts all of it; dump prints exactly the intact records, each line
 *    valid JSON (python3's json.loads), UTF-8 bodies as text and binary
 *    ones in base64, --from and --limit honoured; neither writes a byte
 *    (the files' contents and the directory listing are unchanged).
 *  - requeue-quarantine refuses while the spool is open elsewhere (its
 *    lock), then appends the unconfirmed intact record, skips the
 *    confirmed one and renames the file; stat and dump show the result.
 *  - a running bridge under traffic, small segments confirmed and deleted
 *    under the readers: stat and dump, run over and over meanwhile, always
 *    exit 0 with valid JSON, and every message is delivered exactly once. */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/props.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/spool_format.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

/* One line per JSON object of stdin: "seq confirmed encoding body[:24]",
 * or a failure exit if a line is not a JSON object with those fields. */
static const char *const json_check =
    "import sys, json\n"
    "for line in sys.stdin:\n"
    "    o = json.loads(line)\n"
    "    assert isinstance(o, dict)\n"
    "    for k in ('seq','time','route','exchange','routing_key','properties','headers',"
    "'body','encoding'):\n"
    "        assert k in o, k\n"
    "    print(o['seq'], o['confirmed'], o['encoding'], o['body'][:24].replace('\\n', '|'))\n";

static const char *const cli_yaml = "mqtt: {host: 127.0.0.1, port: 1883, client_id: it-spool}\n"
                                    "amqp: {port: 5672}\n"
                                    "spool: {dir: ${SPOOL_DIR}}\n"
                                    "routes:\n"
                                    "  - {name: r, topic: \"spool/#\", exchange: \"\"}\n";

static int run_cli(struct th_bridge *b, const char *cmd, const char *a1, const char *a2,
                   struct th_run_result *r)
{
    const char *argv[] = {M2A_BINARY, "spool", cmd, "-c", b->config_path, a1, a2, NULL};
    return th_run(argv, NULL, 60000, r);
}

/* python3's verdict on a dump; its summary lines in *summary (caller frees). */
static int json_lines(const char *dump, char **summary)
{
    const char *argv[] = {"python3", "-c", json_check, NULL};
    struct th_run_result r;
    th_run(argv, dump, 60000, &r);
    if (r.exit_code != 0)
        fprintf(stderr, "json check failed: %s\n", r.err);
    *summary = r.out;
    r.out = NULL;
    int code = r.exit_code;
    th_run_result_free(&r);
    return code;
}

static size_t count_lines(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += *s == '\n';
    return n;
}

/* True when the stat output has the line "LABEL<spaces>VALUE". */
static bool stat_is(const char *out, const char *label, const char *value)
{
    const char *p = strstr(out, label);
    if (!p)
        return false;
    p += strlen(label);
    while (*p == ' ')
        p++;
    size_t n = strlen(value);
    return strncmp(p, value, n) == 0 && p[n] == '\n';
}

static const struct m2a_header hdrs[] = {{{"x-src", 5}, {"it", 2}}};

static const struct m2a_header odd_hdrs[] = {{{"x-\x01", 3}, {"\xff\xfe\"\\", 4}}};

static struct m2a_envelope env_for(const char *body, size_t len, uint64_t ts)
{
    struct m2a_envelope e = {.route_id = M2A_ROUTE_NONE,
                             .timestamp_ms = ts,
                             .route = {"r", 1},
                             .exchange = {"ex", 2},
                             .routing_key = {"a.b", 3},
                             .topic = {"a/b", 3},
                             .qos = 1,
                             .persistent = true,
                             .nheaders = 1,
                             .headers = hdrs,
                             .body = {body, len}};
    return e;
}

/* A record (header + encoded envelope) for seq. */
static void record_for(struct m2a_buf *out, uint64_t seq, const char *body)
{
    struct m2a_envelope e = env_for(body, strlen(body), m2a_wall_ms());
    size_t at = out->len;
    unsigned char hdr[M2A_SPOOL_RECORD_HEADER] = {0};
    m2a_buf_append(out, hdr, sizeof(hdr));
    m2a_envelope_encode(&e, out);
    m2a_spool_format_record_header((unsigned char *)out->data + at,
                                   out->len - at - M2A_SPOOL_RECORD_HEADER, seq);
}

static void append_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "ab");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(p, 1, n, f), n);
    ck_assert_int_eq(fclose(f), 0);
}

#define NREC 20 /* records 1..20; 1..5 confirmed; 10 damaged; a torn 21 */

static struct m2a_spool_opts opts_for(const char *dir)
{
    return (struct m2a_spool_opts){.dir = dir,
                                   .max_bytes = 1u << 26,
                                   .segment_bytes = 1u << 24,
                                   .fsync = M2A_FSYNC_BATCH,
                                   .overflow = M2A_OVERFLOW_BLOCK};
}

static void write_spool(const char *dir)
{
    struct m2a_spool_opts so = opts_for(dir);
    struct m2a_spool *s = NULL;
    char err[512];
    ck_assert_int_eq(m2a_spool_open(&so, &s, NULL, err, sizeof(err)), 0);
    for (int i = 1; i <= NREC; i++) {
        char body[64];
        int n = snprintf(body, sizeof(body), "seq=%d héllo \"q\"\n", i);
        if (i == 7) { /* binary: base64 */
            body[0] = (char)0xff;
            body[1] = 0;
        }
        struct m2a_envelope e = env_for(body, (size_t)n, 1700000000000ull + (uint64_t)i);
        if (i == 8) /* strings that are not UTF-8 and control bytes: still JSON */
            e.headers = odd_hdrs;
        struct m2a_buf pb = {0};
        if (i == 9) { /* MQTT 5 properties: shown decoded */
            static const struct m2a_header user[] = {{{"site", 4}, {"lab \"2\"", 7}}};
            struct m2a_props mp = {.present = M2A_PROPS_EXPIRY | M2A_PROPS_CONTENT_TYPE |
                                              M2A_PROPS_RESPONSE_TOPIC | M2A_PROPS_CORRELATION,
                                   .expiry_s = 60,
                                   .content_type = {"application/json", 16},
                                   .response_topic = {"replies/dev-9", 13},
                                   .correlation = {"\x00\x01\x02", 3},
                                   .nuser = 1,
                                   .user = user};
            m2a_props_encode(&mp, &pb);
            e.properties = (struct m2a_str){(const char *)pb.data, pb.len};
        }
        if (i == 11) /* a properties block that does not decode: shown raw */
            e.properties = (struct m2a_str){"\x7f\x01", 2};
        uint64_t seq;
        ck_assert_int_eq(m2a_spool_append(s, &e, &seq), 0);
        ck_assert_uint_eq(seq, (uint64_t)i);
        m2a_buf_free(&pb);
    }
    ck_assert_int_eq(m2a_spool_flush(s), 0);
    for (int i = 1; i <= 5; i++) {
        uint64_t seq;
        const void *d;
        size_t l;
        ck_assert_int_eq(m2a_spool_read(s, &seq, &d, &l), 0);
    }
    ck_assert_int_eq(m2a_spool_commit(s, 5), 0);
    m2a_spool_close(s);
}

/* Flips a byte inside record 10's payload, appends a torn record and
 * writes a quarantine file; returns the segment's path (caller frees). */
static char *damage(const char *dir)
{
    char seg[M2A_SPOOL_NAME_MAX];
    m2a_spool_format_segment_name(seg, sizeof(seg), 1);
    char *path = xmalloc(strlen(dir) + sizeof(seg) + 2);
    sprintf(path, "%s/%s", dir, seg);
    size_t len;
    char *data = th_read_file(path, &len);
    ck_assert_ptr_nonnull(data);
    /* Record 10 starts after 9 records; they have equal size but for the
     * body length, so find its header by walking. */
    size_t pos = 0;
    for (int i = 1; i < 10; i++) {
        uint64_t seq;
        size_t rl;
        ck_assert_int_eq(m2a_spool_format_record_parse((unsigned char *)data + pos, len - pos,
                                                       (uint64_t)i - 1, UINT64_MAX, &seq, &rl),
                         M2A_SPOOL_RECORD_OK);
        pos += rl;
    }
    data[pos + M2A_SPOOL_RECORD_HEADER + 10] ^= 0x40;
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(data, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
    /* A torn record 21: its first 30 bytes. */
    struct m2a_buf r = {0};
    record_for(&r, 21, "seq=21 torn");
    append_file(path, r.data, 30);
    m2a_buf_free(&r);
    free(data);

    /* Quarantine: garbage, intact 3 (confirmed), garbage, intact 100. */
    struct m2a_buf q = {0};
    m2a_buf_append_str(&q, "garbage garbage garbage");
    record_for(&q, 3, "seq=3 quarantined confirmed");
    m2a_buf_append_str(&q, "more garbage");
    record_for(&q, 100, "seq=100 quarantined");
    char qname[M2A_SPOOL_NAME_MAX], qpath[512];
    /* Named after seq 50: recovery names its own after the seq the damage
     * should have held (10 here) and rewrites a file of that name. */
    m2a_spool_format_quarantine_name(qname, sizeof(qname), 50);
    snprintf(qpath, sizeof(qpath), "%s/%s", dir, qname);
    append_file(qpath, q.data, q.len);
    m2a_buf_free(&q);
    return path;
}

START_TEST(stat_dump_requeue_on_a_damaged_spool)
{
    struct th_bridge *b = th_bridge_new(NULL);
    ck_assert_int_eq(th_bridge_config(b, cli_yaml), 0);
    write_spool(b->spool_dir);
    char *seg = damage(b->spool_dir);
    size_t before_len;
    char *before = th_read_file(seg, &before_len);

    struct th_run_result r;
    ck_assert_int_eq(run_cli(b, "stat", NULL, NULL, &r), 0);
    printf("%s", r.out);
    ck_assert_int_eq(r.exit_code, 0);
    ck_assert(stat_is(r.out, "segments:", "1"));
    /* 20 written, 10 damaged: 19 intact on disk, 6..20 but 10 unconfirmed. */
    ck_assert(stat_is(r.out, "records:", "19 on disk, 14 unconfirmed"));
    ck_assert(stat_is(r.out, "confirmed position:", "5"));
    ck_assert(stat_is(r.out, "tail in flight:", "30 bytes"));
    ck_assert_ptr_nonnull(strstr(r.out, "in 1 ranges\n"));
    ck_assert_ptr_nonnull(strstr(r.out, "oldest unconfirmed: "));
    ck_assert_ptr_nonnull(strstr(r.out, "(seq 6, received 2023-11-14T22:13:20.006Z)"));
    ck_assert_ptr_nonnull(strstr(r.out, "(seq 20, received 2023-11-14T22:13:20.020Z)"));
    ck_assert(stat_is(r.out, "quarantine files:", "1"));
    ck_assert_ptr_nonnull(strstr(r.out, "  quarantine-00000000000000000050.bad 217 bytes\n"));
    th_run_result_free(&r);

    ck_assert_int_eq(run_cli(b, "dump", NULL, NULL, &r), 0);
    ck_assert_int_eq(r.exit_code, 0);
    ck_assert_ptr_nonnull(strstr(r.err, "skipped 30 bytes of tail in flight"));
    char *sum = NULL;
    ck_assert_int_eq(json_lines(r.out, &sum), 0);
    printf("%s", sum);
    ck_assert_uint_eq(count_lines(sum), 19);
    ck_assert_ptr_nonnull(strstr(sum, "1 True utf8 seq=1 héllo \"q\"|\n"));
    ck_assert_ptr_nonnull(strstr(sum, "6 False utf8 seq=6 "));
    ck_assert_ptr_nonnull(strstr(sum, "7 False base64 /w")); /* 0xff 0x00 ... */
    ck_assert_ptr_null(strstr(sum, "\n10 "));
    ck_assert_ptr_nonnull(strstr(r.out, "\"headers\":{\"x-src\":\"it\"}"));
    ck_assert_ptr_nonnull(strstr(r.out, "\"headers\":{\"x-\\u0001\":\"\\u00ff\\u00fe\\\"\\\\\"}"));
    ck_assert_ptr_nonnull(strstr(r.out, "\"exchange\":\"ex\",\"routing_key\":\"a.b\""));
    ck_assert_ptr_nonnull(
        strstr(r.out, ",\"mqtt5\":{\"message_expiry_s\":60,\"content_type\":\"application/json\","
                      "\"response_topic\":\"replies/dev-9\",\"correlation_data_base64\":\"AAEC\","
                      "\"user_properties\":{\"site\":\"lab \\\"2\\\"\"}}},\"headers\""));
    ck_assert_ptr_nonnull(strstr(r.out, ",\"mqtt5_error\":\"corrupt properties block\","
                                        "\"mqtt5_base64\":\"fwE=\"},\"headers\""));
    ck_assert_uint_eq(count_lines(r.out), 19); /* one per record, properties or not */
    free(sum);
    th_run_result_free(&r);

    ck_assert_int_eq(run_cli(b, "dump", "--from=8", "--limit=3", &r), 0);
    ck_assert_int_eq(json_lines(r.out, &sum), 0);
    ck_assert_str_eq(sum, "8 False utf8 seq=8 héllo \"q\"|\n9 False utf8 seq=9 héllo \"q\"|\n"
                          "11 False utf8 seq=11 héllo \"q\"|\n");
    free(sum);
    th_run_result_free(&r);

    /* Read only: the segment is byte for byte what it was. */
    size_t after_len;
    char *after = th_read_file(seg, &after_len);
    ck_assert_uint_eq(after_len, before_len);
    ck_assert(memcmp(before, after, before_len) == 0);
    free(after);

    /* requeue-quarantine: refused while the spool is open (locked). */
    struct m2a_spool_opts so = opts_for(b->spool_dir);
    struct m2a_spool *s = NULL;
    char err[512];
    ck_assert_int_eq(m2a_spool_open(&so, &s, NULL, err, sizeof(err)), 0);
    ck_assert_int_eq(run_cli(b, "requeue-quarantine", NULL, NULL, &r), 0);
    ck_assert_int_eq(r.exit_code, 1);
    ck_assert_ptr_nonnull(strstr(r.err, "in use"));
    th_run_result_free(&r);
    m2a_spool_close(s);

    /* The open above recovered the spool like a bridge start: the torn
     * tail is cut, record 10 quarantined too. */
    ck_assert_int_eq(run_cli(b, "requeue-quarantine", NULL, NULL, &r), 0);
    printf("%s%s", r.out, r.err);
    ck_assert_int_eq(r.exit_code, 0);
    /* Recovery's file: record 10 with its flipped byte, nothing intact. */
    ck_assert_ptr_nonnull(strstr(r.out, "quarantine-00000000000000000010.bad: 0 records "
                                        "requeued, 0 already confirmed, 0 undecodable, 86 "
                                        "damaged bytes\n"));
    ck_assert_ptr_nonnull(strstr(r.out, "quarantine-00000000000000000050.bad: 1 records "
                                        "requeued, 1 already confirmed, 0 undecodable, 35 "
                                        "damaged bytes\n"));
    ck_assert_ptr_nonnull(strstr(r.out, "renamed quarantine-00000000000000000050.bad to "
                                        "quarantine-00000000000000000050.bad.requeued"));
    th_run_result_free(&r);

    ck_assert_int_eq(run_cli(b, "stat", NULL, NULL, &r), 0);
    printf("%s", r.out);
    ck_assert(stat_is(r.out, "records:", "20 on disk, 15 unconfirmed"));
    ck_assert(stat_is(r.out, "tail in flight:", "0 bytes"));
    ck_assert(stat_is(r.out, "quarantine files:", "0"));
    th_run_result_free(&r);
    ck_assert_int_eq(run_cli(b, "dump", "--from=21", NULL, &r), 0);
    ck_assert_int_eq(json_lines(r.out, &sum), 0);
    ck_assert_str_eq(sum, "21 False utf8 seq=100 quarantined\n");
    free(sum);
    th_run_result_free(&r);
    /* A second run requeues nothing twice: the file it renamed is done;
     * the damaged record 10 is still in its segment (until that segment is
     * confirmed and deleted), so every open quarantines it again. */
    ck_assert_int_eq(run_cli(b, "requeue-quarantine", NULL, NULL, &r), 0);
    ck_assert_int_eq(r.exit_code, 0);
    ck_assert_ptr_null(strstr(r.out, "quarantine-00000000000000000050.bad:"));
    ck_assert_ptr_nonnull(strstr(r.out, "quarantine-00000000000000000010.bad: 0 records "));
    th_run_result_free(&r);

    free(before);
    free(seg);
    th_bridge_free(b);
}
END_TEST

START_TEST(usage_errors)
{
    struct th_bridge *b = th_bridge_new(NULL);
    ck_assert_int_eq(th_bridge_config(b, cli_yaml), 0);
    struct th_run_result r;
    ck_assert_int_eq(run_cli(b, "dump", "--limit=0", NULL, &r), 0);
    ck_assert_int_eq(r.exit_code, 2);
    th_run_result_free(&r);
    ck_assert_int_eq(run_cli(b, "frobnicate", NULL, NULL, &r), 0);
    ck_assert_int_eq(r.exit_code, 2);
    th_run_result_free(&r);
    /* No spool directory yet: a runtime failure, said. */
    ck_assert_int_eq(run_cli(b, "stat", NULL, NULL, &r), 0);
    ck_assert_int_eq(r.exit_code, 1);
    ck_assert_ptr_nonnull(strstr(r.err, "cannot open the spool directory"));
    th_run_result_free(&r);
    th_bridge_free(b);
}
END_TEST

#define NMSG 30000

static void *publish(void *arg)
{
    static const char *const topics[] = {"spool/a"};
    struct th_pub p = {.port = *(int *)arg,
                       .topics = topics,
                       .ntopics = 1,
                       .first = 0,
                       .count = NMSG,
                       .payload_size = 400,
                       .qos = 1,
                       .window = 200,
                       .timeout_ms = 180000};
    return (void *)(intptr_t)th_mqtt_publish(&p);
}

START_TEST(stat_and_dump_beside_a_running_bridge)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_bridge *b = th_bridge_new(mq);
    ck_assert_int_eq(th_bridge_config(b,
                                      "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, "
                                      "client_id: it-spool-cli}\n"
                                      "amqp:\n"
                                      "  port: ${AMQP_PORT}\n"
                                      "  topology:\n"
                                      "    exchanges: [{name: it.spoolcli, type: topic}]\n"
                                      "    queues:\n"
                                      "      - name: it.spoolcli\n"
                                      "        bindings: [{exchange: it.spoolcli}]\n"
                                      "spool: {dir: ${SPOOL_DIR}, segment_bytes: 64KiB}\n"
                                      "routes:\n"
                                      "  - {name: r, topic: \"spool/#\", exchange: it.spoolcli}\n"
                                      "log: {stats_interval: 0}\n"),
                     0);
    struct th_amqp *c = th_amqp_consumer(th_rabbit_port(), "it.spoolcli", "it.spoolcli", "#");
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "subscribed", 30000), 0);

    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, publish, &mq->port), 0);
    int runs = 0, nonempty = 0;
    long dumped = 0;
    for (;;) {
        struct th_run_result r;
        ck_assert_int_eq(run_cli(b, "stat", NULL, NULL, &r), 0);
        ck_assert_msg(r.exit_code == 0, "stat: %s", r.err);
        th_run_result_free(&r);
        ck_assert_int_eq(run_cli(b, "dump", "--limit=2000", NULL, &r), 0);
        ck_assert_msg(r.exit_code == 0, "dump: %s", r.err);
        char *sum = NULL;
        ck_assert_int_eq(json_lines(r.out, &sum), 0);
        size_t n = count_lines(sum);
        dumped += (long)n;
        nonempty += n > 0;
        free(sum);
        th_run_result_free(&r);
        runs++;
        void *res;
        if (runs >= 5 && pthread_tryjoin_np(t, &res) == 0) {
            ck_assert_int_eq((long)(intptr_t)res, NMSG);
            break;
        }
    }
    printf("spool stat+dump ran %d times beside the bridge (%d saw records, %ld lines)\n", runs,
           nonempty, dumped);
    ck_assert_int_ge(nonempty, 1);
    struct th_msgs got = {0};
    ck_assert_int_eq(th_amqp_collect(c, &got, NMSG, 180000), 0);
    th_amqp_drain(c, &got, 500);
    TH_ASSERT_EXACT(th_check_msgs(0, NMSG, &got));
    ck_assert_int_eq(th_bridge_stop(b, 30000), 0);
    th_msgs_free(&got);
    th_amqp_free(c);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("spool_cli");
    TCase *tc = tcase_create("spool_cli");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, stat_dump_requeue_on_a_damaged_spool);
    tcase_add_test(tc, usage_errors);
    tcase_add_test(tc, stat_and_dump_beside_a_running_bridge);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return m2a_check_run(suite());
}
