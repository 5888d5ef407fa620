/* test_envelope.c - the envelope encoding: pinned layout, round trips,
 * encoded size, and a decoder that rejects every truncation, trailing
 * garbage and bad lengths, and survives random damage (run it under ASan:
 * every decode reads from an exactly sized heap copy). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/err.h"
#include "check_main.h"

static struct m2a_str S(const char *s) {
    return (struct m2a_str){s, strlen(s)};
}

static bool
str_eq(struct m2a_str a, struct m2a_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

static void assert_same(const struct m2a_envelope *a, const struct m2a_envelope *b)
{
    ck_assert_uint_eq(a->timestamp_ms, b->timestamp_ms);
    ck_assert(str_eq(a->route, b->route));
    ck_assert(str_eq(a->exchange, b->exchange));
    ck_assert(str_eq(a->routing_key, b->routing_key));
    ck_assert(str_eq(a->content_type, b->content_type));
    ck_assert(str_eq(a->topic, b->topic));
    ck_assert_uint_eq(a->qos, b->qos);
    ck_assert(a->retain == b->retain);
    ck_assert(a->persistent == b->persistent);
    ck_assert_uint_eq(a->nheaders, b->nheaders);
    for (size_t i = 0; i < a->nheaders; i++) {
        ck_assert(str_eq(a->headers[i].key, b->headers[i].key));
        ck_assert(str_eq(a->headers[i].value, b->headers[i].value));
    }
    ck_assert(str_eq(a->body, b->body));
}

/* Decodes from an exactly sized heap copy so that ASan sees any overread. */
static int decode_copy(const void *data, size_t len, struct m2a_envelope *env,
                       struct m2a_header **hb, size_t *hcap, unsigned char **copy)
{
    *copy = malloc(len ? len : 1);
    if (len)
        memcpy(*copy, data, len);
    return m2a_envelope_decode(*copy, len, env, hb, hcap);
}

static struct m2a_header hdrs[100];
static char hkeys[100][32], hvals[100][48];

static struct m2a_envelope sample(size_t nheaders)
{
    for (size_t i = 0; i < nheaders; i++) {
        snprintf(hkeys[i], sizeof(hkeys[i]), "x-h%zu", i);
        snprintf(hvals[i], sizeof(hvals[i]), "value-%zu", i * 7);
        hdrs[i].key = S(hkeys[i]);
        hdrs[i].value = (struct m2a_str){hvals[i], i == 3 ? 0 : strlen(hvals[i])};
    }
    return (struct m2a_envelope){
        .timestamp_ms = 0x0123456789abcdefull,
        .route = S("telemetry"),
        .exchange = S("amq.topic"),
        .routing_key = S("site.s1.temp"),
        .content_type = S("application/json"),
        .topic = S("site/s1/temp"),
        .qos = 1,
        .retain = true,
        .persistent = true,
        .nheaders = nheaders,
        .headers = hdrs,
        .body = {"\0binary\xff", 8},
    };
}

START_TEST(layout_is_pinned)
{
    struct m2a_header h = {S("k"), S("vv")};
    struct m2a_envelope env = {
        .timestamp_ms = 0x0102030405060708ull,
        .route = S("r"),
        .exchange = S("ex"),
        .routing_key = S("a.b"),
        .content_type = S(""),
        .topic = S("a/b"),
        .qos = 2,
        .retain = false,
        .persistent = true,
        .nheaders = 1,
        .headers = &h,
        .body = S("xyz"),
    };
    static const unsigned char want[] = {
        1,                                    /* version */
        8, 7,   6,   5,   4,   3,   2,   1,   /* timestamp, little-endian */
        2,                                    /* qos */
        2,                                    /* flags: persistent */
        1, 'r',                               /* route */
        2, 'e', 'x',                          /* exchange */
        3, 'a', '.', 'b',                     /* routing key */
        0,                                    /* content type */
        3, 0,   'a', '/', 'b',                /* topic, u16 */
        1, 0,                                 /* header count, u16 */
        1, 'k', 2,   0,   0,   0,   'v', 'v', /* key u8, value u32 */
        3, 0,   0,   0,   'x', 'y', 'z',      /* body, u32 */
    };
    struct m2a_buf b = {0};
    m2a_envelope_encode(&env, &b);
    ck_assert_uint_eq(b.len, sizeof(want));
    ck_assert(memcmp(b.data, want, sizeof(want)) == 0);
    ck_assert_uint_eq(m2a_envelope_encoded_size(&env), sizeof(want));
    m2a_buf_free(&b);
}
END_TEST

