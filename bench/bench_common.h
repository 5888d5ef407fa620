/* bench_common.h - what the three benchmark programs share: the payload
 * layout (magic, sequence number, send timestamp), clocks, option parsing,
 * the per-run sequence tracker and latency percentiles.
 *
 * Payload (little-endian), padded with 'x' to the requested size:
 *   "M2AB" | u32 0 | u64 seq | u64 send time (CLOCK_REALTIME, microseconds)
 * The bridge forwards the MQTT payload unchanged as the AMQP body, so the
 * consumer reads the same bytes whichever way a message came.
 *
 * Everything here is single-threaded: each program owns its structures. */
#ifndef M2A_BENCH_COMMON_H
#define M2A_BENCH_COMMON_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BENCH_HDR_SIZE 24

/* Set by SIGINT/SIGTERM once bench_signals_init() ran. */
extern volatile sig_atomic_t bench_stop;
/* SIGINT/SIGTERM set bench_stop; SIGPIPE is ignored. */
void bench_signals_init(void);

uint64_t bench_wall_us(void); /* CLOCK_REALTIME: comparable across processes */
uint64_t bench_mono_us(void); /* CLOCK_MONOTONIC: for durations and pacing */
/* CPU seconds (user + system) this process used so far. */
double bench_cpu_s(void);

/* Writes the header for (seq, send_us) into buf[0..BENCH_HDR_SIZE); the rest
 * of buf (size bytes) is filled once with bench_payload_init. */
void bench_payload_init(unsigned char *buf, size_t size);
void bench_payload_stamp(unsigned char *buf, uint64_t seq, uint64_t send_us);
/* 0 and the fields, or -1 if p is not a benchmark payload. */
int bench_payload_parse(const void *p, size_t len, uint64_t *seq, uint64_t *send_us);

/* A decimal option value in [min, max]; exits with a message otherwise. */
long long bench_parse_ll(const char *opt, const char *val, long long min, long long max);
double bench_parse_double(const char *opt, const char *val, double min, double max);

/* Which sequence numbers of [first, first + count) were seen, and how often. */
struct bench_seqs {
    uint64_t first, count;
    uint8_t *bits;
    uint64_t distinct;   /* expected seqs seen at least once */
    uint64_t duplicated; /* extra copies of expected seqs */
};
void bench_seqs_init(struct bench_seqs *s, uint64_t first, uint64_t count);
/* true when seq is in range (counted as new or duplicate), false otherwise. */
bool bench_seqs_add(struct bench_seqs *s, uint64_t seq);
void bench_seqs_free(struct bench_seqs *s);

/* Latency samples in microseconds; percentiles sort them in place. */
struct bench_lat {
    uint32_t *v;
    size_t n, cap;
    bool sorted;
};
void bench_lat_add(struct bench_lat *l, int64_t us);
/* p in [0, 100]; 0 when empty. */
double bench_lat_pct(struct bench_lat *l, double p);
void bench_lat_free(struct bench_lat *l);

#endif
