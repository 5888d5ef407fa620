/* spool_format.c - the spool's on-disk formats (layout in spool_format.h):
 * record headers and their CRC32C, record checks and resynchronisation
 * after damage, the checkpoint, the spool id and the file names. No I/O and
 * no state: every function works on the caller's buffers, on any thread. */
#include "mqtt2amqp/spool_format.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "mqtt2amqp/bytes.h"
#include "mqtt2amqp/crc32c.h"

#define SEG_DIGITS 20
#define SEG_SUFFIX ".seg"

static uint32_t record_crc(const unsigned char *rec, size_t payload_len)
{
    uint32_t crc = m2a_crc32c(0, rec + 4, 4);
    return m2a_crc32c(crc, rec + 12, 8 + payload_len);
}

void m2a_spool_format_record_header(unsigned char *rec, size_t payload_len, uint64_t seq)
{
    m2a_put_le32(rec, M2A_SPOOL_RECORD_MAGIC);
    m2a_put_le32(rec + 4, (uint32_t)payload_len);
    m2a_put_le64(rec + 12, seq);
    m2a_put_le32(rec + 8, record_crc(rec, payload_len));
}

void m2a_spool_format_record_header_tail(unsigned char *rec, size_t head_len, const void *tail,
                                         size_t tail_len, uint64_t seq)
{
    m2a_put_le32(rec, M2A_SPOOL_RECORD_MAGIC);
    m2a_put_le32(rec + 4, (uint32_t)(head_len + tail_len));
    m2a_put_le64(rec + 12, seq);
    uint32_t crc = m2a_crc32c(record_crc(rec, head_len), tail, tail_len);
    m2a_put_le32(rec + 8, crc);
}

/* Magic and length limit: OK with *reclen, SHORT (*reclen: the header) or BAD. */
static enum m2a_spool_format_check record_len(const unsigned char *p, size_t avail, size_t *reclen)
{
    if (avail < M2A_SPOOL_RECORD_HEADER) {
        *reclen = M2A_SPOOL_RECORD_HEADER;
        return M2A_SPOOL_RECORD_SHORT;
    }
    if (m2a_get_le32(p) != M2A_SPOOL_RECORD_MAGIC)
        return M2A_SPOOL_RECORD_BAD;
    uint32_t len = m2a_get_le32(p + 4);
    if (len > M2A_SPOOL_MAX_PAYLOAD)
        return M2A_SPOOL_RECORD_BAD;
    *reclen = M2A_SPOOL_RECORD_HEADER + (size_t)len;
    return M2A_SPOOL_RECORD_OK;
}

static bool seq_in(const unsigned char *p, uint64_t lo, uint64_t hi, uint64_t *seq)
{
    uint64_t sq = m2a_get_le64(p + 12);
    if (sq <= lo || sq >= hi)
        return false;
    *seq = sq;
    return true;
}

enum m2a_spool_format_check m2a_spool_format_record_parse(const unsigned char *p, size_t avail,
                                                          uint64_t lo, uint64_t hi, uint64_t *seq,
                                                          size_t *reclen)
{
    enum m2a_spool_format_check c = record_len(p, avail, reclen);
    if (c != M2A_SPOOL_RECORD_OK)
        return c;
    if (avail < *reclen)
        return M2A_SPOOL_RECORD_SHORT;
    if (record_crc(p, *reclen - M2A_SPOOL_RECORD_HEADER) != m2a_get_le32(p + 8) ||
        !seq_in(p, lo, hi, seq))
        return M2A_SPOOL_RECORD_BAD;
    return M2A_SPOOL_RECORD_OK;
}

enum m2a_spool_format_check m2a_spool_format_record_head(const unsigned char *p, size_t avail,
                                                         uint64_t lo, uint64_t hi, uint64_t *seq,
                                                         size_t *reclen)
{
    enum m2a_spool_format_check c = record_len(p, avail, reclen);
    if (c != M2A_SPOOL_RECORD_OK)
        return c;
    return seq_in(p, lo, hi, seq) ? M2A_SPOOL_RECORD_OK : M2A_SPOOL_RECORD_BAD;
}

