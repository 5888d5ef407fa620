/* amqp_frames.c - encodes basic.publish frames into a buffer and writes the
 * buffer to the socket (see amqp_frames.h for why). */
#include "mqtt2amqp/amqp_frames.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include "mqtt2amqp/bytes.h"
#include "mqtt2amqp/err.h"

#define FRAME_HEADER  7 /* type (1), channel (2), payload size (4) */
#define FRAME_END_LEN 1
#define FRAME_END     0xCE
#define HEADER_FIXED  12 /* content header: class (2), weight (2), body size (8) */

/* Starts a frame at out->len with room for max_payload; returns its start. */
static unsigned char *frame_begin(struct m2a_buf *out, uint8_t type, uint16_t channel,
                                  size_t max_payload)
{
    m2a_buf_reserve(out, FRAME_HEADER + max_payload + FRAME_END_LEN);
    unsigned char *f = out->data + out->len;
    f[0] = type;
    m2a_put_be16(f + 1, channel);
    return f;
}

/* Completes the frame begun at f with a payload of len bytes. */
static void frame_end(struct m2a_buf *out, unsigned char *f, size_t len)
{
    m2a_put_be32(f + 3, (uint32_t)len);
    f[FRAME_HEADER + len] = FRAME_END;
    out->len += FRAME_HEADER + len + FRAME_END_LEN;
}

int m2a_amqp_frames_publish(struct m2a_buf *out, uint16_t channel, uint32_t frame_max,
                            const amqp_basic_publish_t *method,
                            const amqp_basic_properties_t *props, amqp_bytes_t body)
{
    if (frame_max <= FRAME_HEADER + FRAME_END_LEN + HEADER_FIXED)
        return M2A_ERR_ARG;
    const size_t payload_max = frame_max - FRAME_HEADER - FRAME_END_LEN;
    const size_t start = out->len;

    /* Method frame: class and method id, then the arguments. */
    unsigned char *f = frame_begin(out, AMQP_FRAME_METHOD, channel, payload_max);
    m2a_put_be32(f + FRAME_HEADER, AMQP_BASIC_PUBLISH_METHOD);
    amqp_bytes_t args = {payload_max - 4, f + FRAME_HEADER + 4};
    int n = amqp_encode_method(AMQP_BASIC_PUBLISH_METHOD, (void *)method, args);
    if (n < 0)
        return M2A_ERR_ARG;
    frame_end(out, f, 4 + (size_t)n);

    /* Content header: class, weight 0, body size, then the properties. */
    f = frame_begin(out, AMQP_FRAME_HEADER, channel, payload_max);
    m2a_put_be16(f + FRAME_HEADER, AMQP_BASIC_CLASS);
    m2a_put_be16(f + FRAME_HEADER + 2, 0);
    m2a_put_be64(f + FRAME_HEADER + 4, body.len);
    amqp_bytes_t enc = {payload_max - HEADER_FIXED, f + FRAME_HEADER + HEADER_FIXED};
    n = amqp_encode_properties(AMQP_BASIC_CLASS, (void *)props, enc);
    if (n < 0) {
        out->len = start;
        return M2A_ERR_ARG;
    }
    frame_end(out, f, HEADER_FIXED + (size_t)n);

    /* Body frames: none for an empty body, as rabbitmq-c does. */
    for (size_t off = 0; off < body.len;) {
        size_t chunk = body.len - off < payload_max ? body.len - off : payload_max;
        f = frame_begin(out, AMQP_FRAME_BODY, channel, chunk);
        memcpy(f + FRAME_HEADER, (const unsigned char *)body.bytes + off, chunk);
        frame_end(out, f, chunk);
        off += chunk;
    }
    return 0;
}

int m2a_amqp_frames_send(int fd, struct m2a_buf *out, int stall_ms)
{
    size_t off = 0;
    int rc = 0;
    while (off < out->len) {
        ssize_t n = send(fd, out->data + off, out->len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            int pr = poll(&p, 1, stall_ms);
            if (pr > 0)
                continue; /* writable, or an error the next send() reports */
            if (pr == 0) {
                rc = M2A_ERR_TIMEOUT;
                break;
            }
            if (errno == EINTR)
                continue;
        }
        rc = M2A_ERR_IO;
        break;
    }
    if (off == out->len) {
        out->len = 0;
    } else if (off > 0) {
        memmove(out->data, out->data + off, out->len - off);
        out->len -= off;
    }
    return rc;
}
