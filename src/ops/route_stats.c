/* route_stats.c - the registry of routes (ids, names, counters) and the
 * confirm latency histogram; see route_stats.h.
 *
 * Threads: the main thread registers (the only writer of entries); every
 * thread reads counters by id and counts. Entries live in chunks that never
 * move or go away, reached through a directory of chunk pointers, so a
 * pointer to a counter block is valid for the registry's life and a read by
 * id takes no lock: an entry is filled (its chunk published first), then
 * published by a release store of the count. The name -> id table is only
 * needed when registering (main thread) and when resolving a record written
 * by an earlier process (AMQP thread, once per such record), so it is a
 * plain open-addressing table under a mutex that grows as needed. */
#include "mqtt2amqp/route_stats.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/util.h"

#define CHUNK_BITS 10
#define CHUNK_SIZE (1u << CHUNK_BITS)
#define NCHUNKS    (M2A_ROUTE_IDS_MAX / CHUNK_SIZE)

/* Exponential-ish buckets: a confirm takes ~1 ms on loopback and seconds
 * when RabbitMQ fsyncs under pressure or is blocked. */
const double m2a_latency_bounds_s[M2A_LATENCY_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

struct entry {
    char *name;
    size_t len;
    uint64_t hash;
    struct m2a_route_counters c;
};

struct m2a_route_stats {
    _Atomic(struct entry *) chunks[NCHUNKS];
    _Atomic uint32_t count; /* ids registered */
    pthread_mutex_t mu;     /* the name table */
    uint32_t *table;        /* id + 1; 0 is empty; power-of-two size, load <= 1/2 */
    size_t table_size;
    _Atomic uint64_t lat_bucket[M2A_LATENCY_BUCKETS + 1];
    _Atomic uint64_t lat_sum_us;
};

/* FNV-1a: route names are short. */
static uint64_t hash_name(const char *s, size_t len)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

static struct entry *entry_of(const struct m2a_route_stats *rs, uint32_t id)
{
    struct entry *chunk = atomic_load_explicit(
        (_Atomic(struct entry *) *)&rs->chunks[id >> CHUNK_BITS], memory_order_acquire);
    return &chunk[id & (CHUNK_SIZE - 1)];
}

struct m2a_route_stats *m2a_route_stats_new(void)
{
    struct m2a_route_stats *rs = xcalloc(1, sizeof(*rs));
    pthread_mutex_init(&rs->mu, NULL);
    rs->table_size = 64;
    rs->table = xcalloc(rs->table_size, sizeof(*rs->table));
    return rs;
}

void m2a_route_stats_free(struct m2a_route_stats *rs)
{
    if (!rs)
        return;
    uint32_t n = atomic_load(&rs->count);
    for (uint32_t i = 0; i < n; i++)
        free(entry_of(rs, i)->name);
    for (size_t c = 0; c < NCHUNKS; c++)
        free(atomic_load(&rs->chunks[c]));
    free(rs->table);
    pthread_mutex_destroy(&rs->mu);
    free(rs);
}

/* Under mu: the table slot holding name, or the empty slot where it goes. */
static uint32_t *slot_for(struct m2a_route_stats *rs, const char *name, size_t len, uint64_t h)
{
    for (size_t pos = (size_t)h & (rs->table_size - 1);; pos = (pos + 1) & (rs->table_size - 1)) {
        uint32_t v = rs->table[pos];
        if (v == 0)
            return &rs->table[pos];
        struct entry *e = entry_of(rs, v - 1);
        if (e->hash == h && e->len == len && memcmp(e->name, name, len) == 0)
            return &rs->table[pos];
    }
}

/* Under mu: doubles the table (the main thread, while registering). */
static void grow_table(struct m2a_route_stats *rs)
{
    uint32_t *old = rs->table;
    size_t n = rs->table_size;
    rs->table_size = 2 * n;
    rs->table = xcalloc(rs->table_size, sizeof(*rs->table));
    for (size_t i = 0; i < n; i++) {
        if (old[i] == 0)
            continue;
        struct entry *e = entry_of(rs, old[i] - 1);
        *slot_for(rs, e->name, e->len, e->hash) = old[i];
    }
    free(old);
}

uint32_t m2a_route_stats_register(struct m2a_route_stats *rs, const char *name)
{
    size_t len = strlen(name);
    uint64_t h = hash_name(name, len);
    uint32_t id = M2A_ROUTE_NONE;
    pthread_mutex_lock(&rs->mu);
    uint32_t *slot = slot_for(rs, name, len, h);
    uint32_t n = atomic_load_explicit(&rs->count, memory_order_relaxed);
    if (*slot != 0) {
        id = *slot - 1;
    } else if (n < M2A_ROUTE_IDS_MAX) {
        if (!atomic_load_explicit(&rs->chunks[n >> CHUNK_BITS], memory_order_relaxed))
            atomic_store_explicit(&rs->chunks[n >> CHUNK_BITS],
                                  xcalloc(CHUNK_SIZE, sizeof(struct entry)), memory_order_release);
        struct entry *e = entry_of(rs, n);
        e->name = xstrndup(name, len);
        e->len = len;
        e->hash = h;
        *slot = n + 1;
        id = n;
        atomic_store_explicit(&rs->count, n + 1, memory_order_release);
        if (2 * (size_t)(n + 1) > rs->table_size)
            grow_table(rs);
    }
    pthread_mutex_unlock(&rs->mu);
    return id;
}

uint32_t m2a_route_stats_lookup(struct m2a_route_stats *rs, const char *name, size_t len)
{
    if (!rs)
        return M2A_ROUTE_NONE;
    pthread_mutex_lock(&rs->mu);
    uint32_t v = *slot_for(rs, name, len, hash_name(name, len));
    pthread_mutex_unlock(&rs->mu);
    return v ? v - 1 : M2A_ROUTE_NONE;
}

struct m2a_route_counters *m2a_route_stats_at(struct m2a_route_stats *rs, uint32_t id)
{
    if (!rs || id >= atomic_load_explicit(&rs->count, memory_order_acquire))
        return NULL;
    return &entry_of(rs, id)->c;
}

const char *m2a_route_stats_name(const struct m2a_route_stats *rs, uint32_t id)
{
    if (!rs || id >= atomic_load_explicit((_Atomic uint32_t *)&rs->count, memory_order_acquire))
        return NULL;
    return entry_of(rs, id)->name;
}

size_t m2a_route_stats_count(const struct m2a_route_stats *rs)
{
    if (!rs)
        return 0;
    size_t n = atomic_load_explicit((_Atomic uint32_t *)&rs->count, memory_order_acquire);
    return n < M2A_ROUTE_STATS_MAX ? n : M2A_ROUTE_STATS_MAX;
}

void m2a_route_stats_observe_latency(struct m2a_route_stats *rs, uint64_t us)
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

void m2a_route_stats_latency(const struct m2a_route_stats *rs, struct m2a_latency_snapshot *out)
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
