/* soak.c - m2a-soak, the traffic and link faults of bench/soak.sh.
 *
 * Publishes numbered QoS 1 messages (bench_common.h's payload) to Mosquitto
 * at a fixed rate, consumes them from RabbitMQ, and relays the bridge's MQTT
 * link through tests/support/proxy.h's fault proxy, for as long as it runs.
 * Every fault the script injects (bridge SIGKILL, RabbitMQ or Mosquitto
 * restart) is survived: the publisher and the consumer reconnect.
 *
 *   m2a-soak -m MQTT_PORT -a AMQP_PORT -q QUEUE -r RATE -S STATUS_FILE
 *
 * Prints "soak: proxy on 127.0.0.1:PORT" once up (point the bridge there),
 * and consumes at once (the queue, the exchange QUEUE and their binding "#"
 * are declared as the bridge declares them); publishes from SIGUSR2 on (send
 * it once the bridge has subscribed: Mosquitto drops what no session asked
 * for). SIGUSR1 cuts the link (every connection reset, new ones refused) for -c
 * seconds (5), then restores it. Every second STATUS_FILE is rewritten with
 * one line of counters (published= acked= ambiguous= delivered= ...).
 * SIGTERM or SIGINT stops publishing, waits until every acknowledged
 * message arrived (or -W seconds, 180), and prints
 *   soak: published=P acked=A ambiguous=B delivered=D lost=L duplicated=X
 *         consumer_redeliveries=C unexpected=U
 * then exits 0 if nothing acknowledged was lost, 1 otherwise.
 *
 * lost: acknowledged by Mosquitto (PUBACK), never delivered. ambiguous:
 * published but unacknowledged when the publisher's connection died (may
 * or may not have reached Mosquitto; not counted as lost). duplicated:
 * extra copies of a seq; consumer_redeliveries: the extra copies RabbitMQ
 * flagged redelivered (our own consumer's unacknowledged messages after its
 * connection dropped, not the bridge's doing).
 *
 * Threads: the publisher owns its mosquitto handle and pstate[]; the
 * consumer owns its rabbitmq-c connection and dcount[] (under mu, which the
 * main thread takes to read it); the proxy has its own thread; main handles
 * signals, the status file and the final count. */
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <mosquitto.h>

#include "bench_amqp.h"
#include "bench_common.h"
#include "proxy.h"
#include "mqtt2amqp/util.h"

#define PROG      "soak"
#define CHANNEL   1
#define WINDOW    1000 /* QoS 1 messages in flight from the publisher */
#define SIZE      100
#define DEVICES   100
#define ACK_EVERY 200

enum { P_UNSENT, P_SENT, P_ACKED, P_AMBIGUOUS };

struct opts {
    int mqtt_port;
    struct bench_amqp_target t;
    const char *queue, *status;
    double rate;
    int cut_s, wait_s;
};

static struct opts o;
static volatile sig_atomic_t cut_requested;
static _Atomic bool go;
static _Atomic bool stop_pub, stop_cons;

/* ---- growable per-seq arrays ------------------------------------------------ */

struct seqarr {
    uint8_t *v;
    uint64_t cap;
};

static uint8_t *seqarr_at(struct seqarr *a, uint64_t seq)
{
    if (seq >= a->cap) {
        uint64_t cap = a->cap ? a->cap : 1u << 20;
        while (cap <= seq)
            cap *= 2;
        a->v = xrealloc(a->v, cap);
        memset(a->v + a->cap, 0, cap - a->cap);
        a->cap = cap;
    }
    return &a->v[seq];
}

/* ---- publisher ------------------------------------------------------------------- */

struct pub {
    struct mosquitto *mosq;
    struct seqarr st; /* P_* per seq */
    uint64_t mid_seq[65536];
    int connack; /* 0 waiting, 1 up, -1 refused */
    bool gone;
    long inflight;
    _Atomic long published, acked, ambiguous, reconnects;
};

