/* amqp_conn.h - one AMQP 0-9-1 connection with one channel, over
 * rabbitmq-c: the adapter every AMQP client of the bridge goes through (the
 * publisher of amqp_out.c; a consumer, for the downlink).
 *
 * It opens TCP or TLS to one node (the TLS peer is verified against that
 * node's name), logs in with the client properties and capabilities the
 * bridge relies on (publisher_confirms, connection.blocked, basic.nack,
 * consumer_cancel_notify, authentication_failure_close, ...), opens its
 * channel, declares a topology, and turns on publisher confirms or sets a
 * consumer prefetch and consumes. Every call that waits for the broker is
 * bounded by an absolute deadline the caller passes (monotonic
 * milliseconds, m2a_now_ms), so a stop deadline can govern all of them.
 *
 * m2a_amqp_conn_read is the state machine of incoming frames: it reads what
 * has arrived without blocking and hands each event to the caller's
 * callbacks: basic.ack / basic.nack, basic.return once its content header
 * names the message (its body is skipped), basic.deliver once its body is
 * complete, connection.blocked / unblocked, basic.cancel; it answers the
 * broker's channel.close and connection.close and says how the session
 * ended. Heartbeats are sent inside it (rabbitmq-c does so only inside its
 * calls, so call it at least every heartbeat / 2) and a broker silent for
 * two heartbeat intervals ends the session.
 *
 * Writes of the caller's own frames (amqp_frames.h) go through
 * m2a_amqp_conn_wire(), between calls of this module.
 *
 * Low level: it does not log; each failure leaves a sentence in
 * m2a_amqp_conn_why(). Threads: a connection belongs to the thread that
 * created it (rabbitmq-c is not thread-safe); no call may come from another
 * thread. */
#ifndef MQTT2AMQP_AMQP_CONN_H
#define MQTT2AMQP_AMQP_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <amqp.h>
#include <amqp_framing.h>

#include "mqtt2amqp/amqp_frames.h"
#include "mqtt2amqp/config.h"

/* How a session stands after a call: what the owner must do next. */
enum m2a_amqp_conn_state {
    M2A_AMQP_CONN_OK = 0,  /* go on */
    M2A_AMQP_CONN_LOST,    /* the connection failed: free it, back off, reconnect */
    M2A_AMQP_CONN_CLOSED,  /* the broker closed the connection (close-ok sent) */
    M2A_AMQP_CONN_CHANNEL, /* the broker closed the channel (close-ok sent): the connection
                              still works; close it politely */
};

struct m2a_amqp_conn_opts {
    const struct m2a_conf_amqp *conf; /* vhost, credentials, heartbeat, tls; borrowed */
    const char *name;                 /* the connection_name client property; copied */
    uint16_t channel;                 /* the channel to open, 1.. */
};

/* basic.return, once its content header has arrived. The strings and the
 * properties point into the library's frame buffers: valid during the
 * callback only. */
struct m2a_amqp_conn_return {
    uint16_t reply_code;
    amqp_bytes_t reply_text;
    amqp_bytes_t exchange;
    amqp_bytes_t routing_key;
    const amqp_basic_properties_t *props; /* the message's (message_id ...) */
};

/* basic.deliver with its whole body. Valid during the callback only. */
struct m2a_amqp_conn_delivery {
    uint64_t delivery_tag;
    bool redelivered;
    amqp_bytes_t consumer_tag;
    amqp_bytes_t exchange;
    amqp_bytes_t routing_key;
    const amqp_basic_properties_t *props;
    amqp_bytes_t body;
};

/* What m2a_amqp_conn_read hands over. A NULL callback ignores the event. */
struct m2a_amqp_conn_events {
    void (*ack)(void *ud, uint64_t tag, bool multiple);
    void (*nack)(void *ud, uint64_t tag, bool multiple);
    void (*returned)(void *ud, const struct m2a_amqp_conn_return *r);
    void (*deliver)(void *ud, const struct m2a_amqp_conn_delivery *d);
    /* connection.blocked (reason given) and connection.unblocked. */
    void (*blocked)(void *ud, bool blocked, amqp_bytes_t reason);
    /* basic.cancel from the broker: the consumer's queue went away. */
    void (*cancelled)(void *ud, amqp_bytes_t consumer_tag);
    /* Optional, for a consumer: asked between whole messages; false ends
     * the read there, and what follows stays buffered (see
     * m2a_amqp_conn_buffered) until a read it allows. A consumer that holds
     * back for long calls m2a_amqp_conn_keepalive meanwhile. */
    bool (*may_deliver)(void *ud);
};

struct m2a_amqp_conn;

/* A connection not yet open. Never fails (out of memory aborts). */
struct m2a_amqp_conn *m2a_amqp_conn_new(const struct m2a_amqp_conn_opts *opts);
/* Closes the socket without a word to the broker (see m2a_amqp_conn_close
 * for the polite way) and frees. NULL is a no-op. */
void m2a_amqp_conn_free(struct m2a_amqp_conn *c);

