/* props.c - MQTT 5 properties <-> AMQP 0-9-1, both directions (props.h),
 * and the blob the uplink direction carries through the spool.
 *
 * Pure functions, no shared state, no logging. The blob (all integers
 * little-endian), version 1:
 *
 *   u8   version (1)
 *   u8   flags: M2A_PROPS_* bits, others zero
 *   [u32 Message Expiry Interval, seconds]        with M2A_PROPS_EXPIRY
 *   [u8  content type length    + bytes (ASCII)]  with M2A_PROPS_CONTENT_TYPE
 *   [u16 response topic length  + bytes]          with M2A_PROPS_RESPONSE_TOPIC
 *   [u16 correlation length     + bytes]          with M2A_PROPS_CORRELATION
 *   u16  user property count, then per property:
 *          u8 name length + bytes, u16 value length + bytes
 *          (names sorted bytewise, unique)
 *
 * and nothing after. A message with nothing to map has no blob at all (the
 * envelope's properties length 0), so the blob is never just "1 0 0 0".
 * The original expiry travels, not a deadline: the envelope's timestamp is
 * when it was received, and the remaining time is computed at publish. */
#include "mqtt2amqp/props.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mqtt_protocol.h>

#include "mqtt2amqp/amqp_value.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/reader.h"

#define BLOB_VERSION 1
#define FLAGS_ALL                                                                                  \
    (M2A_PROPS_EXPIRY | M2A_PROPS_CONTENT_TYPE | M2A_PROPS_RESPONSE_TOPIC | M2A_PROPS_CORRELATION)
#define SHORTSTR_MAX 255
#define MQTT_STR_MAX 65535
#define HDR_REPLY_TO "x-reply-to-topic"
#define HDR_CORR     "x-correlation-id"

/* ---- helpers --------------------------------------------------------------------------- */

static int str_cmp(struct m2a_str a, struct m2a_str b)
{
    size_t n = a.len < b.len ? a.len : b.len;
    int c = n ? memcmp(a.ptr, b.ptr, n) : 0;
    if (c != 0)
        return c;
    return a.len < b.len ? -1 : a.len > b.len;
}

static bool is_ascii(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] >= 0x80)
            return false;
    return true;
}

/* Well-formed UTF-8 (no overlong forms, no surrogates, <= U+10FFFF) without
 * NUL: what RabbitMQ calls a valid short string's content. */
static bool is_utf8_no_nul(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c == 0)
            return false;
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t k;
        unsigned cp, min;
        if ((c & 0xE0) == 0xC0)
            k = 1, cp = c & 0x1F, min = 0x80;
        else if ((c & 0xF0) == 0xE0)
            k = 2, cp = c & 0x0F, min = 0x800;
        else if ((c & 0xF8) == 0xF0)
            k = 3, cp = c & 0x07, min = 0x10000;
        else
            return false;
        if (n - i <= k)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += k + 1;
    }
    return true;
}

static void put_le(struct m2a_buf *b, uint64_t v, int bytes)
{
    unsigned char t[8];
    for (int i = 0; i < bytes; i++)
        t[i] = (unsigned char)(v >> (8 * i));
    m2a_buf_append(b, t, (size_t)bytes);
}

static void put_str(struct m2a_buf *b, struct m2a_str s, int len_bytes)
{
    put_le(b, s.len, len_bytes);
    if (s.len)
        m2a_buf_append(b, s.ptr, s.len);
}

/* ---- the blob -------------------------------------------------------------------------- */

void m2a_props_encode(const struct m2a_props *p, struct m2a_buf *out)
{
    if (p->present == 0 && p->nuser == 0)
        return;
    put_le(out, BLOB_VERSION, 1);
    put_le(out, p->present & FLAGS_ALL, 1);
    if (p->present & M2A_PROPS_EXPIRY)
        put_le(out, p->expiry_s, 4);
    if (p->present & M2A_PROPS_CONTENT_TYPE)
        put_str(out, p->content_type, 1);
    if (p->present & M2A_PROPS_RESPONSE_TOPIC)
        put_str(out, p->response_topic, 2);
    if (p->present & M2A_PROPS_CORRELATION)
        put_str(out, p->correlation, 2);
    put_le(out, p->nuser, 2);
    for (size_t i = 0; i < p->nuser; i++) {
        put_str(out, p->user[i].key, 1);
        put_str(out, p->user[i].value, 2);
    }
}

