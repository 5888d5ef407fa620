/* amqp_consume.c - m2a-bench-amqp-consume, the consumer of bench/run.sh.
 *
 * Declares a durable classic queue (and, with -x, a durable topic exchange
 * bound to it with "#", the same declarations as the bridge's topology),
 * consumes it and checks every message by the sequence number in its
 * payload. Messages fall in two classes: class 0 is [FIRST, FIRST+COUNT);
 * class 1 ("live", -L LIVE) is [LIVE, LIVE+N) where N is read from the file
 * given with -S once it exists (so the count can be decided while we run).
 *
 * Output on stdout, one line each, flushed:
 *   amqp-consume: ready                            (consuming)
 *   amqp-consume: class0 complete                  (every class 0 seq seen)
 *   amqp-consume: class=K expected=E distinct=D lost=L duplicated=X
 *       unexpected=U e2e_secs=S rx_secs=R rate=M drain_rate=Q p50_ms=.. p99_ms=..
 *       max_ms=.. cpu_s=C (the consumer's own CPU time so far)
 * e2e_secs runs from the earliest send time in the class to its last
 * delivery; rx_secs from its first delivery to its last. rate = D/e2e_secs,
 * drain_rate = D/rx_secs. Latency = delivery time - send time (wall clocks
 * of one machine). Exits 0 when every expected message arrived, 1 if some
 * did not within -W seconds of silence.
 *
 * One thread owns the rabbitmq-c connection. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>

#include "bench_amqp.h"
#include "bench_common.h"
#include "mqtt2amqp/util.h"

#define PROG       "amqp-consume" /* prefix of error lines */
#define CHANNEL    1
#define LINGER_US  300000       /* after the last expected message: catch trailing duplicates */
#define LIVE_RANGE (1ull << 27) /* class 1 seqs tracked before their count is known */

struct opts {
    struct bench_amqp_target t;
    const char *queue, *exchange, *binding_key, *stop_file;
    long long first, count, live_first;
    long ack_every, prefetch;
    long wait_s, timeout_s, connect_s;
};

struct klass {
    struct bench_seqs seqs;
    struct bench_lat lat;
    long long expected; /* -1: not known yet */
    uint64_t min_send_us, first_rx_us, last_rx_us;
};

struct cons {
    struct opts o;
    amqp_connection_state_t conn;
    struct klass k[2];
    long long unexpected, received;
    uint64_t unacked, last_tag;
    bool class0_said;
    double cpu_s; /* CPU used up to the end of consuming (not the report's sort) */
};

static void usage(void)
{
    fprintf(stderr, "usage: m2a-bench-amqp-consume -p PORT -Q QUEUE -n COUNT [options]\n"
                    "  -H HOST -p PORT -u USER -P PASS -v VHOST   broker (127.0.0.1, guest, /)\n"
                    "  -Q QUEUE       durable queue to declare and consume\n"
                    "  -x EXCHANGE    also declare this durable topic exchange (not an amq.*\n"
                    "                 one: those exist), bind the queue to it\n"
                    "  -k KEY         the binding key (#)\n"
                    "  -n COUNT -f FIRST  class 0: seqs FIRST..FIRST+COUNT-1 (FIRST 0)\n"
                    "  -L LIVE -S FILE    class 1: seqs from LIVE; FILE will hold their count\n"
                    "  -a N           ack (multiple) every N messages; 0 = no-ack mode (256)\n"
                    "  -q N           prefetch (1024)\n"
                    "  -W SECONDS     give up after this long without a new message (30)\n"
                    "  -T SECONDS     give up after this long in total (3600)\n"
                    "  -C SECONDS     keep retrying the first connection this long (60)\n");
    exit(2);
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.t = BENCH_AMQP_TARGET_DEFAULTS,
                       .count = -1,
                       .live_first = -1,
                       .ack_every = 256,
                       .prefetch = 1024,
                       .wait_s = 30,
                       .timeout_s = 3600,
                       .connect_s = 60};
    int c;
    while ((c = getopt(argc, argv, BENCH_AMQP_TARGET_OPTS "Q:x:k:n:f:L:S:a:q:W:T:C:")) != -1) {
        switch (c) {
        case 'Q':
            o->queue = optarg;
            break;
        case 'k':
            o->binding_key = optarg;
            break;
        case 'x':
            o->exchange = optarg;
            break;
        case 'n':
            o->count = bench_parse_ll("-n", optarg, 0, INT64_MAX / 4);
            break;
        case 'f':
            o->first = bench_parse_ll("-f", optarg, 0, INT64_MAX / 4);
            break;
        case 'L':
            o->live_first = bench_parse_ll("-L", optarg, 0, INT64_MAX / 4);
            break;
        case 'S':
            o->stop_file = optarg;
            break;
        case 'a':
            o->ack_every = (long)bench_parse_ll("-a", optarg, 0, 65535);
            break;
        case 'q':
            o->prefetch = (long)bench_parse_ll("-q", optarg, 0, 65535);
            break;
        case 'W':
            o->wait_s = (long)bench_parse_ll("-W", optarg, 1, 86400);
            break;
        case 'T':
            o->timeout_s = (long)bench_parse_ll("-T", optarg, 1, 864000);
            break;
        case 'C':
            o->connect_s = (long)bench_parse_ll("-C", optarg, 0, 86400);
            break;
        default:
            if (!bench_amqp_target_opt(&o->t, c, optarg))
                usage();
        }
    }
    if (!o->t.port || !o->queue || o->count < 0 || optind != argc ||
        (o->live_first >= 0) != (o->stop_file != NULL) ||
        (o->live_first >= 0 && o->live_first < o->first + o->count))
        usage();
}