START_TEST(round_trip_with_0_to_n_headers)
{
    static const size_t counts[] = {0, 1, 2, 5, 100};
    struct m2a_header *hb = NULL;
    size_t hcap = 0;
    struct m2a_buf b = {0};
    for (size_t c = 0; c < sizeof(counts) / sizeof(*counts); c++) {
        struct m2a_envelope in = sample(counts[c]);
        /* Append after existing bytes: the size must still be what was added. */
        m2a_buf_reset(&b);
        m2a_buf_append(&b, "prefix", 6);
        m2a_envelope_encode(&in, &b);
        ck_assert_uint_eq(b.len - 6, m2a_envelope_encoded_size(&in));
        struct m2a_envelope out;
        unsigned char *copy;
        ck_assert_int_eq(decode_copy(b.data + 6, b.len - 6, &out, &hb, &hcap, &copy), 0);
        assert_same(&in, &out);
        ck_assert_uint_ge(hcap, counts[c]);
        free(copy);
    }
    free(hb);
    m2a_buf_free(&b);
}
END_TEST

START_TEST(round_trip_of_empty_and_maximal_fields)
{
    char key[256], topic[65536], route[256];
    memset(key, 'k', 255);
    key[255] = '\0';
    memset(topic, 't', 65535);
    topic[65535] = '\0';
    memset(route, 'r', 255);
    route[255] = '\0';
    struct m2a_envelope empty = {.route = S(""),
                                 .exchange = S(""),
                                 .routing_key = S(""),
                                 .content_type = S(""),
                                 .topic = S(""),
                                 .body = {NULL, 0}};
    struct m2a_envelope big = sample(2);
    big.routing_key = S(key);
    big.topic = S(topic);
    big.route = S(route);
    big.qos = 0;
    big.retain = false;
    big.persistent = false;
    big.timestamp_ms = UINT64_MAX;
    const struct m2a_envelope *cases[] = {&empty, &big};
    struct m2a_header *hb = NULL;
    size_t hcap = 0;
    for (int i = 0; i < 2; i++) {
        struct m2a_buf b = {0};
        m2a_envelope_encode(cases[i], &b);
        ck_assert_uint_eq(b.len, m2a_envelope_encoded_size(cases[i]));
        struct m2a_envelope out;
        unsigned char *copy;
        ck_assert_int_eq(decode_copy(b.data, b.len, &out, &hb, &hcap, &copy), 0);
        assert_same(cases[i], &out);
        ck_assert_ptr_nonnull(out.body.ptr);
        free(copy);
        m2a_buf_free(&b);
    }
    free(hb);
}
END_TEST

START_TEST(every_truncation_and_any_trailing_byte_is_rejected)
{
    struct m2a_envelope in = sample(5);
    struct m2a_buf b = {0};
    m2a_envelope_encode(&in, &b);
    struct m2a_header *hb = NULL;
    size_t hcap = 0;
    struct m2a_envelope out;
    unsigned char *copy;
    for (size_t len = 0; len < b.len; len++) {
        ck_assert_msg(decode_copy(b.data, len, &out, &hb, &hcap, &copy) == M2A_ERR_CORRUPT,
                      "truncation to %zu of %zu accepted", len, b.len);
        free(copy);
    }
    m2a_buf_append_char(&b, 0);
    ck_assert_int_eq(decode_copy(b.data, b.len, &out, &hb, &hcap, &copy), M2A_ERR_CORRUPT);
    free(copy);
    ck_assert_int_eq(m2a_envelope_decode(NULL, 0, &out, &hb, &hcap), M2A_ERR_CORRUPT);
    free(hb);
    m2a_buf_free(&b);
}
END_TEST

/* Offsets of the fixed fields in an encoding of sample(n). */
#define OFF_VERSION 0
#define OFF_QOS     9
#define OFF_FLAGS   10

