/* downlink_topic.c - a downlink's topic template: parsed once into parts
 * (config load and the downlink thread's start), rendered per message by the
 * downlink thread into its own buffer; see downlink_topic.h.
 *
 * Threads: a compiled template is never written after compile returns. */
#include "mqtt2amqp/downlink_topic.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mosquitto.h>

#include "mqtt2amqp/amqp_value.h"
#include "mqtt2amqp/config.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/template.h"
#include "mqtt2amqp/topic.h"

#define HEADER_PREFIX "header:"

enum part_kind { PART_LITERAL, PART_WORD, PART_KEY, PART_HEADER };

struct part {
    enum part_kind kind;
    int word;   /* PART_WORD: 1..9 */
    size_t off; /* PART_LITERAL, PART_HEADER (the name): bytes in lit */
    size_t len;
};

struct m2a_downlink_topic {
    struct part *parts;
    size_t nparts;
    char *lit; /* literal bytes ("{{" and "}}" unescaped) and header names */
};

static void add_part(struct m2a_downlink_topic *t, size_t *cap, struct part p)
{
    /* adjacent literals merge: rendering copies fewer pieces */
    struct part *last = t->nparts ? &t->parts[t->nparts - 1] : NULL;
    if (p.kind == PART_LITERAL && last && last->kind == PART_LITERAL &&
        last->off + last->len == p.off) {
        last->len += p.len;
        return;
    }
    if (t->nparts == *cap) {
        *cap = *cap ? *cap * 2 : 8;
        t->parts = xrealloc(t->parts, *cap * sizeof(*t->parts));
    }
    t->parts[t->nparts++] = p;
}

/* The placeholder name[0..n): a part, or M2A_ERR_TEMPLATE. */
static int placeholder(const char *tmpl, const char *name, size_t n, struct part *p, char *err,
                       size_t errlen)
{
    size_t hp = strlen(HEADER_PREFIX);
    if (n == 1 && name[0] >= '1' && name[0] <= '9') {
        *p = (struct part){.kind = PART_WORD, .word = name[0] - '0'};
        return 0;
    }
    if (n == 11 && !memcmp(name, "routing_key", 11)) {
        *p = (struct part){.kind = PART_KEY};
        return 0;
    }
    if (n > hp && !memcmp(name, HEADER_PREFIX, hp)) {
        if (n - hp > M2A_AMQP_SHORTSTR_MAX) {
            m2a_err_setf(err, errlen, "template \"%.80s\": a header name is at most %d bytes", tmpl,
                         M2A_AMQP_SHORTSTR_MAX);
            return M2A_ERR_TEMPLATE;
        }
        *p = (struct part){.kind = PART_HEADER, .len = n - hp};
        return 0;
    }
    m2a_err_setf(err, errlen,
                 "template \"%.80s\": unknown placeholder {%.*s} (use {1}..{9}, {routing_key} or "
                 "{header:NAME})",
                 tmpl, (int)(n > 60 ? 60 : n), name);
    return M2A_ERR_TEMPLATE;
}

/* The literal text of a template, checked as a piece of a topic name. */
static int check_literal(const char *tmpl, const char *s, size_t n, char *err, size_t errlen)
{
    size_t bad = strcspn(s, "+#");
    if (bad < n) {
        m2a_err_setf(
            err, errlen,
            "template \"%.80s\": '%c' is a wildcard; a topic to publish to cannot hold one", tmpl,
            s[bad]);
        return M2A_ERR_TOPIC;
    }
    if (mosquitto_validate_utf8(s, (int)n) != MOSQ_ERR_SUCCESS) {
        m2a_err_setf(err, errlen,
                     "template \"%.80s\": not an MQTT string (UTF-8 without control characters)",
                     tmpl);
        return M2A_ERR_TOPIC;
    }
    return 0;
}

struct parse {
    const char *s;
    struct m2a_downlink_topic *t;
    size_t cap, litlen;
};

