/* amqp_pub.c - m2a-bench-amqp-pub, the direct-AMQP baseline of bench/run.sh.
 *
 * What the bridge's AMQP side does, without the bridge: publisher confirms
 * with a window of WINDOW unconfirmed messages, persistent messages
 * (delivery mode 2), mandatory, to a durable topic exchange bound with "#"
 * to a durable classic queue (declared here like the bridge's topology
 * does). COUNT messages (seqs FIRST..) of SIZE bytes, routing keys
 * PREFIX.<seq % DEVICES>, as fast as confirmed or at a fixed RATE; the
 * payload is the one the MQTT generator sends (bench_common.h).
 *
 * Prints one line on stdout:
 *   amqp-pub: sent=N acked=N nacked=N returned=N secs=S rate=R first=F cpu_s=C
 * (rate = acked / secs, secs from the first publish to the last confirm,
 * cpu_s the publisher's own CPU time).
 *
 * With -B each message also carries what the bridge adds (message_id,
 * timestamp, headers x-mqtt-topic, x-mqtt-qos, x-mqtt-retain), to tell
 * RabbitMQ's cost of those properties from the bridge's own. The other
 * switches take the bridge's habits one at a time (bench/run.sh, rmqcost):
 * -A picks the properties and headers, -M mandatory off, -F the bridge's
 * frame layout (its own frame encoder, amqp_frames.c: a burst of publishes
 * in one write instead of rabbitmq-c's three sends per message).
 *
 * One thread owns the rabbitmq-c connection. */
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>

#include "bench_amqp.h"
#include "bench_common.h"
#include "mqtt2amqp/amqp_frames.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

#define PROG      "amqp-pub" /* prefix of error lines */
#define CHANNEL   1
#define BURST_MAX 64 /* publishes between two looks at the socket */

struct opts {
    struct bench_amqp_target t;
    const char *queue, *exchange, *prefix;
    size_t size;
    long long count, first;
    long devices, window, timeout_s;
    double rate;
    bool transient;
    unsigned props; /* PROP_* the messages carry */
    bool no_mandatory;
    int frames_burst; /* -F: publishes per write with the bridge's encoder; 0: rabbitmq-c's */
};

/* What -A can add, one bit each; -B is PROP_BRIDGE. */
enum {
    PROP_MESSAGE_ID = 1u << 0,
    PROP_TIMESTAMP = 1u << 1,
    PROP_CONTENT_TYPE = 1u << 2,
    PROP_TOPIC = 1u << 3,
    PROP_QOS = 1u << 4,
    PROP_RETAIN = 1u << 5,
    PROP_NO_DELIVERY_MODE = 1u << 6, /* leave delivery_mode out (RabbitMQ: transient) */
    PROP_BRIDGE = PROP_MESSAGE_ID | PROP_TIMESTAMP | PROP_TOPIC | PROP_QOS | PROP_RETAIN,
};
static const struct {
    const char *name;
    unsigned bits;
} prop_names[] = {{"message_id", PROP_MESSAGE_ID},
                  {"timestamp", PROP_TIMESTAMP},
                  {"content_type", PROP_CONTENT_TYPE},
                  {"x-mqtt-topic", PROP_TOPIC},
                  {"x-mqtt-qos", PROP_QOS},
                  {"x-mqtt-retain", PROP_RETAIN},
                  {"no_delivery_mode", PROP_NO_DELIVERY_MODE},
                  {"bridge", PROP_BRIDGE},
                  {"all", PROP_BRIDGE | PROP_CONTENT_TYPE}};

struct pub {
    struct opts o;
    amqp_connection_state_t conn;
    char **keys;
    unsigned char *payload;
    uint8_t *confirmed; /* bit per delivery tag (1-based) */
    uint64_t low;       /* every tag below this is confirmed */
    long long sent, acked, nacked, returned;
    uint64_t t_first_us, t_last_us;
    struct m2a_buf frames; /* -F: the burst's frames, one write */
};

