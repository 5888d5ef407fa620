/* route_stats.c - the registry of per-route counters and the confirm
 * latency histogram; see route_stats.h.
 *
 * Threads: the main thread registers (the only writer of names and of the
 * hash table); every thread looks up and counts. A slot is filled, then
 * published to lookups by a release store of its index into the open
 * addressing table, and to iteration by a release store of the count.
 * Slots never move or go away, so a pointer to a counter block is valid for
 * the registry's life. */
#include "mqtt2amqp/route_stats.h"

#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/util.h"

#define TABLE_SIZE (2 * M2A_ROUTE_STATS_MAX) /* power of two, load <= 1/2 */

/* Exponential-ish buckets: a confirm takes ~1 ms on loopback and seconds
 * when RabbitMQ fsyncs under pressure or is blocked. */
const double m2a_latency_bounds_s[M2A_LATENCY_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

struct slot {
    char *name;
    size_t len;
    uint64_t hash;
    struct m2a_route_counters c;
};

struct m2a_route_stats {
    struct slot slots[M2A_ROUTE_STATS_MAX];
    _Atomic size_t count;
    _Atomic uint32_t table[TABLE_SIZE]; /* slot index + 1; 0 is empty */
    _Atomic uint64_t lat_bucket[M2A_LATENCY_BUCKETS + 1];
    _Atomic uint64_t lat_sum_us;
};

/* FNV-1a: route names are short, and this runs per published message. */
static uint64_t hash_name(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

struct m2a_route_stats *m2a_route_stats_new(void)
{
    return xcalloc(1, sizeof(struct m2a_route_stats));
}

void m2a_route_stats_free(struct m2a_route_stats *rs)
{
    if (!rs)
        return;
    size_t n = atomic_load(&rs->count);
    for (size_t i = 0; i < n; i++)
        free(rs->slots[i].name);
    free(rs);
}

struct m2a_route_counters *m2a_route_stats_find(struct m2a_route_stats *rs, const char *name,
                                                size_t len)
{
    if (!rs)
        return NULL;
    uint64_t h = hash_name(name, len);
    for (size_t i = 0; i < TABLE_SIZE; i++) {
        size_t pos = (size_t)(h + i) & (TABLE_SIZE - 1);
        uint32_t idx = atomic_load_explicit(&rs->table[pos], memory_order_acquire);
        if (idx == 0)
            return NULL;
        struct slot *s = &rs->slots[idx - 1];
        if (s->hash == h && s->len == len && memcmp(s->name, name, len) == 0)
            return &s->c;
    }
    return NULL;
}

struct m2a_route_counters *m2a_route_stats_register(struct m2a_route_stats *rs, const char *name)
{
    size_t len = strlen(name);
    struct m2a_route_counters *c = m2a_route_stats_find(rs, name, len);
    if (c)
        return c;
    size_t n = atomic_load_explicit(&rs->count, memory_order_relaxed);
    if (n >= M2A_ROUTE_STATS_MAX)
        return NULL;
    struct slot *s = &rs->slots[n];
    s->name = xstrndup(name, len);
    s->len = len;
    s->hash = hash_name(name, len);
    /* The table is at most half full, so an empty position exists. */
    size_t pos = (size_t)s->hash & (TABLE_SIZE - 1);
    while (atomic_load_explicit(&rs->table[pos], memory_order_relaxed) != 0)
        pos = (pos + 1) & (TABLE_SIZE - 1);
    atomic_store_explicit(&rs->table[pos], (uint32_t)(n + 1), memory_order_release);
    atomic_store_explicit(&rs->count, n + 1, memory_order_release);
    return &s->c;
}

size_t m2a_route_stats_count(const struct m2a_route_stats *rs)
{
    return rs ? atomic_load_explicit(&rs->count, memory_order_acquire) : 0;
}

const char *m2a_route_stats_name(const struct m2a_route_stats *rs, size_t i)
{
    return rs->slots[i].name;
}

struct m2a_route_counters *m2a_route_stats_at(struct m2a_route_stats *rs, size_t i)
{
    return &rs->slots[i].c;
}

void m2a_latency_observe(struct m2a_route_stats *rs, uint64_t us)
{
    if (!rs)
        return;
    size_t b = 0;
    double s = (double)us / 1e6;
    while (b < M2A_LATENCY_BUCKETS && s > m2a_latency_bounds_s[b])
        b++;
    atomic_fetch_add_explicit(&rs->lat_bucket[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&rs->lat_sum_us, us, memory_order_relaxed);
}

void m2a_latency_get(const struct m2a_route_stats *rs, struct m2a_latency_snapshot *out)
{
    memset(out, 0, sizeof(*out));
    if (!rs)
        return;
    /* The count is the sum of the buckets read, so the exposed histogram is
     * self-consistent even while observations land. */
    for (size_t b = 0; b <= M2A_LATENCY_BUCKETS; b++) {
        out->bucket[b] = atomic_load_explicit(&rs->lat_bucket[b], memory_order_relaxed);
        out->count += out->bucket[b];
    }
    out->sum_us = atomic_load_explicit(&rs->lat_sum_us, memory_order_relaxed);
}
