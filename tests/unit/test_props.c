/* test_props.c - the MQTT 5 <-> AMQP property mapping (props.h), table
 * driven: one row per property and direction, with the edge cases
 * (correlation data too long, not UTF-8, with NUL; duplicate user property
 * names; expiry 0, 1, remaining, expired in the spool, huge; expiration
 * strings that are not numbers), and the blob's decoder (round trip, every
 * truncation, non-canonical input, random damage).
 *
 * Each row renders what the mapping produced as one string (non-printable
 * bytes as \xNN) and compares it with the expected one, so a failure shows
 * the whole result. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mqtt_protocol.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/props.h"
#include "check_main.h"

static void esc(struct m2a_buf *o, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        if (s[i] >= 0x20 && s[i] < 0x7f && s[i] != '\\') {
            m2a_buf_append_char(o, (char)s[i]);
        } else {
            char t[8];
            snprintf(t, sizeof(t), "\\x%02x", s[i]);
            m2a_buf_append_str(o, t);
        }
    }
}

/* ---- uplink ------------------------------------------------------------------------------ */

struct up_row {
    const char *name;
    bool has_expiry;
    uint32_t expiry_s;
    uint64_t waited_ms; /* between receipt and publish */
    bool dead_letter;   /* published as a dead letter: no expiration */
    const char *ct;     /* Content Type */
    const char *rt;     /* Response Topic */
    const char *corr;   /* Correlation Data, corr_len bytes */
    size_t corr_len;
    const char *user[10]; /* name, value, ..., NULL */
    const char *want;     /* the rendering of the AMQP side; "" for no blob at all */
};

#define LONG255                                                                                    \
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"                             \
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"                             \
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"                             \
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde"

static const struct up_row up_rows[] = {
    {.name = "no properties", .want = ""},
    {.name = "expiry 60 s, published at once",
     .has_expiry = true,
     .expiry_s = 60,
     .want = "exp=60000"},
    {.name = "expiry 1 s", .has_expiry = true, .expiry_s = 1, .want = "exp=1000"},
    {.name = "expiry: the remaining time",
     .has_expiry = true,
     .expiry_s = 1,
     .waited_ms = 400,
     .want = "exp=600"},
    {.name = "expiry ran out in the spool",
     .has_expiry = true,
     .expiry_s = 10,
     .waited_ms = 20000,
     .want = "exp=0"},
    {.name = "expiry 0", .has_expiry = true, .expiry_s = 0, .want = "exp=0"},
    {.name = "huge expiry clamped to RabbitMQ's maximum",
     .has_expiry = true,
     .expiry_s = UINT32_MAX,
     .want = "exp=4294967295"},
    {.name = "a dead letter does not expire",
     .has_expiry = true,
     .expiry_s = 5,
     .dead_letter = true,
     .want = "-"},
    {.name = "content type", .ct = "application/json", .want = "ct=application/json"},
    {.name = "content type not ASCII: dropped", .ct = "text/\xc3\xa9", .want = ""},
    {.name = "content type of 256 bytes: dropped", .ct = LONG255 "f", .want = ""},
    {.name = "content type of 255 bytes", .ct = LONG255, .want = "ct=" LONG255},
    {.name = "response topic to AMQP form",
     .rt = "devices/d1/reply.v2",
     .want = "h:x-reply-to-topic=devices.d1.reply/v2"},
    {.name = "correlation data as correlation_id",
     .corr = "req-42",
     .corr_len = 6,
     .want = "cid=req-42"},
    {.name = "empty correlation data", .corr = "", .corr_len = 0, .want = "cid="},
    {.name = "correlation data of 255 bytes",
     .corr = LONG255,
     .corr_len = 255,
     .want = "cid=" LONG255},
    {.name = "correlation data of 256 bytes: header",
     .corr = LONG255 "f",
     .corr_len = 256,
     .want = "h:x-correlation-id=" LONG255 "f"},
    {.name = "correlation data with NUL: header",
     .corr = "a\0b",
     .corr_len = 3,
     .want = "h:x-correlation-id=a\\x00b"},
    {.name = "correlation data not UTF-8: header",
     .corr = "\xff\xfe",
     .corr_len = 2,
     .want = "h:x-correlation-id=\\xff\\xfe"},
    {.name = "correlation data UTF-8",
     .corr = "\xc3\xa9t\xc3\xa9",
     .corr_len = 5,
     .want = "cid=\\xc3\\xa9t\\xc3\\xa9"},
    {.name = "user properties sorted, first duplicate wins",
     .user = {"b", "1", "a", "2", "b", "3", "c", "", NULL},
     .want = "h:a=2|h:b=1|h:c="},
    {.name = "user property name of 255 bytes kept, 256 dropped",
     .user = {LONG255, "v", LONG255 "f", "w", NULL},
     .want = "h:" LONG255 "=v"},
    {.name = "our headers win over user properties of the same name",
     .rt = "a/b",
     .corr = "\xff",
     .corr_len = 1,
     .user = {"x-reply-to-topic", "evil", "x-correlation-id", "evil", "z", "1", NULL},
     .want = "h:x-correlation-id=\\xff|h:x-reply-to-topic=a.b|h:z=1"},
    {.name = "everything",
     .has_expiry = true,
     .expiry_s = 30,
     .waited_ms = 1500,
     .ct = "text/plain",
     .rt = "r/1",
     .corr = "c1",
     .corr_len = 2,
     .user = {"k", "v", NULL},
     .want = "ct=text/plain|cid=c1|exp=28500|h:k=v|h:x-reply-to-topic=r.1"},
};

