/* bytes.h - fixed-width integers to and from byte arrays, in both orders:
 * little-endian for our own formats (spool records, envelopes, checkpoint),
 * big-endian (network order) for AMQP frames. The one copy of these
 * helpers; compilers turn each into a single load or store. */
#ifndef MQTT2AMQP_BYTES_H
#define MQTT2AMQP_BYTES_H

#include <stdint.h>

static inline void m2a_put_le16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static inline void m2a_put_le32(unsigned char *p, uint32_t v)
{
    m2a_put_le16(p, (uint16_t)v);
    m2a_put_le16(p + 2, (uint16_t)(v >> 16));
}

static inline void m2a_put_le64(unsigned char *p, uint64_t v)
{
    m2a_put_le32(p, (uint32_t)v);
    m2a_put_le32(p + 4, (uint32_t)(v >> 32));
}

static inline uint16_t m2a_get_le16(const unsigned char *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t m2a_get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t m2a_get_le64(const unsigned char *p)
{
    return (uint64_t)m2a_get_le32(p) | (uint64_t)m2a_get_le32(p + 4) << 32;
}

static inline void m2a_put_be16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void m2a_put_be32(unsigned char *p, uint32_t v)
{
    m2a_put_be16(p, (uint16_t)(v >> 16));
    m2a_put_be16(p + 2, (uint16_t)v);
}

static inline void m2a_put_be64(unsigned char *p, uint64_t v)
{
    m2a_put_be32(p, (uint32_t)(v >> 32));
    m2a_put_be32(p + 4, (uint32_t)v);
}

static inline uint16_t m2a_get_be16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t m2a_get_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline uint64_t m2a_get_be64(const unsigned char *p)
{
    return (uint64_t)m2a_get_be32(p) << 32 | m2a_get_be32(p + 4);
}

#endif
