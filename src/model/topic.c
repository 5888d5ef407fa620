/* topic.c - MQTT topic names and filters: validation, matching with
 * captures, the filter algebra (overlap, cover, generalisation, and the
 * reduction of a set of filters to one whose members do not overlap) and
 * the RabbitMQ MQTT plugin's topic -> routing key conversion.
 *
 * Pure functions with no shared state: callable from any thread. Matching
 * runs once per message and per route on the MQTT thread and allocates
 * nothing; m2a_topic_to_routing_key appends to the caller's buffer. The
 * algebra runs when routes are compiled (start, reload) and allocates. */
#include "mqtt2amqp/topic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/topic_trie.h"

#define MAX_TOPIC_LEN 65535

static int fail(char *err, size_t errlen, const char *msg)
{
    if (err && errlen)
        snprintf(err, errlen, "%s", msg);
    return M2A_ERR_TOPIC;
}

/* Well-formed UTF-8 without the control characters MQTT says a client should
 * not send: libmosquitto refuses such a filter at subscribe time, and a config
 * error at load time is far easier to act on. */
static bool utf8_ok(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned cp;
        if (c < 0x80) {
            n = 1;
            cp = c;
        } else if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (len - i < n)
            return false;
        for (size_t k = 1; k < n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        /* Overlong forms, surrogates, beyond Unicode, control characters. */
        if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10FFFF ||
            (cp >= 0xD800 && cp <= 0xDFFF) || cp < 0x20 || (cp >= 0x7F && cp <= 0x9F))
            return false;
        i += n;
    }
    return true;
}

int m2a_topic_filter_validate(const char *filter, char *err, size_t errlen)
{
    if (!filter || !*filter)
        return fail(err, errlen, "topic filter is empty");
    size_t len = strlen(filter);
    if (len > MAX_TOPIC_LEN)
        return fail(err, errlen, "topic filter is longer than 65535 bytes");
    if (strncmp(filter, "$share/", 7) == 0)
        return fail(err, errlen,
                    "topic filter must not start with \"$share/\": set mqtt.share_group instead, "
                    "the bridge adds the share prefix itself");
    if (!utf8_ok((const unsigned char *)filter, len))
        return fail(err, errlen, "topic filter is not valid UTF-8 or contains control characters");
    int wildcards = 0;
    for (const char *lvl = filter;;) {
        const char *end = strchr(lvl, '/');
        size_t n = end ? (size_t)(end - lvl) : strlen(lvl);
        bool plus = memchr(lvl, '+', n) != NULL;
        bool hash = memchr(lvl, '#', n) != NULL;
        if (plus && n != 1)
            return fail(err, errlen, "'+' must occupy a whole topic level, as in \"a/+/c\"");
        if (hash && n != 1)
            return fail(err, errlen, "'#' must occupy a whole topic level, as in \"a/#\"");
        if (hash && end)
            return fail(err, errlen, "'#' must be the last level of a topic filter");
        wildcards += plus || hash;
        if (!end)
            break;
        lvl = end + 1;
    }
    if (wildcards > M2A_MAX_CAPTURES)
        return fail(err, errlen, "topic filter has more than 9 wildcards");
    return 0;
}

int m2a_topic_filter_wildcards(const char *filter)
{
    int n = 0;
    for (; *filter; filter++)
        n += (*filter == '+' || *filter == '#');
    return n;
}

int m2a_topic_validate(const char *topic, size_t len)
{
    if (!topic || len == 0 || len > MAX_TOPIC_LEN)
        return M2A_ERR_TOPIC;
    for (size_t i = 0; i < len; i++) {
        if (topic[i] == '\0' || topic[i] == '+' || topic[i] == '#')
            return M2A_ERR_TOPIC;
    }
    return 0;
}

static void capture(struct m2a_captures *caps, const char *p, size_t n)
{
    /* A filter that skipped validation may have more wildcards than slots:
     * it still matches, the extra captures are just not reported. */
    if (caps && caps->n < M2A_MAX_CAPTURES) {
        caps->cap[caps->n].ptr = p;
        caps->cap[caps->n].len = n;
        caps->n++;
    }
}