#define USER_MIN (1 + 2) /* the smallest user property in the blob */

int m2a_props_decode(const void *data, size_t len, struct m2a_props *p, struct m2a_header **buf,
                     size_t *cap)
{
    memset(p, 0, sizeof(*p));
    if (!data)
        return M2A_ERR_CORRUPT;
    struct m2a_reader r = {data, (const unsigned char *)data + len, false};
    uint64_t version = m2a_reader_le(&r, 1), flags = m2a_reader_le(&r, 1);
    if (r.bad || version != BLOB_VERSION || (flags & ~(uint64_t)FLAGS_ALL))
        return M2A_ERR_CORRUPT;
    p->present = (unsigned)flags;
    if (flags & M2A_PROPS_EXPIRY)
        p->expiry_s = (uint32_t)m2a_reader_le(&r, 4);
    if (flags & M2A_PROPS_CONTENT_TYPE)
        p->content_type = m2a_reader_str(&r, 1);
    if (flags & M2A_PROPS_RESPONSE_TOPIC)
        p->response_topic = m2a_reader_str(&r, 2);
    if (flags & M2A_PROPS_CORRELATION)
        p->correlation = m2a_reader_str(&r, 2);
    size_t n = (size_t)m2a_reader_le(&r, 2);
    /* A count the rest cannot hold is refused before anything is allocated. */
    if (r.bad || n > (size_t)(r.end - r.p) / USER_MIN || (flags == 0 && n == 0))
        goto corrupt;
    if (n > *cap) {
        *buf = xrealloc(*buf, n * sizeof(**buf));
        *cap = n;
    }
    for (size_t i = 0; i < n; i++) {
        (*buf)[i].key = m2a_reader_str(&r, 1);
        (*buf)[i].value = m2a_reader_str(&r, 2);
        if (!r.bad && i > 0 && str_cmp((*buf)[i - 1].key, (*buf)[i].key) >= 0)
            goto corrupt; /* not canonical: the headers table would repeat a name */
    }
    if (r.bad || r.p != r.end)
        goto corrupt;
    p->nuser = n;
    p->user = n ? *buf : NULL;
    return 0;
corrupt:
    memset(p, 0, sizeof(*p));
    return M2A_ERR_CORRUPT;
}

/* ---- MQTT 5 -> blob -------------------------------------------------------------------- */

struct user_prop {
    char *name, *value; /* libmosquitto's copies */
    size_t idx;         /* arrival order: the first of equal names wins */
};