static mosquitto_property *up_list(const struct up_row *r)
{
    mosquitto_property *l = NULL;
    /* Properties the mapping ignores come first: they must not matter. */
    if (r->has_expiry || r->ct || r->rt || r->corr || r->user[0]) {
        ck_assert_int_eq(mosquitto_property_add_byte(&l, MQTT_PROP_PAYLOAD_FORMAT_INDICATOR, 1), 0);
    }
    if (r->has_expiry)
        ck_assert_int_eq(
            mosquitto_property_add_int32(&l, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL, r->expiry_s), 0);
    if (r->ct)
        ck_assert_int_eq(mosquitto_property_add_string(&l, MQTT_PROP_CONTENT_TYPE, r->ct), 0);
    if (r->rt)
        ck_assert_int_eq(mosquitto_property_add_string(&l, MQTT_PROP_RESPONSE_TOPIC, r->rt), 0);
    if (r->corr)
        ck_assert_int_eq(mosquitto_property_add_binary(&l, MQTT_PROP_CORRELATION_DATA, r->corr,
                                                       (uint16_t)r->corr_len),
                         0);
    for (size_t i = 0; r->user[i]; i += 2)
        ck_assert_int_eq(mosquitto_property_add_string_pair(&l, MQTT_PROP_USER_PROPERTY, r->user[i],
                                                            r->user[i + 1]),
                         0);
    return l;
}

static void render_amqp(const struct m2a_props_amqp *a, struct m2a_buf *o)
{
    m2a_buf_reset(o);
    const char *sep = "";
    if (a->content_type.len) {
        m2a_buf_append_str(o, "ct=");
        esc(o, a->content_type.ptr, a->content_type.len);
        sep = "|";
    }
    if (a->has_correlation_id) {
        m2a_buf_append_str(o, sep);
        m2a_buf_append_str(o, "cid=");
        esc(o, a->correlation_id.ptr, a->correlation_id.len);
        sep = "|";
    }
    if (a->has_expiration) {
        m2a_buf_append_str(o, sep);
        m2a_buf_append_str(o, "exp=");
        m2a_buf_append_str(o, a->expiration);
        sep = "|";
    }
    for (size_t i = 0; i < a->nheaders; i++) {
        m2a_buf_append_str(o, sep);
        m2a_buf_append_str(o, "h:");
        esc(o, a->headers[i].key.ptr, a->headers[i].key.len);
        m2a_buf_append_char(o, '=');
        esc(o, a->headers[i].value.ptr, a->headers[i].value.len);
        sep = "|";
    }
    if (o->len == 0)
        m2a_buf_append_char(o, '-');
    m2a_buf_cstr(o);
}

