/* fuzz_routes.c - libFuzzer target for topic filters, topic matching,
 * templates, route compilation, subscription reduction and mapping.
 *
 * Input: one flags byte, then lines separated by '\n':
 *   0 filter A   1 routing key template A   2 header template (both routes)
 *   3 filter B   4 routing key template B   5.. topics (also the payload)
 * flags: bit 0/1 route A/B has continue, bit 2/3 route A/B has a routing
 * key template, bits 4-5 qos (mod 3), bit 6 retain.
 *
 * Properties checked beyond "no sanitizer report":
 *  - a valid filter has at most 9 wildcards, overlaps itself, and without
 *    wildcards matches exactly the topic spelled like it;
 *  - a match reports one capture per wildcard, each inside the topic;
 *  - two filters that both match a topic overlap (both ways round);
 *  - a template valid for n captures is valid for 9;
 *  - the routes compile exactly when every filter and template is valid;
 *  - every valid topic is matched by at most one subscription, and by
 *    exactly one when a route matches it (the broker delivers it once);
 *  - mapping calls back for the routes first-match/continue predicts, with
 *    the route's name, the topic and the payload, a routing key of at most
 *    255 bytes unless it reports M2A_ERR_KEY_TOO_LONG, and an envelope that
 *    survives encode/decode unchanged;
 *  - the trie matcher calls back exactly like the linear reference (same
 *    routes, same order, same routing keys and header values, so the same
 *    captures), and the indexed subscription reduction of every line that
 *    is a valid filter equals the linear reference's.
 *
 * Single-threaded (libFuzzer's thread). */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/routes.h"
#include "mqtt2amqp/topic.h"
#include "mqtt2amqp/util.h"

#define MAX_LINES  13
#define NROUTES    2
#define MAX_TOPICS (MAX_LINES - 5)

struct line {
    char *s; /* NUL-terminated copy (may hold NULs before len) */
    size_t len;
};

/* What mapping one topic is expected to do, and what it did. */
struct map_state {
    const struct m2a_mqtt_msg *msg;
    const char *names[NROUTES];
    bool has_key[NROUTES];
    int r_of[NROUTES]; /* compiled route index -> 0 (A) or 1 (B) */
    size_t calls;
    size_t seen[NROUTES];
    struct m2a_buf got[NROUTES]; /* routing key '|' header values, per call */
    struct m2a_buf enc;
    struct m2a_header *hbuf;
    size_t hcap;
};

