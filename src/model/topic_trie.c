/* topic_trie.c - a tree of topic levels over MQTT topic filters (the
 * matcher of routes.c and the overlap index of the subscription reduction
 * in topic.c).
 *
 * Each node is one level of some filter. A node keeps the values of the
 * filters that end on it (vals), of those that end with "/#" right below it
 * (hvals: they match whatever follows, including nothing), its '+' child
 * and its literal children. A literal child is found through one hash table
 * keyed by (parent, level), so a lookup costs the same with 1 or 100,000
 * siblings. Queries walk the tree depth first with an explicit stack (a
 * topic may have 65,535 levels; recursion could exhaust the thread's stack).
 *
 * Threads: built by one thread, then read-only; queries write only their
 * scratch, which belongs to one thread. Allocates while building and while a
 * scratch grows. */
#include "mqtt2amqp/topic_trie.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/util.h"

struct vec {
    uint32_t *v;
    size_t n, cap;
};

struct node {
    char *lvl; /* NULL for the root and '+' nodes */
    size_t len;
    uint32_t parent;
    uint32_t plus; /* 0: none (the root is nobody's child) */
    struct vec kids;
    struct vec vals;
    struct vec hvals;
};

struct m2a_topic_trie {
    struct node *nodes;
    size_t n, cap;
    uint32_t *slots; /* literal children: node id, 0 empty; open addressing */
    size_t nslots, used;
};

struct frame {
    uint32_t node;
    bool all;      /* overlapping: the whole subtree */
    size_t pos;    /* match: start of the next topic level; SIZE_MAX: none left */
    const char *q; /* overlapping: next filter level; NULL: none left */
};

struct m2a_topic_trie_scratch {
    struct vec out;
    struct frame *stack;
    size_t sn, scap;
};

static void vec_push(struct vec *v, uint32_t x)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 4;
        v->v = xrealloc(v->v, v->cap * sizeof(*v->v));
    }
    v->v[v->n++] = x;
}

static void vec_append(struct vec *v, const struct vec *w)
{
    for (size_t i = 0; i < w->n; i++)
        vec_push(v, w->v[i]);
}

static uint64_t level_hash(uint32_t parent, const char *p, size_t n)
{
    uint64_t h = 1469598103934665603ull ^ parent;
    h *= 1099511628211ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint32_t find_kid(const struct m2a_topic_trie *t, uint32_t parent, const char *p, size_t n)
{
    size_t mask = t->nslots - 1;
    for (size_t i = (size_t)level_hash(parent, p, n) & mask;; i = (i + 1) & mask) {
        uint32_t id = t->slots[i];
        if (id == 0)
            return 0;
        const struct node *k = &t->nodes[id];
        if (k->parent == parent && k->len == n && memcmp(k->lvl, p, n) == 0)
            return id;
    }
}

static void slot_put(uint32_t *slots, size_t nslots, const struct node *k, uint32_t id)
{
    size_t mask = nslots - 1;
    size_t i = (size_t)level_hash(k->parent, k->lvl, k->len) & mask;
    while (slots[i] != 0)
        i = (i + 1) & mask;
    slots[i] = id;
}

static uint32_t new_node(struct m2a_topic_trie *t, uint32_t parent)
{
    if (t->n == t->cap) {
        t->cap *= 2;
        t->nodes = xrealloc(t->nodes, t->cap * sizeof(*t->nodes));
    }
    t->nodes[t->n] = (struct node){.parent = parent};
    return (uint32_t)t->n++;
}

static uint32_t add_kid(struct m2a_topic_trie *t, uint32_t parent, const char *p, size_t n)
{
    if (2 * (t->used + 1) > t->nslots) {
        size_t ns = t->nslots * 2;
        uint32_t *slots = xcalloc(ns, sizeof(*slots));
        for (size_t i = 0; i < t->nslots; i++)
            if (t->slots[i])
                slot_put(slots, ns, &t->nodes[t->slots[i]], t->slots[i]);
        free(t->slots);
        t->slots = slots;
        t->nslots = ns;
    }
    uint32_t id = new_node(t, parent);
    struct node *k = &t->nodes[id];
    k->lvl = xstrndup(p, n);
    k->len = n;
    slot_put(t->slots, t->nslots, k, id);
    t->used++;
    vec_push(&t->nodes[parent].kids, id);
    return id;
}

struct m2a_topic_trie *m2a_topic_trie_new(void)
{
    struct m2a_topic_trie *t = xcalloc(1, sizeof(*t));
    t->cap = 16;
    t->nodes = xcalloc(t->cap, sizeof(*t->nodes));
    t->n = 1; /* the root */
    t->nslots = 16;
    t->slots = xcalloc(t->nslots, sizeof(*t->slots));
    return t;
}

void m2a_topic_trie_free(struct m2a_topic_trie *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++) {
        struct node *k = &t->nodes[i];
        free(k->lvl);
        free(k->kids.v);
        free(k->vals.v);
        free(k->hvals.v);
    }
    free(t->nodes);
    free(t->slots);
    free(t);
}

void m2a_topic_trie_add(struct m2a_topic_trie *t, const char *filter, uint32_t value)
{
    uint32_t at = 0;
    for (const char *p = filter;;) {
        const char *end = strchr(p, '/');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n == 1 && p[0] == '#') {
            vec_push(&t->nodes[at].hvals, value);
            return;
        }
        uint32_t next;
        if (n == 1 && p[0] == '+') {
            next = t->nodes[at].plus;
            if (!next) {
                next = new_node(t, at);
                t->nodes[at].plus = next;
            }
        } else {
            next = find_kid(t, at, p, n);
            if (!next)
                next = add_kid(t, at, p, n);
        }
        at = next;
        if (!end)
            break;
        p = end + 1;
    }
    vec_push(&t->nodes[at].vals, value);
}