START_TEST(uplink_table)
{
    const struct up_row *r = &up_rows[_i];
    mosquitto_property *l = up_list(r);
    struct m2a_buf blob = {0}, o = {0};
    m2a_buf_append(&blob, "pre", 3); /* appends: the length returned is what was added */
    size_t n = m2a_props_from_mqtt(l, &blob);
    ck_assert_uint_eq(n, blob.len - 3);
    if (r->want[0] == '\0') {
        ck_assert_msg(n == 0, "%s: a blob of %zu bytes for nothing to map", r->name, n);
        goto out;
    }
    ck_assert_msg(n > 0, "%s: no blob", r->name);
    /* From an exactly sized copy, so that ASan sees an overread. */
    unsigned char *copy = malloc(n);
    memcpy(copy, blob.data + 3, n);
    struct m2a_props p;
    struct m2a_header *ub = NULL;
    size_t ucap = 0;
    ck_assert_int_eq(m2a_props_decode(copy, n, &p, &ub, &ucap), 0);
    struct m2a_props_amqp a = {0};
    uint64_t received = 1700000000000ull;
    m2a_props_to_amqp(&p, received, received + r->waited_ms, !r->dead_letter, &a);
    render_amqp(&a, &o);
    ck_assert_msg(strcmp((const char *)o.data, r->want) == 0, "%s:\n got  %s\n want %s", r->name,
                  (const char *)o.data, r->want);
    /* The canonical form re-encodes to the same bytes. */
    struct m2a_buf again = {0};
    m2a_props_encode(&p, &again);
    ck_assert_uint_eq(again.len, n);
    ck_assert_int_eq(memcmp(again.data, copy, n), 0);
    m2a_buf_free(&again);
    m2a_props_amqp_free(&a);
    free(ub);
    free(copy);
out:
    mosquitto_property_free_all(&l);
    m2a_buf_free(&blob);
    m2a_buf_free(&o);
}
END_TEST

START_TEST(mqtt_311_and_null_lists_cost_nothing)
{
    struct m2a_buf b = {0};
    ck_assert_uint_eq(m2a_props_from_mqtt(NULL, &b), 0);
    mosquitto_property *l = NULL;
    mosquitto_property_add_byte(&l, MQTT_PROP_PAYLOAD_FORMAT_INDICATOR, 1);
    ck_assert_uint_eq(m2a_props_from_mqtt(l, &b), 0); /* nothing mappable: no blob */
    ck_assert_uint_eq(b.len, 0);
    mosquitto_property_free_all(&l);
    m2a_buf_free(&b);
}
END_TEST

/* ---- the blob's decoder ---------------------------------------------------------------- */

static void sample_blob(struct m2a_buf *b)
{
    mosquitto_property *l = up_list(&up_rows[sizeof(up_rows) / sizeof(*up_rows) - 1]);
    mosquitto_property_add_string_pair(&l, MQTT_PROP_USER_PROPERTY, "a", "b");
    m2a_props_from_mqtt(l, b);
    mosquitto_property_free_all(&l);
}

START_TEST(blob_layout_is_pinned)
{
    mosquitto_property *l = NULL;
    mosquitto_property_add_int32(&l, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL, 0x01020304);
    mosquitto_property_add_string(&l, MQTT_PROP_CONTENT_TYPE, "t");
    mosquitto_property_add_string(&l, MQTT_PROP_RESPONSE_TOPIC, "r");
    mosquitto_property_add_binary(&l, MQTT_PROP_CORRELATION_DATA, "c", 1);
    mosquitto_property_add_string_pair(&l, MQTT_PROP_USER_PROPERTY, "k", "v");
    struct m2a_buf b = {0};
    m2a_props_from_mqtt(l, &b);
    static const unsigned char want[] = {1, 0x0f, 4,   3, 2, 1, 1,   't', 1, 0,  'r',
                                         1, 0,    'c', 1, 0, 1, 'k', 1,   0, 'v'};
    ck_assert_uint_eq(b.len, sizeof(want));
    ck_assert_int_eq(memcmp(b.data, want, sizeof(want)), 0);
    mosquitto_property_free_all(&l);
    m2a_buf_free(&b);
}
END_TEST