static struct pub pub;

static void pub_on_connect(struct mosquitto *m, void *ud, int rc)
{
    (void)m;
    ((struct pub *)ud)->connack = rc == 0 ? 1 : -1;
}

static void pub_on_publish(struct mosquitto *m, void *ud, int mid)
{
    (void)m;
    struct pub *p = ud;
    uint8_t *s = seqarr_at(&p->st, p->mid_seq[(uint16_t)mid]);
    if (*s == P_SENT) {
        *s = P_ACKED;
        p->inflight--;
        atomic_fetch_add(&p->acked, 1);
    }
}

static void pub_on_disconnect(struct mosquitto *m, void *ud, int rc)
{
    (void)m;
    (void)rc;
    ((struct pub *)ud)->gone = true;
}

/* Every seq sent but not acknowledged on the connection that died. */
static void pub_mark_ambiguous(struct pub *p, uint64_t next)
{
    for (uint64_t s = next > 2 * WINDOW ? next - 2 * WINDOW : 0; s < next; s++) {
        uint8_t *st = seqarr_at(&p->st, s);
        if (*st == P_SENT) {
            *st = P_AMBIGUOUS;
            atomic_fetch_add(&p->ambiguous, 1);
        }
    }
    p->inflight = 0;
}

static bool pub_connect(struct pub *p)
{
    char id[64];
    snprintf(id, sizeof(id), "m2a-soak-pub-%d", (int)getpid());
    p->mosq = mosquitto_new(id, true, p);
    if (!p->mosq)
        abort();
    mosquitto_max_inflight_messages_set(p->mosq, WINDOW);
    mosquitto_connect_callback_set(p->mosq, pub_on_connect);
    mosquitto_publish_callback_set(p->mosq, pub_on_publish);
    mosquitto_disconnect_callback_set(p->mosq, pub_on_disconnect);
    p->connack = 0;
    p->gone = false;
    if (mosquitto_connect(p->mosq, "127.0.0.1", o.mqtt_port, 30) == MOSQ_ERR_SUCCESS) {
        uint64_t until = bench_mono_us() + 5000000u;
        while (p->connack == 0 && !p->gone && bench_mono_us() < until)
            if (mosquitto_loop(p->mosq, 50, 1) != MOSQ_ERR_SUCCESS)
                p->gone = true;
        if (p->connack == 1 && !p->gone)
            return true;
    }
    mosquitto_destroy(p->mosq);
    p->mosq = NULL;
    return false;
}

static void *pub_main(void *arg)
{
    struct pub *p = arg;
    unsigned char payload[SIZE];
    char topic[64];
    bench_payload_init(payload, SIZE);
    uint64_t t0 = bench_mono_us(), next = 0;
    bool first = true;
    while (!atomic_load(&go) && !atomic_load(&stop_pub))
        usleep(50000);
    t0 = bench_mono_us();
    while (!atomic_load(&stop_pub)) {
        if (!p->mosq) {
            if (!pub_connect(p)) {
                usleep(200000); /* Mosquitto is restarting: retry */
                continue;
            }
            if (!first)
                atomic_fetch_add(&p->reconnects, 1);
            first = false;
        }
        /* Publish what is due, within the window. */
        uint64_t now = bench_mono_us();
        uint64_t due = (uint64_t)((double)(now - t0) * o.rate / 1e6);
        while (next < due && p->inflight < WINDOW && !p->gone) {
            int mid;
            bench_payload_stamp(payload, next, bench_wall_us());
            snprintf(topic, sizeof(topic), "bench/dev/%" PRIu64, next % DEVICES);
            *seqarr_at(&p->st, next) = P_SENT;
            if (mosquitto_publish(p->mosq, &mid, topic, SIZE, payload, 1, false) !=
                MOSQ_ERR_SUCCESS) {
                *seqarr_at(&p->st, next) = P_AMBIGUOUS;
                atomic_fetch_add(&p->ambiguous, 1);
                p->gone = true;
            } else {
                p->mid_seq[(uint16_t)mid] = next;
                p->inflight++;
            }
            next++;
            atomic_store(&p->published, (long)next);
        }
        if (!p->gone && mosquitto_loop(p->mosq, 5, 1) != MOSQ_ERR_SUCCESS)
            p->gone = true;
        if (p->gone) {
            fprintf(stderr, "soak: publisher lost its connection at seq %" PRIu64 "\n", next);
            mosquitto_destroy(p->mosq);
            p->mosq = NULL;
            pub_mark_ambiguous(p, next);
        }
    }
    /* Stop: wait (bounded) for the PUBACKs of what is in flight. */
    uint64_t until = bench_mono_us() + 10000000u;
    while (p->mosq && p->inflight > 0 && !p->gone && bench_mono_us() < until)
        if (mosquitto_loop(p->mosq, 50, 1) != MOSQ_ERR_SUCCESS)
            p->gone = true;
    if (p->mosq) {
        mosquitto_disconnect(p->mosq);
        mosquitto_loop(p->mosq, 50, 1);
        mosquitto_destroy(p->mosq);
        p->mosq = NULL;
    }
    pub_mark_ambiguous(p, next);
    return NULL;
}

