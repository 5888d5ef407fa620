/* routes.c - the mapping engine: compiles the config's routes into an
 * immutable table (ids, filters, precompiled templates, policies,
 * subscriptions) and maps each MQTT message to one envelope per matching
 * route.
 *
 * Threads: a compiled table is never written after m2a_routes_compile()
 * returns, so any thread may read it; a reload builds a new table. A scratch
 * belongs to the one thread that maps with it (the MQTT thread). Templates
 * are parsed once here into parts so that mapping only copies bytes, and the
 * scratch's buffers are reused so that mapping allocates nothing once they
 * have grown to the largest message seen. */
#include "mqtt2amqp/routes.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/template.h"
#include "mqtt2amqp/topic.h"
#include "mqtt2amqp/topic_trie.h"

/* AMQP short strings (exchange, content type, table keys) are at most 255
 * bytes on the wire; the envelope encoding relies on it too. */
#define MAX_SHORTSTR 255

enum part_kind { PART_LITERAL, PART_TOPIC, PART_CAPTURE };

struct part {
    enum part_kind kind;
    int capture; /* PART_CAPTURE: 1..9 */
    size_t off;  /* PART_LITERAL: bytes in tmpl.lit */
    size_t len;
};

struct tmpl {
    struct part *parts;
    size_t nparts;
    char *lit; /* literal bytes, "{{" and "}}" already unescaped */
};

struct route {
    uint32_t id;
    struct m2a_route_counters *ctr; /* NULL: not counted */
    enum m2a_unroutable unroutable;
    enum m2a_retained retained;
    char *name;
    char *filter;
    char *exchange;
    char *content_type; /* "" when unset */
    bool has_key;
    struct tmpl key;
    size_t nheaders;
    char **hkeys;
    struct tmpl *hvals;
    bool persistent;
    bool cont;
};

struct m2a_routes {
    size_t n;
    struct route *r;
    size_t nsubs;
    char **subs;
    uint32_t *by_id; /* route index + 1 by id, open addressing; 0 is empty */
    size_t by_id_size;
    struct m2a_topic_trie *trie; /* every route's filter, valued by its index */
};

struct m2a_routes_scratch {
    struct m2a_buf key;
    struct m2a_buf hvals; /* all header values of one envelope, back to back */
    struct m2a_header *headers;
    size_t headers_cap;
    struct m2a_topic_trie_scratch *walk;
};

/* --- templates --- */

static void add_part(struct tmpl *t, size_t *cap, struct part p)
{
    /* Merge adjacent literals ("a{{b" is one part). */
    if (p.kind == PART_LITERAL && t->nparts > 0 && t->parts[t->nparts - 1].kind == PART_LITERAL) {
        t->parts[t->nparts - 1].len += p.len;
        return;
    }
    if (t->nparts == *cap) {
        *cap = *cap ? *cap * 2 : 4;
        t->parts = xrealloc(t->parts, *cap * sizeof(*t->parts));
    }
    t->parts[t->nparts++] = p;
}

struct tmpl_parse {
    const char *s;
    int ncaptures;
    struct tmpl *out; /* NULL: only validate */
    size_t cap, litlen;
};

static int tmpl_piece(void *ud, enum m2a_template_piece kind, const char *name, size_t n, size_t at,
                      char *err, size_t errlen)
{
    (void)at;
    struct tmpl_parse *tp = ud;
    struct part p = {PART_LITERAL, 0, tp->litlen, n};
    if (kind == M2A_TEMPLATE_PLACEHOLDER) {
        p = (struct part){PART_TOPIC, 0, 0, 0};
        if (n == 1 && name[0] >= '1' && name[0] <= '9') {
            p.kind = PART_CAPTURE;
            p.capture = name[0] - '0';
            if (p.capture > tp->ncaptures) {
                m2a_err_setf(err, errlen,
                             "template \"%s\": {%d} refers to wildcard %d but the topic filter has "
                             "%d wildcard%s",
                             tp->s, p.capture, p.capture, tp->ncaptures,
                             tp->ncaptures == 1 ? "" : "s");
                return M2A_ERR_TEMPLATE;
            }
        } else if (!(n == 5 && memcmp(name, "topic", 5) == 0)) {
            m2a_err_setf(err, errlen,
                         "template \"%s\": unknown placeholder {%.*s} (use {topic} or {1}..{9})",
                         tp->s, (int)n, name);
            return M2A_ERR_TEMPLATE;
        }
    } else if (tp->out) {
        memcpy(tp->out->lit + tp->litlen, name, n);
        tp->litlen += n;
    }
    if (tp->out)
        add_part(tp->out, &tp->cap, p);
    return 0;
}

