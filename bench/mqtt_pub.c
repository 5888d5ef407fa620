/* mqtt_pub.c - m2a-bench-mqtt-pub, the MQTT load generator of bench/run.sh.
 *
 * Publishes COUNT messages (sequence numbers FIRST..FIRST+COUNT-1) of SIZE
 * bytes to PREFIX/<seq % DEVICES> at QoS 0 or 1, either as fast as the
 * broker acknowledges them (at most WINDOW QoS 1 messages unacknowledged)
 * or at a fixed RATE. Each payload carries its sequence number and its send
 * time (see bench_common.h). Prints one summary line on stdout:
 *   mqtt-pub: sent=N acked=N failed=N secs=S rate=R first=F cpu_s=C
 * where rate = acked / secs and secs runs from the first publish to the last
 * acknowledgement (QoS 0: to the last write) and cpu_s is the CPU time the
 * generator used (user + system). SIGINT/SIGTERM stop publishing;
 * what is in flight is still waited for.
 *
 * One thread, libmosquitto unthreaded: mosquitto_publish writes at once and
 * the loop below reads PUBACKs, so the generator costs as little CPU as the
 * library allows (it shares the machine with what it measures). */
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "bench_common.h"
#include "mqtt2amqp/util.h"

#define BURST_MAX       256 /* publishes between two looks at the socket */
#define STOP_DRAIN_US   (10 * 1000000ull)
#define CONNECT_WAIT_US (10 * 1000000ull)

struct opts {
    const char *host;
    int port;
    int qos;
    size_t size;
    long long count, first;
    long devices;
    const char *prefix;
    double rate; /* messages per second; 0: as fast as acknowledged */
    long window;
    int protocol; /* 311 or 5 */
    const char *client_id;
    long timeout_s;
    bool nagle;
};

struct gen {
    struct opts o;
    struct mosquitto *mosq;
    char **topics;
    unsigned char *payload;
    int connack; /* 0 waiting, 1 accepted, -1 refused */
    long long sent, acked, failed;
    uint64_t t_first_us, t_last_ack_us; /* monotonic */
};

static void usage(void)
{
    fprintf(stderr,
            "usage: m2a-bench-mqtt-pub -p PORT -n COUNT [options]\n"
            "  -H HOST      broker host (127.0.0.1)\n"
            "  -p PORT      broker port\n"
            "  -n COUNT     messages to publish\n"
            "  -f FIRST     first sequence number (0)\n"
            "  -q QOS       0 or 1 (1)\n"
            "  -s SIZE      payload bytes, >= %d (100)\n"
            "  -d DEVICES   topics PREFIX/0 .. PREFIX/DEVICES-1, round robin (100)\n"
            "  -t PREFIX    topic prefix (bench/dev)\n"
            "  -r RATE      messages per second; 0 = as fast as acknowledged (0)\n"
            "  -w WINDOW    QoS 1 messages unacknowledged at most (1000)\n"
            "  -V PROTOCOL  311 or 5 (311: MQTT 5 would be held to the broker's\n"
            "               receive maximum, max_inflight_messages, 20 by default)\n"
            "  -i ID        client id (generated)\n"
            "  -T SECONDS   give up after this long (600)\n"
            "  -N           leave Nagle on (default: TCP_NODELAY)\n",
            BENCH_HDR_SIZE);
    exit(2);
}

static void parse_opts(int argc, char **argv, struct opts *o)
{
    *o = (struct opts){.host = "127.0.0.1",
                       .qos = 1,
                       .size = 100,
                       .count = -1,
                       .devices = 100,
                       .prefix = "bench/dev",
                       .window = 1000,
                       .protocol = 311,
                       .timeout_s = 600};
    int c;
    while ((c = getopt(argc, argv, "H:p:n:f:q:s:d:t:r:w:V:i:T:N")) != -1) {
        switch (c) {
        case 'H':
            o->host = optarg;
            break;
        case 'p':
            o->port = (int)bench_parse_ll("-p", optarg, 1, 65535);
            break;
        case 'n':
            o->count = bench_parse_ll("-n", optarg, 0, INT64_MAX / 2);
            break;
        case 'f':
            o->first = bench_parse_ll("-f", optarg, 0, INT64_MAX / 2);
            break;
        case 'q':
            o->qos = (int)bench_parse_ll("-q", optarg, 0, 1);
            break;
        case 's':
            o->size = (size_t)bench_parse_ll("-s", optarg, BENCH_HDR_SIZE, 64 * 1024 * 1024);
            break;
        case 'd':
            o->devices = (long)bench_parse_ll("-d", optarg, 1, 1000000);
            break;
        case 't':
            o->prefix = optarg;
            break;
        case 'r':
            o->rate = bench_parse_double("-r", optarg, 0, 1e9);
            break;
        case 'w':
            o->window = (long)bench_parse_ll("-w", optarg, 1, 65535);
            break;
        case 'V':
            o->protocol = (int)bench_parse_ll("-V", optarg, 5, 311);
            if (o->protocol != 5 && o->protocol != 311)
                usage();
            break;
        case 'i':
            o->client_id = optarg;
            break;
        case 'T':
            o->timeout_s = (long)bench_parse_ll("-T", optarg, 1, 86400);
            break;
        case 'N':
            o->nagle = true;
            break;
        default:
            usage();
        }
    }
    if (o->port == 0 || o->count < 0 || optind != argc)
        usage();
}