static bool match(const char *f, const char *topic, size_t len, struct m2a_captures *caps)
{
    size_t t = 0; /* start of the current topic level */
    for (;;) {
        if (f[0] == '#' && f[1] == '\0') {
            capture(caps, topic + t, len - t);
            return true;
        }
        const char *fe = strchr(f, '/');
        if (!fe)
            fe = f + strlen(f);
        const char *slash = memchr(topic + t, '/', len - t);
        size_t te = slash ? (size_t)(slash - topic) : len;
        if (fe - f == 1 && f[0] == '+') {
            capture(caps, topic + t, te - t);
        } else if ((size_t)(fe - f) != te - t || memcmp(f, topic + t, te - t) != 0) {
            return false;
        }
        if (*fe == '\0')
            return te == len;
        if (te == len) {
            /* The topic ended but the filter goes on: only "/#" may follow,
             * because '#' also matches the parent level ("a/#" matches "a"). */
            if (fe[1] == '#' && fe[2] == '\0') {
                capture(caps, topic + len, 0);
                return true;
            }
            return false;
        }
        f = fe + 1;
        t = te + 1;
    }
}

bool m2a_topic_match(const char *filter, const char *topic, size_t len, struct m2a_captures *caps)
{
    if (caps)
        caps->n = 0;
    if ((filter[0] == '+' || filter[0] == '#') && len > 0 && topic[0] == '$')
        return false;
    if (match(filter, topic, len, caps))
        return true;
    if (caps)
        caps->n = 0;
    return false;
}

/* One level of a filter: [p, p + n), and whether more levels follow. */
struct level {
    const char *p;
    size_t n;
    bool last;
};

static struct level next_level(const char **cursor)
{
    struct level l = {*cursor, 0, false};
    const char *end = strchr(*cursor, '/');
    if (end) {
        l.n = (size_t)(end - *cursor);
        *cursor = end + 1;
    } else {
        l.n = strlen(*cursor);
        l.last = true;
    }
    return l;
}

static bool is_hash(struct level l)
{
    return l.n == 1 && l.p[0] == '#';
}

static bool is_plus(struct level l)
{
    return l.n == 1 && l.p[0] == '+';
}

bool m2a_topic_filters_overlap(const char *a, const char *b)
{
    /* A filter starting with a wildcard matches no '$' topic, so it shares
     * nothing with a filter whose first level is a literal "$...". */
    bool wa = a[0] == '+' || a[0] == '#';
    bool wb = b[0] == '+' || b[0] == '#';
    if ((wa && b[0] == '$') || (wb && a[0] == '$'))
        return false;
    for (;;) {
        struct level la = next_level(&a);
        struct level lb = next_level(&b);
        if (is_hash(la) || is_hash(lb))
            return true;
        if (!is_plus(la) && !is_plus(lb) && (la.n != lb.n || memcmp(la.p, lb.p, la.n) != 0))
            return false;
        if (la.last && lb.last)
            return true;
        if (la.last || lb.last) {
            /* One ended: the other overlaps only if its rest is exactly "#"
             * (it matches the parent level too). */
            const char *rest = la.last ? b : a;
            return rest[0] == '#' && rest[1] == '\0';
        }
    }
}

/* Level i of filter f as [*p, *p + *n). */
static void level_at(const char *f, size_t i, const char **p, size_t *n)
{
    for (; i > 0; i--)
        f = strchr(f, '/') + 1;
    const char *end = strchr(f, '/');
    *p = f;
    *n = end ? (size_t)(end - f) : strlen(f);
}

static size_t count_levels(const char *f)
{
    size_t n = 1;
    for (; *f; f++)
        n += *f == '/';
    return n;
}

static bool level_is(const char *p, size_t n, char c)
{
    return n == 1 && p[0] == c;
}

