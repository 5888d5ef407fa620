/* gen_corpus.c - writes the fuzzers' seed corpora (tests/fuzz/corpus/) from
 * the real code: configs as text, route inputs in fuzz_routes' line format,
 * envelopes encoded by m2a_envelope_encode and a segment written by the
 * spool itself, so the seeds follow the formats if they change.
 *
 *   gen_corpus SOURCE_DIR OUT_DIR      (scripts/fuzz.sh corpus runs it)
 *
 * Output is deterministic: same code, same bytes. Single-threaded. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mqtt_protocol.h>

#include "files.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/props.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/spool_format.h"
#include "mqtt2amqp/util.h"

static const char *g_out;

static void die(const char *what)
{
    fprintf(stderr, "gen_corpus: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void put(const char *target, const char *name, const void *p, size_t n)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", g_out, target);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        die(path);
    snprintf(path, sizeof(path), "%s/%s/%s", g_out, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, n, f) != n || fclose(f) != 0)
        die(path);
}

/* One flags byte, then the rest. */
static void put_flagged(const char *target, const char *name, unsigned char flags, const void *p,
                        size_t n)
{
    unsigned char *b = xmalloc(n + 1);
    b[0] = flags;
    memcpy(b + 1, p, n);
    put(target, name, b, n + 1);
    free(b);
}

static void gen_config(const char *src)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/config/mqtt2amqp.yaml", src);
    FILE *f = fopen(path, "rb");
    if (!f)
        die(path);
    struct m2a_buf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        m2a_buf_append(&b, chunk, n);
    fclose(f);
    put("fuzz_config", "example.yaml", b.data, b.len);
    m2a_buf_free(&b);

    static const struct {
        const char *name, *text;
    } seeds[] = {
        {"minimal.yaml", "routes:\n  - name: all\n    topic: \"#\"\n    exchange: amq.topic\n"},
        {"tls.yaml", "mqtt:\n  host: ${MQTT_HOST:-localhost}\n  protocol: 311\n  tls:\n"
                     "    ca_file: /etc/ssl/certs/ca-certificates.crt\n"
                     "    verify_hostname: false\n"
                     "amqp:\n  vhost: /iot\n  heartbeat: 0\n  tls:\n    ca_file: /ca.pem\n"
                     "routes:\n  - {name: r, topic: a/+/c, exchange: \"\", routing_key: "
                     "\"x.{1}.{{y}}\"}\n"},
        {"topology.yaml",
         "amqp:\n  topology:\n    exchanges:\n      - {name: ex, type: direct, arguments: "
         "{alternate-exchange: ae, x-n: 3, x-b: true}}\n    queues:\n      - name: q\n"
         "        arguments: {x-queue-type: quorum, x-max-length: 1000}\n"
         "        bindings: [{exchange: ex, routing_key: k}]\n"
         "spool: {dir: /tmp/s, max_bytes: 10MiB, segment_bytes: 64KiB, fsync: interval}\n"
         "log: {level: debug, format: json, stats_interval: 0}\nshutdown_timeout: 3\n"
         "routes:\n  - name: r\n    topic: \"x/#\"\n    exchange: ex\n    continue: true\n"
         "    headers: {src: \"{topic}\", n: \"{1}\"}\n"},
        {"bad-key.yaml", "mqtt:\n  hots: x\nroutes: []\n"},
        {"bad-yaml.yaml", "routes:\n  - name: [unclosed\n"},
    };
    for (size_t i = 0; i < sizeof(seeds) / sizeof(*seeds); i++)
        put("fuzz_config", seeds[i].name, seeds[i].text, strlen(seeds[i].text));

    /* names at the 255 bytes of an AMQP short string: one more is refused */
    char name[256];
    memset(name, 'n', 255);
    name[255] = '\0';
    char *text = xasprintf("amqp:\n  topology:\n    exchanges: [{name: %s}]\n"
                           "dead_letter:\n  exchange: %s\n"
                           "routes:\n  - {name: %s, topic: a, exchange: %s, content_type: %s}\n",
                           name, name, name, name, name);
    put("fuzz_config", "long-names.yaml", text, strlen(text));
    free(text);
}

static void gen_routes(void)
{
    /* flags: 1/2 continue A/B, 4/8 key template A/B, 0x30 qos, 0x40 retain */
    static const struct {
        const char *name;
        unsigned char flags;
        const char *lines;
    } seeds[] = {
        {"example", 0x04 | 0x10,
         "sensors/+/temp\nsensors.{1}.temperature\n{1}\nsensors/#\n\n"
         "sensors/dev1/temp\nsensors/dev1/humidity\nsensors\nother/x"},
        {"continue", 0x01 | 0x0c,
         "a/#\n{topic}.x\nsrc={topic}\n+/b/+\n{1}-{2}\na/b/c\na\na/b\nz/b/q\n$SYS/b/c"},
        {"dollar", 0x00, "#\n\n\n$SYS/#\n\n$SYS/broker/load\nplain/topic\n/leading\ntrailing/"},
        {"braces", 0x0c | 0x40,
         "+/+/+/+/+/+/+/+/+\n{{{9}}}.{1}\n}}{{\nx/y\n{topic\nq/w/e/r/t/y/u/i/o\nx/y"},
        {"dots", 0x20, "a.b/+\n\n{1}\na.b/c.d\n\na.b/c.d\na.b/e"},
    };
    for (size_t i = 0; i < sizeof(seeds) / sizeof(*seeds); i++)
        put_flagged("fuzz_routes", seeds[i].name, seeds[i].flags, seeds[i].lines,
                    strlen(seeds[i].lines));
}

