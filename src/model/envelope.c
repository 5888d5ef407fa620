/* envelope.c - the compact binary encoding of a routed message: the payload
 * of a spool record, written by the MQTT thread and read back (after a
 * crash, possibly damaged, possibly by a later version) by the AMQP thread.
 *
 * Pure functions, no shared state. All integers are little-endian.
 * Version 2 (written since route ids):
 *
 *   u8   version (2)
 *   u32  route id             (process-local: trusted only by the process
 *                              that wrote it; patched in place when resolved)
 *   u64  timestamp_ms
 *   u8   qos (0..2)
 *   u8   flags: bit 0 retain, bit 1 persistent, bit 2 dead letter,
 *               bit 3 properties present; other bits zero
 *   u8   route length         + bytes
 *   u8   exchange length      + bytes
 *   u8   routing key length   + bytes   (AMQP short string: at most 255)
 *   u8   content type length  + bytes   (0: none)
 *   u16  topic length         + bytes   (MQTT: at most 65535)
 *   u16  header count, then per header:
 *          u8 key length + bytes, u32 value length + bytes
 *   [u32 properties length    + bytes]  only with flag bit 3: room for the
 *                                       MQTT 5 properties of issue 11
 *   u32  body length          + bytes   (MQTT payloads are < 256 MiB)
 *
 * and nothing after the body. Version 1 (up to 0.1.0, still read: a spool
 * is replayed across an upgrade) is the same without the route id, with
 * flags bits 0-1 only, and without properties.
 *
 * The spool's record CRC catches most damage; the decoder still trusts no
 * length, because the CRC cannot catch a bug and a fuzzer will feed it
 * anything. */
#include "mqtt2amqp/envelope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/reader.h"

#define VERSION_1       1
#define VERSION_2       2
#define FLAG_RETAIN     0x01
#define FLAG_PERSISTENT 0x02
#define FLAG_DEAD       0x04 /* version 2 */
#define FLAG_PROPERTIES 0x08 /* version 2 */
#define FLAGS_V1        (FLAG_RETAIN | FLAG_PERSISTENT)
#define FLAGS_V2        (FLAGS_V1 | FLAG_DEAD | FLAG_PROPERTIES)
/* version, timestamp, qos, flags, 4 u8 lengths, topic u16, count u16, body u32 */
#define FIXED_SIZE_V1 (1 + 8 + 1 + 1 + 4 * 1 + 2 + 2 + 4)
#define FIXED_SIZE    (FIXED_SIZE_V1 + 4) /* + route id */
#define HEADER_MIN    (1 + 4)
#define DEATH_HEADER  "x-death-reason"

/* An envelope that does not fit the format is a bug in the caller (routes
 * guarantee the limits for every envelope they hand out with err == 0).
 * Writing it anyway would store a record that reads back as something else,
 * so stop loudly instead. */
static void check_len(size_t len, size_t max, const char *what)
{
    if (len <= max)
        return;
    fprintf(stderr, "mqtt2amqp: envelope %s is %zu bytes, the encoding allows %zu\n", what, len,
            max);
    abort();
}

size_t m2a_envelope_encoded_size(const struct m2a_envelope *env)
{
    size_t n = FIXED_SIZE + env->route.len + env->exchange.len + env->routing_key.len +
               env->content_type.len + env->topic.len + env->body.len;
    if (env->properties.len)
        n += 4 + env->properties.len;
    for (size_t i = 0; i < env->nheaders; i++)
        n += HEADER_MIN + env->headers[i].key.len + env->headers[i].value.len;
    return n;
}

static unsigned char *put_le(unsigned char *p, uint64_t v, int bytes)
{
    for (int i = 0; i < bytes; i++)
        *p++ = (unsigned char)(v >> (8 * i));
    return p;
}

static unsigned char *put_str(unsigned char *p, struct m2a_str s, int len_bytes, const char *what)
{
    check_len(s.len, len_bytes == 4 ? UINT32_MAX : (1u << (8 * len_bytes)) - 1, what);
    p = put_le(p, s.len, len_bytes);
    if (s.len)
        memcpy(p, s.ptr, s.len);
    return p + s.len;
}