static void on_connect(struct mosquitto *mosq, void *ud, int rc, int flags,
                       const mosquitto_property *props)
{
    (void)mosq;
    (void)flags;
    (void)props;
    struct gen *g = ud;
    g->connack = rc == 0 ? 1 : -1;
    if (rc != 0)
        fprintf(stderr, "mqtt-pub: connection refused: %s\n", mosquitto_reason_string(rc));
}

/* QoS 1: the PUBACK arrived; QoS 0: the packet was written. */
static void on_publish(struct mosquitto *mosq, void *ud, int mid, int reason,
                       const mosquitto_property *props)
{
    (void)mosq;
    (void)mid;
    (void)props;
    struct gen *g = ud;
    if (reason >= 0x80)
        g->failed++;
    else
        g->acked++;
    g->t_last_ack_us = bench_mono_us();
}

static long long in_flight(const struct gen *g)
{
    return g->sent - g->acked - g->failed;
}

/* Waits up to timeout_us for the socket, then reads and writes what it can.
 * Returns 0, or -1 when the connection is gone. */
static int service(struct gen *g, uint64_t timeout_us)
{
    int fd = mosquitto_socket(g->mosq);
    if (fd < 0)
        return -1;
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (mosquitto_want_write(g->mosq))
        p.events |= POLLOUT;
    struct timespec ts = {.tv_sec = (time_t)(timeout_us / 1000000u),
                          .tv_nsec = (long)(timeout_us % 1000000u) * 1000};
    if (ppoll(&p, 1, &ts, NULL) < 0)
        return 0; /* EINTR: the caller looks at bench_stop */
    int rc = MOSQ_ERR_SUCCESS;
    if (p.revents & (POLLIN | POLLERR | POLLHUP))
        rc = mosquitto_loop_read(g->mosq, 1);
    if (rc == MOSQ_ERR_SUCCESS && mosquitto_want_write(g->mosq))
        rc = mosquitto_loop_write(g->mosq, 1);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_loop_misc(g->mosq);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mqtt-pub: connection lost: %s\n", mosquitto_strerror(rc));
        return -1;
    }
    return 0;
}

/* Monotonic time at which message number i (from 0) is due. */
static uint64_t due_us(const struct gen *g, uint64_t t0, long long i)
{
    return t0 + (uint64_t)((double)i * 1e6 / g->o.rate);
}

/* Publishes while the window, the rate and the socket allow; returns the
 * monotonic time of the next due message when the rate holds us back,
 * else 0. -1 on a fatal error. */
static int64_t publish_some(struct gen *g, uint64_t t0)
{
    for (int burst = 0; burst < BURST_MAX && g->sent < g->o.count && !bench_stop; burst++) {
        if (g->o.qos == 1 && in_flight(g) >= g->o.window)
            return 0;
        if (g->o.qos == 0 && mosquitto_want_write(g->mosq))
            return 0; /* the socket is full: let the loop write */
        uint64_t now = bench_mono_us();
        if (g->o.rate > 0) {
            uint64_t due = due_us(g, t0, g->sent);
            if (now < due)
                return (int64_t)due;
        }
        uint64_t seq = (uint64_t)(g->o.first + g->sent);
        bench_payload_stamp(g->payload, seq, bench_wall_us());
        if (g->sent == 0)
            g->t_first_us = now;
        int rc = mosquitto_publish(g->mosq, NULL, g->topics[seq % (uint64_t)g->o.devices],
                                   (int)g->o.size, g->payload, g->o.qos, false);
        if (rc != MOSQ_ERR_SUCCESS) {
            fprintf(stderr, "mqtt-pub: publish: %s\n", mosquitto_strerror(rc));
            return -1;
        }
        g->sent++;
    }
    return 0;
}