bool m2a_topic_filter_covers(const char *a, const char *b)
{
    bool wa = a[0] == '+' || a[0] == '#';
    if (wa && b[0] == '$')
        return false;
    size_t na = count_levels(a), nb = count_levels(b);
    for (size_t i = 0; i < na; i++) {
        const char *pa, *pb;
        size_t la, lb;
        level_at(a, i, &pa, &la);
        if (level_is(pa, la, '#'))
            return true; /* also covers b ending one level earlier: "a/#" matches "a" */
        if (i >= nb)
            return false;
        level_at(b, i, &pb, &lb);
        if (level_is(pa, la, '+')) {
            if (level_is(pb, lb, '#'))
                return false;
            continue;
        }
        if (la != lb || memcmp(pa, pb, la) != 0)
            return false;
    }
    return na == nb;
}

char *m2a_topic_filter_generalise(const char *a, const char *b)
{
    size_t na = count_levels(a), nb = count_levels(b);
    size_t n = na < nb ? na : nb;
    struct m2a_buf out = {0};
    bool hash = na != nb;
    for (size_t i = 0; i < n; i++) {
        const char *pa, *pb;
        size_t la, lb;
        level_at(a, i, &pa, &la);
        level_at(b, i, &pb, &lb);
        if (level_is(pa, la, '#') || level_is(pb, lb, '#')) {
            hash = true;
            break;
        }
        if (i > 0)
            m2a_buf_append_char(&out, '/');
        if (la == lb && memcmp(pa, pb, la) == 0)
            m2a_buf_append(&out, pa, la);
        else
            m2a_buf_append_char(&out, '+');
    }
    if (hash) {
        if (out.len > 0)
            m2a_buf_append_char(&out, '/');
        m2a_buf_append_char(&out, '#');
    }
    char *s = xstrndup((const char *)out.data, out.len);
    m2a_buf_free(&out);
    return s;
}

/* Merges the overlapping pair f[i], f[j] (i < j) into f[i] and drops f[j]
 * (sets it NULL). Returns true if f[i] changed. */
static bool merge_pair(char **f, size_t i, size_t j)
{
    char *a = f[i], *b = f[j];
    bool changed = true;
    if (m2a_topic_filter_covers(a, b)) {
        free(b);
        changed = false;
    } else if (m2a_topic_filter_covers(b, a)) {
        f[i] = b;
        free(a);
    } else {
        f[i] = m2a_topic_filter_generalise(a, b);
        free(a);
        free(b);
    }
    f[j] = NULL;
    return changed;
}

/* The state of m2a_topic_filters_reduce: the filters so far in a trie whose
 * values are entries; an entry is current while its slot still holds the
 * filter it was added with (a merged filter is added again, the old entry
 * left behind). */
struct reduce {
    char **f;
    size_t n;
    struct m2a_topic_trie *trie;
    struct m2a_topic_trie_scratch *s;
    uint32_t *slot_of; /* entry -> slot */
    uint32_t *cur;     /* slot -> its current entry */
    size_t nentries;
    size_t *later; /* reduce_later's result */
    size_t nlater;
};

static void reduce_add(struct reduce *rd, size_t slot)
{
    uint32_t e = (uint32_t)rd->nentries++;
    rd->slot_of[e] = (uint32_t)slot;
    rd->cur[slot] = e;
    m2a_topic_trie_add(rd->trie, rd->f[slot], e);
}

/* The first live slot in [lo, hi) other than i whose filter overlaps f[i];
 * hi when there is none. */
static size_t reduce_first_overlap(struct reduce *rd, size_t i, size_t lo, size_t hi)
{
    const uint32_t *v;
    size_t nv = m2a_topic_trie_overlapping(rd->trie, rd->f[i], rd->s, &v);
    size_t best = hi;
    for (size_t k = 0; k < nv; k++) {
        size_t slot = rd->slot_of[v[k]];
        if (slot == i || slot < lo || slot >= best || rd->cur[slot] != v[k] || !rd->f[slot])
            continue;
        if (m2a_topic_filters_overlap(rd->f[i], rd->f[slot]))
            best = slot;
    }
    return best;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return (x > y) - (x < y);
}

