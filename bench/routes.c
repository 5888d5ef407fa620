/* routes.c - m2a-bench-routes: what the route table costs with 1, 1,000 and
 * 10,000 routes, the matching one last (issue 12): compiling the table (the
 * subscription reduction included), the reduction alone with the indexed
 * and the linear reference algorithms, and mapping one message with the trie
 * and with the linear reference matcher. No broker; one thread.
 *
 *   m2a-bench-routes [N ...]     (default 1 1000 10000)
 *
 * Prints one line per N: routes=N subs=S compile_ms= reduce_ms=
 * reduce_linear_ms= map_ns= map_linear_ns=. The other routes are
 * "fleet/siteI/+/temp" and "bench/xI/#" (the latter overlap the matching
 * "bench/#", so the reduction has merges to do). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mqtt2amqp/routes.h"
#include "mqtt2amqp/topic.h"
#include "mqtt2amqp/util.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void count(void *ud, size_t idx, const struct m2a_envelope *env, int err)
{
    (void)idx;
    (void)env;
    (void)err;
    ++*(size_t *)ud;
}

static double reduce_ms(char **filters, size_t n, size_t (*fn)(char **, size_t))
{
    char **f = xcalloc(n, sizeof(*f));
    for (size_t i = 0; i < n; i++)
        f[i] = xstrdup(filters[i]);
    double t0 = now_s();
    size_t kept = fn(f, n);
    double ms = (now_s() - t0) * 1e3;
    for (size_t i = 0; i < kept; i++)
        free(f[i]);
    free(f);
    return ms;
}

static double map_ns(const struct m2a_routes *rt, struct m2a_routes_scratch *s,
                     size_t (*fn)(const struct m2a_routes *, const struct m2a_mqtt_msg *,
                                  struct m2a_routes_scratch *, m2a_route_cb, void *))
{
    const char *topic = "bench/dev/42";
    struct m2a_mqtt_msg msg = {
        .topic = topic, .topic_len = strlen(topic), .payload = "x", .payload_len = 1, .qos = 1};
    size_t calls = 0, iters = 1000;
    double t0 = now_s(), t;
    /* At least 0.2 s per figure. */
    for (;;) {
        for (size_t i = 0; i < iters; i++)
            fn(rt, &msg, s, count, &calls);
        t = now_s() - t0;
        if (t >= 0.2)
            break;
        iters *= 2;
        calls = 0;
        t0 = now_s();
    }
    if (calls != iters) {
        fprintf(stderr, "matched %zu times in %zu messages\n", calls, iters);
        exit(1);
    }
    return t * 1e9 / (double)iters;
}

static void run(size_t n)
{
    struct m2a_conf_route *cr = xcalloc(n, sizeof(*cr));
    char **filters = xcalloc(n, sizeof(*filters));
    for (size_t i = 0; i < n; i++) {
        char f[64], name[32];
        if (i == n - 1)
            snprintf(f, sizeof(f), "bench/#");
        else if (i % 2)
            snprintf(f, sizeof(f), "bench/x%zu/#", i);
        else
            snprintf(f, sizeof(f), "fleet/site%zu/+/temp", i);
        snprintf(name, sizeof(name), "r%zu", i);
        filters[i] = xstrdup(f);
        cr[i] = (struct m2a_conf_route){.name = xstrdup(name),
                                        .topic = filters[i],
                                        .exchange = (char *)"ex",
                                        .persistent = true};
    }
    struct m2a_config cfg = {.routes = cr, .nroutes = n};
    struct m2a_routes *rt = NULL;
    char err[256];
    double t0 = now_s();
    if (m2a_routes_compile(&cfg, NULL, &rt, err, sizeof(err)) != 0) {
        fprintf(stderr, "compile: %s\n", err);
        exit(1);
    }
    double compile_ms = (now_s() - t0) * 1e3;
    struct m2a_routes_scratch *s = m2a_routes_scratch_new();
    double red = reduce_ms(filters, n, m2a_topic_filters_reduce);
    double red_lin = reduce_ms(filters, n, m2a_topic_filters_reduce_linear);
    double mt = map_ns(rt, s, m2a_routes_map);
    double ml = map_ns(rt, s, m2a_routes_map_linear);
    printf("routes=%zu subs=%zu compile_ms=%.1f reduce_ms=%.1f reduce_linear_ms=%.1f map_ns=%.0f "
           "map_linear_ns=%.0f\n",
           n, m2a_routes_nsubscriptions(rt), compile_ms, red, red_lin, mt, ml);
    fflush(stdout);
    m2a_routes_scratch_free(s);
    m2a_routes_free(rt);
    for (size_t i = 0; i < n; i++) {
        free(cr[i].name);
        free(filters[i]);
    }
    free(cr);
    free(filters);
}

int main(int argc, char **argv)
{
    static const size_t def[] = {1, 1000, 10000};
    if (argc > 1) {
        for (int i = 1; i < argc; i++)
            run(strtoul(argv[i], NULL, 10));
    } else {
        for (size_t i = 0; i < sizeof(def) / sizeof(*def); i++)
            run(def[i]);
    }
    return 0;
}