static int decode_copy(const void *d, size_t n, struct m2a_props *p, struct m2a_header **ub,
                       size_t *ucap)
{
    unsigned char *c = malloc(n ? n : 1);
    if (n)
        memcpy(c, d, n);
    int rc = m2a_props_decode(c, n, p, ub, ucap);
    free(c);
    return rc;
}

START_TEST(blob_truncation_trailing_and_non_canonical_rejected)
{
    struct m2a_buf b = {0};
    sample_blob(&b);
    struct m2a_props p;
    struct m2a_header *ub = NULL;
    size_t ucap = 0;
    ck_assert_int_eq(decode_copy(b.data, b.len, &p, &ub, &ucap), 0);
    ck_assert_uint_eq(p.nuser, 2);
    for (size_t len = 0; len < b.len; len++)
        ck_assert_msg(decode_copy(b.data, len, &p, &ub, &ucap) == M2A_ERR_CORRUPT,
                      "truncation to %zu accepted", len);
    m2a_buf_append_char(&b, 0);
    ck_assert_int_eq(decode_copy(b.data, b.len, &p, &ub, &ucap), M2A_ERR_CORRUPT);
    ck_assert_int_eq(m2a_props_decode(NULL, 0, &p, &ub, &ucap), M2A_ERR_CORRUPT);

    static const unsigned char empty[] = {1, 0, 0, 0};   /* nothing: never written */
    static const unsigned char version[] = {2, 0, 0, 0}; /* unknown version */
    static const unsigned char flag[] = {1, 0x10, 0, 0}; /* unknown flag */
    static const unsigned char unsorted[] = {1, 0, 2, 0, 1, 'b', 0, 0, 1, 'a', 0, 0};
    static const unsigned char dup[] = {1, 0, 2, 0, 1, 'a', 0, 0, 1, 'a', 0, 0};
    static const unsigned char count[] = {1, 0, 0xff, 0xff, 1, 'a', 0, 0};
    static const unsigned char sorted[] = {1, 0, 2, 0, 1, 'a', 0, 0, 2, 'a', 'a', 0, 0};
    ck_assert_int_eq(decode_copy(empty, sizeof(empty), &p, &ub, &ucap), M2A_ERR_CORRUPT);
    ck_assert_int_eq(decode_copy(version, sizeof(version), &p, &ub, &ucap), M2A_ERR_CORRUPT);
    ck_assert_int_eq(decode_copy(flag, sizeof(flag), &p, &ub, &ucap), M2A_ERR_CORRUPT);
    ck_assert_int_eq(decode_copy(unsorted, sizeof(unsorted), &p, &ub, &ucap), M2A_ERR_CORRUPT);
    ck_assert_int_eq(decode_copy(dup, sizeof(dup), &p, &ub, &ucap), M2A_ERR_CORRUPT);
    ck_assert_int_eq(decode_copy(count, sizeof(count), &p, &ub, &ucap), M2A_ERR_CORRUPT);
    ck_assert_uint_le(ucap, 2); /* the impossible count allocated nothing */
    ck_assert_int_eq(decode_copy(sorted, sizeof(sorted), &p, &ub, &ucap), 0);
    free(ub);
    m2a_buf_free(&b);
}
END_TEST

START_TEST(blob_random_damage_never_crashes)
{
    struct m2a_buf b = {0};
    sample_blob(&b);
    struct m2a_props p;
    struct m2a_header *ub = NULL;
    size_t ucap = 0;
    srand(11);
    unsigned char *d = malloc(b.len);
    struct m2a_props_amqp a = {0};
    for (int it = 0; it < 20000; it++) {
        memcpy(d, b.data, b.len);
        for (int k = 0; k < 1 + it % 4; k++)
            d[(size_t)rand() % b.len] ^= (unsigned char)(1u << (rand() % 8));
        if (m2a_props_decode(d, b.len, &p, &ub, &ucap) == 0) {
            m2a_props_to_amqp(&p, 0, 0, true, &a); /* whatever decodes maps */
            struct m2a_buf again = {0};
            m2a_props_encode(&p, &again);
            ck_assert(again.len == b.len && memcmp(again.data, d, b.len) == 0);
            m2a_buf_free(&again);
        }
    }
    m2a_props_amqp_free(&a);
    free(d);
    free(ub);
    m2a_buf_free(&b);
}
END_TEST

