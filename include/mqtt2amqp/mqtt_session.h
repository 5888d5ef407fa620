/* mqtt_session.h - one MQTT client session kept up across reconnects, on
 * the event loop of the thread that owns it: the brokers it may use, a
 * fresh libmosquitto handle per connection (options, TLS, CONNECT with its
 * MQTT 5 properties), a non-blocking connect with one deadline for TCP,
 * TLS and CONNACK, the subscriptions it keeps (and retries when the broker
 * refuses them), reconnects with backoff across the broker list, take-over
 * detection, and the orderly end (queued packets out, DISCONNECT, drain).
 *
 * What it does not do is decide when queued packets may leave: the owner
 * does, through the may_write gate. That is how the uplink keeps its
 * invariant (a PUBACK leaves only after its message is durable: mqtt_in.c)
 * and how a publishing session (the downlink of issue 11) simply writes
 * whenever it has something: the same session, two owners.
 *
 * Threads: a session belongs to the thread that runs its loop; every call
 * here, every hook and every libmosquitto callback runs on that thread.
 * The handle is in libmosquitto's external-thread mode
 * (mosquitto_threaded_set): libmosquitto never writes on its own.
 *
 * Connect: libmosquitto 2.0.11's mosquitto_connect_bind_async carries no
 * CONNECT properties, but it sends the ones a mosquitto_connect_bind_v5
 * call stored in the handle; a call with a NULL host stores them and
 * returns MOSQ_ERR_INVAL before touching the network (lib/connect.c). So
 * the session primes the properties that way, then connects without
 * blocking; test_puback_order checks the CONNECT bytes on the wire, so a
 * libmosquitto that stops doing this fails the tests, not production.
 * Only the name lookup (getaddrinfo) still blocks: glibc's resolver
 * timeout bounds it.
 *
 * Logs connection events under opts->log_name. */
#ifndef MQTT2AMQP_MQTT_SESSION_H
#define MQTT2AMQP_MQTT_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mosquitto.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/loop.h"

struct m2a_mqtt_session;

/* The owner's side. Every hook may be NULL; ud is passed to each. Hooks
 * run on the loop's thread, never inside another hook of the same
 * session except where said. */
struct m2a_mqtt_session_hooks {
    void *ud;
    /* The socket is readable (or the peer hung up) while may_read allows
     * reading: read with m2a_mqtt_session_read until it returns false or
     * the owner has read enough. NULL: the session reads what is there. */
    void (*readable)(void *ud);
    /* Gates, asked before each wait (m2a_mqtt_session_arm): may_read false
     * stops reading and connecting (the socket is then watched for a hang
     * up only); may_write false keeps queued packets queued. NULL: true. */
    bool (*may_read)(void *ud);
    bool (*may_write)(void *ud);
    /* A PUBLISH, inside m2a_mqtt_session_read. m and props are freed when
     * it returns. For QoS 1 its PUBACK is queued already; it leaves with
     * the next write may_write lets through. */
    void (*on_message)(void *ud, const struct mosquitto_message *m,
                       const mosquitto_property *props);
    /* A QoS 1 message this session published was acknowledged
     * (reason_code < 0x80) or refused (>= 0x80), MQTT 5 reason codes. */
    void (*on_published)(void *ud, int mid, int reason_code);
    /* CONNACK accepted from conf->endpoints[endpoint]; the subscriptions
     * are on their way. */
    void (*on_up)(void *ud, size_t endpoint, bool session_present);
    /* A connection that had been up ended. */
    void (*on_down)(void *ud);
    /* A SUBACK for filter: granted QoS (0..2) or a failure reason code
     * (>= 0x80). m2a_mqtt_session_refused lists the refused ones. */
    void (*on_suback)(void *ud, const char *filter, int code);
    /* A connection that lasted less than a take-over window was closed by
     * the broker, the n-th time in a row (n >= M2A_MQTT_TAKEOVER_STREAK):
     * probably another client with the same client id. */
    void (*on_takeover)(void *ud, unsigned n);
};

/* Sessions closed by the broker this many times in a row, each soon after
 * its CONNACK, while connecting works, are taken for a take-over fight. */
#define M2A_MQTT_TAKEOVER_STREAK 3

/* Borrowed pointers: all must outlive the session. */
struct m2a_mqtt_session_opts {
    const struct m2a_conf_mqtt *conf; /* brokers, identity, timers, TLS */
    const char *client_id;            /* NULL: conf->client_id */
    const char *log_name;             /* log component, e.g. "mqtt" */
    struct m2a_loop *loop;            /* the owning thread's loop */
    /* MQTT 5 Maximum Packet Size sent in CONNECT: the broker sends nothing
     * larger (it drops such a message for this client instead). 0: none. */
    uint32_t max_packet_bytes;
    /* QoS 1 PUBLISHes of ours unacknowledged at most (1..65535); more wait
     * in libmosquitto's queue. Under MQTT 5 the broker's Receive Maximum
     * (Mosquitto: max_inflight_messages, 20 by default) lowers it. 0:
     * libmosquitto's own limit, 20. */
    int send_maximum;
    struct m2a_mqtt_session_hooks hooks;
};

