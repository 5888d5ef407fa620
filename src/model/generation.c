/* generation.c - a configuration as the bridge runs it, shared by reference
 * count; see generation.h.
 *
 * Threads: built on the main thread, never written after m2a_generation_new
 * returns; the reference count is the only field that changes, atomically,
 * from any thread. The release/acquire pair on it orders every thread's
 * last reads before the free. */
#include "mqtt2amqp/generation.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/util.h"

struct m2a_generation {
    _Atomic uint64_t refs;
    uint64_t number;
    struct m2a_config *cfg; /* owned: what it was built from */
    struct m2a_routes *routes;
    /* Not applied by a reload: the start generation's, copied. */
    struct m2a_conf_dead_letter dl; /* strings owned */
    uint64_t max_age_ms;
    enum m2a_mqtt_headers mqtt_headers;
};

static _Atomic uint64_t built_count;
static _Atomic uint64_t alive_count;

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void generation_free(struct m2a_generation *g)
{
    m2a_routes_free(g->routes);
    m2a_config_free(g->cfg);
    free(g->dl.exchange);
    free(g->dl.routing_key);
    free(g);
    atomic_fetch_sub_explicit(&alive_count, 1, memory_order_relaxed);
}

int m2a_generation_new(struct m2a_config *cfg, const struct m2a_generation *start,
                       struct m2a_route_stats *registry, struct m2a_generation **out, char *err,
                       size_t errlen)
{
    *out = NULL;
    struct m2a_routes *routes = NULL;
    int rc = m2a_routes_compile(cfg, registry, &routes, err, errlen);
    if (rc != 0) {
        m2a_config_free(cfg);
        return rc;
    }
    struct m2a_generation *g = xcalloc(1, sizeof(*g));
    atomic_init(&g->refs, 1);
    g->cfg = cfg;
    g->routes = routes;
    const struct m2a_conf_dead_letter *dl = start ? &start->dl : &cfg->dead_letter;
    g->dl = *dl;
    g->dl.exchange = dup_or_null(dl->exchange);
    g->dl.routing_key = dup_or_null(dl->routing_key);
    g->max_age_ms = start ? start->max_age_ms : cfg->spool.max_age_ms;
    g->mqtt_headers = start ? start->mqtt_headers : (enum m2a_mqtt_headers)cfg->amqp.mqtt_headers;
    g->number = atomic_fetch_add_explicit(&built_count, 1, memory_order_relaxed) + 1;
    atomic_fetch_add_explicit(&alive_count, 1, memory_order_relaxed);
    *out = g;
    return 0;
}

struct m2a_generation *m2a_generation_ref(struct m2a_generation *g)
{
    if (g)
        atomic_fetch_add_explicit(&g->refs, 1, memory_order_relaxed);
    return g;
}

void m2a_generation_unref(struct m2a_generation *g)
{
    if (g && atomic_fetch_sub_explicit(&g->refs, 1, memory_order_acq_rel) == 1)
        generation_free(g);
}

uint64_t m2a_generation_number(const struct m2a_generation *g)
{
    return g->number;
}

const struct m2a_config *m2a_generation_config(const struct m2a_generation *g)
{
    return g->cfg;
}

const struct m2a_routes *m2a_generation_routes(const struct m2a_generation *g)
{
    return g->routes;
}

const struct m2a_conf_amqp *m2a_generation_topology(const struct m2a_generation *g)
{
    return &g->cfg->amqp;
}

const struct m2a_conf_dead_letter *m2a_generation_dead_letter(const struct m2a_generation *g)
{
    return g->dl.enabled ? &g->dl : NULL;
}

uint64_t m2a_generation_max_age_ms(const struct m2a_generation *g)
{
    return g->max_age_ms;
}

enum m2a_mqtt_headers m2a_generation_mqtt_headers(const struct m2a_generation *g)
{
    return g->mqtt_headers;
}

enum m2a_unroutable m2a_generation_unroutable(const struct m2a_generation *g, uint32_t route_id)
{
    long i = m2a_routes_find(g->routes, route_id);
    return i < 0 ? M2A_UNROUTABLE_DEAD_LETTER : m2a_routes_unroutable(g->routes, (size_t)i);
}

void m2a_generation_counts(uint64_t *built, uint64_t *alive)
{
    if (built)
        *built = atomic_load_explicit(&built_count, memory_order_relaxed);
    if (alive)
        *alive = atomic_load_explicit(&alive_count, memory_order_relaxed);
}
