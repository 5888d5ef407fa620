/* amqp_frames.h - basic.publish as wire bytes, so that a pass of publishes
 * leaves in one write (internal to amqp_out, split out for unit tests).
 *
 * rabbitmq-c's amqp_basic_publish sends the method, content header and body
 * frames of every message with a send() each: three system calls and three
 * loopback segments per message, the largest single cost of the AMQP thread
 * (bench/profile.sh). Here the same frames are encoded with the library's
 * own encoders (amqp_encode_method, amqp_encode_properties), adding only
 * the frame envelope of AMQP 0-9-1 section 2.3.5 (type, channel, size,
 * frame-end octet), appended to a buffer that amqp_out writes once per pass.
 *
 * Only for plain TCP connections, where the socket rabbitmq-c reports is
 * the wire; and only between rabbitmq-c calls, so that a frame the library
 * sends (heartbeat, close-ok) never lands inside one of ours. */
#ifndef MQTT2AMQP_AMQP_FRAMES_H
#define MQTT2AMQP_AMQP_FRAMES_H

#include <stdint.h>

#include <amqp.h>
#include <amqp_framing.h>

#include "mqtt2amqp/util.h"

/* Appends the frames of one basic.publish (method, content header, body
 * split at frame_max) to out. Returns 0, or M2A_ERR_ARG when the method or
 * the properties do not fit one frame (out is then unchanged). */
int m2a_amqp_frames_publish(struct m2a_buf *out, uint16_t channel, uint32_t frame_max,
                            const amqp_basic_publish_t *method,
                            const amqp_basic_properties_t *props, amqp_bytes_t body);

/* Writes all of out to the non-blocking socket fd and empties it. Waits for
 * POLLOUT while the socket is full, but gives up after stall_ms without a
 * byte accepted (a peer that stopped reading). Returns 0, M2A_ERR_IO (errno
 * says why) or M2A_ERR_TIMEOUT; on error out keeps what was not written. */
int m2a_amqp_frames_send(int fd, struct m2a_buf *out, int stall_ms);

#endif