static void usage(void)
{
    fprintf(stderr,
            "usage: m2a-bench-amqp-pub -p PORT -x EXCHANGE -Q QUEUE -n COUNT [options]\n"
            "  -H HOST -p PORT -u USER -P PASS -v VHOST   broker (127.0.0.1, guest, /)\n"
            "  -x EXCHANGE -Q QUEUE   durable topic exchange, durable queue bound with #\n"
            "  -n COUNT -f FIRST      messages and first sequence number (0)\n"
            "  -s SIZE                payload bytes, >= %d (100)\n"
            "  -d DEVICES -k PREFIX   routing keys PREFIX.0 .. PREFIX.DEVICES-1 (100, bench.dev)\n"
            "  -r RATE                messages per second; 0 = as fast as confirmed (0)\n"
            "  -w WINDOW              unconfirmed messages at most (1000)\n"
            "  -t                     transient messages (delivery mode 1)\n"
            "  -B                     add the bridge's properties and headers (-A bridge)\n"
            "  -A NAME[,NAME..]       add these: message_id timestamp content_type\n"
            "                         x-mqtt-topic x-mqtt-qos x-mqtt-retain bridge all;\n"
            "                         no_delivery_mode leaves delivery_mode out\n"
            "  -M                     mandatory off (on by default, as the bridge)\n"
            "  -F BURST               the bridge's frame layout: up to BURST publishes\n"
            "                         per write (default: rabbitmq-c's, 3 sends each)\n"
            "  -T SECONDS             give up after this long (600)\n",
            BENCH_HDR_SIZE);
    exit(2);
}

static unsigned parse_props(const char *arg)
{
    unsigned bits = 0;
    char *list = xstrdup(arg), *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        size_t i = 0;
        while (i < sizeof(prop_names) / sizeof(prop_names[0]) && strcmp(prop_names[i].name, t))
            i++;
        if (i == sizeof(prop_names) / sizeof(prop_names[0])) {
            fprintf(stderr, "amqp-pub: -A: unknown property '%s'\n", t);
            exit(2);
        }
        bits |= prop_names[i].bits;
    }
    free(list);
    return bits;
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.t = BENCH_AMQP_TARGET_DEFAULTS,
                       .prefix = "bench.dev",
                       .size = 100,
                       .count = -1,
                       .devices = 100,
                       .window = 1000,
                       .timeout_s = 600};
    int c;
    while ((c = getopt(argc, argv, BENCH_AMQP_TARGET_OPTS "x:Q:n:f:s:d:k:r:w:tBA:MF:T:")) != -1) {
        switch (c) {
        case 'x':
            o->exchange = optarg;
            break;
        case 'Q':
            o->queue = optarg;
            break;
        case 'n':
            o->count = bench_parse_ll("-n", optarg, 0, 1ll << 36);
            break;
        case 'f':
            o->first = bench_parse_ll("-f", optarg, 0, INT64_MAX / 4);
            break;
        case 's':
            o->size = (size_t)bench_parse_ll("-s", optarg, BENCH_HDR_SIZE, 64 * 1024 * 1024);
            break;
        case 'd':
            o->devices = (long)bench_parse_ll("-d", optarg, 1, 1000000);
            break;
        case 'k':
            o->prefix = optarg;
            break;
        case 'r':
            o->rate = bench_parse_double("-r", optarg, 0, 1e9);
            break;
        case 'w':
            o->window = (long)bench_parse_ll("-w", optarg, 1, 65535);
            break;
        case 't':
            o->transient = true;
            break;
        case 'B':
            o->props |= PROP_BRIDGE;
            break;
        case 'A':
            o->props |= parse_props(optarg);
            break;
        case 'M':
            o->no_mandatory = true;
            break;
        case 'F':
            o->frames_burst = (int)bench_parse_ll("-F", optarg, 1, 4096);
            break;
        case 'T':
            o->timeout_s = (long)bench_parse_ll("-T", optarg, 1, 86400);
            break;
        default:
            if (!bench_amqp_target_opt(&o->t, c, optarg))
                usage();
        }
    }
    if (!o->t.port || !o->exchange || !o->queue || o->count < 0 || optind != argc)
        usage();
}

