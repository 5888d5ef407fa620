/* reader.h - a bounds-checked cursor over a byte range for the decoders of
 * our own little-endian formats (envelope.c, props.c): every read past the
 * end turns into a sticky failure, so a decoder checks `bad` once at the
 * end and needs no bounds arithmetic of its own. Trusts no length it
 * reads. Header-only; no state beyond the cursor. */
#ifndef MQTT2AMQP_READER_H
#define MQTT2AMQP_READER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/envelope.h"

struct m2a_reader {
    const unsigned char *p;
    const unsigned char *end;
    bool bad;
};

/* An unsigned little-endian integer of `bytes` (1..8) bytes; 0 once bad. */
static inline uint64_t m2a_reader_le(struct m2a_reader *r, int bytes)
{
    if (r->bad || (size_t)(r->end - r->p) < (size_t)bytes) {
        r->bad = true;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v |= (uint64_t)r->p[i] << (8 * i);
    r->p += bytes;
    return v;
}

/* A length of `len_bytes` bytes, then that many bytes: a string pointing
 * into the input ("" once bad). */
static inline struct m2a_str m2a_reader_str(struct m2a_reader *r, int len_bytes)
{
    struct m2a_str s = {"", 0};
    uint64_t n = m2a_reader_le(r, len_bytes);
    /* Compared as uint64_t so that a huge length cannot wrap a size_t. */
    if (r->bad || n > (uint64_t)(r->end - r->p)) {
        r->bad = true;
        return s;
    }
    s.ptr = (const char *)r->p;
    s.len = (size_t)n;
    r->p += n;
    return s;
}

#endif