/* One attempt: connect, declare, consume. NULL on failure (said why). */
static amqp_connection_state_t open_conn(const struct opts *o, bool quiet)
{
    amqp_connection_state_t conn = bench_amqp_open(&o->t, CHANNEL, PROG, quiet);
    if (!conn)
        return NULL;
    amqp_bytes_t q = amqp_cstring_bytes(o->queue);
    amqp_queue_declare(conn, CHANNEL, q, 0, 1, 0, 0, amqp_empty_table);
    if (!bench_amqp_rpc_ok(conn, PROG, "queue.declare"))
        goto fail;
    if (o->exchange) {
        /* RabbitMQ refuses to declare a name with the reserved amq. prefix. */
        if (strncmp(o->exchange, "amq.", 4) != 0) {
            amqp_exchange_declare(conn, CHANNEL, amqp_cstring_bytes(o->exchange),
                                  amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
            if (!bench_amqp_rpc_ok(conn, PROG, "exchange.declare"))
                goto fail;
        }
        amqp_queue_bind(conn, CHANNEL, q, amqp_cstring_bytes(o->exchange),
                        amqp_cstring_bytes(o->binding_key ? o->binding_key : "#"),
                        amqp_empty_table);
        if (!bench_amqp_rpc_ok(conn, PROG, "queue.bind"))
            goto fail;
    }
    if (o->ack_every > 0) {
        amqp_basic_qos(conn, CHANNEL, 0, (uint16_t)o->prefetch, 0);
        if (!bench_amqp_rpc_ok(conn, PROG, "basic.qos"))
            goto fail;
    }
    amqp_basic_consume(conn, CHANNEL, q, amqp_empty_bytes, 0, o->ack_every == 0, 0,
                       amqp_empty_table);
    if (!bench_amqp_rpc_ok(conn, PROG, "basic.consume"))
        goto fail;
    return conn;
fail:
    amqp_destroy_connection(conn);
    return NULL;
}

static long long read_count_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long long n = -1;
    if (fscanf(f, "%lld", &n) != 1)
        n = -1;
    fclose(f);
    return n;
}

static void on_message(struct cons *c, const amqp_envelope_t *env, uint64_t now_wall)
{
    uint64_t seq, sent;
    c->received++;
    c->last_tag = env->delivery_tag;
    if (bench_payload_parse(env->message.body.bytes, env->message.body.len, &seq, &sent) != 0) {
        c->unexpected++;
        return;
    }
    int k = (c->o.live_first >= 0 && seq >= (uint64_t)c->o.live_first) ? 1 : 0;
    struct klass *kl = &c->k[k];
    if (k == 1 && kl->seqs.bits == NULL) {
        /* Class 1's size is unknown until the stop file appears: track a
         * generous range now (one bit per seq). */
        bench_seqs_init(&kl->seqs, (uint64_t)c->o.live_first, LIVE_RANGE);
    }
    if (!bench_seqs_add(&kl->seqs, seq)) {
        c->unexpected++;
        return;
    }
    bench_lat_add(&kl->lat, (int64_t)(now_wall - sent));
    if (kl->min_send_us == 0 || sent < kl->min_send_us)
        kl->min_send_us = sent;
    if (kl->first_rx_us == 0)
        kl->first_rx_us = now_wall;
    kl->last_rx_us = now_wall;
}

static bool class_done(const struct klass *k)
{
    return k->expected >= 0 && k->seqs.distinct >= (uint64_t)k->expected;
}

/* Handles a frame that is not a delivery. Returns false if the channel or
 * connection is gone. */
static bool other_frame(struct cons *c)
{
    amqp_frame_t f;
    struct timeval tv = {1, 0};
    int rc = amqp_simple_wait_frame_noblock(c->conn, &f, &tv);
    if (rc != AMQP_STATUS_OK)
        return rc == AMQP_STATUS_TIMEOUT;
    if (f.frame_type == AMQP_FRAME_METHOD &&
        (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
         f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD)) {
        fprintf(stderr, "amqp-consume: the broker closed the %s\n",
                f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ? "channel" : "connection");
        return false;
    }
    return true;
}

static void ack_now(struct cons *c)
{
    if (c->o.ack_every > 0 && c->unacked > 0) {
        amqp_basic_ack(c->conn, CHANNEL, c->last_tag, 1);
        c->unacked = 0;
    }
}

