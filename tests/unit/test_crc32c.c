/* test_crc32c.c - CRC-32C against published vectors (RFC 3720 B.4, the
 * "123456789" check value) and against a bit-at-a-time reference over
 * random data, split at every alignment, so both implementations (the
 * CPU's crc32 instruction where there is one, and slicing by 8) and their
 * byte tails agree with the definition. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/crc32c.h"
#include "check_main.h"

/* Silent on success: every passing ck_assert_* leaves a location message for
 * check's runner, too many for its message reader in a loop. */
#define REQUIRE(c)                                                                                 \
    do {                                                                                           \
        if (!(c))                                                                                  \
            ck_abort_msg("%s:%d: %s", __FILE__, __LINE__, #c);                                     \
    } while (0)

static uint32_t crc_bitwise(const unsigned char *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    }
    return ~c;
}

START_TEST(check_value_of_123456789)
{
    ck_assert_uint_eq(m2a_crc32c(0, "123456789", 9), 0xe3069283u);
}
END_TEST

START_TEST(empty_input_keeps_the_crc)
{
    ck_assert_uint_eq(m2a_crc32c(0, "", 0), 0);
    ck_assert_uint_eq(m2a_crc32c(0x12345678u, "", 0), 0x12345678u);
}
END_TEST

START_TEST(rfc3720_vectors)
{
    unsigned char b[32];
    memset(b, 0, sizeof(b));
    ck_assert_uint_eq(m2a_crc32c(0, b, 32), 0x8a9136aau);
    memset(b, 0xff, sizeof(b));
    ck_assert_uint_eq(m2a_crc32c(0, b, 32), 0x62a8ab43u);
    for (int i = 0; i < 32; i++)
        b[i] = (unsigned char)i;
    ck_assert_uint_eq(m2a_crc32c(0, b, 32), 0x46dd794eu);
    for (int i = 0; i < 32; i++)
        b[i] = (unsigned char)(31 - i);
    ck_assert_uint_eq(m2a_crc32c(0, b, 32), 0x113fdb5cu);
}
END_TEST

START_TEST(matches_bitwise_reference_at_every_offset_and_split)
{
    unsigned char buf[300];
    srand(42);
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)rand();
    for (size_t off = 0; off < 9; off++) {
        for (size_t len = 0; len + off <= sizeof(buf); len += 7) {
            uint32_t ref = crc_bitwise(buf + off, len);
            REQUIRE(m2a_crc32c(0, buf + off, len) == ref);
            REQUIRE(m2a_crc32c_portable(0, buf + off, len) == ref);
            size_t cut = len / 3;
            uint32_t inc = m2a_crc32c(m2a_crc32c(0, buf + off, cut), buf + off + cut, len - cut);
            REQUIRE(inc == ref);
        }
    }
}
END_TEST

/* Long inputs take three interleaved chains joined at the end (where the
 * CPU has the crc32 instruction): the same CRC as the portable one, at
 * every length around the joins, whole or in pieces. */
START_TEST(long_inputs_match_the_portable_crc)
{
    enum { N = 120016 }; /* the longest length at the largest offset fits */
    unsigned char *buf = malloc(N);
    ck_assert_ptr_nonnull(buf);
    srand(7);
    for (size_t i = 0; i < N; i++)
        buf[i] = (unsigned char)rand();
    static const size_t lens[] = {24575, 24576, 24577, 24584,  49151, 49152,
                                  49160, 65536, 73728, 100000, 119999};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        for (size_t off = 0; off < 3; off++) {
            size_t len = lens[i];
            uint32_t ref = m2a_crc32c_portable(0, buf + off, len);
            REQUIRE(m2a_crc32c(0, buf + off, len) == ref);
            size_t cut = len / 5;
            REQUIRE(m2a_crc32c(m2a_crc32c(0, buf + off, cut), buf + off + cut, len - cut) == ref);
            REQUIRE(m2a_crc32c(0x12345678u, buf + off, len) ==
                    m2a_crc32c_portable(0x12345678u, buf + off, len));
        }
    }
    free(buf);
}
END_TEST

START_TEST(detects_every_single_bit_flip)
{
    unsigned char buf[64];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)(i * 37 + 11);
    uint32_t good = m2a_crc32c(0, buf, sizeof(buf));
    for (size_t bit = 0; bit < sizeof(buf) * 8; bit++) {
        buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        REQUIRE(m2a_crc32c(0, buf, sizeof(buf)) != good);
        buf[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    }
}
END_TEST

int main(void)
{
    Suite *s = suite_create("crc32c");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, check_value_of_123456789);
    tcase_add_test(tc, long_inputs_match_the_portable_crc);
    tcase_add_test(tc, empty_input_keeps_the_crc);
    tcase_add_test(tc, rfc3720_vectors);
    tcase_add_test(tc, matches_bitwise_reference_at_every_offset_and_split);
    tcase_add_test(tc, detects_every_single_bit_flip);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