/* ---- downlink ---------------------------------------------------------------------------- */

struct hdr {
    const char *key;
    char kind; /* AMQP_FIELD_KIND_*; 0 ends the list */
    const char *s;
    size_t slen; /* for strings and bytes; 0: strlen(s) */
    int64_t i;
    double f;
};

struct down_row {
    const char *name;
    const char *ct;  /* content_type */
    const char *cid; /* correlation_id */
    const char *exp; /* expiration */
    struct hdr h[8];
    const char *want; /* the rendering of the MQTT properties */
};

static const struct down_row down_rows[] = {
    {.name = "nothing", .want = "-"},
    {.name = "content type", .ct = "application/json", .want = "ct=application/json"},
    {.name = "correlation_id", .cid = "req-42", .want = "corr=req-42"},
    {.name = "x-correlation-id when no correlation_id",
     .h = {{"x-correlation-id", AMQP_FIELD_KIND_UTF8, "a\0b", 3}},
     .want = "corr=a\\x00b"},
    {.name = "correlation_id wins; x-correlation-id stays a user property",
     .cid = "c",
     .h = {{"x-correlation-id", AMQP_FIELD_KIND_UTF8, "x"}},
     .want = "corr=c|up:x-correlation-id=x"},
    {.name = "x-reply-to-topic to MQTT form",
     .h = {{"x-reply-to-topic", AMQP_FIELD_KIND_UTF8, "devices.d1.reply/v2"}},
     .want = "rt=devices/d1/reply.v2"},
    {.name = "x-reply-to-topic with a wildcard: dropped",
     .h = {{"x-reply-to-topic", AMQP_FIELD_KIND_UTF8, "a.#"}},
     .want = "-"},
    {.name = "expiration 60000 ms", .exp = "60000", .want = "exp=60"},
    {.name = "expiration 1999 ms: div 1000", .exp = "1999", .want = "exp=1"},
    {.name = "expiration 500 ms: at least 1 s", .exp = "500", .want = "exp=1"},
    {.name = "expiration 0 ms: at least 1 s", .exp = "0", .want = "exp=1"},
    {.name = "expiration huge: clamped", .exp = "9999999999999999999", .want = "exp=4294967295"},
    {.name = "expiration not a number", .exp = "soon", .want = "-"},
    {.name = "expiration negative", .exp = "-5", .want = "-"},
    {.name = "expiration with a space", .exp = "5 ", .want = "-"},
    {.name = "expiration empty", .exp = "", .want = "-"},
    {.name = "headers as strings, in table order",
     .h = {{"s", AMQP_FIELD_KIND_UTF8, "text"},
           {"i", AMQP_FIELD_KIND_I32, .i = -7},
           {"l", AMQP_FIELD_KIND_I64, .i = 1234567890123},
           {"b", AMQP_FIELD_KIND_BOOLEAN, .i = 1},
           {"f", AMQP_FIELD_KIND_F64, .f = 0.5},
           {"v", AMQP_FIELD_KIND_VOID},
           {"t", AMQP_FIELD_KIND_TIMESTAMP, .i = 1700000000}},
     .want = "up:s=text|up:i=-7|up:l=1234567890123|up:b=true|up:f=0.5|up:v=|up:t=1700000000"},
    {.name = "binary, not UTF-8, NUL and control characters dropped",
     .h = {{"bin", AMQP_FIELD_KIND_BYTES, "\x01\x02", 2},
           {"bad", AMQP_FIELD_KIND_UTF8, "\xff", 1},
           {"nul", AMQP_FIELD_KIND_UTF8, "a\0b", 3},
           {"ctl", AMQP_FIELD_KIND_UTF8, "a\tb"},
           {"\xc3", AMQP_FIELD_KIND_UTF8, "bad name"},
           {"ok", AMQP_FIELD_KIND_UTF8, "yes"}},
     .want = "up:ok=yes"},
    {.name = "the bridge's and dead-lettering headers are not user properties",
     .h = {{"x-mqtt-topic", AMQP_FIELD_KIND_UTF8, "a/b"},
           {"x-mqtt-retain", AMQP_FIELD_KIND_BOOLEAN, .i = 0},
           {"x-death-reason", AMQP_FIELD_KIND_UTF8, "too large"},
           {"x-first-death-queue", AMQP_FIELD_KIND_UTF8, "q"},
           {"x-last-death-reason", AMQP_FIELD_KIND_UTF8, "expired"},
           {"x-other", AMQP_FIELD_KIND_UTF8, "kept"}},
     .want = "up:x-other=kept"},
};