static int consume(struct cons *c)
{
    const struct opts *o = &c->o;
    uint64_t start = bench_mono_us(), last_new = start, done_at = 0;
    for (;;) {
        uint64_t now = bench_mono_us();
        if (c->k[1].expected < 0 && o->stop_file)
            c->k[1].expected = read_count_file(o->stop_file);
        if (!c->class0_said && class_done(&c->k[0])) {
            c->class0_said = true;
            printf("amqp-consume: class0 complete\n");
            fflush(stdout);
        }
        bool done = class_done(&c->k[0]) && (!o->stop_file || class_done(&c->k[1]));
        if (done && !done_at)
            done_at = now;
        if (done_at && now - done_at > LINGER_US)
            return 0;
        if (bench_stop || now - last_new > (uint64_t)o->wait_s * 1000000u ||
            now - start > (uint64_t)o->timeout_s * 1000000u) {
            fprintf(stderr, "amqp-consume: giving up (%s)\n",
                    bench_stop ? "signal" : "no new message for too long, or timeout");
            return 1;
        }
        amqp_envelope_t env;
        struct timeval tv = {0, 100000};
        amqp_maybe_release_buffers(c->conn);
        amqp_rpc_reply_t r = amqp_consume_message(c->conn, &env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            uint64_t before = c->k[0].seqs.distinct + c->k[1].seqs.distinct;
            on_message(c, &env, bench_wall_us());
            if (c->k[0].seqs.distinct + c->k[1].seqs.distinct != before)
                last_new = bench_mono_us();
            amqp_destroy_envelope(&env);
            if (o->ack_every > 0 && ++c->unacked >= (uint64_t)o->ack_every)
                ack_now(c);
            continue;
        }
        ack_now(c); /* idle: do not sit on unacknowledged messages */
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            continue;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            if (!other_frame(c))
                return 1;
            continue;
        }
        fprintf(stderr, "amqp-consume: consume failed: %s\n",
                r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION
                    ? amqp_error_string2(r.library_error)
                    : "server exception");
        return 1;
    }
}

static void report(struct cons *c, int k)
{
    struct klass *kl = &c->k[k];
    long long expected = kl->expected < 0 ? 0 : kl->expected;
    long long distinct = (long long)kl->seqs.distinct;
    if (distinct > expected)
        distinct = expected; /* the rest was counted as unexpected by main */
    double e2e = kl->last_rx_us > kl->min_send_us && kl->min_send_us
                     ? (double)(kl->last_rx_us - kl->min_send_us) / 1e6
                     : 0;
    double rx =
        kl->last_rx_us > kl->first_rx_us ? (double)(kl->last_rx_us - kl->first_rx_us) / 1e6 : 0;
    printf("amqp-consume: class=%d expected=%lld distinct=%lld lost=%lld duplicated=%" PRIu64
           " unexpected=%lld e2e_secs=%.3f rx_secs=%.3f rate=%.0f drain_rate=%.0f p50_ms=%.2f "
           "p99_ms=%.2f max_ms=%.2f cpu_s=%.3f\n",
           k, expected, distinct, expected - distinct, kl->seqs.duplicated, c->unexpected, e2e, rx,
           e2e > 0 ? (double)distinct / e2e : 0, rx > 0 ? (double)distinct / rx : 0,
           bench_lat_pct(&kl->lat, 50) / 1000.0, bench_lat_pct(&kl->lat, 99) / 1000.0,
           bench_lat_pct(&kl->lat, 100) / 1000.0, c->cpu_s);
}

int main(int argc, char **argv)
{
    struct cons c;
    memset(&c, 0, sizeof(c));
    parse_opts(argc, argv, &c.o);
    bench_signals_init();
    bench_seqs_init(&c.k[0].seqs, (uint64_t)c.o.first, (uint64_t)c.o.count);
    c.k[0].expected = c.o.count;
    c.k[1].expected = -1;

    uint64_t until = bench_mono_us() + (uint64_t)c.o.connect_s * 1000000u;
    while (!(c.conn = open_conn(&c.o, bench_mono_us() < until)) && !bench_stop &&
           bench_mono_us() < until)
        usleep(200000);
    if (!c.conn)
        return 1;
    printf("amqp-consume: ready\n");
    fflush(stdout);

    int rc = consume(&c);
    ack_now(&c);
    c.cpu_s = bench_cpu_s();
    /* Class 1 tracks a wide range: what lies beyond its expected count is unexpected. */
    if (c.o.stop_file &&
        c.k[1].seqs.distinct > (uint64_t)(c.k[1].expected < 0 ? 0 : c.k[1].expected))
        c.unexpected +=
            (long long)c.k[1].seqs.distinct - (c.k[1].expected < 0 ? 0 : c.k[1].expected);
    report(&c, 0);
    if (c.o.stop_file)
        report(&c, 1);
    fflush(stdout);
    amqp_channel_close(c.conn, CHANNEL, AMQP_REPLY_SUCCESS);
    amqp_connection_close(c.conn, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c.conn);
    for (int k = 0; k < 2; k++) {
        bench_seqs_free(&c.k[k].seqs);
        bench_lat_free(&c.k[k].lat);
    }
    return rc;
}