static int user_cmp(const void *a, const void *b)
{
    const struct user_prop *x = a, *y = b;
    struct m2a_str sx = {x->name, strlen(x->name)}, sy = {y->name, strlen(y->name)};
    int c = str_cmp(sx, sy);
    if (c != 0)
        return c;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

size_t m2a_props_from_mqtt(const mosquitto_property *list, struct m2a_buf *out)
{
    if (!list)
        return 0;
    struct m2a_props p = {0};
    char *ct = NULL, *rt = NULL;
    void *corr = NULL;
    uint16_t corr_len = 0;
    struct user_prop *up = NULL;
    size_t nup = 0, upcap = 0;
    for (const mosquitto_property *q = list; q; q = mosquitto_property_next(q)) {
        int id = mosquitto_property_identifier(q);
        char *name = NULL, *value = NULL;
        switch (id) {
        case MQTT_PROP_MESSAGE_EXPIRY_INTERVAL:
            if (!(p.present & M2A_PROPS_EXPIRY) &&
                mosquitto_property_read_int32(q, id, &p.expiry_s, false))
                p.present |= M2A_PROPS_EXPIRY;
            break;
        case MQTT_PROP_CONTENT_TYPE:
            if (!ct)
                mosquitto_property_read_string(q, id, &ct, false);
            break;
        case MQTT_PROP_RESPONSE_TOPIC:
            if (!rt)
                mosquitto_property_read_string(q, id, &rt, false);
            break;
        case MQTT_PROP_CORRELATION_DATA:
            if (!corr && mosquitto_property_read_binary(q, id, &corr, &corr_len, false) && !corr)
                corr = xstrdup(""); /* empty but present */
            break;
        case MQTT_PROP_USER_PROPERTY:
            if (!mosquitto_property_read_string_pair(q, id, &name, &value, false))
                break;
            if (strlen(name) > SHORTSTR_MAX || nup == UINT16_MAX) {
                free(name);
                free(value);
                break;
            }
            if (nup == upcap) {
                upcap = upcap ? 2 * upcap : 8;
                up = xrealloc(up, upcap * sizeof(*up));
            }
            up[nup] = (struct user_prop){name, value, nup};
            nup++;
            break;
        default:
            break;
        }
    }
    if (ct && strlen(ct) <= SHORTSTR_MAX && is_ascii(ct, strlen(ct))) {
        p.present |= M2A_PROPS_CONTENT_TYPE;
        p.content_type = (struct m2a_str){ct, strlen(ct)};
    }
    if (rt) {
        p.present |= M2A_PROPS_RESPONSE_TOPIC;
        p.response_topic = (struct m2a_str){rt, strlen(rt)};
    }
    if (corr) {
        p.present |= M2A_PROPS_CORRELATION;
        p.correlation = (struct m2a_str){corr, corr_len};
    }
    struct m2a_header *user = NULL;
    if (nup) {
        qsort(up, nup, sizeof(*up), user_cmp);
        user = xmalloc(nup * sizeof(*user));
        for (size_t i = 0; i < nup; i++) {
            struct m2a_str k = {up[i].name, strlen(up[i].name)};
            if (p.nuser && str_cmp(user[p.nuser - 1].key, k) == 0)
                continue; /* a later duplicate */
            user[p.nuser].key = k;
            user[p.nuser].value = (struct m2a_str){up[i].value, strlen(up[i].value)};
            p.nuser++;
        }
        p.user = user;
    }
    size_t before = out->len;
    m2a_props_encode(&p, out);
    free(user);
    for (size_t i = 0; i < nup; i++) {
        free(up[i].name);
        free(up[i].value);
    }
    free(up);
    free(corr);
    free(rt);
    free(ct);
    return out->len - before;
}

/* ---- blob -> AMQP ---------------------------------------------------------------------- */

void m2a_props_amqp_free(struct m2a_props_amqp *a)
{
    if (!a)
        return;
    free(a->headers);
    a->headers = NULL;
    a->headers_cap = 0;
    m2a_buf_free(&a->topic);
}

static void expiration(const struct m2a_props *p, uint64_t received_ms, uint64_t now_ms,
                       struct m2a_props_amqp *out)
{
    uint64_t ttl = (uint64_t)p->expiry_s * 1000u;
    uint64_t waited = now_ms > received_ms ? now_ms - received_ms : 0;
    uint64_t left = ttl > waited ? ttl - waited : 0;
    if (left > M2A_PROPS_EXPIRATION_MAX_MS)
        left = M2A_PROPS_EXPIRATION_MAX_MS;
    out->has_expiration = true;
    snprintf(out->expiration, sizeof(out->expiration), "%" PRIu64, left);
}

void m2a_props_to_amqp(const struct m2a_props *p, uint64_t received_ms, uint64_t now_ms,
                       bool with_expiry, struct m2a_props_amqp *out)
{
    out->content_type = (struct m2a_str){"", 0};
    out->has_correlation_id = false;
    out->correlation_id = (struct m2a_str){"", 0};
    out->has_expiration = false;
    out->expiration[0] = '\0';
    out->nheaders = 0;
    m2a_buf_reset(&out->topic);

    if ((p->present & M2A_PROPS_EXPIRY) && with_expiry)
        expiration(p, received_ms, now_ms, out);
    if ((p->present & M2A_PROPS_CONTENT_TYPE) && p->content_type.len <= SHORTSTR_MAX &&
        is_ascii(p->content_type.ptr, p->content_type.len))
        out->content_type = p->content_type;

    /* The two headers of our own, in name order: x-correlation-id < x-reply-to-topic. */
    struct m2a_header own[2];
    size_t nown = 0;
    if (p->present & M2A_PROPS_CORRELATION) {
        if (p->correlation.len <= SHORTSTR_MAX &&
            is_utf8_no_nul((const unsigned char *)p->correlation.ptr, p->correlation.len)) {
            out->has_correlation_id = true;
            out->correlation_id = p->correlation;
        } else {
            own[nown++] = (struct m2a_header){{HDR_CORR, strlen(HDR_CORR)}, p->correlation};
        }
    }
    if (p->present & M2A_PROPS_RESPONSE_TOPIC) {
        m2a_buf_reserve(&out->topic, p->response_topic.len + 1);
        for (size_t i = 0; i < p->response_topic.len; i++) {
            char c = p->response_topic.ptr[i];
            m2a_buf_append_char(&out->topic, c == '/' ? '.' : c == '.' ? '/' : c);
        }
        struct m2a_str v = {(const char *)out->topic.data, out->topic.len};
        if (!v.ptr)
            v.ptr = "";
        own[nown++] = (struct m2a_header){{HDR_REPLY_TO, strlen(HDR_REPLY_TO)}, v};
    }

    size_t need = nown + p->nuser;
    if (need > out->headers_cap) {
        out->headers = xrealloc(out->headers, need * sizeof(*out->headers));
        out->headers_cap = need;
    }
    /* Merge two sorted lists; on a name clash our header wins. */
    size_t i = 0, j = 0, n = 0;
    while (i < nown || j < p->nuser) {
        if (j == p->nuser) {
            out->headers[n++] = own[i++];
            continue;
        }
        if (i == nown) {
            out->headers[n++] = p->user[j++];
            continue;
        }
        int c = str_cmp(own[i].key, p->user[j].key);
        if (c <= 0) {
            if (c == 0)
                j++;
            out->headers[n++] = own[i++];
        } else {
            out->headers[n++] = p->user[j++];
        }
    }
    out->nheaders = n;
}

/* ---- AMQP -> MQTT 5 -------------------------------------------------------------------- */

/* b as a C string in s (reset first); false when b holds a NUL. */
static bool cstr(struct m2a_buf *s, amqp_bytes_t b)
{
    m2a_buf_reset(s);
    if (b.len && memchr(b.bytes, 0, b.len))
        return false;
    m2a_buf_append(s, b.bytes, b.len);
    m2a_buf_cstr(s);
    return true;
}

/* s holds what an MQTT string may carry (libmosquitto's rule: UTF-8
 * without NUL or control characters; it does not check every property it
 * adds itself). */
static bool mqtt_ok(const struct m2a_buf *s)
{
    return s->len <= MQTT_STR_MAX && mosquitto_validate_utf8(s->len ? (const char *)s->data : "",
                                                             (int)s->len) == MOSQ_ERR_SUCCESS;
}

static bool prefixed(amqp_bytes_t k, const char *prefix)
{
    size_t n = strlen(prefix);
    return k.len >= n && memcmp(k.bytes, prefix, n) == 0;
}

static bool named(amqp_bytes_t k, const char *name)
{
    return k.len == strlen(name) && memcmp(k.bytes, name, k.len) == 0;
}

/* Headers that describe the bridge's or RabbitMQ's handling, not the
 * sender's message: never user properties. */
static bool bridge_header(amqp_bytes_t k)
{
    return prefixed(k, "x-mqtt-") || prefixed(k, "x-death") || prefixed(k, "x-first-death-") ||
           prefixed(k, "x-last-death-");
}

/* The header value as a string in s (amqp_value.h's rule, byte arrays
 * dropped as the plugin does); false when it has none or it cannot be an
 * MQTT string (too long, a NUL). */
static bool value_str(const amqp_field_value_t *v, struct m2a_buf *s)
{
    m2a_buf_reset(s);
    if (!m2a_amqp_value_text(v, 0, s) || s->len > MQTT_STR_MAX ||
        (s->len && memchr(s->data, 0, s->len)))
        return false;
    m2a_buf_cstr(s);
    return true;
}

/* Parses an AMQP expiration (decimal milliseconds, digits only). */
static bool parse_ms(amqp_bytes_t b, uint64_t *ms)
{
    const unsigned char *s = b.bytes;
    if (b.len == 0 || b.len > 19)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < b.len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *ms = v;
    return true;
}

static const amqp_field_value_t *header(const amqp_table_t *h, const char *name)
{
    for (int i = 0; h && i < h->num_entries; i++)
        if (named(h->entries[i].key, name))
            return &h->entries[i].value;
    return NULL;
}

mosquitto_property *m2a_props_to_mqtt(const amqp_basic_properties_t *p)
{
    if (!p)
        return NULL;
    mosquitto_property *list = NULL;
    struct m2a_buf k = {0}, v = {0};
    const amqp_table_t *h = (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? &p->headers : NULL;

    if ((p->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG) && cstr(&v, p->content_type) && mqtt_ok(&v))
        mosquitto_property_add_string(&list, MQTT_PROP_CONTENT_TYPE, m2a_buf_cstr(&v));

    const amqp_field_value_t *xcorr = header(h, HDR_CORR);
    bool corr_used = false;
    if (p->_flags & AMQP_BASIC_CORRELATION_ID_FLAG) {
        mosquitto_property_add_binary(&list, MQTT_PROP_CORRELATION_DATA, p->correlation_id.bytes,
                                      (uint16_t)p->correlation_id.len);
    } else if (xcorr && xcorr->kind == AMQP_FIELD_KIND_UTF8 &&
               xcorr->value.bytes.len <= MQTT_STR_MAX) {
        mosquitto_property_add_binary(&list, MQTT_PROP_CORRELATION_DATA, xcorr->value.bytes.bytes,
                                      (uint16_t)xcorr->value.bytes.len);
        corr_used = true;
    }

    const amqp_field_value_t *rt = header(h, HDR_REPLY_TO);
    if (rt && rt->kind == AMQP_FIELD_KIND_UTF8 && rt->value.bytes.len <= MQTT_STR_MAX &&
        cstr(&v, rt->value.bytes) && mqtt_ok(&v)) {
        for (size_t i = 0; i < v.len; i++)
            v.data[i] = v.data[i] == '.' ? '/' : v.data[i] == '/' ? '.' : v.data[i];
        if (v.len && mosquitto_pub_topic_check2((const char *)v.data, v.len) == MOSQ_ERR_SUCCESS)
            mosquitto_property_add_string(&list, MQTT_PROP_RESPONSE_TOPIC, m2a_buf_cstr(&v));
    }

    uint64_t ms;
    if ((p->_flags & AMQP_BASIC_EXPIRATION_FLAG) && parse_ms(p->expiration, &ms)) {
        uint64_t s = ms < 1000 ? 1 : ms / 1000;
        mosquitto_property_add_int32(&list, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL,
                                     s > UINT32_MAX ? UINT32_MAX : (uint32_t)s);
    }

    for (int i = 0; h && i < h->num_entries; i++) {
        const amqp_table_entry_t *e = &h->entries[i];
        if (bridge_header(e->key) || named(e->key, HDR_REPLY_TO) ||
            (corr_used && named(e->key, HDR_CORR)))
            continue;
        if (e->key.len > MQTT_STR_MAX || !cstr(&k, e->key) || !value_str(&e->value, &v) ||
            !mqtt_ok(&k) || !mqtt_ok(&v))
            continue;
        mosquitto_property_add_string_pair(&list, MQTT_PROP_USER_PROPERTY, m2a_buf_cstr(&k),
                                           m2a_buf_cstr(&v));
    }
    m2a_buf_free(&k);
    m2a_buf_free(&v);
    return list;
}