static void render_mqtt(const mosquitto_property *l, struct m2a_buf *o)
{
    m2a_buf_reset(o);
    const char *sep = "";
    for (const mosquitto_property *q = l; q; q = mosquitto_property_next(q)) {
        int id = mosquitto_property_identifier(q);
        char *s = NULL, *v = NULL;
        void *bin = NULL;
        uint16_t blen = 0;
        uint32_t u = 0;
        m2a_buf_append_str(o, sep);
        sep = "|";
        switch (id) {
        case MQTT_PROP_CONTENT_TYPE:
            mosquitto_property_read_string(q, id, &s, false);
            m2a_buf_append_str(o, "ct=");
            esc(o, s, strlen(s));
            break;
        case MQTT_PROP_RESPONSE_TOPIC:
            mosquitto_property_read_string(q, id, &s, false);
            m2a_buf_append_str(o, "rt=");
            esc(o, s, strlen(s));
            break;
        case MQTT_PROP_CORRELATION_DATA:
            mosquitto_property_read_binary(q, id, &bin, &blen, false);
            m2a_buf_append_str(o, "corr=");
            esc(o, bin, blen);
            break;
        case MQTT_PROP_MESSAGE_EXPIRY_INTERVAL: {
            char t[32];
            mosquitto_property_read_int32(q, id, &u, false);
            snprintf(t, sizeof(t), "exp=%u", u);
            m2a_buf_append_str(o, t);
            break;
        }
        case MQTT_PROP_USER_PROPERTY:
            mosquitto_property_read_string_pair(q, id, &s, &v, false);
            m2a_buf_append_str(o, "up:");
            esc(o, s, strlen(s));
            m2a_buf_append_char(o, '=');
            esc(o, v, strlen(v));
            break;
        default:
            m2a_buf_append_str(o, "?");
        }
        free(s);
        free(v);
        free(bin);
    }
    if (o->len == 0)
        m2a_buf_append_char(o, '-');
    m2a_buf_cstr(o);
}

static amqp_bytes_t B(const char *s, size_t n)
{
    return (amqp_bytes_t){n ? n : strlen(s), (void *)s};
}

START_TEST(downlink_table)
{
    const struct down_row *r = &down_rows[_i];
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof(p));
    amqp_table_entry_t e[8];
    int n = 0;
    if (r->ct) {
        p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        p.content_type = B(r->ct, 0);
    }
    if (r->cid) {
        p._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        p.correlation_id = B(r->cid, 0);
    }
    if (r->exp) {
        p._flags |= AMQP_BASIC_EXPIRATION_FLAG;
        p.expiration = (amqp_bytes_t){strlen(r->exp), (void *)r->exp};
    }
    for (; r->h[n].key; n++) {
        const struct hdr *h = &r->h[n];
        e[n].key = amqp_cstring_bytes(h->key);
        e[n].value.kind = (uint8_t)h->kind;
        switch (h->kind) {
        case AMQP_FIELD_KIND_UTF8:
        case AMQP_FIELD_KIND_BYTES:
            e[n].value.value.bytes = B(h->s, h->slen);
            break;
        case AMQP_FIELD_KIND_I32:
            e[n].value.value.i32 = (int32_t)h->i;
            break;
        case AMQP_FIELD_KIND_I64:
            e[n].value.value.i64 = h->i;
            break;
        case AMQP_FIELD_KIND_TIMESTAMP:
            e[n].value.value.u64 = (uint64_t)h->i;
            break;
        case AMQP_FIELD_KIND_BOOLEAN:
            e[n].value.value.boolean = (amqp_boolean_t)h->i;
            break;
        case AMQP_FIELD_KIND_F64:
            e[n].value.value.f64 = h->f;
            break;
        default:
            break;
        }
    }
    if (n) {
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
        p.headers = (amqp_table_t){n, e};
    }
    mosquitto_property *l = m2a_props_to_mqtt(&p);
    struct m2a_buf o = {0};
    render_mqtt(l, &o);
    ck_assert_msg(strcmp((const char *)o.data, r->want) == 0, "%s:\n got  %s\n want %s", r->name,
                  (const char *)o.data, r->want);
    /* What a downlink hands to libmosquitto is a valid PUBLISH property list. */
    ck_assert_int_eq(mosquitto_property_check_all(CMD_PUBLISH, l), MOSQ_ERR_SUCCESS);
    mosquitto_property_free_all(&l);
    m2a_buf_free(&o);
    ck_assert_ptr_null(m2a_props_to_mqtt(NULL));
}
END_TEST