/* Parses s. With out == NULL it only validates. */
static int tmpl_parse(const char *s, int ncaptures, struct tmpl *out, char *err, size_t errlen)
{
    struct tmpl_parse tp = {.s = s, .ncaptures = ncaptures, .out = out};
    if (out) {
        memset(out, 0, sizeof(*out));
        out->lit = xmalloc(strlen(s) + 1);
    }
    return m2a_template_scan(s, tmpl_piece, &tp, err, errlen);
}

static void tmpl_free(struct tmpl *t)
{
    free(t->parts);
    free(t->lit);
}

int m2a_routes_template_check(const char *tmpl, int ncaptures, char *err, size_t errlen)
{
    if (!tmpl) {
        m2a_err_setf(err, errlen, "template is missing");
        return M2A_ERR_TEMPLATE;
    }
    return tmpl_parse(tmpl, ncaptures, NULL, err, errlen);
}

/* Appends the expansion of t to out. Stops early once out has grown by more
 * than limit bytes (a routing key is bounded; the rest would be wasted). */
static void tmpl_expand(const struct tmpl *t, const struct m2a_mqtt_msg *msg,
                        const struct m2a_captures *caps, struct m2a_buf *out, size_t limit)
{
    size_t start = out->len;
    for (size_t i = 0; i < t->nparts && out->len - start <= limit; i++) {
        const struct part *p = &t->parts[i];
        switch (p->kind) {
        case PART_LITERAL:
            m2a_buf_append(out, t->lit + p->off, p->len);
            break;
        case PART_TOPIC:
            m2a_topic_to_routing_key(msg->topic, msg->topic_len, out);
            break;
        case PART_CAPTURE:
            /* Captures are converted like the topic so that a '.' inside a
             * level cannot add a word to the routing key. */
            if (p->capture <= caps->n)
                m2a_topic_to_routing_key(caps->cap[p->capture - 1].ptr,
                                         caps->cap[p->capture - 1].len, out);
            break;
        }
    }
}

/* --- subscriptions --- */

/* The route filters reduced to a set in which no two overlap (topic.c): the
 * broker sends one copy of a message per matching subscription, and the
 * bridge must publish it once per matching route, not once per subscription. */
static void build_subscriptions(struct m2a_routes *rt)
{
    rt->subs = xcalloc(rt->n ? rt->n : 1, sizeof(*rt->subs));
    for (size_t i = 0; i < rt->n; i++)
        rt->subs[i] = xstrdup(rt->r[i].filter);
    rt->nsubs = m2a_topic_filters_reduce(rt->subs, rt->n);
}

/* --- compile --- */

static int check_short(const char *route, const char *what, const char *s, char *err, size_t errlen)
{
    if (strlen(s) <= MAX_SHORTSTR)
        return 0;
    m2a_err_setf(err, errlen, "route \"%s\": %s is longer than %d bytes", route, what,
                 MAX_SHORTSTR);
    return M2A_ERR_CONFIG;
}