static int piece(void *ud, enum m2a_template_piece kind, const char *name, size_t n, size_t at,
                 char *err, size_t errlen)
{
    (void)at;
    struct parse *ps = ud;
    struct m2a_downlink_topic *t = ps->t;
    int rc;
    if (kind == M2A_TEMPLATE_TEXT) {
        /* an escaped brace (1 byte, not a wildcard) passes the check too */
        if ((rc = check_literal(ps->s, name, n, err, errlen)) != 0)
            return rc;
        memcpy(t->lit + ps->litlen, name, n);
        add_part(t, &ps->cap, (struct part){.kind = PART_LITERAL, .off = ps->litlen, .len = n});
        ps->litlen += n;
        return 0;
    }
    struct part p;
    if ((rc = placeholder(ps->s, name, n, &p, err, errlen)) != 0)
        return rc;
    if (p.kind == PART_HEADER) {
        p.off = ps->litlen;
        memcpy(t->lit + ps->litlen, name + strlen(HEADER_PREFIX), p.len);
        ps->litlen += p.len;
    }
    add_part(t, &ps->cap, p);
    return 0;
}

static int parse(const char *s, struct m2a_downlink_topic *t, char *err, size_t errlen)
{
    if (!s[0]) {
        m2a_err_setf(err, errlen, "the topic template is empty");
        return M2A_ERR_TOPIC;
    }
    if (strlen(s) > M2A_MQTT_STRING_MAX) {
        m2a_err_setf(err, errlen, "the topic template is longer than the %d bytes of a topic",
                     M2A_MQTT_STRING_MAX);
        return M2A_ERR_TOPIC;
    }
    struct parse ps = {.s = s, .t = t};
    return m2a_template_scan(s, piece, &ps, err, errlen);
}

