/* crc32c.c - CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), which
 * protects every spool record. The SSE4.2 crc32 instruction when the CPU has
 * it (chosen once at run time), else slicing by 8 over tables built once. */
#include "mqtt2amqp/crc32c.h"

#include <pthread.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define M2A_CRC_HW 1
#endif

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static uint32_t (*crc_impl)(uint32_t, const unsigned char *, size_t);

static uint32_t crc_sw(uint32_t crc, const unsigned char *p, size_t len);

#ifdef M2A_CRC_HW
/* a x b modulo the polynomial, in the reflected bit order of the CRC
 * register (bit 31 is x^0). */
static uint32_t multmodp(uint32_t a, uint32_t b)
{
    uint32_t m = 1u << 31, p = 0;
    for (;;) {
        if (a & m) {
            p ^= b;
            if ((a & (m - 1)) == 0)
                break;
        }
        m >>= 1;
        b = (b & 1) ? (b >> 1) ^ 0x82F63B78u : b >> 1;
    }
    return p;
}

/* x^(8n) modulo the polynomial: what a raw CRC register is multiplied by
 * when n zero bytes pass through it. */
static uint32_t x8nmodp(size_t n)
{
    uint32_t x2k = 1u << 30, p = 1u << 31; /* x^1, x^0 */
    for (int k = 0; k < 3; k++)
        x2k = multmodp(x2k, x2k); /* x^8 */
    while (n) {
        if (n & 1)
            p = multmodp(x2k, p);
        x2k = multmodp(x2k, x2k);
        n >>= 1;
    }
    return p;
}

/* Long inputs go through three independent crc32 chains at once (the
 * instruction's latency is three times its throughput), CRC_LONG bytes
 * each, joined with crc(A B) = crc(A) x x^(8|B|) + crc0(B). */
#define CRC_LONG 8192u
static uint32_t crc_long_shift; /* x8nmodp(CRC_LONG) */

/* crc is the raw register (already inverted), as in crc_sw. */
__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const unsigned char *p,
                                                         size_t len)
{
    uint64_t c = crc;
    while (len >= 3 * CRC_LONG) {
        uint64_t c1 = 0, c2 = 0;
        for (const unsigned char *end = p + CRC_LONG; p < end; p += 8) {
            uint64_t v0, v1, v2;
            memcpy(&v0, p, 8);
            memcpy(&v1, p + CRC_LONG, 8);
            memcpy(&v2, p + 2 * CRC_LONG, 8);
            c = _mm_crc32_u64(c, v0);
            c1 = _mm_crc32_u64(c1, v1);
            c2 = _mm_crc32_u64(c2, v2);
        }
        c = multmodp(crc_long_shift, (uint32_t)c) ^ (uint32_t)c1;
        c = multmodp(crc_long_shift, (uint32_t)c) ^ (uint32_t)c2;
        p += 2 * CRC_LONG;
        len -= 3 * CRC_LONG;
    }
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = _mm_crc32_u64(c, v);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = _mm_crc32_u8(c32, *p++);
    return c32;
}
#endif

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
    crc_impl = crc_sw;
#ifdef M2A_CRC_HW
    crc_long_shift = x8nmodp(CRC_LONG);
    __builtin_cpu_init();
    if (__builtin_cpu_supports("sse4.2"))
        crc_impl = crc_hw;
#endif
}

uint32_t m2a_crc32c(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&crc_once, crc_init);
    return ~crc_impl(~crc, data, len);
}

uint32_t m2a_crc32c_portable(uint32_t crc, const void *data, size_t len)
{
    pthread_once(&crc_once, crc_init);
    return ~crc_sw(~crc, data, len);
}

static uint32_t crc_sw(uint32_t crc, const unsigned char *p, size_t len)
{
    while (len >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        lo = __builtin_bswap32(lo);
        hi = __builtin_bswap32(hi);
#endif
        lo ^= crc;
        crc = crc_table[7][lo & 0xff] ^ crc_table[6][(lo >> 8) & 0xff] ^
              crc_table[5][(lo >> 16) & 0xff] ^ crc_table[4][lo >> 24] ^ crc_table[3][hi & 0xff] ^
              crc_table[2][(hi >> 8) & 0xff] ^ crc_table[1][(hi >> 16) & 0xff] ^
              crc_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xff];
    return crc;
}