static int open_conn(struct pub *p)
{
    const struct opts *o = &p->o;
    p->conn = bench_amqp_open(&o->t, CHANNEL, PROG, false);
    if (!p->conn)
        return -1;
    amqp_bytes_t q = amqp_cstring_bytes(o->queue), x = amqp_cstring_bytes(o->exchange);
    amqp_exchange_declare(p->conn, CHANNEL, x, amqp_cstring_bytes("topic"), 0, 1, 0, 0,
                          amqp_empty_table);
    if (!bench_amqp_rpc_ok(p->conn, PROG, "exchange.declare"))
        return -1;
    amqp_queue_declare(p->conn, CHANNEL, q, 0, 1, 0, 0, amqp_empty_table);
    if (!bench_amqp_rpc_ok(p->conn, PROG, "queue.declare"))
        return -1;
    amqp_queue_bind(p->conn, CHANNEL, q, x, amqp_cstring_bytes("#"), amqp_empty_table);
    if (!bench_amqp_rpc_ok(p->conn, PROG, "queue.bind"))
        return -1;
    amqp_confirm_select(p->conn, CHANNEL);
    if (!bench_amqp_rpc_ok(p->conn, PROG, "confirm.select"))
        return -1;
    return 0;
}

static long long in_flight(const struct pub *p)
{
    return p->sent - p->acked - p->nacked;
}

/* Marks tag (and, with multiple, every earlier one) confirmed; returns how
 * many were newly confirmed. */
static long long confirm(struct pub *p, uint64_t tag, bool multiple)
{
    long long n = 0;
    if (tag == 0 || tag > (uint64_t)p->sent)
        return 0;
    uint64_t from = multiple ? p->low : tag;
    for (uint64_t t = from; t <= tag; t++) {
        uint8_t m = (uint8_t)(1u << (t % 8));
        if (!(p->confirmed[t / 8] & m)) {
            p->confirmed[t / 8] |= m;
            n++;
        }
    }
    while (p->low <= (uint64_t)p->sent && (p->confirmed[p->low / 8] & (1u << (p->low % 8))))
        p->low++;
    return n;
}

/* Reads frames for up to timeout_us (0: only what is there). -1 when the
 * connection or channel is gone. */
static int read_frames(struct pub *p, uint64_t timeout_us)
{
    struct timeval tv = {(time_t)(timeout_us / 1000000u), (suseconds_t)(timeout_us % 1000000u)};
    for (;;) {
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame_noblock(p->conn, &f, &tv);
        if (rc == AMQP_STATUS_TIMEOUT)
            return 0;
        if (rc != AMQP_STATUS_OK) {
            fprintf(stderr, "amqp-pub: reading: %s\n", amqp_error_string2(rc));
            return -1;
        }
        tv.tv_sec = 0;
        tv.tv_usec = 0; /* got one: take the rest without waiting */
        if (f.frame_type != AMQP_FRAME_METHOD)
            continue; /* content of a basic.return */
        switch (f.payload.method.id) {
        case AMQP_BASIC_ACK_METHOD: {
            const amqp_basic_ack_t *a = f.payload.method.decoded;
            long long n = confirm(p, a->delivery_tag, a->multiple);
            p->acked += n;
            if (n)
                p->t_last_us = bench_mono_us();
            break;
        }
        case AMQP_BASIC_NACK_METHOD: {
            const amqp_basic_nack_t *a = f.payload.method.decoded;
            p->nacked += confirm(p, a->delivery_tag, a->multiple);
            break;
        }
        case AMQP_BASIC_RETURN_METHOD:
            p->returned++;
            break;
        case AMQP_CHANNEL_CLOSE_METHOD:
        case AMQP_CONNECTION_CLOSE_METHOD:
            fprintf(stderr, "amqp-pub: the broker closed the %s\n",
                    f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ? "channel" : "connection");
            return -1;
        default:
            break;
        }
        amqp_maybe_release_buffers(p->conn);
    }
}