int m2a_downlink_topic_compile(const char *tmpl, struct m2a_downlink_topic **out, char *err,
                               size_t errlen)
{
    *out = NULL;
    if (!tmpl) {
        m2a_err_setf(err, errlen, "the topic template is missing");
        return M2A_ERR_TEMPLATE;
    }
    struct m2a_downlink_topic *t = xcalloc(1, sizeof(*t));
    t->lit = xmalloc(strlen(tmpl) + 1);
    int rc = parse(tmpl, t, err, errlen);
    if (rc) {
        m2a_downlink_topic_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void m2a_downlink_topic_free(struct m2a_downlink_topic *t)
{
    if (!t)
        return;
    free(t->parts);
    free(t->lit);
    free(t);
}

/* Word n (1-based) of key: *w and *wlen, or false if the key has fewer. */
static bool key_word(const char *key, size_t key_len, int n, const char **w, size_t *wlen)
{
    size_t start = 0;
    for (int i = 1;; i++) {
        const char *dot = memchr(key + start, '.', key_len - start);
        size_t end = dot ? (size_t)(dot - key) : key_len;
        if (i == n) {
            *w = key + start;
            *wlen = end - start;
            return true;
        }
        if (!dot)
            return false;
        start = end + 1;
    }
}

static size_t key_words(const char *key, size_t key_len)
{
    size_t n = 1;
    for (size_t i = 0; i < key_len; i++)
        n += key[i] == '.';
    return n;
}

static const amqp_field_value_t *find_header(const amqp_table_t *h, const char *name, size_t len)
{
    for (int i = 0; h && i < h->num_entries; i++)
        if (h->entries[i].key.len == len && !memcmp(h->entries[i].key.bytes, name, len))
            return &h->entries[i].value;
    return NULL;
}

static int render_part(const struct m2a_downlink_topic *t, const struct part *p, const char *key,
                       size_t key_len, const amqp_table_t *headers, struct m2a_buf *out, char *why,
                       size_t whylen)
{
    const char *w;
    size_t wlen, before = out->len;
    switch (p->kind) {
    case PART_LITERAL:
        m2a_buf_append(out, t->lit + p->off, p->len);
        return 0;
    case PART_KEY:
        m2a_topic_to_routing_key(key, key_len, out);
        break;
    case PART_WORD:
        if (!key_word(key, key_len, p->word, &w, &wlen)) {
            m2a_err_setf(why, whylen, "routing key '%.*s' has %zu word(s), the template uses {%d}",
                         (int)(key_len > 100 ? 100 : key_len), key, key_words(key, key_len),
                         p->word);
            return M2A_ERR_TEMPLATE;
        }
        m2a_topic_to_routing_key(w, wlen, out);
        break;
    case PART_HEADER: {
        const amqp_field_value_t *v = find_header(headers, t->lit + p->off, p->len);
        if (!v) {
            m2a_err_setf(why, whylen, "the message has no header '%.*s'", (int)p->len,
                         t->lit + p->off);
            return M2A_ERR_TEMPLATE;
        }
        if (!m2a_amqp_value_text(v, M2A_AMQP_VALUE_BYTES, out)) {
            m2a_err_setf(why, whylen,
                         "header '%.*s' is of AMQP type '%c', not a string, a number or a boolean",
                         (int)p->len, t->lit + p->off, (char)v->kind);
            return M2A_ERR_TEMPLATE;
        }
        break;
    }
    }
    if (out->len == before) {
        m2a_err_setf(why, whylen, "a placeholder of the template is empty for routing key '%.*s'",
                     (int)(key_len > 100 ? 100 : key_len), key);
        return M2A_ERR_TEMPLATE;
    }
    return 0;
}

int m2a_downlink_topic_render(const struct m2a_downlink_topic *t, const char *key, size_t key_len,
                              const amqp_table_t *headers, struct m2a_buf *out, char *why,
                              size_t whylen)
{
    m2a_buf_reset(out);
    for (size_t i = 0; i < t->nparts; i++) {
        int rc = render_part(t, &t->parts[i], key, key_len, headers, out, why, whylen);
        if (rc)
            return rc;
    }
    const char *topic = m2a_buf_cstr(out);
    if (out->len > M2A_MQTT_STRING_MAX) {
        m2a_err_setf(why, whylen,
                     "the topic would be %zu bytes, more than the %d of an MQTT string", out->len,
                     M2A_MQTT_STRING_MAX);
        return M2A_ERR_TOPIC;
    }
    if (m2a_topic_validate(topic, out->len) != 0 ||
        mosquitto_validate_utf8(topic, (int)out->len) != MOSQ_ERR_SUCCESS) {
        m2a_err_setf(why, whylen,
                     "'%.100s' is not a valid topic name (a wildcard, a NUL or not UTF-8)", topic);
        return M2A_ERR_TOPIC;
    }
    return 0;
}

static bool text_is(const amqp_bytes_t *b, const char *s)
{
    return b->len == strlen(s) && !memcmp(b->bytes, s, b->len);
}

bool m2a_downlink_topic_retain_header(const amqp_table_t *headers, bool dflt)
{
    const amqp_field_value_t *v = find_header(headers, "x-mqtt-retain", 13);
    if (!v)
        return dflt;
    switch (v->kind) {
    case AMQP_FIELD_KIND_BOOLEAN:
        return v->value.boolean != 0;
    case AMQP_FIELD_KIND_I8:
    case AMQP_FIELD_KIND_U8:
        return v->value.u8 != 0;
    case AMQP_FIELD_KIND_I16:
    case AMQP_FIELD_KIND_U16:
        return v->value.u16 != 0;
    case AMQP_FIELD_KIND_I32:
    case AMQP_FIELD_KIND_U32:
        return v->value.u32 != 0;
    case AMQP_FIELD_KIND_I64:
    case AMQP_FIELD_KIND_U64:
        return v->value.u64 != 0;
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES:
        if (text_is(&v->value.bytes, "true") || text_is(&v->value.bytes, "1"))
            return true;
        if (text_is(&v->value.bytes, "false") || text_is(&v->value.bytes, "0"))
            return false;
        return dflt;
    default:
        return dflt;
    }
}
