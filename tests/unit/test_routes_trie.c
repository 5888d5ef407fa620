/* test_routes_trie.c - the trie matcher and the indexed subscription
 * reduction against their linear references (m2a_routes_map_linear,
 * m2a_topic_filters_reduce_linear): random route tables and topics over a
 * small alphabet of levels ('$' levels, empty levels, wildcards), same
 * callbacks in the same order with the same routing keys and captures, same
 * subscription set; and the trie alone on the cases the alphabet makes
 * rare (10,000 routes, the matching one last). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/routes.h"
#include "mqtt2amqp/topic.h"
#include "mqtt2amqp/topic_trie.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define MAX_ROUTES 40
#define MAX_CALLS  MAX_ROUTES

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static unsigned rnd(unsigned n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

static const char *const levels[] = {"a", "b", "$s", "", "c.d"};
#define NLEVELS (sizeof(levels) / sizeof(*levels))

static void random_filter(char *out, size_t cap)
{
    size_t n = 1 + rnd(4), len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++) {
        const char *l;
        unsigned k = rnd(NLEVELS + 3);
        if (k == NLEVELS + 2 && i == n - 1)
            l = "#";
        else if (k >= NLEVELS)
            l = "+";
        else
            l = levels[k];
        len += (size_t)snprintf(out + len, cap - len, "%s%s", i ? "/" : "", l);
    }
    if (len == 0) /* "" is no filter */
        snprintf(out, cap, "+");
}

static void random_topic(char *out, size_t cap)
{
    size_t n = 1 + rnd(5), len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(out + len, cap - len, "%s%s", i ? "/" : "", levels[rnd(NLEVELS)]);
}

struct call {
    size_t idx;
    int err;
    char key[256];
    char hval[256];
};

struct calls {
    size_t n;
    struct call c[MAX_CALLS];
};

static void record(void *ud, size_t idx, const struct m2a_envelope *env, int err)
{
    struct calls *cs = ud;
    ck_assert_uint_lt(cs->n, MAX_CALLS);
    struct call *c = &cs->c[cs->n++];
    c->idx = idx;
    c->err = err;
    snprintf(c->key, sizeof(c->key), "%.*s", (int)env->routing_key.len, env->routing_key.ptr);
    snprintf(c->hval, sizeof(c->hval), "%.*s", (int)env->headers[0].value.len,
             env->headers[0].value.ptr);
}

/* Captures reach the routing key and the header, so equal keys and header
 * values mean equal captures. */
static const char *const templates[] = {"{1}.{topic}", "{1}|{2}|{3}", "{2}-{1}", "k"};

START_TEST(trie_maps_like_the_linear_reference)
{
    char filters[MAX_ROUTES][64], names[MAX_ROUTES][24], hdr[MAX_ROUTES][32];
    struct m2a_conf_route cr[MAX_ROUTES];
    struct m2a_conf_kv kv[MAX_ROUTES];
    size_t compared = 0, nonempty = 0;
    for (int round = 0; round < 400; round++) {
        size_t n = 1 + rnd(MAX_ROUTES);
        for (size_t i = 0; i < n; i++) {
            random_filter(filters[i], sizeof(filters[i]));
            snprintf(names[i], sizeof(names[i]), "r%zu", i);
            int w = m2a_topic_filter_wildcards(filters[i]);
            snprintf(hdr[i], sizeof(hdr[i]), "%s",
                     w >= 3   ? templates[1]
                     : w >= 2 ? templates[2]
                     : w == 1 ? templates[0]
                              : templates[3]);
            kv[i] = (struct m2a_conf_kv){(char *)"h", hdr[i], {1, 1}};
            cr[i] = (struct m2a_conf_route){
                .name = names[i],
                .topic = filters[i],
                .exchange = (char *)"ex",
                .routing_key = hdr[i],
                .persistent = true,
                .nheaders = 1,
                .headers = &kv[i],
                .cont = rnd(3) != 0,
            };
        }
        struct m2a_config cfg = {.routes = cr, .nroutes = n};
        struct m2a_routes *rt = NULL;
        char err[256] = "";
        ck_assert_msg(m2a_routes_compile(&cfg, NULL, &rt, err, sizeof(err)) == 0, "%s", err);
        struct m2a_routes_scratch *s = m2a_routes_scratch_new();
        for (int t = 0; t < 50; t++) {
            char topic[64];
            random_topic(topic, sizeof(topic));
            struct m2a_mqtt_msg msg = {.topic = topic,
                                       .topic_len = strlen(topic),
                                       .payload = "p",
                                       .payload_len = 1,
                                       .qos = 1};
            struct calls want = {0}, got = {0};
            size_t mw = m2a_routes_map_linear(rt, &msg, s, record, &want);
            size_t mg = m2a_routes_map(rt, &msg, s, record, &got);
            ck_assert_uint_eq(mg, mw);
            ck_assert_uint_eq(got.n, want.n);
            for (size_t k = 0; k < want.n; k++) {
                ck_assert_uint_eq(got.c[k].idx, want.c[k].idx);
                ck_assert_int_eq(got.c[k].err, want.c[k].err);
                ck_assert_str_eq(got.c[k].key, want.c[k].key);
                ck_assert_str_eq(got.c[k].hval, want.c[k].hval);
            }
            compared++;
            nonempty += want.n > 0;
        }
        m2a_routes_scratch_free(s);
        m2a_routes_free(rt);
    }
    /* The alphabet is small enough that most topics meet some route. */
    ck_assert_uint_gt(nonempty, compared / 4);
}
END_TEST