/* ---- both ways ----------------------------------------------------------------------- */

/* Request/reply in one process: a device's request mapped up, a worker's
 * reply carrying back the x-reply-to-topic and correlation_id it got,
 * mapped down: the device's response topic and correlation data. */
START_TEST(request_reply_round_trip)
{
    mosquitto_property *l = NULL;
    mosquitto_property_add_string(&l, MQTT_PROP_RESPONSE_TOPIC, "dev/7/resp");
    mosquitto_property_add_binary(&l, MQTT_PROP_CORRELATION_DATA, "\x01\x02", 2);
    struct m2a_buf blob = {0};
    ck_assert_uint_gt(m2a_props_from_mqtt(l, &blob), 0);
    struct m2a_props p;
    struct m2a_header *ub = NULL;
    size_t ucap = 0;
    ck_assert_int_eq(m2a_props_decode(blob.data, blob.len, &p, &ub, &ucap), 0);
    struct m2a_props_amqp a = {0};
    m2a_props_to_amqp(&p, 0, 0, true, &a);
    ck_assert(a.has_correlation_id);
    ck_assert_uint_eq(a.nheaders, 1);
    amqp_table_entry_t e = {
        .key = amqp_cstring_bytes("x-reply-to-topic"),
        .value = {.kind = AMQP_FIELD_KIND_UTF8,
                  .value.bytes = {a.headers[0].value.len, (void *)a.headers[0].value.ptr}}};
    ck_assert_int_eq(memcmp(a.headers[0].value.ptr, "dev.7.resp", 10), 0);
    amqp_basic_properties_t rp;
    memset(&rp, 0, sizeof(rp));
    rp._flags = AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG;
    rp.correlation_id = (amqp_bytes_t){a.correlation_id.len, (void *)a.correlation_id.ptr};
    rp.headers = (amqp_table_t){1, &e};
    mosquitto_property *back = m2a_props_to_mqtt(&rp);
    struct m2a_buf o = {0};
    render_mqtt(back, &o);
    ck_assert_str_eq((const char *)o.data, "corr=\\x01\\x02|rt=dev/7/resp");
    mosquitto_property_free_all(&back);
    mosquitto_property_free_all(&l);
    m2a_props_amqp_free(&a);
    free(ub);
    m2a_buf_free(&blob);
    m2a_buf_free(&o);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("props");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, uplink_table, 0, (int)(sizeof(up_rows) / sizeof(*up_rows)));
    tcase_add_test(tc, mqtt_311_and_null_lists_cost_nothing);
    tcase_add_test(tc, blob_layout_is_pinned);
    tcase_add_test(tc, blob_truncation_trailing_and_non_canonical_rejected);
    tcase_add_test(tc, blob_random_damage_never_crashes);
    tcase_add_loop_test(tc, downlink_table, 0, (int)(sizeof(down_rows) / sizeof(*down_rows)));
    tcase_add_test(tc, request_reply_round_trip);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