/* Builds the session and its TLS contexts (one per broker, each checking
 * the name of the broker it is used for) and one handle to check the
 * settings; connects nothing yet. Returns 0 or an m2a_err with a sentence
 * in err. */
int m2a_mqtt_session_new(const struct m2a_mqtt_session_opts *opts, struct m2a_mqtt_session **out,
                         char *err, size_t errlen);
/* Drops the connection at once (nothing more is written) and frees. NULL
 * is a no-op. Use m2a_mqtt_session_close first for an orderly end. */
void m2a_mqtt_session_free(struct m2a_mqtt_session *s);

/* Starts connecting: the first broker of a shuffled order, now. */
void m2a_mqtt_session_start(struct m2a_mqtt_session *s);

/* Asks the gates again and sets what the loop watches: call before each
 * wait, and after a gate's answer changed. */
void m2a_mqtt_session_arm(struct m2a_mqtt_session *s);

/* Handles one packet from the socket if a whole one is there (CONNACK,
 * SUBACK, PUBLISH: on_message...). Returns true while the connection
 * lives; false once it has ended (logged, next attempt scheduled,
 * on_down called). For the readable hook. */
bool m2a_mqtt_session_read(struct m2a_mqtt_session *s);
/* Writes what is queued, if may_write allows. cork: hold the bytes back
 * until all are written, so that many small packets (a batch of PUBACKs)
 * leave in one segment. Returns like m2a_mqtt_session_read. */
bool m2a_mqtt_session_write(struct m2a_mqtt_session *s, bool cork);

/* The connection's socket, or -1. */
int m2a_mqtt_session_fd(const struct m2a_mqtt_session *s);
/* While up: how many QoS 1 PUBLISHes of ours may be unacknowledged at
 * once on this connection (the broker's Receive Maximum under MQTT 5 when
 * its CONNACK has one, else send_maximum or libmosquitto's 20); more wait
 * in libmosquitto's queue. 0 while down. */
unsigned m2a_mqtt_session_send_window(const struct m2a_mqtt_session *s);
/* True between CONNACK and the end of that connection. */
bool m2a_mqtt_session_up(const struct m2a_mqtt_session *s);

/* Ends the connection without writing anything more (the owner could not
 * make a read batch durable: none of its PUBACKs may leave) and schedules
 * the next attempt after the backoff delay. Quiet: the owner says why. */
void m2a_mqtt_session_abort(struct m2a_mqtt_session *s);
/* hold: a CONNACK does not reset the reconnect backoff (the owner's own
 * failures end each connection, so connecting again quickly helps
 * nobody). Releasing the hold resets the backoff. */
void m2a_mqtt_session_hold_backoff(struct m2a_mqtt_session *s, bool hold);

/* The orderly end, bounded by deadline_ms (and the loop's stop deadline):
 * if up and drain is true, writes what is queued, sends DISCONNECT and
 * reads until the broker closes (so it reads every packet we sent before
 * we close), then drops the connection. drain false: dropped at once.
 * The session stays usable (m2a_mqtt_session_start connects again). */
void m2a_mqtt_session_close(struct m2a_mqtt_session *s, uint64_t deadline_ms, bool drain);

/* The subscriptions to keep (QoS 1; strings copied). Subscribes to the
 * added ones before unsubscribing from the dropped ones, now if up, else at
 * the next CONNACK (the broker's session may still hold a dropped one).
 * Every CONNACK resubscribes to all. A refused one is retried with
 * backoff. *added / *removed (may be NULL) get the counts.
 * MQTT 5 subscribes with Retain As Published and retain handling "send
 * retained messages only if the subscription is new", so a resubscription
 * on a session that has it (restart, reconnect, reload) resends nothing. */
void m2a_mqtt_session_subscribe(struct m2a_mqtt_session *s, char *const *filters, size_t n,
                                size_t *added, size_t *removed);
/* MQTT 3.1.1 (which has no retain handling): whether a message that
 * arrived with the retain flag on topic is a resend of retained state the
 * bridge already had: there, retain 1 means "sent because of a SUBSCRIBE",
 * and true means no subscription matching topic is new to the broker's
 * session (every one was already in it when the CONNACK said session
 * present, and none was added since by a reload or first granted on this
 * connection). Always false with MQTT 5. */
bool m2a_mqtt_session_retained_resend(const struct m2a_mqtt_session *s, const char *topic);
/* The subscriptions the broker refuses now, one line each ("PREFIX
 * subscription to FILTER refused by the broker: REASON (N refusals,
 * retrying)"), into buf (NUL-terminated; cut to fit). Returns how many. */
size_t m2a_mqtt_session_refused(const struct m2a_mqtt_session *s, const char *prefix, char *buf,
                                size_t len);

/* Queues a PUBLISH (libmosquitto copies topic, payload and properties);
 * it leaves with the next write. *mid (may be NULL) identifies it in
 * on_published. Returns 0, M2A_ERR_CLOSED when not up, or M2A_ERR_MQTT. */
int m2a_mqtt_session_publish(struct m2a_mqtt_session *s, int *mid, const char *topic,
                             const void *payload, size_t len, int qos, bool retain,
                             const mosquitto_property *props);

#endif
