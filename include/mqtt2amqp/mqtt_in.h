/* mqtt_in.h - the MQTT side: one thread that owns its event loop, the MQTT
 * session (mqtt_session.h: the libmosquitto handle, the brokers, the
 * subscriptions), the route scratch and the spool writer.
 *
 * It subscribes (QoS 1, persistent session) to the routes' subscriptions,
 * maps each message through the routes and appends the envelopes to the
 * spool inside on_message. The client is in libmosquitto's external-thread
 * mode (mosquitto_threaded_set), so the PUBACKs that libmosquitto queues
 * before on_message leave the socket only when this thread calls
 * mosquitto_loop_write, which it does only after m2a_spool_flush() has
 * returned 0 for the read batch. If appending or flushing fails, the socket
 * is shut down before any write, so the broker redelivers. A message too
 * large ever to fit in the spool (M2A_ERR_ARG) is the one exception:
 * retrying it would block the session forever, so it is acknowledged and
 * handled by the undeliverable-message policy (policy.h: dead-lettered
 * without its body, or dropped; counted and logged). While the spool
 * is above its high-water mark the thread stops reading MQTT (Mosquitto keeps
 * queueing in the persistent session) and resumes by itself. */
#ifndef MQTT2AMQP_MQTT_IN_H
#define MQTT2AMQP_MQTT_IN_H

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/generation.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/stats.h"

struct m2a_mqtt_in;

/* Borrowed pointers (but generation): all must outlive the m2a_mqtt_in. */
struct m2a_mqtt_in_opts {
    const struct m2a_conf_mqtt *conf; /* connection settings: never reloaded */
    /* The generation to start with: its routes, subscriptions and rules
     * for undeliverable messages (a routing error, or a message too large
     * for the spool, is dead-lettered through the spool in the same batch
     * as the message, so its PUBACK leaves only once the dead letter is
     * durable). The thread takes a reference of its own. */
    struct m2a_generation *generation;
    struct m2a_spool *spool;
    uint64_t spool_max_bytes; /* pause reading above 90%, resume below 80% */
    struct m2a_stats *stats;
    /* With drop_oldest reading never pauses and the spool's discards are
     * counted (stats dropped) and logged here. */
    enum m2a_overflow spool_overflow;
};

/* Starts the thread. Returns 0 or an m2a_err with a sentence in err. */
int m2a_mqtt_in_start(const struct m2a_mqtt_in_opts *opts, struct m2a_mqtt_in **out, char *err,
                      size_t errlen);

/* Live reload (any thread): hands the thread the next generation (it takes
 * a reference; the caller keeps its own). Between two read batches the
 * thread maps through it, subscribes to the filters it adds and
 * unsubscribes from those it drops (at the next connect if disconnected),
 * logs "routes reloaded (generation N): ..." and drops its reference to
 * the one it ran. One handed over before and not yet adopted is dropped:
 * the newest wins. Hand a generation over only once the AMQP thread runs
 * it (its topology declared), so that no record of a new route reaches
 * RabbitMQ before its exchange exists (reload.c). */
void m2a_mqtt_in_set_generation(struct m2a_mqtt_in *mi, struct m2a_generation *gen);

/* Stops reading, lets the PUBACKs of everything already spooled leave,
 * disconnects and joins the thread, all within one stop deadline (2 s;
 * only a DNS lookup in progress is not bounded by it). A wake-up of the
 * thread's loop: nothing polls for it. NULL is a no-op. */
void m2a_mqtt_in_stop(struct m2a_mqtt_in *mi);

#endif