static void envelopes(struct m2a_envelope env[2], struct m2a_header *hdr)
{
    hdr[0] = (struct m2a_header){{"device", 6}, {"dev1", 4}};
    hdr[1] = (struct m2a_header){{"source", 6}, {"mqtt2amqp", 9}};
    env[0] = (struct m2a_envelope){
        .timestamp_ms = 1700000000000ull,
        .route = {"temperature", 11},
        .exchange = {"telemetry", 9},
        .routing_key = {"sensors.dev1.temperature", 24},
        .content_type = {"application/json", 16},
        .topic = {"sensors/dev1/temp", 17},
        .qos = 1,
        .persistent = true,
        .nheaders = 2,
        .headers = hdr,
        .body = {"{\"t\":21.5}", 10},
    };
    env[1] = (struct m2a_envelope){
        .timestamp_ms = 1700000000001ull,
        .route = {"other", 5},
        .exchange = {"", 0},
        .routing_key = {"x", 1},
        .topic = {"x", 1},
        .qos = 2,
        .retain = true,
        .body = {"", 0},
    };
}

/* Records 1, 50, 5 | 10, 11, 12 with zero CRCs (flag 1 fixes them), split
 * in two segments named 1 and 10 (flag 2): seq 50 belongs to the second
 * segment, damage the reader once mishandled (test_regressions.c). */
static void misnumbered(const struct m2a_envelope *env)
{
    static const uint64_t seqs[] = {1, 50, 5, 10, 11, 12};
    struct m2a_buf b = {0};
    for (size_t i = 0; i < sizeof(seqs) / sizeof(*seqs); i++) {
        size_t start = b.len;
        m2a_buf_reserve(&b, M2A_SPOOL_RECORD_HEADER);
        b.len += M2A_SPOOL_RECORD_HEADER;
        m2a_envelope_encode(env, &b);
        unsigned char *h = b.data + start;
        m2a_spool_format_record_header(h, b.len - start - M2A_SPOOL_RECORD_HEADER, seqs[i]);
        memset(h + 8, 0, 4); /* the CRC */
    }
    put_flagged("fuzz_spool_record", "segment-misnumbered", 0x01 | 0x02, b.data, b.len);
    m2a_buf_free(&b);
}

static void gen_spool(void)
{
    struct m2a_header hdr[2];
    struct m2a_envelope env[2];
    envelopes(env, hdr);
    for (int i = 0; i < 2; i++) {
        struct m2a_buf b = {0};
        m2a_envelope_encode(&env[i], &b);
        char name[32];
        snprintf(name, sizeof(name), "envelope-%d", i);
        put_flagged("fuzz_spool_record", name, 0, b.data, b.len);
        m2a_buf_free(&b);
    }

    /* With MQTT 5 properties (props.h), every kind of them. */
    mosquitto_property *l = NULL;
    mosquitto_property_add_int32(&l, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL, 60);
    mosquitto_property_add_string(&l, MQTT_PROP_CONTENT_TYPE, "text/plain");
    mosquitto_property_add_string(&l, MQTT_PROP_RESPONSE_TOPIC, "dev/1/resp");
    mosquitto_property_add_binary(&l, MQTT_PROP_CORRELATION_DATA, "\xff\0c", 3);
    mosquitto_property_add_string_pair(&l, MQTT_PROP_USER_PROPERTY, "b", "2");
    mosquitto_property_add_string_pair(&l, MQTT_PROP_USER_PROPERTY, "a", "1");
    struct m2a_buf pb = {0}, b = {0};
    m2a_props_from_mqtt(l, &pb);
    mosquitto_property_free_all(&l);
    struct m2a_envelope pe = env[0];
    pe.properties = (struct m2a_str){(const char *)pb.data, pb.len};
    m2a_envelope_encode(&pe, &b);
    put_flagged("fuzz_spool_record", "envelope-props", 0, b.data, b.len);
    m2a_buf_free(&b);
    m2a_buf_free(&pb);

    char *dir = th_tmpdir_new("gen-corpus");
    struct m2a_spool_opts o = {
        .dir = dir, .max_bytes = 1u << 20, .segment_bytes = 1u << 20, .fsync = M2A_FSYNC_NEVER};
    struct m2a_spool *s = NULL;
    char err[256];
    if (m2a_spool_open(&o, &s, NULL, err, sizeof(err)) != 0) {
        fprintf(stderr, "gen_corpus: %s\n", err);
        exit(1);
    }
    uint64_t seq;
    for (int i = 0; i < 3; i++)
        if (m2a_spool_append(s, &env[i % 2], &seq) != 0)
            die("append");
    if (m2a_spool_flush(s) != 0)
        die("flush");
    m2a_spool_close(s);

    char name[M2A_SPOOL_NAME_MAX], path[1024];
    m2a_spool_format_segment_name(name, sizeof(name), 1);
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        die(path);
    unsigned char seg[4096];
    size_t n = fread(seg, 1, sizeof(seg), f);
    fclose(f);
    th_rmtree(dir);
    free(dir);
    /* flags: 1 fix CRCs, 2 two segments, 4 name by first record,
     * 8 checkpoint, 16 tiny segments */
    misnumbered(&env[1]);
    put_flagged("fuzz_spool_record", "segment", 0x00, seg, n);
    put_flagged("fuzz_spool_record", "segment-split-ckpt", 0x01 | 0x02 | 0x08, seg, n);
    put_flagged("fuzz_spool_record", "segment-torn", 0x04 | 0x10, seg, n - 7);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: gen_corpus SOURCE_DIR OUT_DIR\n");
        return 2;
    }
    g_out = argv[2];
    if (mkdir(g_out, 0755) != 0 && errno != EEXIST)
        die(g_out);
    gen_config(argv[1]);
    gen_routes();
    gen_spool();
    return 0;
}