/* Connects to node (TCP, or TLS verifying the broker's certificate and,
 * with tls.verify_hostname, that it names node->host), logs in and opens
 * the channel. Each step is bounded by its own limit (5 s for the TCP and
 * TLS connect, 5 s for the AMQP handshake, 10 s per RPC) and by
 * deadline_ms. Returns 0, or M2A_ERR_IO / M2A_ERR_AMQP / M2A_ERR_CONFIG
 * with m2a_amqp_conn_why() set; m2a_amqp_conn_refused() tells a refusal
 * that needs an operator (credentials, vhost, a certificate) from a node
 * that is down. At most once per m2a_amqp_conn. */
int m2a_amqp_conn_open(struct m2a_amqp_conn *c, const struct m2a_conf_endpoint *node,
                       uint64_t deadline_ms);

/* Declares the exchanges, queues and bindings of topo (only its topology
 * is read). Returns 0, M2A_ERR_AMQP when the broker refused one (it closed
 * the channel: the connection still works, close it politely) or
 * M2A_ERR_CLOSED when the connection failed. */
int m2a_amqp_conn_declare(struct m2a_amqp_conn *c, const struct m2a_conf_amqp *topo,
                          uint64_t deadline_ms);

/* confirm.select: from now on every publish gets a basic.ack or basic.nack
 * with delivery tags 1, 2, ... in publish order. Returns as _declare. */
int m2a_amqp_conn_confirm_select(struct m2a_amqp_conn *c, uint64_t deadline_ms);

/* basic.qos with prefetch_count, then basic.consume of queue with manual
 * acknowledgements; the broker's consumer tag goes into tag (cut to
 * tag_len - 1). Returns as _declare. */
int m2a_amqp_conn_consume(struct m2a_amqp_conn *c, const char *queue, uint16_t prefetch, char *tag,
                          size_t tag_len, uint64_t deadline_ms);

/* What a consumer does with a delivery. */
enum m2a_amqp_conn_settlement {
    M2A_AMQP_CONN_ACK,          /* basic.ack of this delivery */
    M2A_AMQP_CONN_ACK_MULTIPLE, /* basic.ack of it and every earlier one */
    M2A_AMQP_CONN_REJECT,  /* basic.reject, not requeued: to the queue's dead-letter exchange */
    M2A_AMQP_CONN_REQUEUE, /* basic.reject, requeued */
};

/* Settles a delivery (no reply from the broker). Returns 0 or M2A_ERR_IO
 * (the connection failed). */
int m2a_amqp_conn_settle(struct m2a_amqp_conn *c, uint64_t delivery_tag,
                         enum m2a_amqp_conn_settlement how);

/* Reads every frame that has arrived, without blocking, and hands each
 * event to ev (with ud). Sends a heartbeat if one is due. It reads the
 * socket only after m2a_amqp_conn_input_seen (the owner's wait saw it
 * readable), or at least every 100 ms; what is buffered always. Returns how the
 * session stands; M2A_AMQP_CONN_LOST also after two heartbeat intervals of
 * silence from the broker. */
enum m2a_amqp_conn_state m2a_amqp_conn_read(struct m2a_amqp_conn *c,
                                            const struct m2a_amqp_conn_events *ev, void *ud);

/* The owner's wait saw the socket readable (or hung up): the broker sent
 * something. A heartbeat counts, though rabbitmq-c consumes it without
 * handing it over, so only this tells a quiet broker from a silent one. */
void m2a_amqp_conn_input_seen(struct m2a_amqp_conn *c);

/* True when frames are already in rabbitmq-c's buffers: read before
 * waiting on the socket, which will not signal them. */
bool m2a_amqp_conn_buffered(struct m2a_amqp_conn *c);
/* For an owner that does not read for a while (may_deliver said no): sends
 * a heartbeat frame when half the negotiated interval has passed since the
 * last one sent here, as rabbitmq-c would from a read. Returns 0, or
 * M2A_ERR_IO with m2a_amqp_conn_why() set. */
int m2a_amqp_conn_keepalive(struct m2a_amqp_conn *c);

/* Closes the channel (if open_channel) and the connection, politely,
 * waiting for the broker's close-ok until deadline_ms at most, then the
 * socket. The connection cannot be used again: free it. */
void m2a_amqp_conn_close(struct m2a_amqp_conn *c, bool close_channel, uint64_t deadline_ms);

/* What an open connection is: valid until m2a_amqp_conn_close or _free. */
struct m2a_amqp_conn_params {
    /* The socket (-1 before the TCP connect) and, over TLS, the session:
     * where m2a_amqp_frames_send writes. */
    struct m2a_amqp_frames_wire wire;
    int heartbeat_s;    /* negotiated; 0: none */
    uint32_t frame_max; /* negotiated: the largest frame */
    uint16_t channel;
};
const struct m2a_amqp_conn_params *m2a_amqp_conn_params(const struct m2a_amqp_conn *c);

/* Why the last call failed, or how the session ended (not NUL-free of
 * broker text, but NUL-terminated); "" if nothing failed. */
const char *m2a_amqp_conn_why(const struct m2a_amqp_conn *c);
/* True when the last failure was a refusal that needs an operator (the
 * login, the vhost, the topology, the broker's certificate), not an
 * outage. */
bool m2a_amqp_conn_refused(const struct m2a_amqp_conn *c);

#endif