void m2a_envelope_encode_head(const struct m2a_envelope *env, struct m2a_buf *out)
{
    size_t size = m2a_envelope_encoded_size(env) - env->body.len;
    check_len(env->routing_key.len, M2A_MAX_ROUTING_KEY, "routing key");
    check_len(env->nheaders, UINT16_MAX, "header count");
    check_len(env->qos, 2, "qos");
    m2a_buf_reserve(out, size);
    unsigned char *start = out->data + out->len, *p = start;
    unsigned flags = (env->retain ? FLAG_RETAIN : 0) | (env->persistent ? FLAG_PERSISTENT : 0) |
                     (env->dead_letter ? FLAG_DEAD : 0) |
                     (env->properties.len ? FLAG_PROPERTIES : 0);
    p = put_le(p, VERSION_2, 1);
    p = put_le(p, env->route_id, 4);
    p = put_le(p, env->timestamp_ms, 8);
    p = put_le(p, env->qos, 1);
    p = put_le(p, flags, 1);
    p = put_str(p, env->route, 1, "route name");
    p = put_str(p, env->exchange, 1, "exchange");
    p = put_str(p, env->routing_key, 1, "routing key");
    p = put_str(p, env->content_type, 1, "content type");
    p = put_str(p, env->topic, 2, "topic");
    p = put_le(p, env->nheaders, 2);
    for (size_t i = 0; i < env->nheaders; i++) {
        p = put_str(p, env->headers[i].key, 1, "header name");
        p = put_str(p, env->headers[i].value, 4, "header value");
    }
    if (env->properties.len)
        p = put_str(p, env->properties, 4, "properties");
    check_len(env->body.len, UINT32_MAX, "body");
    p = put_le(p, env->body.len, 4);
    out->len += (size_t)(p - start);
}

void m2a_envelope_encode(const struct m2a_envelope *env, struct m2a_buf *out)
{
    m2a_buf_reserve(out, m2a_envelope_encoded_size(env));
    m2a_envelope_encode_head(env, out);
    if (env->body.len)
        memcpy(out->data + out->len, env->body.ptr, env->body.len);
    out->len += env->body.len;
}

/* Version 1 had no dead-letter flag: a dead letter was one carrying the
 * x-death-reason header. */
static bool has_death_header(const struct m2a_header *h, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (h[i].key.len == sizeof(DEATH_HEADER) - 1 &&
            memcmp(h[i].key.ptr, DEATH_HEADER, sizeof(DEATH_HEADER) - 1) == 0)
            return true;
    return false;
}

int m2a_envelope_decode(const void *data, size_t len, struct m2a_envelope *env,
                        struct m2a_header **headers_buf, size_t *headers_cap)
{
    if (!data || len < FIXED_SIZE_V1)
        return M2A_ERR_CORRUPT;
    struct m2a_reader r = {data, (const unsigned char *)data + len, false};
    memset(env, 0, sizeof(*env));
    uint64_t version = m2a_reader_le(&r, 1);
    if (version != VERSION_1 && version != VERSION_2)
        return M2A_ERR_CORRUPT;
    env->route_id = version == VERSION_2 ? (uint32_t)m2a_reader_le(&r, 4) : M2A_ROUTE_NONE;
    env->timestamp_ms = m2a_reader_le(&r, 8);
    uint64_t qos = m2a_reader_le(&r, 1);
    uint64_t flags = m2a_reader_le(&r, 1);
    if (qos > 2 || (flags & ~(uint64_t)(version == VERSION_2 ? FLAGS_V2 : FLAGS_V1)))
        return M2A_ERR_CORRUPT;
    env->qos = (uint8_t)qos;
    env->retain = flags & FLAG_RETAIN;
    env->persistent = flags & FLAG_PERSISTENT;
    env->dead_letter = flags & FLAG_DEAD;
    env->route = m2a_reader_str(&r, 1);
    env->exchange = m2a_reader_str(&r, 1);
    env->routing_key = m2a_reader_str(&r, 1); /* a u8 length: never above 255 */
    env->content_type = m2a_reader_str(&r, 1);
    env->topic = m2a_reader_str(&r, 2);
    size_t n = (size_t)m2a_reader_le(&r, 2);
    /* Every header takes at least HEADER_MIN bytes: a count the rest of the
     * input cannot hold is rejected before anything is allocated for it. */
    if (r.bad || n > (size_t)(r.end - r.p) / HEADER_MIN)
        return M2A_ERR_CORRUPT;
    if (n > *headers_cap) {
        *headers_buf = xrealloc(*headers_buf, n * sizeof(**headers_buf));
        *headers_cap = n;
    }
    for (size_t i = 0; i < n; i++) {
        (*headers_buf)[i].key = m2a_reader_str(&r, 1);
        (*headers_buf)[i].value = m2a_reader_str(&r, 4);
    }
    env->nheaders = n;
    env->headers = n ? *headers_buf : NULL;
    if (flags & FLAG_PROPERTIES) {
        env->properties = m2a_reader_str(&r, 4);
        if (env->properties.len == 0) /* not canonical: written without the flag */
            r.bad = true;
    }
    env->body = m2a_reader_str(&r, 4);
    if (r.bad || r.p != r.end) {
        memset(env, 0, sizeof(*env));
        return M2A_ERR_CORRUPT;
    }
    if (version == VERSION_1)
        env->dead_letter = has_death_header(env->headers, n);
    return 0;
}

int m2a_envelope_set_route_id(void *data, size_t len, uint32_t route_id)
{
    unsigned char *p = data;
    if (!p || len < FIXED_SIZE || p[0] != VERSION_2)
        return M2A_ERR_CORRUPT;
    put_le(p + 1, route_id, 4);
    return 0;
}