/* ---- consumer -------------------------------------------------------------------- */

struct cons {
    pthread_mutex_t mu;
    struct seqarr count; /* copies delivered per seq (saturating), under mu */
    _Atomic long delivered, duplicated, redelivered_dups, unexpected, reconnects;
    _Atomic uint64_t last_new_us;
};

static struct cons cons = {.mu = PTHREAD_MUTEX_INITIALIZER};

static amqp_connection_state_t cons_open(void)
{
    amqp_connection_state_t c = bench_amqp_open(&o.t, CHANNEL, PROG, true);
    if (!c)
        return NULL;
    amqp_bytes_t q = amqp_cstring_bytes(o.queue);
    amqp_queue_declare(c, CHANNEL, q, 0, 1, 0, 0, amqp_empty_table);
    if (!bench_amqp_rpc_ok(c, PROG, "queue.declare"))
        goto fail;
    amqp_exchange_declare(c, CHANNEL, q, amqp_cstring_bytes("topic"), 0, 1, 0, 0, amqp_empty_table);
    if (!bench_amqp_rpc_ok(c, PROG, "exchange.declare"))
        goto fail;
    amqp_queue_bind(c, CHANNEL, q, q, amqp_cstring_bytes("#"), amqp_empty_table);
    if (!bench_amqp_rpc_ok(c, PROG, "queue.bind"))
        goto fail;
    amqp_basic_qos(c, CHANNEL, 0, 2000, 0);
    if (!bench_amqp_rpc_ok(c, PROG, "basic.qos"))
        goto fail;
    amqp_basic_consume(c, CHANNEL, q, amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    if (!bench_amqp_rpc_ok(c, PROG, "basic.consume"))
        goto fail;
    return c;
fail:
    amqp_destroy_connection(c);
    return NULL;
}

static void cons_message(struct cons *k, const amqp_envelope_t *env)
{
    uint64_t seq, sent;
    if (bench_payload_parse(env->message.body.bytes, env->message.body.len, &seq, &sent) != 0) {
        atomic_fetch_add(&k->unexpected, 1);
        return;
    }
    pthread_mutex_lock(&k->mu);
    uint8_t *n = seqarr_at(&k->count, seq);
    uint8_t before = *n;
    if (*n < 255)
        (*n)++;
    pthread_mutex_unlock(&k->mu);
    if (before == 0) {
        atomic_fetch_add(&k->delivered, 1);
        atomic_store(&k->last_new_us, bench_mono_us());
    } else if (env->redelivered) {
        atomic_fetch_add(&k->redelivered_dups, 1);
    } else {
        atomic_fetch_add(&k->duplicated, 1);
    }
}

/* Consumes until the connection fails or stop_cons; false on failure. */
static bool cons_run(struct cons *k, amqp_connection_state_t c)
{
    uint64_t tag = 0;
    long unacked = 0;
    while (!atomic_load(&stop_cons)) {
        amqp_envelope_t env;
        struct timeval tv = {0, 100000};
        amqp_maybe_release_buffers(c);
        amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
        if (r.reply_type == AMQP_RESPONSE_NORMAL) {
            cons_message(k, &env);
            tag = env.delivery_tag;
            amqp_destroy_envelope(&env);
            if (++unacked >= ACK_EVERY) {
                amqp_basic_ack(c, CHANNEL, tag, 1);
                unacked = 0;
            }
            continue;
        }
        if (unacked > 0) {
            amqp_basic_ack(c, CHANNEL, tag, 1);
            unacked = 0;
        }
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_TIMEOUT)
            continue;
        if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
            r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
            amqp_frame_t f;
            struct timeval t1 = {1, 0};
            if (amqp_simple_wait_frame_noblock(c, &f, &t1) == AMQP_STATUS_OK &&
                !(f.frame_type == AMQP_FRAME_METHOD &&
                  (f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD ||
                   f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD)))
                continue;
        }
        return false;
    }
    return true;
}

