/* bench_common.c - payload layout, clocks, option parsing, the sequence
 * tracker and latency percentiles shared by the benchmark programs (see
 * bench_common.h). No threads: each program calls these from main only. */
#include "bench_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "mqtt2amqp/util.h"

volatile sig_atomic_t bench_stop;

static void on_stop_signal(int sig)
{
    (void)sig;
    bench_stop = 1;
}

void bench_signals_init(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static uint64_t clock_us(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

uint64_t bench_wall_us(void)
{
    return clock_us(CLOCK_REALTIME);
}

uint64_t bench_mono_us(void)
{
    return clock_us(CLOCK_MONOTONIC);
}

double bench_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void put_le(unsigned char *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_le(const unsigned char *p, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

void bench_payload_init(unsigned char *buf, size_t size)
{
    memset(buf, 'x', size);
    memcpy(buf, "M2AB", 4);
    put_le(buf + 4, 0, 4);
}

void bench_payload_stamp(unsigned char *buf, uint64_t seq, uint64_t send_us)
{
    put_le(buf + 8, seq, 8);
    put_le(buf + 16, send_us, 8);
}

int bench_payload_parse(const void *p, size_t len, uint64_t *seq, uint64_t *send_us)
{
    const unsigned char *b = p;
    if (len < BENCH_HDR_SIZE || memcmp(b, "M2AB", 4) != 0)
        return -1;
    *seq = get_le(b + 8, 8);
    *send_us = get_le(b + 16, 8);
    return 0;
}

long long bench_parse_ll(const char *opt, const char *val, long long min, long long max)
{
    char *end = NULL;
    errno = 0;
    long long v = strtoll(val, &end, 10);
    if (errno != 0 || end == val || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "bad value '%s' for %s: want an integer in %lld..%lld\n", val, opt, min,
                max);
        exit(2);
    }
    return v;
}

double bench_parse_double(const char *opt, const char *val, double min, double max)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(val, &end);
    if (errno != 0 || end == val || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "bad value '%s' for %s: want a number in %g..%g\n", val, opt, min, max);
        exit(2);
    }
    return v;
}

void bench_seqs_init(struct bench_seqs *s, uint64_t first, uint64_t count)
{
    memset(s, 0, sizeof(*s));
    s->first = first;
    s->count = count;
    s->bits = xcalloc(count / 8 + 1, 1);
}

bool bench_seqs_add(struct bench_seqs *s, uint64_t seq)
{
    if (seq < s->first || seq - s->first >= s->count)
        return false;
    uint64_t i = seq - s->first;
    uint8_t mask = (uint8_t)(1u << (i % 8));
    if (s->bits[i / 8] & mask) {
        s->duplicated++;
    } else {
        s->bits[i / 8] |= mask;
        s->distinct++;
    }
    return true;
}

void bench_seqs_free(struct bench_seqs *s)
{
    free(s->bits);
    s->bits = NULL;
}

void bench_lat_add(struct bench_lat *l, int64_t us)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 65536;
        l->v = xrealloc(l->v, l->cap * sizeof(*l->v));
    }
    /* Clocks of one machine: a negative value is jitter of the wall clock. */
    l->v[l->n++] = us < 0 ? 0 : (us > UINT32_MAX ? UINT32_MAX : (uint32_t)us);
    l->sorted = false;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

double bench_lat_pct(struct bench_lat *l, double p)
{
    if (l->n == 0)
        return 0;
    if (!l->sorted) {
        qsort(l->v, l->n, sizeof(*l->v), cmp_u32);
        l->sorted = true;
    }
    /* Nearest rank. */
    size_t rank = (size_t)(p / 100.0 * (double)l->n + 0.5);
    if (rank < 1)
        rank = 1;
    if (rank > l->n)
        rank = l->n;
    return l->v[rank - 1];
}

void bench_lat_free(struct bench_lat *l)
{
    free(l->v);
    memset(l, 0, sizeof(*l));
}