/* The properties of every message (-A, -B): the headers table goes in hdrs. */
static void props_init(const struct opts *o, amqp_basic_properties_t *props,
                       amqp_table_entry_t hdrs[3])
{
    memset(props, 0, sizeof(*props));
    if (!(o->props & PROP_NO_DELIVERY_MODE)) {
        props->_flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
        props->delivery_mode =
            o->transient ? AMQP_DELIVERY_NONPERSISTENT : AMQP_DELIVERY_PERSISTENT;
    }
    if (o->props & PROP_MESSAGE_ID)
        props->_flags |= AMQP_BASIC_MESSAGE_ID_FLAG;
    if (o->props & PROP_TIMESTAMP)
        props->_flags |= AMQP_BASIC_TIMESTAMP_FLAG;
    if (o->props & PROP_CONTENT_TYPE) {
        props->_flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        props->content_type = amqp_cstring_bytes("application/octet-stream");
    }
    int n = 0;
    if (o->props & PROP_TOPIC) {
        hdrs[n].key = amqp_cstring_bytes("x-mqtt-topic");
        hdrs[n++].value.kind = AMQP_FIELD_KIND_UTF8; /* the value is set per message */
    }
    if (o->props & PROP_QOS) {
        hdrs[n].key = amqp_cstring_bytes("x-mqtt-qos");
        hdrs[n].value.kind = AMQP_FIELD_KIND_I32;
        hdrs[n++].value.value.i32 = 1;
    }
    if (o->props & PROP_RETAIN) {
        hdrs[n].key = amqp_cstring_bytes("x-mqtt-retain");
        hdrs[n].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        hdrs[n++].value.value.boolean = 0;
    }
    if (n > 0) {
        props->_flags |= AMQP_BASIC_HEADERS_FLAG;
        props->headers.num_entries = n;
        props->headers.entries = hdrs;
    }
}

/* -F: writes the burst's frames in one go (blocking socket: all of it). */
static int frames_flush(struct pub *p)
{
    if (p->frames.len == 0)
        return 0;
    struct m2a_amqp_frames_wire w = {amqp_get_sockfd(p->conn), NULL};
    int rc = m2a_amqp_frames_send(&w, &p->frames, 30000, UINT64_MAX);
    if (rc != 0)
        fprintf(stderr, "amqp-pub: writing frames: %s\n", m2a_strerror(rc));
    return rc == 0 ? 0 : -1;
}

/* Publishes while the window and rate allow. Returns the monotonic time the
 * next message is due when the rate holds us back, 0 otherwise, -1 on error. */
static int64_t publish_some(struct pub *p, uint64_t t0)
{
    amqp_basic_properties_t props;
    amqp_table_entry_t hdrs[3];
    props_init(&p->o, &props, hdrs);
    amqp_bytes_t body = {p->o.size, p->payload};
    char msgid[64], topic[64];
    int burst_max = p->o.frames_burst > 0 ? p->o.frames_burst : BURST_MAX;
    int64_t ret = 0;
    for (int burst = 0; burst < burst_max && p->sent < p->o.count && !bench_stop; burst++) {
        if (in_flight(p) >= p->o.window)
            break;
        uint64_t now = bench_mono_us();
        if (p->o.rate > 0) {
            uint64_t due = t0 + (uint64_t)((double)p->sent * 1e6 / p->o.rate);
            if (now < due) {
                ret = (int64_t)due;
                break;
            }
        }
        uint64_t seq = (uint64_t)(p->o.first + p->sent);
        uint64_t wall = bench_wall_us();
        bench_payload_stamp(p->payload, seq, wall);
        /* What the bridge sends: "<spool id>-<seq>", the MQTT topic. */
        props.message_id.len =
            (size_t)snprintf(msgid, sizeof(msgid), "0123456789abcdef-%" PRIu64, seq);
        props.message_id.bytes = msgid;
        props.timestamp = wall / 1000000u;
        if (p->o.props & PROP_TOPIC) {
            hdrs[0].value.value.bytes.len = (size_t)snprintf(
                topic, sizeof(topic), "bench/dev/%" PRIu64, seq % (uint64_t)p->o.devices);
            hdrs[0].value.value.bytes.bytes = topic;
        }
        if (p->sent == 0)
            p->t_first_us = now;
        amqp_bytes_t x = amqp_cstring_bytes(p->o.exchange);
        amqp_bytes_t key = amqp_cstring_bytes(p->keys[seq % (uint64_t)p->o.devices]);
        amqp_boolean_t mandatory = p->o.no_mandatory ? 0 : 1;
        if (p->o.frames_burst > 0) {
            amqp_basic_publish_t m = {.exchange = x, .routing_key = key, .mandatory = mandatory};
            if (m2a_amqp_frames_publish(&p->frames, CHANNEL, (uint32_t)amqp_get_frame_max(p->conn),
                                        &m, &props, body) != 0) {
                fprintf(stderr, "amqp-pub: encoding a publish failed\n");
                return -1;
            }
        } else {
            int rc = amqp_basic_publish(p->conn, CHANNEL, x, key, mandatory, 0, &props, body);
            if (rc != AMQP_STATUS_OK) {
                fprintf(stderr, "amqp-pub: publish: %s\n", amqp_error_string2(rc));
                return -1;
            }
        }
        p->sent++;
    }
    if (frames_flush(p) != 0)
        return -1;
    return ret;
}