static int compile_route(const struct m2a_conf_route *c, struct route *r, char *err, size_t errlen)
{
    char why[512];
    int rc;
    if (!c->name || !c->topic || !c->exchange) {
        m2a_err_setf(err, errlen, "route \"%s\": name, topic and exchange are required",
                     c->name ? c->name : "?");
        return M2A_ERR_CONFIG;
    }
    if ((rc = check_short(c->name, "the name", c->name, err, errlen)) < 0 ||
        (rc = check_short(c->name, "the exchange", c->exchange, err, errlen)) < 0 ||
        (c->content_type &&
         (rc = check_short(c->name, "content_type", c->content_type, err, errlen)) < 0))
        return rc;
    if ((rc = m2a_topic_filter_validate(c->topic, why, sizeof(why))) < 0) {
        m2a_err_setf(err, errlen, "route \"%s\": %s", c->name, why);
        return rc;
    }
    int ncap = m2a_topic_filter_wildcards(c->topic);
    r->name = xstrdup(c->name);
    r->filter = xstrdup(c->topic);
    r->exchange = xstrdup(c->exchange);
    r->content_type = xstrdup(c->content_type ? c->content_type : "");
    r->persistent = c->persistent;
    r->cont = c->cont;
    r->unroutable = c->unroutable;
    r->retained = c->retained;
    if (c->routing_key) {
        r->has_key = true;
        if ((rc = tmpl_parse(c->routing_key, ncap, &r->key, why, sizeof(why))) < 0) {
            m2a_err_setf(err, errlen, "route \"%s\": routing_key: %s", c->name, why);
            return rc;
        }
    }
    if (c->nheaders > UINT16_MAX) {
        m2a_err_setf(err, errlen, "route \"%s\": more than %d headers", c->name, UINT16_MAX);
        return M2A_ERR_CONFIG;
    }
    r->hkeys = xcalloc(c->nheaders ? c->nheaders : 1, sizeof(*r->hkeys));
    r->hvals = xcalloc(c->nheaders ? c->nheaders : 1, sizeof(*r->hvals));
    for (size_t k = 0; k < c->nheaders; k++) {
        const struct m2a_conf_kv *kv = &c->headers[k];
        if (!kv->key || (rc = check_short(c->name, "a header name", kv->key, err, errlen)) < 0) {
            if (!kv->key)
                m2a_err_setf(err, errlen, "route \"%s\": header without a name", c->name);
            return kv->key ? rc : M2A_ERR_CONFIG;
        }
        r->hkeys[k] = xstrdup(kv->key);
        r->nheaders = k + 1;
        rc = tmpl_parse(kv->value ? kv->value : "", ncap, &r->hvals[k], why, sizeof(why));
        if (rc < 0) {
            m2a_err_setf(err, errlen, "route \"%s\": header \"%s\": %s", c->name, kv->key, why);
            return rc;
        }
    }
    return 0;
}

static void route_free(struct route *r)
{
    free(r->name);
    free(r->filter);
    free(r->exchange);
    free(r->content_type);
    if (r->has_key)
        tmpl_free(&r->key);
    for (size_t k = 0; k < r->nheaders; k++) {
        free(r->hkeys[k]);
        tmpl_free(&r->hvals[k]);
    }
    free(r->hkeys);
    free(r->hvals);
}

static size_t id_slot(const struct m2a_routes *rt, uint32_t id)
{
    return (size_t)(id * 2654435761u) & (rt->by_id_size - 1);
}

/* Ids from the registry, then the id -> index table: the AMQP thread finds
 * a record's route (its unroutable policy) by id in O(1). */
static int assign_ids(struct m2a_routes *rt, struct m2a_route_stats *registry, char *err,
                      size_t errlen)
{
    for (size_t i = 0; i < rt->n; i++) {
        struct route *r = &rt->r[i];
        r->id = registry ? m2a_route_stats_register(registry, r->name) : (uint32_t)i;
        if (r->id == M2A_ROUTE_NONE) {
            m2a_err_setf(err, errlen,
                         "route \"%s\": more than %u route names since the bridge started; "
                         "restart it to start counting again",
                         r->name, (unsigned)M2A_ROUTE_IDS_MAX);
            return M2A_ERR_CONFIG;
        }
        r->ctr = m2a_route_stats_at(registry, r->id);
    }
    rt->by_id_size = 4;
    while (rt->by_id_size < 2 * rt->n)
        rt->by_id_size *= 2;
    rt->by_id = xcalloc(rt->by_id_size, sizeof(*rt->by_id));
    for (size_t i = 0; i < rt->n; i++) {
        size_t pos = id_slot(rt, rt->r[i].id);
        /* Two routes never share a name (config.c), so never an id. */
        while (rt->by_id[pos] != 0)
            pos = (pos + 1) & (rt->by_id_size - 1);
        rt->by_id[pos] = (uint32_t)i + 1;
    }
    return 0;
}

