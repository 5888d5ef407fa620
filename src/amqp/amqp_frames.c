/* amqp_frames.c - encodes basic.publish frames into a buffer and writes the
 * buffer to the connection's socket or TLS session (see amqp_frames.h for
 * why). Runs on the thread that owns the connection. */
#include "mqtt2amqp/amqp_frames.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include <openssl/err.h>

#include "mqtt2amqp/bytes.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/loop.h"

#define FRAME_HEADER  7 /* type (1), channel (2), payload size (4) */
#define FRAME_END_LEN 1
#define FRAME_END     0xCE
#define HEADER_FIXED  12    /* content header: class (2), weight (2), body size (8) */
#define TLS_RECORD    16384 /* the largest TLS plaintext record */

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

/* One write of up to len bytes: > 0 bytes written, 0 the wire is full (wait
 * for *want: POLLOUT, or POLLIN when TLS must read first), < 0 an error
 * with errno set. A TLS write is at most one record, so that a large buffer
 * shows progress record by record (the stall timer sees it), and a write
 * that said "try again" is retried with the same bytes, as OpenSSL wants. */
static ssize_t wire_write(const struct m2a_amqp_frames_wire *w, const unsigned char *p, size_t len,
                          short *want)
{
    *want = POLLOUT;
    if (!w->ssl) {
        ssize_t n = send(w->fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return 0;
        return n;
    }
    size_t n = len < TLS_RECORD ? len : TLS_RECORD, done = 0;
    ERR_clear_error();
    errno = 0;
    if (SSL_write_ex(w->ssl, p, n, &done) == 1)
        return (ssize_t)done;
    switch (SSL_get_error(w->ssl, 0)) {
    case SSL_ERROR_WANT_WRITE:
        return 0;
    case SSL_ERROR_WANT_READ: /* a renegotiation or key update in progress */
        *want = POLLIN;
        return 0;
    case SSL_ERROR_SYSCALL:
        if (errno == 0)
            errno = EPIPE;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        errno = EPIPE;
        return -1;
    default:
        errno = EPROTO;
        return -1;
    }
}

int m2a_amqp_frames_send(const struct m2a_amqp_frames_wire *w, struct m2a_buf *out, int stall_ms,
                         uint64_t deadline_ms)
{
    size_t off = 0;
    int rc = 0;
    uint64_t stall_at = m2a_now_ms() + (uint64_t)(stall_ms > 0 ? stall_ms : 0);
    while (off < out->len) {
        short want;
        ssize_t n = wire_write(w, out->data + off, out->len - off, &want);
        if (n > 0) {
            off += (size_t)n;
            stall_at = m2a_now_ms() + (uint64_t)(stall_ms > 0 ? stall_ms : 0);
            continue;
        }
        if (n < 0) {
            rc = M2A_ERR_IO;
            break;
        }
        uint64_t until = stall_at < deadline_ms ? stall_at : deadline_ms;
        struct pollfd p = {.fd = w->fd, .events = want};
        int pr = poll(&p, 1, m2a_loop_timeout_ms(until));
        if (pr > 0)
            continue; /* ready, or an error the next write reports */
        if (pr == 0 || m2a_now_ms() >= until) {
            rc = M2A_ERR_TIMEOUT;
            break;
        }
        if (errno != EINTR) {
            rc = M2A_ERR_IO;
            break;
        }
    }
    if (off == out->len) {
        out->len = 0;
    } else if (off > 0) {
        memmove(out->data, out->data + off, out->len - off);
        out->len -= off;
    }
    return rc;
}