static int run(struct pub *p)
{
    const struct opts *o = &p->o;
    uint64_t t0 = bench_mono_us(), deadline = t0 + (uint64_t)o->timeout_s * 1000000u;
    for (;;) {
        int64_t next = publish_some(p, t0);
        if (next < 0)
            return -1;
        bool all_sent = p->sent >= o->count || bench_stop;
        if (all_sent && in_flight(p) == 0)
            return 0;
        uint64_t now = bench_mono_us();
        if (now > deadline) {
            fprintf(stderr, "amqp-pub: timeout after %ld s\n", o->timeout_s);
            return -1;
        }
        uint64_t timeout = 100000;
        if (!all_sent && in_flight(p) < o->window)
            timeout = next > 0 ? ((uint64_t)next > now ? (uint64_t)next - now : 0) : 0;
        if (read_frames(p, timeout) != 0)
            return -1;
    }
}

int main(int argc, char **argv)
{
    struct pub p;
    memset(&p, 0, sizeof(p));
    parse_opts(argc, argv, &p.o);
    bench_signals_init();
    p.keys = xcalloc((size_t)p.o.devices, sizeof(*p.keys));
    for (long i = 0; i < p.o.devices; i++)
        p.keys[i] = xasprintf("%s.%ld", p.o.prefix, i);
    p.payload = xmalloc(p.o.size);
    bench_payload_init(p.payload, p.o.size);
    p.confirmed = xcalloc((size_t)p.o.count / 8 + 2, 1);
    p.low = 1;

    int rc = open_conn(&p);
    if (rc == 0)
        rc = run(&p);
    double secs = p.t_last_us > p.t_first_us ? (double)(p.t_last_us - p.t_first_us) / 1e6 : 0;
    printf("amqp-pub: sent=%lld acked=%lld nacked=%lld returned=%lld secs=%.3f rate=%.0f "
           "first=%lld cpu_s=%.3f\n",
           p.sent, p.acked, p.nacked, p.returned, secs, secs > 0 ? (double)p.acked / secs : 0,
           p.o.first, bench_cpu_s());
    fflush(stdout);
    if (p.conn) {
        if (rc == 0) {
            amqp_channel_close(p.conn, CHANNEL, AMQP_REPLY_SUCCESS);
            amqp_connection_close(p.conn, AMQP_REPLY_SUCCESS);
        }
        amqp_destroy_connection(p.conn);
    }
    for (long i = 0; i < p.o.devices; i++)
        free(p.keys[i]);
    free(p.keys);
    free(p.payload);
    free(p.confirmed);
    m2a_buf_free(&p.frames);
    return rc == 0 && p.acked == p.sent ? 0 : 1;
}
