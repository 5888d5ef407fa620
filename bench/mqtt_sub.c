/* mqtt_sub.c - m2a-bench-mqtt-sub, the MQTT subscriber of bench/run.sh's
 * downlink scenario (issue 11): subscribes to a filter at QoS 1 (clean
 * session), counts COUNT benchmark payloads (bench_common.h) by sequence
 * number and prints one line in the consumer's format:
 *
 *   mqtt-sub: class=0 expected=N distinct=D lost=L duplicated=U unexpected=X
 *   e2e_secs=S rx_secs=S rate=R drain_rate=R p50_ms=P p99_ms=P max_ms=P cpu_s=C
 *
 * "mqtt-sub: ready" once the SUBACK is in. Ends when every seq arrived (and
 * LINGER_US more for trailing duplicates) or after -W seconds without one.
 * Single-threaded (mosquitto_loop). */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "bench_common.h"

#define LINGER_US 300000

struct sub {
    const char *filter;
    int qos;
    bool subscribed;
    struct bench_seqs seqs;
    struct bench_lat lat;
    long long expected, unexpected;
    uint64_t min_send_us, first_rx_us, last_rx_us, last_new_us;
};

static void on_connect(struct mosquitto *m, void *ud, int rc)
{
    struct sub *s = ud;
    if (rc == 0)
        mosquitto_subscribe(m, NULL, s->filter, s->qos);
}

static void on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *granted)
{
    (void)m, (void)mid, (void)n, (void)granted;
    struct sub *s = ud;
    if (!s->subscribed) {
        printf("mqtt-sub: ready\n");
        fflush(stdout);
    }
    s->subscribed = true;
}

static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg)
{
    (void)m;
    struct sub *s = ud;
    uint64_t seq, sent;
    uint64_t now = bench_wall_us();
    if (bench_payload_parse(msg->payload, (size_t)msg->payloadlen, &seq, &sent) != 0) {
        s->unexpected++;
        return;
    }
    uint64_t before = s->seqs.distinct;
    if (!bench_seqs_add(&s->seqs, seq)) {
        s->unexpected++;
        return;
    }
    if (s->seqs.distinct == before)
        return; /* a duplicate */
    if (!s->first_rx_us)
        s->first_rx_us = now;
    s->last_rx_us = now;
    s->last_new_us = bench_mono_us();
    if (!s->min_send_us || sent < s->min_send_us)
        s->min_send_us = sent;
    bench_lat_add(&s->lat, (int64_t)(now - sent));
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *id = "m2a-bench-sub";
    int port = 0;
    long wait_s = 30;
    long long first = 0;
    struct sub s = {.filter = NULL, .qos = 1, .expected = -1};
    int c;
    while ((c = getopt(argc, argv, "H:p:t:n:f:q:W:i:")) != -1) {
        switch (c) {
        case 'H':
            host = optarg;
            break;
        case 'p':
            port = (int)bench_parse_ll("-p", optarg, 1, 65535);
            break;
        case 't':
            s.filter = optarg;
            break;
        case 'n':
            s.expected = bench_parse_ll("-n", optarg, 0, INT64_MAX / 4);
            break;
        case 'f':
            first = bench_parse_ll("-f", optarg, 0, INT64_MAX / 4);
            break;
        case 'q':
            s.qos = (int)bench_parse_ll("-q", optarg, 0, 1);
            break;
        case 'W':
            wait_s = (long)bench_parse_ll("-W", optarg, 1, 86400);
            break;
        case 'i':
            id = optarg;
            break;
        default:
            fprintf(stderr, "usage: m2a-bench-mqtt-sub -p PORT -t FILTER -n COUNT [-f FIRST] "
                            "[-q QOS] [-W SECONDS] [-i CLIENT_ID] [-H HOST]\n");
            return 2;
        }
    }
    if (!port || !s.filter || s.expected < 0) {
        fprintf(stderr, "mqtt-sub: -p, -t and -n are required\n");
        return 2;
    }
    bench_signals_init();
    bench_seqs_init(&s.seqs, (uint64_t)first, (uint64_t)s.expected);
    mosquitto_lib_init();
    struct mosquitto *m = mosquitto_new(id, true, &s);
    if (!m)
        return 1;
    mosquitto_connect_callback_set(m, on_connect);
    mosquitto_subscribe_callback_set(m, on_subscribe);
    mosquitto_message_callback_set(m, on_message);
    if (mosquitto_connect(m, host, port, 30) != MOSQ_ERR_SUCCESS) {
        fprintf(stderr, "mqtt-sub: cannot connect to %s:%d\n", host, port);
        return 1;
    }
    s.last_new_us = bench_mono_us();
    uint64_t done_us = 0;
    while (!bench_stop) {
        if (mosquitto_loop(m, 50, 1000) != MOSQ_ERR_SUCCESS) {
            fprintf(stderr, "mqtt-sub: connection lost\n");
            break;
        }
        uint64_t now = bench_mono_us();
        if (!done_us && (long long)s.seqs.distinct >= s.expected)
            done_us = now;
        if (done_us && now - done_us >= LINGER_US)
            break;
        if (now - s.last_new_us > (uint64_t)wait_s * 1000000u) {
            fprintf(stderr, "mqtt-sub: nothing new for %ld s\n", wait_s);
            break;
        }
    }
    double cpu = bench_cpu_s();
    long long distinct = (long long)s.seqs.distinct;
    double e2e = s.last_rx_us > s.min_send_us && s.min_send_us
                     ? (double)(s.last_rx_us - s.min_send_us) / 1e6
                     : 0;
    double rx = s.last_rx_us > s.first_rx_us ? (double)(s.last_rx_us - s.first_rx_us) / 1e6 : 0;
    printf("mqtt-sub: class=0 expected=%lld distinct=%lld lost=%lld duplicated=%" PRIu64
           " unexpected=%lld e2e_secs=%.3f rx_secs=%.3f rate=%.0f drain_rate=%.0f p50_ms=%.2f "
           "p99_ms=%.2f max_ms=%.2f cpu_s=%.3f\n",
           s.expected, distinct, s.expected - distinct, s.seqs.duplicated, s.unexpected, e2e, rx,
           e2e > 0 ? (double)distinct / e2e : 0, rx > 0 ? (double)distinct / rx : 0,
           bench_lat_pct(&s.lat, 50) / 1000.0, bench_lat_pct(&s.lat, 99) / 1000.0,
           bench_lat_pct(&s.lat, 100) / 1000.0, cpu);
    fflush(stdout);
    mosquitto_disconnect(m);
    mosquitto_destroy(m);
    mosquitto_lib_cleanup();
    bench_seqs_free(&s.seqs);
    bench_lat_free(&s.lat);
    return distinct == s.expected ? 0 : 1;
}