static void *cons_main(void *arg)
{
    struct cons *k = arg;
    bool first = true;
    while (!atomic_load(&stop_cons)) {
        amqp_connection_state_t c = cons_open();
        if (!c) {
            usleep(500000); /* RabbitMQ is restarting: retry */
            continue;
        }
        if (!first)
            atomic_fetch_add(&k->reconnects, 1);
        first = false;
        bool clean = cons_run(k, c);
        if (clean)
            amqp_connection_close(c, AMQP_REPLY_SUCCESS);
        else
            fprintf(stderr, "soak: consumer lost its connection; reconnecting\n");
        amqp_destroy_connection(c);
    }
    return NULL;
}

/* ---- main ------------------------------------------------------------------------- */

static void on_usr(int sig)
{
    if (sig == SIGUSR1)
        cut_requested = 1;
    else
        atomic_store(&go, true);
}

static void write_status(bool cut)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s.tmp", o.status);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fprintf(f,
            "published=%ld acked=%ld ambiguous=%ld delivered=%ld duplicated=%ld "
            "consumer_redeliveries=%ld unexpected=%ld publisher_reconnects=%ld "
            "consumer_reconnects=%ld link=%s\n",
            atomic_load(&pub.published), atomic_load(&pub.acked), atomic_load(&pub.ambiguous),
            atomic_load(&cons.delivered), atomic_load(&cons.duplicated),
            atomic_load(&cons.redelivered_dups), atomic_load(&cons.unexpected),
            atomic_load(&pub.reconnects), atomic_load(&cons.reconnects), cut ? "cut" : "up");
    fclose(f);
    rename(tmp, o.status);
}

/* Acknowledged seqs not delivered (the publisher has stopped). */
static long count_lost(long *first_lost)
{
    long lost = 0;
    *first_lost = -1;
    uint64_t n = (uint64_t)atomic_load(&pub.published);
    pthread_mutex_lock(&cons.mu);
    for (uint64_t s = 0; s < n; s++) {
        bool delivered = s < cons.count.cap && cons.count.v[s] > 0;
        if (pub.st.v[s] == P_ACKED && !delivered) {
            if (lost++ == 0)
                *first_lost = (long)s;
        }
    }
    pthread_mutex_unlock(&cons.mu);
    return lost;
}