struct m2a_topic_trie_scratch *m2a_topic_trie_scratch_new(void)
{
    return xcalloc(1, sizeof(struct m2a_topic_trie_scratch));
}

void m2a_topic_trie_scratch_free(struct m2a_topic_trie_scratch *s)
{
    if (!s)
        return;
    free(s->out.v);
    free(s->stack);
    free(s);
}

static void push(struct m2a_topic_trie_scratch *s, struct frame f)
{
    if (s->sn == s->scap) {
        s->scap = s->scap ? s->scap * 2 : 16;
        s->stack = xrealloc(s->stack, s->scap * sizeof(*s->stack));
    }
    s->stack[s->sn++] = f;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static void sort_u32(uint32_t *v, size_t n)
{
    if (n > 16) {
        qsort(v, n, sizeof(*v), cmp_u32);
        return;
    }
    for (size_t i = 1; i < n; i++) {
        uint32_t x = v[i];
        size_t j = i;
        for (; j > 0 && v[j - 1] > x; j--)
            v[j] = v[j - 1];
        v[j] = x;
    }
}

size_t m2a_topic_trie_match(const struct m2a_topic_trie *t, const char *topic, size_t len,
                            struct m2a_topic_trie_scratch *s, const uint32_t **values)
{
    bool dollar = len > 0 && topic[0] == '$';
    s->out.n = 0;
    s->sn = 0;
    push(s, (struct frame){.node = 0, .pos = 0});
    while (s->sn > 0) {
        struct frame f = s->stack[--s->sn];
        const struct node *k = &t->nodes[f.node];
        bool wild_ok = !(f.node == 0 && dollar);
        if (wild_ok)
            vec_append(&s->out, &k->hvals); /* "x/#": the rest, or nothing */
        if (f.pos == SIZE_MAX) {
            vec_append(&s->out, &k->vals);
            continue;
        }
        const char *slash = memchr(topic + f.pos, '/', len - f.pos);
        size_t te = slash ? (size_t)(slash - topic) : len;
        size_t next = slash ? te + 1 : SIZE_MAX;
        if (k->plus && wild_ok)
            push(s, (struct frame){.node = k->plus, .pos = next});
        uint32_t kid = t->used ? find_kid(t, f.node, topic + f.pos, te - f.pos) : 0;
        if (kid)
            push(s, (struct frame){.node = kid, .pos = next});
    }
    sort_u32(s->out.v, s->out.n);
    *values = s->out.v;
    return s->out.n;
}

static bool dollar_kid(const struct m2a_topic_trie *t, uint32_t id)
{
    const struct node *k = &t->nodes[id];
    return k->len > 0 && k->lvl[0] == '$';
}

/* Pushes the '+' child and the literal children of node id (at the root,
 * not those a wildcard cannot reach when no_dollar). */
static void push_kids(const struct m2a_topic_trie *t, struct m2a_topic_trie_scratch *s, uint32_t id,
                      bool all, const char *q, bool no_dollar)
{
    const struct node *k = &t->nodes[id];
    if (k->plus)
        push(s, (struct frame){.node = k->plus, .all = all, .q = q});
    for (size_t i = 0; i < k->kids.n; i++)
        if (!(no_dollar && id == 0 && dollar_kid(t, k->kids.v[i])))
            push(s, (struct frame){.node = k->kids.v[i], .all = all, .q = q});
}

size_t m2a_topic_trie_overlapping(const struct m2a_topic_trie *t, const char *filter,
                                  struct m2a_topic_trie_scratch *s, const uint32_t **values)
{
    /* The '$' rule both ways: a literal "$x" first level meets no stored
     * filter starting with a wildcard, a query starting with a wildcard no
     * stored "$x" first level. */
    bool qdollar = filter[0] == '$';
    s->out.n = 0;
    s->sn = 0;
    push(s, (struct frame){.node = 0, .q = filter});
    while (s->sn > 0) {
        struct frame f = s->stack[--s->sn];
        const struct node *k = &t->nodes[f.node];
        bool root = f.node == 0;
        if (!(root && qdollar))
            vec_append(&s->out, &k->hvals);
        if (f.all) {
            vec_append(&s->out, &k->vals);
            push_kids(t, s, f.node, true, NULL, false);
            continue;
        }
        if (!f.q) {
            vec_append(&s->out, &k->vals);
            continue;
        }
        const char *end = strchr(f.q, '/');
        size_t n = end ? (size_t)(end - f.q) : strlen(f.q);
        const char *next = end ? end + 1 : NULL;
        if (n == 1 && f.q[0] == '#') {
            vec_append(&s->out, &k->vals); /* "a/#" overlaps "a" */
            push_kids(t, s, f.node, true, NULL, root);
        } else if (n == 1 && f.q[0] == '+') {
            push_kids(t, s, f.node, false, next, root);
        } else {
            if (k->plus && !(root && qdollar))
                push(s, (struct frame){.node = k->plus, .q = next});
            uint32_t kid = t->used ? find_kid(t, f.node, f.q, n) : 0;
            if (kid)
                push(s, (struct frame){.node = kid, .q = next});
        }
    }
    *values = s->out.v;
    return s->out.n;
}