int m2a_routes_compile(const struct m2a_config *cfg, struct m2a_route_stats *registry,
                       struct m2a_routes **out, char *err, size_t errlen)
{
    int rc = 0;
    struct m2a_routes *rt = xcalloc(1, sizeof(*rt));
    *out = NULL;
    rt->r = xcalloc(cfg->nroutes ? cfg->nroutes : 1, sizeof(*rt->r));
    for (size_t i = 0; i < cfg->nroutes; i++) {
        /* Count before compiling so that a half-built route is freed too. */
        rt->n = i + 1;
        if ((rc = compile_route(&cfg->routes[i], &rt->r[i], err, errlen)) < 0)
            goto out;
    }
    if ((rc = assign_ids(rt, registry, err, errlen)) < 0)
        goto out;
    build_subscriptions(rt);
    rt->trie = m2a_topic_trie_new();
    for (size_t i = 0; i < rt->n; i++)
        m2a_topic_trie_add(rt->trie, rt->r[i].filter, (uint32_t)i);
    *out = rt;
    rt = NULL;
out:
    m2a_routes_free(rt);
    return rc;
}

void m2a_routes_free(struct m2a_routes *routes)
{
    if (!routes)
        return;
    for (size_t i = 0; i < routes->n; i++)
        route_free(&routes->r[i]);
    free(routes->r);
    for (size_t i = 0; i < routes->nsubs; i++)
        free(routes->subs[i]);
    free(routes->subs);
    free(routes->by_id);
    m2a_topic_trie_free(routes->trie);
    free(routes);
}

size_t m2a_routes_count(const struct m2a_routes *routes)
{
    return routes->n;
}

const char *m2a_routes_name(const struct m2a_routes *routes, size_t i)
{
    return i < routes->n ? routes->r[i].name : NULL;
}

uint32_t m2a_routes_id(const struct m2a_routes *routes, size_t i)
{
    return i < routes->n ? routes->r[i].id : M2A_ROUTE_NONE;
}

struct m2a_route_counters *m2a_routes_counters(const struct m2a_routes *routes, size_t i)
{
    return i < routes->n ? routes->r[i].ctr : NULL;
}

enum m2a_unroutable m2a_routes_unroutable(const struct m2a_routes *routes, size_t i)
{
    return i < routes->n ? routes->r[i].unroutable : M2A_UNROUTABLE_DEAD_LETTER;
}

long m2a_routes_find(const struct m2a_routes *routes, uint32_t route_id)
{
    if (route_id == M2A_ROUTE_NONE || routes->n == 0)
        return -1;
    for (size_t pos = id_slot(routes, route_id);; pos = (pos + 1) & (routes->by_id_size - 1)) {
        uint32_t v = routes->by_id[pos];
        if (v == 0)
            return -1;
        if (routes->r[v - 1].id == route_id)
            return (long)v - 1;
    }
}

size_t m2a_routes_nsubscriptions(const struct m2a_routes *routes)
{
    return routes->nsubs;
}

const char *m2a_routes_subscription(const struct m2a_routes *routes, size_t i)
{
    return i < routes->nsubs ? routes->subs[i] : NULL;
}

/* --- mapping --- */

struct m2a_routes_scratch *m2a_routes_scratch_new(void)
{
    struct m2a_routes_scratch *s = xcalloc(1, sizeof(*s));
    s->walk = m2a_topic_trie_scratch_new();
    return s;
}

void m2a_routes_scratch_free(struct m2a_routes_scratch *s)
{
    if (!s)
        return;
    m2a_buf_free(&s->key);
    m2a_buf_free(&s->hvals);
    free(s->headers);
    m2a_topic_trie_scratch_free(s->walk);
    free(s);
}

static struct m2a_str str_of(const char *s)
{
    return (struct m2a_str){s, strlen(s)};
}

/* Fills env for route r; returns 0, M2A_ERR_KEY_TOO_LONG, or
 * M2A_ROUTES_SKIPPED when the route skips retained messages and msg is one
 * (env complete all the same: the callback counts it). */