static void usage(void)
{
    fprintf(stderr, "usage: m2a-soak -m MQTT_PORT -a AMQP_PORT -q QUEUE -r RATE -S STATUS_FILE\n"
                    "                [-c CUT_SECONDS (5)] [-W FINAL_WAIT_SECONDS (180)]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    o = (struct opts){.t = BENCH_AMQP_TARGET_DEFAULTS, .cut_s = 5, .wait_s = 180};
    int c;
    while ((c = getopt(argc, argv, "m:a:q:r:S:c:W:")) != -1) {
        switch (c) {
        case 'm':
            o.mqtt_port = (int)bench_parse_ll("-m", optarg, 1, 65535);
            break;
        case 'a':
            o.t.port = (int)bench_parse_ll("-a", optarg, 1, 65535);
            break;
        case 'q':
            o.queue = optarg;
            break;
        case 'r':
            o.rate = bench_parse_double("-r", optarg, 1, 1e7);
            break;
        case 'S':
            o.status = optarg;
            break;
        case 'c':
            o.cut_s = (int)bench_parse_ll("-c", optarg, 1, 3600);
            break;
        case 'W':
            o.wait_s = (int)bench_parse_ll("-W", optarg, 1, 86400);
            break;
        default:
            usage();
        }
    }
    if (!o.mqtt_port || !o.t.port || !o.queue || !o.rate || !o.status || optind != argc)
        usage();
    bench_signals_init();
    signal(SIGUSR1, on_usr);
    signal(SIGUSR2, on_usr);
    mosquitto_lib_init();
    /* Signals go to the main thread: the workers block them. */
    sigset_t sigs, old;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGUSR1);
    sigaddset(&sigs, SIGUSR2);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, &old);

    struct th_proxy *px = th_proxy_new(o.mqtt_port);
    if (!px)
        return 1;
    printf("soak: proxy on 127.0.0.1:%d\n", th_proxy_port(px));
    fflush(stdout);
    pthread_t pt, ct;
    atomic_store(&cons.last_new_us, bench_mono_us());
    if (pthread_create(&ct, NULL, cons_main, &cons) != 0 ||
        pthread_create(&pt, NULL, pub_main, &pub) != 0)
        abort();
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    uint64_t restore_at = 0;
    while (!bench_stop) {
        uint64_t now = bench_mono_us();
        if (cut_requested) {
            cut_requested = 0;
            if (th_proxy_cut(px) == 0) {
                fprintf(stderr, "soak: link cut for %d s\n", o.cut_s);
                restore_at = now + (uint64_t)o.cut_s * 1000000u;
            }
        }
        if (restore_at && now >= restore_at) {
            th_proxy_restore(px);
            restore_at = 0;
            fprintf(stderr, "soak: link restored\n");
        }
        write_status(restore_at != 0);
        usleep(200000);
    }
    if (restore_at)
        th_proxy_restore(px);

    /* Stop publishing; wait for every acknowledged message, or until
     * nothing new arrived for wait_s. */
    atomic_store(&stop_pub, true);
    pthread_join(pt, NULL);
    long acked = atomic_load(&pub.acked), first_lost = -1, lost;
    for (;;) {
        lost = count_lost(&first_lost);
        write_status(false);
        uint64_t idle = bench_mono_us() - atomic_load(&cons.last_new_us);
        if (lost == 0 || idle > (uint64_t)o.wait_s * 1000000u)
            break;
        usleep(500000);
    }
    usleep(1000000); /* a moment for stragglers (duplicates) */
    atomic_store(&stop_cons, true);
    pthread_join(ct, NULL);
    lost = count_lost(&first_lost);
    write_status(false);
    printf("soak: published=%ld acked=%ld ambiguous=%ld delivered=%ld lost=%ld duplicated=%ld "
           "consumer_redeliveries=%ld unexpected=%ld first_lost=%ld\n",
           atomic_load(&pub.published), acked, atomic_load(&pub.ambiguous),
           atomic_load(&cons.delivered), lost, atomic_load(&cons.duplicated),
           atomic_load(&cons.redelivered_dups), atomic_load(&cons.unexpected), first_lost);
    fflush(stdout);
    th_proxy_free(px);
    mosquitto_lib_cleanup();
    return lost == 0 ? 0 : 1;
}