static int run(struct gen *g)
{
    const struct opts *o = &g->o;
    uint64_t start = bench_mono_us();
    uint64_t deadline = start + (uint64_t)o->timeout_s * 1000000u;
    int rc = mosquitto_connect(g->mosq, o->host, o->port, 60);
    if (rc != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mqtt-pub: cannot connect to %s:%d: %s\n", o->host, o->port,
                mosquitto_strerror(rc));
        return -1;
    }
    while (g->connack == 0) {
        if (bench_mono_us() - start > CONNECT_WAIT_US || service(g, 100000) != 0) {
            fprintf(stderr, "mqtt-pub: no CONNACK from %s:%d\n", o->host, o->port);
            return -1;
        }
    }
    if (g->connack < 0)
        return -1;

    uint64_t t0 = bench_mono_us(), stop_at = 0;
    for (;;) {
        int64_t next = publish_some(g, t0);
        if (next < 0)
            return -1;
        bool all_sent = g->sent >= o->count || bench_stop;
        if (all_sent && in_flight(g) == 0 && !mosquitto_want_write(g->mosq))
            break;
        uint64_t now = bench_mono_us();
        if (now > deadline) {
            fprintf(stderr, "mqtt-pub: timeout after %ld s\n", o->timeout_s);
            return -1;
        }
        if (bench_stop && !stop_at)
            stop_at = now;
        if (stop_at && now - stop_at > STOP_DRAIN_US) {
            fprintf(stderr, "mqtt-pub: %lld messages still unacknowledged after stop\n",
                    in_flight(g));
            return -1;
        }
        uint64_t timeout = 100000;
        bool window_open = o->qos == 0 || in_flight(g) < o->window;
        if (!all_sent && window_open)
            timeout = next > 0 ? ((uint64_t)next > now ? (uint64_t)next - now : 0) : 0;
        if (service(g, timeout) != 0)
            return -1;
    }
    mosquitto_disconnect(g->mosq);
    mosquitto_loop_write(g->mosq, 1);
    return 0;
}

int main(int argc, char **argv)
{
    struct gen g;
    memset(&g, 0, sizeof(g));
    parse_opts(argc, argv, &g.o);
    bench_signals_init();
    mosquitto_lib_init();

    char id[64];
    if (!g.o.client_id) {
        snprintf(id, sizeof(id), "m2a-bench-pub-%d", (int)getpid());
        g.o.client_id = id;
    }
    g.mosq = mosquitto_new(g.o.client_id, true, &g);
    if (!g.mosq) {
        fprintf(stderr, "mqtt-pub: mosquitto_new failed\n");
        return 1;
    }
    mosquitto_int_option(g.mosq, MOSQ_OPT_PROTOCOL_VERSION,
                         g.o.protocol == 5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311);
    /* Devices send one message at a time; a generator that Nagles its
     * back-to-back publishes would add its own delay to every latency. */
    if (!g.o.nagle)
        mosquitto_int_option(g.mosq, MOSQ_OPT_TCP_NODELAY, 1);
    /* libmosquitto's own in-flight cap (20 by default) would hide our window. */
    mosquitto_int_option(g.mosq, MOSQ_OPT_SEND_MAXIMUM, (int)g.o.window);
    mosquitto_connect_v5_callback_set(g.mosq, on_connect);
    mosquitto_publish_v5_callback_set(g.mosq, on_publish);

    g.topics = xcalloc((size_t)g.o.devices, sizeof(*g.topics));
    for (long i = 0; i < g.o.devices; i++)
        g.topics[i] = xasprintf("%s/%ld", g.o.prefix, i);
    g.payload = xmalloc(g.o.size);
    bench_payload_init(g.payload, g.o.size);

    int rc = run(&g);
    double secs = g.acked && g.t_last_ack_us > g.t_first_us
                      ? (double)(g.t_last_ack_us - g.t_first_us) / 1e6
                      : 0;
    printf("mqtt-pub: sent=%lld acked=%lld failed=%lld secs=%.3f rate=%.0f first=%lld cpu_s=%.3f\n",
           g.sent, g.acked, g.failed, secs, secs > 0 ? (double)g.acked / secs : 0, g.o.first,
           bench_cpu_s());
    fflush(stdout);

    mosquitto_destroy(g.mosq);
    mosquitto_lib_cleanup();
    for (long i = 0; i < g.o.devices; i++)
        free(g.topics[i]);
    free(g.topics);
    free(g.payload);
    return rc == 0 && g.failed == 0 && g.acked == g.sent ? 0 : 1;
}