static int map_one(const struct route *r, const struct m2a_mqtt_msg *msg,
                   const struct m2a_captures *caps, struct m2a_routes_scratch *s,
                   struct m2a_envelope *env)
{
    int rc = 0;
    m2a_buf_reset(&s->key);
    if (r->has_key)
        tmpl_expand(&r->key, msg, caps, &s->key, M2A_MAX_ROUTING_KEY);
    else
        m2a_topic_to_routing_key(msg->topic, msg->topic_len, &s->key);
    if (s->key.len > M2A_MAX_ROUTING_KEY)
        rc = M2A_ERR_KEY_TOO_LONG;
    /* NUL-terminated for amqp_cstring_bytes users; the appends above already
     * reserved room for it, so this allocates nothing. */
    m2a_buf_cstr(&s->key);

    if (r->nheaders > s->headers_cap) {
        s->headers = xrealloc(s->headers, r->nheaders * sizeof(*s->headers));
        s->headers_cap = r->nheaders;
    }
    /* Values go back to back into one buffer that may move while it grows,
     * so pointers are set only once all are written. */
    m2a_buf_reset(&s->hvals);
    for (size_t k = 0; k < r->nheaders; k++) {
        size_t start = s->hvals.len;
        tmpl_expand(&r->hvals[k], msg, caps, &s->hvals, SIZE_MAX);
        s->headers[k].key = str_of(r->hkeys[k]);
        s->headers[k].value.len = s->hvals.len - start;
    }
    m2a_buf_cstr(&s->hvals); /* data is never NULL below, even with no values */
    size_t off = 0;
    for (size_t k = 0; k < r->nheaders; k++) {
        s->headers[k].value.ptr = (const char *)s->hvals.data + off;
        off += s->headers[k].value.len;
    }

    *env = (struct m2a_envelope){
        .route_id = r->id,
        .timestamp_ms = msg->timestamp_ms,
        .route = str_of(r->name),
        .exchange = str_of(r->exchange),
        .routing_key = {(const char *)s->key.data, s->key.len},
        .content_type = str_of(r->content_type),
        .topic = {msg->topic, msg->topic_len},
        .qos = (uint8_t)msg->qos,
        .retain = msg->retain,
        .persistent = r->persistent,
        .nheaders = r->nheaders,
        .headers = s->headers,
        .body = {msg->payload ? (const char *)msg->payload : "", msg->payload_len},
    };
    if (rc == 0 && msg->retain && r->retained == M2A_RETAINED_SKIP)
        rc = M2A_ROUTES_SKIPPED;
    return rc;
}

/* The trie gives the matching routes in route order; m2a_topic_match then
 * only fills the captures of those (and would drop a candidate the trie
 * should not have given). */
size_t m2a_routes_map(const struct m2a_routes *routes, const struct m2a_mqtt_msg *msg,
                      struct m2a_routes_scratch *scratch, m2a_route_cb cb, void *ud)
{
    size_t matched = 0;
    struct m2a_captures caps;
    const uint32_t *idx;
    size_t n = m2a_topic_trie_match(routes->trie, msg->topic, msg->topic_len, scratch->walk, &idx);
    for (size_t k = 0; k < n; k++) {
        const struct route *r = &routes->r[idx[k]];
        if (!m2a_topic_match(r->filter, msg->topic, msg->topic_len, &caps))
            continue;
        matched++;
        struct m2a_envelope env;
        int rc = map_one(r, msg, &caps, scratch, &env);
        cb(ud, idx[k], &env, rc);
        if (!r->cont)
            break;
    }
    return matched;
}

size_t m2a_routes_map_linear(const struct m2a_routes *routes, const struct m2a_mqtt_msg *msg,
                             struct m2a_routes_scratch *scratch, m2a_route_cb cb, void *ud)
{
    size_t matched = 0;
    struct m2a_captures caps;
    for (size_t i = 0; i < routes->n; i++) {
        const struct route *r = &routes->r[i];
        if (!m2a_topic_match(r->filter, msg->topic, msg->topic_len, &caps))
            continue;
        matched++;
        struct m2a_envelope env;
        int rc = map_one(r, msg, &caps, scratch, &env);
        cb(ud, i, &env, rc);
        if (!r->cont)
            break;
    }
    return matched;
}