static bool str_eq(struct m2a_str a, struct m2a_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static void check_roundtrip(struct map_state *st, const struct m2a_envelope *env)
{
    m2a_buf_reset(&st->enc);
    m2a_envelope_encode(env, &st->enc);
    FUZZ_CHECK(st->enc.len == m2a_envelope_encoded_size(env), "encoded %zu bytes, size said %zu",
               st->enc.len, m2a_envelope_encoded_size(env));
    struct m2a_envelope d;
    int rc = m2a_envelope_decode(st->enc.data, st->enc.len, &d, &st->hbuf, &st->hcap);
    FUZZ_CHECK(rc == 0, "decode of a fresh encoding: %d", rc);
    bool same = d.timestamp_ms == env->timestamp_ms && str_eq(d.route, env->route) &&
                str_eq(d.exchange, env->exchange) && str_eq(d.routing_key, env->routing_key) &&
                str_eq(d.content_type, env->content_type) && str_eq(d.topic, env->topic) &&
                d.qos == env->qos && d.retain == env->retain && d.persistent == env->persistent &&
                d.nheaders == env->nheaders && str_eq(d.body, env->body);
    for (size_t i = 0; same && i < d.nheaders; i++)
        same = str_eq(d.headers[i].key, env->headers[i].key) &&
               str_eq(d.headers[i].value, env->headers[i].value);
    FUZZ_CHECK(same, "envelope changed through encode/decode");
}

static void on_route(void *ud, size_t idx, const struct m2a_envelope *env, int err)
{
    struct map_state *st = ud;
    const struct m2a_mqtt_msg *msg = st->msg;
    FUZZ_CHECK(st->calls < NROUTES, "more callbacks than routes");
    struct m2a_buf *g = &st->got[st->calls];
    m2a_buf_reset(g);
    m2a_buf_append(g, env->routing_key.ptr, env->routing_key.len);
    for (size_t h = 0; h < env->nheaders; h++) {
        m2a_buf_append_char(g, '|');
        m2a_buf_append(g, env->headers[h].value.ptr, env->headers[h].value.len);
    }
    st->seen[st->calls++] = idx;
    FUZZ_CHECK(idx < NROUTES, "route index %zu", idx);
    int r = st->r_of[idx];
    FUZZ_CHECK(env->route.len == strlen(st->names[r]) &&
                   memcmp(env->route.ptr, st->names[r], env->route.len) == 0,
               "route name");
    FUZZ_CHECK(env->topic.len == msg->topic_len &&
                   memcmp(env->topic.ptr, msg->topic, msg->topic_len) == 0,
               "topic changed");
    FUZZ_CHECK(env->body.len == msg->payload_len &&
                   memcmp(env->body.ptr, msg->payload, msg->payload_len) == 0,
               "payload changed");
    FUZZ_CHECK(err == 0 || err == M2A_ERR_KEY_TOO_LONG, "mapping error %d", err);
    if (!st->has_key[r]) {
        /* The default key is the topic, converted byte for byte. */
        FUZZ_CHECK((err != 0) == (msg->topic_len > M2A_MAX_ROUTING_KEY), "default key err %d", err);
        if (err == 0) {
            FUZZ_CHECK(env->routing_key.len == msg->topic_len, "default key length");
            for (size_t i = 0; i < msg->topic_len; i++) {
                char c = msg->topic[i];
                char want = c == '/' ? '.' : c == '.' ? '/' : c;
                FUZZ_CHECK(env->routing_key.ptr[i] == want, "default key byte %zu", i);
            }
        }
    }
    if (err == 0) {
        FUZZ_CHECK(env->routing_key.len <= M2A_MAX_ROUTING_KEY, "routing key of %zu bytes",
                   env->routing_key.len);
        check_roundtrip(st, env);
    }
}

static void check_filter(const char *f)
{
    char err[256] = "";
    if (m2a_topic_filter_validate(f, err, sizeof(err)) != 0) {
        FUZZ_CHECK(err[0] != '\0', "rejected filter without a reason");
        return;
    }
    int w = m2a_topic_filter_wildcards(f);
    FUZZ_CHECK(w >= 0 && w <= M2A_MAX_CAPTURES, "%d wildcards in a valid filter", w);
    FUZZ_CHECK(m2a_topic_filters_overlap(f, f), "filter does not overlap itself");
    if (w == 0) {
        size_t n = strlen(f);
        struct m2a_captures caps;
        FUZZ_CHECK(m2a_topic_validate(f, n) == 0, "literal filter is not a valid topic");
        FUZZ_CHECK(m2a_topic_match(f, f, n, &caps) && caps.n == 0,
                   "literal filter does not match itself");
    }
}

static bool check_template(const char *t, int ncap)
{
    char err[512] = "";
    if (m2a_routes_template_check(t, ncap, err, sizeof(err)) != 0) {
        FUZZ_CHECK(err[0] != '\0', "rejected template without a reason");
        return false;
    }
    FUZZ_CHECK(m2a_routes_template_check(t, M2A_MAX_CAPTURES, NULL, 0) == 0,
               "template valid for %d captures but not for 9", ncap);
    return true;
}

static void check_match(const char *f, const struct line *t, bool *matched)
{
    struct m2a_captures caps;
    bool m = m2a_topic_match(f, t->s, t->len, &caps);
    FUZZ_CHECK(m == m2a_topic_match(f, t->s, t->len, NULL), "match depends on caps");
    *matched = m;
    if (!m) {
        FUZZ_CHECK(caps.n == 0, "captures left after a failed match");
        return;
    }
    FUZZ_CHECK(caps.n == m2a_topic_filter_wildcards(f), "%d captures for %d wildcards", caps.n,
               m2a_topic_filter_wildcards(f));
    for (int i = 0; i < caps.n; i++)
        FUZZ_CHECK(caps.cap[i].ptr >= t->s && caps.cap[i].ptr + caps.cap[i].len <= t->s + t->len,
                   "capture %d outside the topic", i);
    if (strpbrk(f, "+#") == NULL)
        FUZZ_CHECK(t->len == strlen(f) && memcmp(f, t->s, t->len) == 0,
                   "literal filter matched another topic");
}

static void check_subscriptions(const struct m2a_routes *rt, const struct line *t, bool any_route)
{
    size_t n = 0;
    for (size_t i = 0; i < m2a_routes_nsubscriptions(rt); i++)
        n += m2a_topic_match(m2a_routes_subscription(rt, i), t->s, t->len, NULL);
    FUZZ_CHECK(n <= 1, "topic matched by %zu subscriptions", n);
    FUZZ_CHECK(!any_route || n == 1, "a route matches but no subscription does");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned flags = data[0];
    struct line lines[MAX_LINES] = {0};
    size_t nlines = 0;
    for (size_t pos = 1; nlines < MAX_LINES && pos <= size;) {
        const uint8_t *nl = memchr(data + pos, '\n', size - pos);
        size_t n = nl ? (size_t)(nl - data) - pos : size - pos;
        lines[nlines].s = xstrndup((const char *)data + pos, n);
        memcpy(lines[nlines].s, data + pos, n); /* keep embedded NULs in topics */
        lines[nlines++].len = n;
        pos += n + 1;
        if (!nl)
            break;
    }
    for (size_t i = nlines; i < MAX_LINES; i++)
        lines[i] = (struct line){xstrdup(""), 0};

    const char *filter[NROUTES] = {lines[0].s, lines[3].s};
    const char *key[NROUTES] = {lines[1].s, lines[4].s};
    const char *hdr = lines[2].s;
    bool valid[NROUTES];
    int ncap[NROUTES];
    for (int r = 0; r < NROUTES; r++) {
        check_filter(filter[r]);
        valid[r] = m2a_topic_filter_validate(filter[r], NULL, 0) == 0;
        ncap[r] = valid[r] ? m2a_topic_filter_wildcards(filter[r]) : 0;
    }
    if (valid[0] && valid[1])
        FUZZ_CHECK(m2a_topic_filters_overlap(filter[0], filter[1]) ==
                       m2a_topic_filters_overlap(filter[1], filter[0]),
                   "overlap is not symmetric");

    /* A config of the valid filters, with the templates as given. */
    struct m2a_conf_kv kv[NROUTES];
    struct m2a_conf_route cr[NROUTES];
    struct m2a_config cfg = {.routes = cr};
    struct map_state st = {0};
    bool expect = true, tmpl_ok[NROUTES][2];
    for (int r = 0; r < NROUTES; r++) {
        if (!valid[r])
            continue;
        bool has_key = flags & (4u << r);
        tmpl_ok[r][0] = !has_key || check_template(key[r], ncap[r]);
        tmpl_ok[r][1] = check_template(hdr, ncap[r]);
        expect = expect && tmpl_ok[r][0] && tmpl_ok[r][1];
        st.names[r] = r == 0 ? "a" : "b";
        st.has_key[r] = has_key;
        st.r_of[cfg.nroutes] = r;
        kv[r] = (struct m2a_conf_kv){(char *)"h", (char *)hdr, {1, 1}};
        cr[cfg.nroutes++] = (struct m2a_conf_route){
            .name = (char *)st.names[r],
            .topic = (char *)filter[r],
            .exchange = (char *)"ex",
            .routing_key = has_key ? (char *)key[r] : NULL,
            .persistent = true,
            .content_type = (char *)"text/plain",
            .nheaders = 1,
            .headers = &kv[r],
            .cont = flags & (1u << r),
        };
    }
    struct m2a_routes *rt = NULL;
    char err[512] = "";
    int rc = m2a_routes_compile(&cfg, NULL, &rt, err, sizeof(err));
    FUZZ_CHECK((rc == 0) == expect, "compile returned %d (%s), templates %s", rc, err,
               expect ? "valid" : "invalid");
    if (rc != 0) {
        /* Drop the bad templates so that mapping still gets exercised. */
        for (size_t ci = 0; ci < cfg.nroutes; ci++) {
            int r = st.r_of[ci];
            struct m2a_conf_route *c = &cr[ci];
            if (!tmpl_ok[r][0]) {
                c->routing_key = NULL;
                st.has_key[r] = false;
            }
            if (!tmpl_ok[r][1])
                c->nheaders = 0;
        }
        rc = m2a_routes_compile(&cfg, NULL, &rt, err, sizeof(err));
        FUZZ_CHECK(rc == 0, "compile without the bad templates: %s", err);
    }
    FUZZ_CHECK(m2a_routes_nsubscriptions(rt) <= cfg.nroutes, "more subscriptions than routes");

    struct m2a_routes_scratch *scratch = m2a_routes_scratch_new();
    for (size_t i = 5; i < 5 + MAX_TOPICS && i < nlines; i++) {
        const struct line *t = &lines[i];
        bool m[NROUTES] = {false, false};
        for (int r = 0; r < NROUTES; r++)
            if (valid[r])
                check_match(filter[r], t, &m[r]);
        if (m[0] && m[1])
            FUZZ_CHECK(m2a_topic_filters_overlap(filter[0], filter[1]) &&
                           m2a_topic_filters_overlap(filter[1], filter[0]),
                       "both filters match a topic but do not overlap");
        if (m2a_topic_validate(t->s, t->len) != 0)
            continue;
        check_subscriptions(rt, t, m[0] || m[1]);

        /* Expected callbacks: routes in order, stopping after a match
         * without continue. */
        size_t want[NROUTES], nwant = 0;
        for (size_t ci = 0; ci < cfg.nroutes; ci++) {
            int r = st.r_of[ci];
            if (!m[r])
                continue;
            want[nwant++] = ci;
            if (!cr[ci].cont)
                break;
        }
        struct m2a_mqtt_msg msg = {
            .topic = t->s,
            .topic_len = t->len,
            .payload = t->s,
            .payload_len = t->len,
            .qos = (int)((flags >> 4) & 3) % 3,
            .retain = flags & 0x40,
            .timestamp_ms = 1700000000000ull + size,
        };
        st.msg = &msg;
        st.calls = 0;
        size_t matched = m2a_routes_map(rt, &msg, scratch, on_route, &st);
        FUZZ_CHECK(matched == st.calls, "map returned %zu after %zu callbacks", matched, st.calls);
        FUZZ_CHECK(st.calls == nwant, "%zu callbacks, expected %zu", st.calls, nwant);
        for (size_t k = 0; k < nwant; k++)
            FUZZ_CHECK(st.seen[k] == want[k], "callback %zu for route %zu, expected %zu", k,
                       st.seen[k], want[k]);

        /* The linear reference: the same calls with the same expansions. */
        struct m2a_buf trie_got[NROUTES];
        size_t trie_calls = st.calls;
        memcpy(trie_got, st.got, sizeof(trie_got));
        memset(st.got, 0, sizeof(st.got));
        st.calls = 0;
        size_t lin = m2a_routes_map_linear(rt, &msg, scratch, on_route, &st);
        FUZZ_CHECK(lin == matched && st.calls == trie_calls, "linear matched %zu, trie %zu", lin,
                   matched);
        for (size_t k = 0; k < trie_calls; k++) {
            FUZZ_CHECK(st.seen[k] == want[k], "linear callback %zu for route %zu", k, st.seen[k]);
            FUZZ_CHECK(st.got[k].len == trie_got[k].len &&
                           (st.got[k].len == 0 ||
                            memcmp(st.got[k].data, trie_got[k].data, st.got[k].len) == 0),
                       "callback %zu: the trie and the linear matcher expanded differently", k);
        }
        for (size_t k = 0; k < NROUTES; k++)
            m2a_buf_free(&trie_got[k]);
    }

    /* The subscription reduction of every line that is a valid filter. */
    char *ra[MAX_LINES], *rb[MAX_LINES];
    size_t nf = 0;
    for (size_t i = 0; i < nlines; i++) {
        if (strlen(lines[i].s) != lines[i].len ||
            m2a_topic_filter_validate(lines[i].s, NULL, 0) != 0)
            continue;
        ra[nf] = xstrdup(lines[i].s);
        rb[nf++] = xstrdup(lines[i].s);
    }
    size_t na = m2a_topic_filters_reduce(ra, nf);
    size_t nb = m2a_topic_filters_reduce_linear(rb, nf);
    FUZZ_CHECK(na == nb, "reduction kept %zu filters, the linear reference %zu", na, nb);
    for (size_t i = 0; i < na; i++) {
        FUZZ_CHECK(strcmp(ra[i], rb[i]) == 0, "reduction: \"%s\" where the reference has \"%s\"",
                   ra[i], rb[i]);
        free(ra[i]);
        free(rb[i]);
    }
    m2a_routes_scratch_free(scratch);
    m2a_routes_free(rt);
    m2a_buf_free(&st.enc);
    for (size_t k = 0; k < NROUTES; k++)
        m2a_buf_free(&st.got[k]);
    free(st.hbuf);
    for (size_t i = 0; i < MAX_LINES; i++)
        free(lines[i].s);
    return 0;
}