START_TEST(reduction_equals_the_linear_reference)
{
    size_t merged = 0;
    for (int round = 0; round < 2000; round++) {
        size_t n = rnd(30);
        char *a[30], *b[30];
        for (size_t i = 0; i < n; i++) {
            char f[64];
            random_filter(f, sizeof(f));
            a[i] = xstrdup(f);
            b[i] = xstrdup(f);
        }
        size_t na = m2a_topic_filters_reduce(a, n);
        size_t nb = m2a_topic_filters_reduce_linear(b, n);
        ck_assert_uint_eq(na, nb);
        for (size_t i = 0; i < na; i++)
            ck_assert_str_eq(a[i], b[i]);
        merged += n - na;
        for (size_t i = 0; i < na; i++) {
            free(a[i]);
            free(b[i]);
        }
    }
    ck_assert_uint_gt(merged, 0);
}
END_TEST

START_TEST(trie_finds_the_last_of_10000_routes)
{
    struct m2a_topic_trie *t = m2a_topic_trie_new();
    char f[64];
    for (uint32_t i = 0; i < 10000; i++) {
        snprintf(f, sizeof(f), "site/dev%u/+/temp", i);
        m2a_topic_trie_add(t, f, i);
    }
    m2a_topic_trie_add(t, "site/#", 10000);
    m2a_topic_trie_add(t, "+/dev9999/x/temp", 10001);
    m2a_topic_trie_add(t, "#", 10002); /* not for '$' topics */
    m2a_topic_trie_add(t, "$SYS/+", 10003);
    struct m2a_topic_trie_scratch *s = m2a_topic_trie_scratch_new();
    const uint32_t *v;
    const char *topic = "site/dev9999/x/temp";
    size_t n = m2a_topic_trie_match(t, topic, strlen(topic), s, &v);
    ck_assert_uint_eq(n, 4);
    ck_assert_uint_eq(v[0], 9999);
    ck_assert_uint_eq(v[1], 10000);
    ck_assert_uint_eq(v[2], 10001);
    ck_assert_uint_eq(v[3], 10002);
    n = m2a_topic_trie_match(t, "site", 4, s, &v);
    ck_assert_uint_eq(n, 2); /* "site/#" matches its parent level, and "#" */
    n = m2a_topic_trie_match(t, "$SYS/x", 6, s, &v);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(v[0], 10003);
    m2a_topic_trie_scratch_free(s);
    m2a_topic_trie_free(t);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("routes_trie");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, trie_maps_like_the_linear_reference);
    tcase_add_test(tc, reduction_equals_the_linear_reference);
    tcase_add_test(tc, trie_finds_the_last_of_10000_routes);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
