/* amqp_frames.c - encodes basic.publish frames into a buffer and writes the
 * buffer to the connection's socket or TLS session (see amqp_frames.h for
 * why). Runs on the thread that owns the connection. */
#include "mqtt2amqp/amqp_frames.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/uio.h>

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

void m2a_amqp_frames_borrow_free(struct m2a_amqp_frames_borrow *b)
{
    free(b->spans);
    *b = (struct m2a_amqp_frames_borrow){0};
}

static void borrow_push(struct m2a_amqp_frames_borrow *b, size_t at, const unsigned char *p,
                        size_t len)
{
    if (b->n == b->cap) {
        b->cap = b->cap ? 2 * b->cap : 16;
        b->spans = xrealloc(b->spans, b->cap * sizeof(*b->spans));
    }
    b->spans[b->n++] = (struct m2a_amqp_frames_span){at, p, len};
    b->bytes += len;
}

int m2a_amqp_frames_publish(struct m2a_buf *out, uint16_t channel, uint32_t frame_max,
                            const amqp_basic_publish_t *method,
                            const amqp_basic_properties_t *props, amqp_bytes_t body)
{
    return m2a_amqp_frames_publish_borrow(out, NULL, channel, frame_max, method, props, body,
                                          SIZE_MAX);
}

int m2a_amqp_frames_publish_borrow(struct m2a_buf *out, struct m2a_amqp_frames_borrow *b,
                                   uint16_t channel, uint32_t frame_max,
                                   const amqp_basic_publish_t *method,
                                   const amqp_basic_properties_t *props, amqp_bytes_t body,
                                   size_t borrow_min)
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
        const unsigned char *src = (const unsigned char *)body.bytes + off;
        if (b && chunk >= borrow_min) {
            /* Header here, payload borrowed, frame-end octet after it. */
            m2a_buf_reserve(out, FRAME_HEADER + FRAME_END_LEN);
            f = out->data + out->len;
            f[0] = AMQP_FRAME_BODY;
            m2a_put_be16(f + 1, channel);
            m2a_put_be32(f + 3, (uint32_t)chunk);
            out->len += FRAME_HEADER;
            borrow_push(b, out->len, src, chunk);
            out->data[out->len++] = FRAME_END;
        } else {
            f = frame_begin(out, AMQP_FRAME_BODY, channel, chunk);
            memcpy(f + FRAME_HEADER, src, chunk);
            frame_end(out, f, chunk);
        }
        off += chunk;
    }
    return 0;
}

/* One write of up to len bytes: > 0 bytes written, 0 the wire is full (wait
 * for *want: POLLOUT, or POLLIN when TLS must read first), < 0 an error
 * with errno set. A TLS write is at most one record, so that a large buffer
 * shows progress record by record (the stall timer sees it), and a write
 * that said "try again" is retried with the same bytes, as OpenSSL wants. */
static ssize_t wire_write(const struct m2a_amqp_frames_wire *w, struct iovec *iov, size_t niov,
                          short *want)
{
    *want = POLLOUT;
    if (!w->ssl) {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = niov};
        ssize_t n = sendmsg(w->fd, &mh, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return 0;
        return n;
    }
    const unsigned char *p = iov[0].iov_base;
    size_t len = iov[0].iov_len;
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

/* The byte stream of out with b's spans spliced in, as pieces: even ones
 * are runs of out, odd ones spans. */
struct stream {
    struct m2a_buf *out;
    struct m2a_amqp_frames_borrow *b;
    size_t npieces;
};

static struct iovec piece(const struct stream *st, size_t k)
{
    size_t nspans = st->b ? st->b->n : 0;
    if (k % 2) {
        const struct m2a_amqp_frames_span *sp = &st->b->spans[k / 2];
        return (struct iovec){(void *)sp->ptr, sp->len};
    }
    size_t from = k == 0 ? 0 : st->b->spans[k / 2 - 1].at;
    size_t to = k / 2 < nspans ? st->b->spans[k / 2].at : st->out->len;
    return (struct iovec){st->out->data + from, to - from};
}

#define MAX_IOV 64

int m2a_amqp_frames_send(const struct m2a_amqp_frames_wire *w, struct m2a_buf *out, int stall_ms,
                         uint64_t deadline_ms)
{
    return m2a_amqp_frames_sendv(w, out, NULL, stall_ms, deadline_ms);
}

int m2a_amqp_frames_sendv(const struct m2a_amqp_frames_wire *w, struct m2a_buf *out,
                          struct m2a_amqp_frames_borrow *b, int stall_ms, uint64_t deadline_ms)
{
    struct stream st = {out, b, 1 + 2 * (b ? b->n : 0)};
    size_t k = 0, koff = 0; /* the next byte to write: piece k, offset koff */
    int rc = 0;
    uint64_t stall_at = m2a_now_ms() + (uint64_t)(stall_ms > 0 ? stall_ms : 0);
    for (;;) {
        while (k < st.npieces && piece(&st, k).iov_len == koff) {
            k++;
            koff = 0;
        }
        if (k == st.npieces)
            break;
        struct iovec iov[MAX_IOV];
        size_t niov = 0;
        for (size_t j = k; j < st.npieces && niov < MAX_IOV; j++) {
            struct iovec v = piece(&st, j);
            if (j == k) {
                v.iov_base = (unsigned char *)v.iov_base + koff;
                v.iov_len -= koff;
            }
            if (v.iov_len)
                iov[niov++] = v;
        }
        short want;
        ssize_t n = wire_write(w, iov, niov, &want);
        if (n > 0) {
            size_t left = (size_t)n;
            while (left > 0) {
                size_t room = piece(&st, k).iov_len - koff;
                size_t step = left < room ? left : room;
                koff += step;
                left -= step;
                if (koff == piece(&st, k).iov_len) {
                    k++;
                    koff = 0;
                }
            }
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
    if (k < st.npieces && (k > 0 || koff > 0 || st.npieces > 1)) {
        /* Keep what was not written, in out alone. */
        struct m2a_buf rest = {0};
        for (size_t j = k; j < st.npieces; j++) {
            struct iovec v = piece(&st, j);
            size_t skip = j == k ? koff : 0;
            m2a_buf_append(&rest, (unsigned char *)v.iov_base + skip, v.iov_len - skip);
        }
        m2a_buf_reset(out);
        m2a_buf_append(out, rest.data, rest.len);
        m2a_buf_free(&rest);
    } else if (k == st.npieces) {
        out->len = 0;
    }
    if (b) {
        b->n = 0;
        b->bytes = 0;
    }
    return rc;
}