START_TEST(bad_fields_are_rejected)
{
    struct m2a_envelope in = sample(1);
    in.body = S("");
    struct m2a_buf b = {0};
    m2a_envelope_encode(&in, &b);
    struct m2a_header *hb = NULL;
    size_t hcap = 0;
    struct m2a_envelope out;
    unsigned char *copy;
    struct {
        size_t off;
        unsigned char val;
    } bad[] = {
        {OFF_VERSION, 0}, {OFF_VERSION, 2}, {OFF_QOS, 3},
        {OFF_QOS, 0xff},  {OFF_FLAGS, 4},   {OFF_FLAGS, 0x83},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        unsigned char saved = b.data[bad[i].off];
        b.data[bad[i].off] = bad[i].val;
        ck_assert_int_eq(decode_copy(b.data, b.len, &out, &hb, &hcap, &copy), M2A_ERR_CORRUPT);
        free(copy);
        b.data[bad[i].off] = saved;
    }
    /* The last four bytes are the (zero) body length: make it huge. */
    memset(b.data + b.len - 4, 0xff, 4);
    ck_assert_int_eq(decode_copy(b.data, b.len, &out, &hb, &hcap, &copy), M2A_ERR_CORRUPT);
    free(copy);
    m2a_buf_free(&b);

    /* A header count the input cannot hold is refused before allocating. */
    free(hb);
    hb = NULL;
    hcap = 0;
    in = sample(0);
    in.body = S("");
    m2a_envelope_encode(&in, &b);
    b.data[b.len - 6] = 0xff; /* header count u16 precedes the body length */
    b.data[b.len - 5] = 0xff;
    ck_assert_int_eq(decode_copy(b.data, b.len, &out, &hb, &hcap, &copy), M2A_ERR_CORRUPT);
    ck_assert_uint_eq(hcap, 0);
    free(copy);
    free(hb);
    m2a_buf_free(&b);
}
END_TEST

/* Random damage never crashes or overreads; whatever decodes is canonical:
 * encoding it again gives the damaged bytes back. */
START_TEST(random_bit_flips_never_crash)
{
    struct m2a_envelope in = sample(3);
    struct m2a_buf b = {0};
    m2a_envelope_encode(&in, &b);
    struct m2a_header *hb = NULL;
    size_t hcap = 0;
    unsigned seed = 42;
    unsigned char *damaged = malloc(b.len);
    int accepted = 0;
    for (int iter = 0; iter < 100000; iter++) {
        memcpy(damaged, b.data, b.len);
        int flips = 1 + rand_r(&seed) % 4;
        for (int f = 0; f < flips; f++) {
            size_t bit = (size_t)rand_r(&seed) % (b.len * 8);
            damaged[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        }
        struct m2a_envelope out;
        unsigned char *copy;
        int rc = decode_copy(damaged, b.len, &out, &hb, &hcap, &copy);
        ck_assert(rc == 0 || rc == M2A_ERR_CORRUPT);
        if (rc == 0) {
            accepted++;
            struct m2a_buf again = {0};
            m2a_envelope_encode(&out, &again);
            ck_assert_uint_eq(again.len, b.len);
            ck_assert(memcmp(again.data, damaged, b.len) == 0);
            m2a_buf_free(&again);
        }
        free(copy);
    }
    /* Flips inside strings and the timestamp are undetectable here (the
     * spool's CRC catches them), so some must have decoded. */
    ck_assert_int_gt(accepted, 0);
    free(damaged);
    free(hb);
    m2a_buf_free(&b);
}
END_TEST

START_TEST(random_garbage_never_crashes)
{
    unsigned seed = 7;
    struct m2a_header *hb = NULL;
    size_t hcap = 0;
    unsigned char buf[256];
    for (int iter = 0; iter < 100000; iter++) {
        size_t len = (size_t)rand_r(&seed) % sizeof(buf);
        for (size_t i = 0; i < len; i++)
            buf[i] = (unsigned char)rand_r(&seed);
        if (len > 0)
            buf[0] = 1; /* get past the version byte */
        struct m2a_envelope out;
        unsigned char *copy;
        int rc = decode_copy(buf, len, &out, &hb, &hcap, &copy);
        ck_assert(rc == 0 || rc == M2A_ERR_CORRUPT);
        free(copy);
    }
    free(hb);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("envelope");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, layout_is_pinned);
    tcase_add_test(tc, round_trip_with_0_to_n_headers);
    tcase_add_test(tc, round_trip_of_empty_and_maximal_fields);
    tcase_add_test(tc, every_truncation_and_any_trailing_byte_is_rejected);
    tcase_add_test(tc, bad_fields_are_rejected);
    tcase_add_test(tc, random_bit_flips_never_crash);
    tcase_add_test(tc, random_garbage_never_crashes);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