/* The live slots after i that the trie says may overlap f[i], ascending,
 * into rd->later. */
static void reduce_later(struct reduce *rd, size_t i)
{
    const uint32_t *v;
    size_t nv = m2a_topic_trie_overlapping(rd->trie, rd->f[i], rd->s, &v);
    rd->nlater = 0;
    for (size_t k = 0; k < nv; k++) {
        size_t slot = rd->slot_of[v[k]];
        if (slot > i && rd->cur[slot] == v[k] && rd->f[slot])
            rd->later[rd->nlater++] = slot;
    }
    qsort(rd->later, rd->nlater, sizeof(*rd->later), cmp_size);
}

/* The same result as m2a_topic_filters_reduce_linear, step for step: that
 * one always merges the first overlapping pair (i, j) in array order. Here
 * every slot before the cursor i overlaps no other live slot, so the first
 * pair is (i, the first slot after i overlapping it), found through the
 * trie instead of a scan. A merge that keeps f[i] (it covers f[j]) leaves
 * the next pair at the next overlapping slot of the same query; one that
 * widens f[i] needs a new query, and a slot before i that now overlaps f[i]
 * moves the first pair back: the cursor goes back to the first such slot.
 * Without merges the cost is one trie query per filter. */
size_t m2a_topic_filters_reduce(char **f, size_t n)
{
    if (n < 2)
        return n;
    struct reduce rd = {
        .f = f,
        .n = n,
        .trie = m2a_topic_trie_new(),
        .s = m2a_topic_trie_scratch_new(),
        .slot_of = xcalloc(2 * n, sizeof(uint32_t)),
        .cur = xcalloc(n, sizeof(uint32_t)),
        .later = xcalloc(2 * n, sizeof(size_t)),
    };
    for (size_t i = 0; i < n; i++)
        reduce_add(&rd, i);
    for (size_t i = 0; i < n;) {
        if (!f[i]) {
            i++;
            continue;
        }
        reduce_later(&rd, i);
        bool changed = false;
        for (size_t k = 0; k < rd.nlater && !changed; k++) {
            size_t j = rd.later[k];
            if (f[j] && m2a_topic_filters_overlap(f[i], f[j]))
                changed = merge_pair(f, i, j);
        }
        if (!changed) {
            i++;
            continue;
        }
        reduce_add(&rd, i);
        size_t back = reduce_first_overlap(&rd, i, 0, i);
        if (back < i)
            i = back;
    }
    size_t kept = 0;
    for (size_t i = 0; i < n; i++)
        if (f[i])
            f[kept++] = f[i];
    m2a_topic_trie_free(rd.trie);
    m2a_topic_trie_scratch_free(rd.s);
    free(rd.slot_of);
    free(rd.cur);
    free(rd.later);
    return kept;
}

/* Each step removes one filter, so this ends after at most n steps; each
 * step restarts the scan, so that the result does not depend on which of
 * several overlapping pairs is met first more than it must. */
size_t m2a_topic_filters_reduce_linear(char **f, size_t n)
{
    bool changed = true;
    while (changed) {
        changed = false;
        for (size_t i = 0; i < n && !changed; i++) {
            for (size_t j = i + 1; j < n && !changed; j++) {
                if (!m2a_topic_filters_overlap(f[i], f[j]))
                    continue;
                (void)merge_pair(f, i, j);
                memmove(&f[j], &f[j + 1], (n - j - 1) * sizeof(char *));
                n--;
                changed = true;
            }
        }
    }
    return n;
}

void m2a_topic_to_routing_key(const char *s, size_t len, struct m2a_buf *out)
{
    m2a_buf_reserve(out, len);
    unsigned char *d = out->data + out->len;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        d[i] = (unsigned char)(c == '/' ? '.' : c == '.' ? '/' : c);
    }
    out->len += len;
}
