/* amqp_frames.h - basic.publish as wire bytes, and the writer that puts a
 * buffer of them on the connection, so that a pass of publishes leaves in
 * one write (internal to the AMQP side, split out for unit tests).
 *
 * rabbitmq-c's amqp_basic_publish sends the method, content header and body
 * frames of every message with a send() each (over TLS: three TLS records
 * and three sends): three system calls and three loopback segments per
 * message, the largest single cost of the AMQP thread (bench/profile.sh).
 * Here the same frames are encoded with the library's own encoders
 * (amqp_encode_method, amqp_encode_properties), adding only the frame
 * envelope of AMQP 0-9-1 section 2.3.5 (type, channel, size, frame-end
 * octet), appended to a buffer that the publisher (amqp_publish.c) writes
 * once per pass with m2a_amqp_frames_send, on the plain socket or through
 * the connection's TLS session.
 *
 * Only between rabbitmq-c calls, and only whole: a frame the library sends
 * (heartbeat, close-ok) must never land inside one of ours. rabbitmq-c
 * writes synchronously (a send it starts is finished before the call
 * returns), so writing between its calls cannot interleave with it.
 *
 * Not thread-safe: a buffer and a wire belong to one thread. */
#ifndef MQTT2AMQP_AMQP_FRAMES_H
#define MQTT2AMQP_AMQP_FRAMES_H

#include <stdint.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <openssl/ssl.h>

#include "mqtt2amqp/util.h"

/* Appends the frames of one basic.publish (method, content header, body
 * split at frame_max) to out. Returns 0, or M2A_ERR_ARG when the method or
 * the properties do not fit one frame (out is then unchanged): such a
 * message can never be published on this connection. */
int m2a_amqp_frames_publish(struct m2a_buf *out, uint16_t channel, uint32_t frame_max,
                            const amqp_basic_publish_t *method,
                            const amqp_basic_properties_t *props, amqp_bytes_t body);

/* Body bytes the frames borrow instead of copying: span i goes between
 * out->data[spans[i-1].at .. spans[i].at) and what follows in out. The
 * bytes belong to the caller and must stay unchanged until the frames are
 * written (m2a_amqp_frames_sendv) or the borrow is reset. */
struct m2a_amqp_frames_span {
    size_t at; /* offset in out where the span's bytes go */
    const unsigned char *ptr;
    size_t len;
};
struct m2a_amqp_frames_borrow {
    struct m2a_amqp_frames_span *spans;
    size_t n, cap;
    size_t bytes; /* sum of the spans' lengths */
};
void m2a_amqp_frames_borrow_free(struct m2a_amqp_frames_borrow *b);

/* m2a_amqp_frames_publish, but a body frame's payload of at least
 * borrow_min bytes is borrowed from body (a span in b) rather than copied
 * into out: a large message is written from where it already is. */
int m2a_amqp_frames_publish_borrow(struct m2a_buf *out, struct m2a_amqp_frames_borrow *b,
                                   uint16_t channel, uint32_t frame_max,
                                   const amqp_basic_publish_t *method,
                                   const amqp_basic_properties_t *props, amqp_bytes_t body,
                                   size_t borrow_min);

/* Where frames are written: a connected non-blocking socket, or the TLS
 * session over it (ssl not NULL; then every byte goes through SSL_write).
 * Borrowed from the connection that owns them. */
struct m2a_amqp_frames_wire {
    int fd;
    SSL *ssl;
};

/* Writes all of out to the wire and empties it. Waits for POLLOUT while
 * the socket is full, but gives up when stall_ms pass without a byte
 * accepted (a peer that stopped reading) or when deadline_ms (monotonic
 * m2a_now_ms, M2A_LOOP_NEVER for none) passes: M2A_ERR_TIMEOUT. Returns 0,
 * M2A_ERR_TIMEOUT or M2A_ERR_IO (errno says why: EPIPE, ECONNRESET, ...;
 * EPROTO for a TLS error). On error out keeps what was not written, and the
 * connection is unusable (a TLS write cut short cannot be abandoned). */
int m2a_amqp_frames_send(const struct m2a_amqp_frames_wire *w, struct m2a_buf *out, int stall_ms,
                         uint64_t deadline_ms);

/* m2a_amqp_frames_send of out with b's spans spliced in (b may be NULL):
 * one writev (sendmsg) per wake-up on a plain socket; through TLS, one
 * record at a time as above. Empties b as well. On error what was not
 * written is copied into out, so that nothing borrowed is referred to
 * afterwards. */
int m2a_amqp_frames_sendv(const struct m2a_amqp_frames_wire *w, struct m2a_buf *out,
                          struct m2a_amqp_frames_borrow *b, int stall_ms, uint64_t deadline_ms);

#endif