uint32_t m2a_spool_format_record_crc_start(const unsigned char *hdr)
{
    uint32_t crc = m2a_crc32c(0, hdr + 4, 4);
    return m2a_crc32c(crc, hdr + 12, 8);
}

uint32_t m2a_spool_format_record_crc_stored(const unsigned char *hdr)
{
    return m2a_get_le32(hdr + 8);
}

size_t m2a_spool_format_magic_find(const unsigned char *p, size_t size, size_t from)
{
    unsigned char magic[4];
    m2a_put_le32(magic, M2A_SPOOL_RECORD_MAGIC);
    if (from >= size)
        return size;
    const unsigned char *q = memmem(p + from, size - from, magic, sizeof(magic));
    return q ? (size_t)(q - p) : size;
}

size_t m2a_spool_format_record_find(const unsigned char *p, size_t size, size_t from, uint64_t lo,
                                    uint64_t hi)
{
    size_t pos = from;
    while (pos + M2A_SPOOL_RECORD_HEADER <= size) {
        pos = m2a_spool_format_magic_find(p, size, pos);
        if (pos == size)
            break;
        uint64_t seq;
        size_t rl;
        if (m2a_spool_format_record_parse(p + pos, size - pos, lo, hi, &seq, &rl) ==
            M2A_SPOOL_RECORD_OK)
            return pos;
        pos++;
    }
    return size;
}

void m2a_spool_format_checkpoint_encode(unsigned char *out, uint64_t seq)
{
    m2a_put_le32(out, M2A_SPOOL_CHECKPOINT_MAGIC);
    m2a_put_le32(out + 4, M2A_SPOOL_CHECKPOINT_VERSION);
    m2a_put_le64(out + 8, seq);
    m2a_put_le32(out + 16, m2a_crc32c(0, out, 16));
}

bool m2a_spool_format_checkpoint_decode(const unsigned char *b, size_t len, uint64_t *seq)
{
    if (len != M2A_SPOOL_CHECKPOINT_SIZE || m2a_get_le32(b) != M2A_SPOOL_CHECKPOINT_MAGIC ||
        m2a_get_le32(b + 4) != M2A_SPOOL_CHECKPOINT_VERSION ||
        m2a_get_le32(b + 16) != m2a_crc32c(0, b, 16))
        return false;
    *seq = m2a_get_le64(b + 8);
    return true;
}

void m2a_spool_format_id_encode(char *out, const char *id)
{
    memcpy(out, id, M2A_SPOOL_ID_LEN);
    out[M2A_SPOOL_ID_LEN] = '\n';
}

bool m2a_spool_format_id_decode(const char *b, size_t len, char *out)
{
    if (len != M2A_SPOOL_ID_LEN && !(len == M2A_SPOOL_ID_LEN + 1 && b[M2A_SPOOL_ID_LEN] == '\n'))
        return false;
    for (size_t i = 0; i < M2A_SPOOL_ID_LEN; i++)
        if (!((b[i] >= '0' && b[i] <= '9') || (b[i] >= 'a' && b[i] <= 'f')))
            return false;
    memcpy(out, b, M2A_SPOOL_ID_LEN);
    out[M2A_SPOOL_ID_LEN] = '\0';
    return true;
}

void m2a_spool_format_segment_name(char *buf, size_t len, uint64_t first)
{
    snprintf(buf, len, "%020" PRIu64 SEG_SUFFIX, first);
}

void m2a_spool_format_quarantine_name(char *buf, size_t len, uint64_t seq)
{
    snprintf(buf, len, "quarantine-%020" PRIu64 ".bad", seq);
}

bool m2a_spool_format_segment_parse(const char *name, uint64_t *first)
{
    if (strlen(name) != SEG_DIGITS + strlen(SEG_SUFFIX) ||
        strcmp(name + SEG_DIGITS, SEG_SUFFIX) != 0)
        return false;
    uint64_t v = 0;
    for (int i = 0; i < SEG_DIGITS; i++) {
        if (name[i] < '0' || name[i] > '9' || v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(name[i] - '0');
    }
    if (v == 0)
        return false;
    *first = v;
    return true;
}
