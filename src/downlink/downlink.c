/* downlink.c - the downlinks' thread (AMQP -> MQTT); see downlink.h.
 *
 * Thread ownership: the downlink thread owns its event loop, its AMQP
 * connection (amqp_conn.c; one channel, one consumer per downlink), its
 * MQTT session (mqtt_session.c, on the same loop), the compiled topic
 * templates and the in-flight ring. start / request_stop / stop run on the
 * caller's thread and touch only the loop's stop deadline and the thread.
 *
 * The turn: the MQTT session runs on the loop by itself (connects,
 * reconnects with backoff across mqtt.hosts, reads PUBACKs). While it is
 * up, an AMQP connection is opened (failover across amqp.hosts), the
 * topology declared and every downlink's queue consumed with its prefetch.
 * Each basic.deliver gets its topic; it is published (its entry joins the
 * ring in delivery order) or, if the topic cannot be formed, rejected
 * without requeue at once. on_published marks the entry; each turn settles
 * the ring's finished prefix: one basic.ack (multiple) for the acknowledged
 * run, a basic.reject for a PUBLISH the broker refused.
 *
 * Cost per message: a turn reads every PUBACK the MQTT socket holds (the
 * session's readable hook) and, only when the AMQP socket was readable,
 * the deliveries rabbitmq-c can decode, up to the window: twice the MQTT
 * send window, 32..256 (libmosquitto walks its list of outgoing messages on
 * every PUBLISH and PUBACK, so the rest of the prefetch waits on the AMQP
 * side, in order); the PUBLISHes of a turn leave in one corked write. What
 * remains per message is libmosquitto's: 3 reads per PUBACK, a send per
 * PUBLISH and a write to its wake-up socket pair (2.0.11 writes it in
 * packet__queue whatever the threading mode). No pacing delay: under MQTT 5
 * the broker's Receive Maximum (Mosquitto's max_inflight_messages: 20
 * stock, 1000 as we ship it) bounds the PUBLISHes in flight, so the MQTT
 * side is bound by round trips and a waiting turn would slow it down.
 *
 * Why a prefix and basic.ack multiple are safe: all deliveries of the
 * channel are either settled at once (rejected) or in the ring, in tag
 * order, so an ack of tag T with multiple covers exactly the finished
 * entries before it. Deliveries that arrive after a stop (or while the MQTT
 * session is gone) stay in the ring as HELD: never acknowledged, so the
 * prefix stops there, and RabbitMQ redelivers them once the connection is
 * closed.
 *
 * Failures: MQTT lost -> the AMQP connection is closed at once (RabbitMQ
 * requeues every unacknowledged delivery, in order) and reopened once MQTT
 * is up again; so nothing is consumed while MQTT is down. AMQP lost -> the
 * ring is dropped (its delivery tags died with the channel; RabbitMQ
 * redelivers them: those already PUBACKed become duplicates); the MQTT
 * session stays. */
#include "mqtt2amqp/downlink.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mqtt_protocol.h>

#include "mqtt2amqp/amqp_conn.h"
#include "mqtt2amqp/downlink_topic.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/failover.h"
#include "mqtt2amqp/hostport.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/loop.h"
#include "mqtt2amqp/mqtt_session.h"
#include "mqtt2amqp/props.h"
#include "mqtt2amqp/ratelimit.h"
#include "mqtt2amqp/util.h"

#define COMPONENT      "downlink"
#define CHANNEL        1
#define POLL_MAX_MS    100  /* a turn at least this often: AMQP heartbeats */
#define CLOSE_GRACE_MS 1000 /* the polite closes after the drain of a stop */
#define LOG_EVERY_MS   1000 /* rate limit of per-message warnings */
#define STABLE_MS      10000
/* Acknowledgements wait at most ACK_DELAY_MS for company, or until ACK_BATCH
 * entries are finished: RabbitMQ pays per basic.ack frame, and under load
 * PUBACKs come one per turn, so acking each at once cost it a frame per
 * message. The delay holds only the ack (the message is already PUBACKed):
 * a crash meanwhile means a redelivery, as for any unacked delivery. */
#define ACK_DELAY_MS 2
#define ACK_BATCH    64
#define CORK_MIN     4 /* a turn's PUBLISHes, this many or more, leave corked */
/* The window (may_deliver): twice the session's send window, within these. */
#define WINDOW_MIN       32
#define WINDOW_MAX       256
#define SEND_MAXIMUM     (WINDOW_MAX / 2) /* asked for; the broker's Receive Maximum wins */
#define READS_MAX        4096             /* PUBACKs read per readable event, at most */
#define CLIENT_ID_SUFFIX "-down"

enum entry_state {
    E_PUBLISHED, /* waiting for its PUBACK (QoS 1) or its write (QoS 0) */
    E_ACKED,     /* PUBACKed: basic.ack due */
    E_REFUSED,   /* the broker refused the PUBLISH: basic.reject due */
    E_HELD,      /* not published (stopping, MQTT gone): never settled here */
};

struct entry {
    uint64_t tag;
    int mid;
    enum entry_state state;
    size_t dl; /* index of its downlink */
};

struct dl {
    const struct m2a_conf_downlink *conf;
    struct m2a_downlink_topic *topic;
    struct m2a_downlink_counters *ctr;
    char ctag[256];
};

struct m2a_downlink {
    /* --- set by start, read-only after --- */
    const struct m2a_config *cfg;
    struct m2a_stats *stats;
    struct dl *dls;
    size_t n;
    struct m2a_conf_mqtt mconf; /* the config's mqtt section, clean session */
    char *client_id;
    struct m2a_loop *loop; /* shared: its stop deadline */
    pthread_t thread;
    bool stop_requested; /* caller's thread only */

    /* --- downlink thread only --- */
    struct m2a_mqtt_session *mqtt;
    bool mqtt_up;
    unsigned mqtt_epoch; /* MQTT connections lost so far */
    unsigned conn_epoch; /* mqtt_epoch when the AMQP connection was opened */
    struct m2a_amqp_conn *conn;
    struct m2a_failover nodes;
    uint64_t next_connect_ms;
    uint64_t connected_ms;
    bool progress;      /* a message was acknowledged on this AMQP connection */
    struct entry *ring; /* in delivery order */
    size_t cap, head, count;
    uint64_t popped;        /* entries ever settled off the head: ring_at(i) is number popped+i */
    uint64_t hint;          /* number of the entry after the last PUBACKed one */
    uint64_t npubacks;      /* on_published calls so far */
    size_t turn_published;  /* PUBLISHes queued since the last write */
    bool amqp_hangup;       /* ... with an error or hang-up: read whatever the window */
    size_t window;          /* E_PUBLISHED entries at most before reading more deliveries */
    size_t npublished;      /* entries in E_PUBLISHED */
    size_t nfinished;       /* entries in E_ACKED or E_REFUSED, not yet settled */
    uint64_t settle_due_ms; /* with nfinished: settle by then (m2a_now_ms) */
    struct m2a_buf topic_buf;
    struct m2a_ratelimit rl_reject, rl_refused;
    char why[640];
};

static bool stopping(const struct m2a_downlink *d)
{
    return m2a_loop_stopping(d->loop);
}

static uint64_t drain_deadline(const struct m2a_downlink *d)
{
    uint64_t s = m2a_loop_stop_deadline(d->loop);
    return s > CLOSE_GRACE_MS ? s - CLOSE_GRACE_MS : 0;
}

static const struct m2a_conf_endpoint *node_now(const struct m2a_downlink *d)
{
    return &d->cfg->amqp.endpoints[m2a_failover_node(&d->nodes)];
}

static const char *node_name(const struct m2a_downlink *d, char *buf, size_t len)
{
    return m2a_hostport_format(buf, len, node_now(d)->host, node_now(d)->port);
}

/* ---- the ring ----------------------------------------------------------------------- */

static struct entry *ring_at(struct m2a_downlink *d, size_t i)
{
    return &d->ring[(d->head + i) % d->cap];
}

static void inflight_add(struct m2a_downlink *d, size_t dl, int64_t delta)
{
    M2A_STAT_ADD(d->stats, downlinks[dl].inflight, (uint64_t)delta);
}

/* Forgets every entry (their channel is gone). */
static void ring_clear(struct m2a_downlink *d)
{
    for (size_t i = 0; i < d->count; i++) {
        struct entry *e = ring_at(d, i);
        if (e->state != E_HELD)
            inflight_add(d, e->dl, -1);
    }
    d->popped += d->count;
    d->head = d->count = d->npublished = d->nfinished = 0;
    d->turn_published = 0;
}

/* ---- AMQP events ---------------------------------------------------------------------- */

static void log_reject(struct m2a_downlink *d, const struct dl *l,
                       const struct m2a_amqp_conn_delivery *m, const char *why)
{
    uint64_t sup;
    if (m2a_ratelimit_ok(&d->rl_reject, &sup))
        m2a_warn(COMPONENT,
                 "%s: message with routing key '%.*s' rejected to the queue's dead-letter "
                 "exchange: %s (%" PRIu64 " similar suppressed)",
                 l->conf->name, (int)(m->routing_key.len > 200 ? 200 : m->routing_key.len),
                 (const char *)m->routing_key.bytes, why, sup);
}

static long find_dl(const struct m2a_downlink *d, amqp_bytes_t ctag)
{
    for (size_t i = 0; i < d->n; i++)
        if (strlen(d->dls[i].ctag) == ctag.len && !memcmp(d->dls[i].ctag, ctag.bytes, ctag.len))
            return (long)i;
    return -1;
}

static bool retain_of(const struct dl *l, const amqp_basic_properties_t *p)
{
    switch (l->conf->retain) {
    case M2A_DOWNLINK_RETAIN_TRUE:
        return true;
    case M2A_DOWNLINK_RETAIN_FROM_HEADER:
        return m2a_downlink_topic_retain_header(
            p && (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? &p->headers : NULL, false);
    case M2A_DOWNLINK_RETAIN_FALSE:
        break;
    }
    return false;
}

/* The MQTT 5 properties of a downlink message (props.h): none over MQTT
 * 3.1.1. NULL: none. */
static mosquitto_property *mqtt_props(const struct m2a_downlink *d,
                                      const amqp_basic_properties_t *p)
{
    if (d->mconf.protocol != M2A_MQTT_V5)
        return NULL;
    return m2a_props_to_mqtt(p);
}

static void ring_push(struct m2a_downlink *d, uint64_t tag, int mid, enum entry_state st, size_t dl)
{
    *ring_at(d, d->count) = (struct entry){.tag = tag, .mid = mid, .state = st, .dl = dl};
    d->count++;
    if (st != E_HELD) {
        d->npublished++;
        inflight_add(d, dl, 1);
    }
}

static void reject_now(struct m2a_downlink *d, size_t i, const struct m2a_amqp_conn_delivery *m,
                       const char *why)
{
    struct dl *l = &d->dls[i];
    M2A_STAT_ADD(l->ctr, rejected, 1);
    log_reject(d, l, m, why);
    m2a_amqp_conn_settle(d->conn, m->delivery_tag, M2A_AMQP_CONN_REJECT);
}

static void on_deliver(void *ud, const struct m2a_amqp_conn_delivery *m)
{
    struct m2a_downlink *d = ud;
    long i = find_dl(d, m->consumer_tag);
    if (i < 0 || d->count == d->cap) {
        /* Not ours, or more than the prefetch allows: requeue it. */
        m2a_amqp_conn_settle(d->conn, m->delivery_tag, M2A_AMQP_CONN_REQUEUE);
        return;
    }
    struct dl *l = &d->dls[i];
    M2A_STAT_ADD(l->ctr, received, 1);
    if (stopping(d) || !d->mqtt_up || d->conn_epoch != d->mqtt_epoch) {
        ring_push(d, m->delivery_tag, -1, E_HELD, (size_t)i);
        return;
    }
    const amqp_basic_properties_t *p = m->props;
    const amqp_table_t *h = p && (p->_flags & AMQP_BASIC_HEADERS_FLAG) ? &p->headers : NULL;
    char why[256];
    if (m2a_downlink_topic_render(l->topic, m->routing_key.bytes, m->routing_key.len, h,
                                  &d->topic_buf, why, sizeof(why)) != 0) {
        reject_now(d, (size_t)i, m, why);
        return;
    }
    mosquitto_property *props = mqtt_props(d, p);
    int mid = -1;
    int rc = m2a_mqtt_session_publish(d->mqtt, &mid, (const char *)d->topic_buf.data, m->body.bytes,
                                      m->body.len, l->conf->qos, retain_of(l, p), props);
    mosquitto_property_free_all(&props);
    if (rc == M2A_ERR_CLOSED) {
        ring_push(d, m->delivery_tag, -1, E_HELD, (size_t)i);
        return;
    }
    if (rc != 0) {
        /* libmosquitto refuses it (larger than the broker's maximum
         * packet size, ...): it would fail every time. */
        reject_now(d, (size_t)i, m, "the MQTT client refuses to publish it (too large?)");
        return;
    }
    M2A_STAT_ADD(l->ctr, published, 1);
    ring_push(d, m->delivery_tag, mid, E_PUBLISHED, (size_t)i);
    d->turn_published++;
}

static void on_cancelled(void *ud, amqp_bytes_t ctag)
{
    struct m2a_downlink *d = ud;
    long i = find_dl(d, ctag);
    m2a_warn(COMPONENT, "%s: RabbitMQ cancelled the consumer (queue deleted?); reconnecting",
             i >= 0 ? d->dls[i].conf->name : "?");
    snprintf(d->why, sizeof(d->why), "consumer cancelled by the broker");
}

/* Deliveries wait in RabbitMQ's prefetch (the socket, rabbitmq-c's buffer)
 * while libmosquitto has a window's worth unacknowledged: each PUBLISH walks
 * libmosquitto's whole list of outgoing messages (in flight and queued), so
 * handing it all the prefetch (1000 by default) cost more per message than
 * anything else here. */
static bool may_deliver(void *ud)
{
    const struct m2a_downlink *d = ud;
    return d->npublished < d->window || d->amqp_hangup || !d->mqtt_up;
}

static const struct m2a_amqp_conn_events conn_events = {
    .deliver = on_deliver,
    .cancelled = on_cancelled,
    .may_deliver = may_deliver,
};

/* ---- MQTT events ---------------------------------------------------------------------- */

static void on_published(void *ud, int mid, int reason)
{
    struct m2a_downlink *d = ud;
    d->npubacks++;
    /* PUBACKs come in publish order as a rule: the scan starts after the
     * entry of the previous one, so it usually looks at one entry. */
    size_t from =
        d->hint > d->popped && d->hint - d->popped < d->count ? (size_t)(d->hint - d->popped) : 0;
    for (size_t k = 0; k < d->count; k++) {
        size_t i = (from + k) % d->count;
        struct entry *e = ring_at(d, i);
        if (e->state != E_PUBLISHED || e->mid != mid)
            continue;
        d->hint = d->popped + i + 1;
        e->state = reason < 0x80 ? E_ACKED : E_REFUSED;
        d->npublished--;
        if (d->nfinished++ == 0)
            d->settle_due_ms = m2a_now_ms() + ACK_DELAY_MS;
        if (e->state == E_REFUSED) {
            uint64_t sup;
            if (m2a_ratelimit_ok(&d->rl_refused, &sup))
                m2a_warn(COMPONENT,
                         "%s: the MQTT broker refused a PUBLISH (%s): rejected to the queue's "
                         "dead-letter exchange (%" PRIu64 " similar suppressed)",
                         d->dls[e->dl].conf->name, mosquitto_reason_string(reason), sup);
        }
        return;
    }
}

/* Sends what the turn published: corked when there are several, so that
 * they leave in few segments (libmosquitto sends each packet on its own) and
 * Mosquitto wakes up once for them. */
static void mqtt_flush(struct m2a_downlink *d)
{
    size_t n = d->turn_published;
    d->turn_published = 0;
    m2a_mqtt_session_write(d->mqtt, n >= CORK_MIN);
}

/* The session's readable hook: reads every PUBACK the socket holds, until
 * a read brings none (mosquitto_loop_read stops after one packet here: a
 * PUBACK that releases a queued PUBLISH makes it write to its wake-up
 * socketpair, which fails with EAGAIN, and it takes that errno for its
 * own); then the PUBLISHes that the PUBACKs let out of libmosquitto's
 * queue (beyond the broker's receive maximum) leave together. One poll per
 * batch of PUBACKs rather than one per PUBACK. */
static void mqtt_readable(void *ud)
{
    struct m2a_downlink *d = ud;
    uint64_t first = d->npubacks;
    for (int i = 0; i < READS_MAX; i++) {
        uint64_t before = d->npubacks;
        if (!m2a_mqtt_session_read(d->mqtt))
            return; /* the connection ended (on_down) */
        if (d->npubacks == before)
            break;
    }
    d->turn_published += (size_t)(d->npubacks - first);
    mqtt_flush(d);
}

static void on_up(void *ud, size_t endpoint, bool present)
{
    (void)endpoint, (void)present;
    struct m2a_downlink *d = ud;
    d->mqtt_up = true;
    /* Twice the send window: a batch of PUBACKs finds the next PUBLISHes
     * queued already, while the list libmosquitto walks stays short. */
    size_t w = 2 * (size_t)m2a_mqtt_session_send_window(d->mqtt);
    w = w < WINDOW_MIN ? WINDOW_MIN : w > WINDOW_MAX ? WINDOW_MAX : w;
    d->window = w < d->cap ? w : d->cap;
    M2A_STAT_SET(d->stats, downlink_mqtt_connected, true);
}

static void on_down(void *ud)
{
    struct m2a_downlink *d = ud;
    d->mqtt_up = false;
    d->mqtt_epoch++; /* what it had in flight is gone with its handle */
    M2A_STAT_SET(d->stats, downlink_mqtt_connected, false);
}

static void on_takeover(void *ud, unsigned n)
{
    struct m2a_downlink *d = ud;
    m2a_error(COMPONENT,
              "MQTT session %s closed by the broker %u times in a row soon after connecting: "
              "another client uses this client id (set mqtt.downlink_client_id)",
              d->client_id, n);
}

/* ---- settling ------------------------------------------------------------------------- */

/* Settles the finished prefix of the ring: one basic.ack multiple for each
 * run of acknowledged entries, a basic.reject for each refused one. Returns
 * 0 or M2A_ERR_IO. */
static int settle_prefix(struct m2a_downlink *d)
{
    uint64_t ack_tag = 0;
    size_t nack = 0;
    int rc = 0;
    while (d->count && rc == 0) {
        struct entry *e = ring_at(d, 0);
        if (e->state == E_PUBLISHED || e->state == E_HELD)
            break;
        if (e->state == E_ACKED) {
            ack_tag = e->tag;
            nack++;
            M2A_STAT_ADD(d->dls[e->dl].ctr, acked, 1);
            d->progress = true;
        } else {
            if (nack)
                rc = m2a_amqp_conn_settle(
                    d->conn, ack_tag, nack > 1 ? M2A_AMQP_CONN_ACK_MULTIPLE : M2A_AMQP_CONN_ACK);
            nack = 0;
            M2A_STAT_ADD(d->dls[e->dl].ctr, rejected, 1);
            if (rc == 0)
                rc = m2a_amqp_conn_settle(d->conn, e->tag, M2A_AMQP_CONN_REJECT);
        }
        inflight_add(d, e->dl, -1);
        d->nfinished--;
        d->head = (d->head + 1) % d->cap;
        d->count--;
        d->popped++;
    }
    if (d->nfinished) /* behind an entry still waiting for its PUBACK */
        d->settle_due_ms = m2a_now_ms() + ACK_DELAY_MS;
    if (rc == 0 && nack)
        rc = m2a_amqp_conn_settle(d->conn, ack_tag,
                                  nack > 1 ? M2A_AMQP_CONN_ACK_MULTIPLE : M2A_AMQP_CONN_ACK);
    if (rc)
        snprintf(d->why, sizeof(d->why), "%s", m2a_amqp_conn_why(d->conn));
    return rc;
}

/* ---- the AMQP connection -------------------------------------------------------------- */

static void on_socket(struct m2a_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop, (void)fd;
    struct m2a_downlink *d = ud;
    if (d->conn && (events & (M2A_LOOP_READ | M2A_LOOP_HUP | M2A_LOOP_ERR))) {
        m2a_amqp_conn_input_seen(d->conn);
        if (events & (M2A_LOOP_HUP | M2A_LOOP_ERR))
            d->amqp_hangup = true;
    }
}

static int conn_fd(const struct m2a_downlink *d)
{
    return d->conn ? m2a_amqp_conn_params(d->conn)->wire.fd : -1;
}

static void teardown(struct m2a_downlink *d, bool polite)
{
    if (!d->conn)
        return;
    int fd = conn_fd(d);
    if (fd >= 0)
        m2a_loop_unwatch(d->loop, fd);
    if (polite)
        m2a_amqp_conn_close(d->conn, true,
                            m2a_loop_deadline(d->loop, m2a_now_ms() + CLOSE_GRACE_MS));
    m2a_amqp_conn_free(d->conn);
    d->conn = NULL;
    ring_clear(d);
    M2A_STAT_SET(d->stats, downlink_amqp_connected, false);
}

/* Connect, declare the topology, consume every downlink's queue. */
static int connect_node(struct m2a_downlink *d)
{
    char name[160];
    snprintf(name, sizeof(name), "mqtt2amqp downlinks %s", d->client_id);
    d->conn = m2a_amqp_conn_new(
        &(struct m2a_amqp_conn_opts){.conf = &d->cfg->amqp, .name = name, .channel = CHANNEL});
    uint64_t deadline = m2a_loop_deadline(d->loop, M2A_LOOP_NEVER);
    int rc = m2a_amqp_conn_open(d->conn, node_now(d), deadline);
    if (rc == 0)
        rc = m2a_amqp_conn_declare(d->conn, &d->cfg->amqp, deadline);
    for (size_t i = 0; rc == 0 && i < d->n; i++)
        rc = m2a_amqp_conn_consume(d->conn, d->dls[i].conf->queue,
                                   (uint16_t)d->dls[i].conf->prefetch, d->dls[i].ctag,
                                   sizeof(d->dls[i].ctag), deadline);
    if (rc != 0)
        snprintf(d->why, sizeof(d->why), "%s", m2a_amqp_conn_why(d->conn));
    return rc;
}

static void try_connect(struct m2a_downlink *d)
{
    char node[M2A_HOSTPORT_MAX];
    d->why[0] = '\0';
    int rc = connect_node(d);
    if (rc != 0) {
        bool refused = m2a_amqp_conn_refused(d->conn);
        teardown(d, rc == M2A_ERR_AMQP);
        bool round_over;
        node_name(d, node, sizeof(node));
        uint32_t delay = m2a_failover_failed(&d->nodes, &round_over);
        d->next_connect_ms = m2a_now_ms() + delay;
        if (!stopping(d))
            M2A_LOG(refused ? M2A_LOG_ERROR : M2A_LOG_WARN, COMPONENT,
                    "AMQP %s: %s; retrying in %u ms", node, d->why, delay);
        return;
    }
    m2a_failover_connected(&d->nodes);
    m2a_loop_watch(d->loop, conn_fd(d), M2A_LOOP_READ, on_socket, d);
    d->conn_epoch = d->mqtt_epoch;
    d->amqp_hangup = false;
    M2A_STAT_SET(d->stats, downlink_amqp_connected, true);
    d->connected_ms = m2a_now_ms();
    d->progress = false;
    m2a_info(COMPONENT, "AMQP connected to %s: consuming %zu queue(s) for MQTT client %s",
             node_name(d, node, sizeof(node)), d->n, d->client_id);
}

/* The connection ended (why in d->why): back off before the next one. */
static void lost(struct m2a_downlink *d, bool polite)
{
    char node[M2A_HOSTPORT_MAX];
    node_name(d, node, sizeof(node));
    bool stable = d->progress || m2a_now_ms() - d->connected_ms >= STABLE_MS;
    size_t unacked = d->count;
    teardown(d, polite);
    uint32_t delay = m2a_failover_lost(&d->nodes, stable);
    d->next_connect_ms = m2a_now_ms() + delay;
    m2a_warn(COMPONENT,
             "AMQP connection to %s ended: %s; %zu unacknowledged message(s) go back to their "
             "queues; reconnecting in %u ms",
             node, d->why, unacked, delay);
}

/* One AMQP turn: m2a_amqp_conn_read decodes every frame there is (the
 * deliveries are published, then written together) when the socket was
 * seen readable, rabbitmq-c holds data or 100 ms have passed (heartbeats);
 * a turn woken by PUBACKs alone costs no system call there. Held back
 * (may_deliver), it only keeps the heartbeats going. Then settles. */
static void amqp_turn(struct m2a_downlink *d)
{
    if (!may_deliver(d)) {
        if (m2a_amqp_conn_keepalive(d->conn) != 0) {
            snprintf(d->why, sizeof(d->why), "%s", m2a_amqp_conn_why(d->conn));
            lost(d, false);
            return;
        }
    } else {
        d->why[0] = '\0';
        enum m2a_amqp_conn_state s = m2a_amqp_conn_read(d->conn, &conn_events, d);
        if (d->turn_published)
            mqtt_flush(d);
        if (s != M2A_AMQP_CONN_OK) {
            snprintf(d->why, sizeof(d->why), "%s", m2a_amqp_conn_why(d->conn));
            lost(d, s == M2A_AMQP_CONN_CHANNEL);
            return;
        }
        if (d->why[0]) { /* a consumer was cancelled */
            lost(d, true);
            return;
        }
    }
    if (d->nfinished && (d->nfinished >= ACK_BATCH || m2a_now_ms() >= d->settle_due_ms) &&
        settle_prefix(d) != 0)
        lost(d, false);
}

/* ---- the thread ----------------------------------------------------------------------- */

static void wait_turn(struct m2a_downlink *d)
{
    uint64_t now = m2a_now_ms();
    uint64_t until = now + POLL_MAX_MS;
    if (d->conn) {
        if (d->nfinished && d->settle_due_ms < until)
            until = d->settle_due_ms > now ? d->settle_due_ms : now;
        bool room = may_deliver(d);
        if (room && m2a_amqp_conn_buffered(d->conn))
            until = now;
        /* Held back: the socket's input waits, and must not wake us. */
        m2a_loop_set_events(d->loop, conn_fd(d), room ? M2A_LOOP_READ : 0);
    } else if (d->mqtt_up && d->next_connect_ms < until) {
        until = d->next_connect_ms;
    }
    m2a_mqtt_session_arm(d->mqtt);
    m2a_loop_once(d->loop, until);
}

static void run(struct m2a_downlink *d)
{
    m2a_mqtt_session_start(d->mqtt);
    while (!stopping(d)) {
        if (d->conn && (!d->mqtt_up || d->conn_epoch != d->mqtt_epoch)) {
            snprintf(d->why, sizeof(d->why), "the MQTT session is down: consuming stops");
            lost(d, true);
            d->next_connect_ms = 0; /* as soon as MQTT is back */
        }
        if (!d->conn && d->mqtt_up && m2a_now_ms() >= d->next_connect_ms)
            try_connect(d);
        if (d->conn)
            amqp_turn(d);
        wait_turn(d);
    }
}

/* After a stop: nothing more is published; waits for what is in flight,
 * settles it and closes both sides. */
static void drain(struct m2a_downlink *d)
{
    while (d->conn && d->mqtt_up && d->conn_epoch == d->mqtt_epoch && d->npublished > 0 &&
           m2a_now_ms() < drain_deadline(d)) {
        amqp_turn(d);
        if (d->conn)
            wait_turn(d);
    }
    if (d->conn && settle_prefix(d) == 0) {
        if (d->npublished)
            m2a_warn(COMPONENT,
                     "stop deadline reached with %zu unacknowledged PUBLISH(es): RabbitMQ "
                     "redelivers them",
                     d->npublished);
        teardown(d, true);
    } else {
        teardown(d, false);
    }
    m2a_mqtt_session_close(d->mqtt, m2a_now_ms() + CLOSE_GRACE_MS, true);
    m2a_info(COMPONENT, "stopped");
}

static void *thread_main(void *arg)
{
    struct m2a_downlink *d = arg;
    run(d);
    drain(d);
    return NULL;
}

/* ---- public --------------------------------------------------------------------------- */

static void dl_free(struct m2a_downlink *d)
{
    if (!d)
        return;
    m2a_mqtt_session_free(d->mqtt);
    for (size_t i = 0; d->dls && i < d->n; i++)
        m2a_downlink_topic_free(d->dls[i].topic);
    free(d->dls);
    free(d->ring);
    free(d->client_id);
    m2a_buf_free(&d->topic_buf);
    m2a_loop_free(d->loop);
    free(d);
}

static char *make_client_id(const struct m2a_conf_mqtt *m)
{
    if (m->downlink_client_id)
        return xstrdup(m->downlink_client_id);
    size_t n = strlen(m->client_id) + sizeof(CLIENT_ID_SUFFIX);
    char *s = xmalloc(n);
    snprintf(s, n, "%s%s", m->client_id, CLIENT_ID_SUFFIX);
    return s;
}

int m2a_downlink_start(const struct m2a_config *cfg, struct m2a_stats *stats,
                       struct m2a_downlink **out, char *err, size_t errlen)
{
    int rc = 0;
    *out = NULL;
    if (!cfg || !cfg->ndownlinks || !stats || stats->ndownlinks != cfg->ndownlinks) {
        snprintf(err, errlen, "no downlinks, or no counters for them");
        return M2A_ERR_ARG;
    }
    struct m2a_downlink *d = xcalloc(1, sizeof(*d));
    d->cfg = cfg;
    d->stats = stats;
    d->n = cfg->ndownlinks;
    d->dls = xcalloc(d->n, sizeof(*d->dls));
    for (size_t i = 0; i < d->n; i++) {
        d->dls[i].conf = &cfg->downlinks[i];
        d->dls[i].ctr = &stats->downlinks[i];
        d->cap += (size_t)cfg->downlinks[i].prefetch;
        if (m2a_downlink_topic_compile(cfg->downlinks[i].topic, &d->dls[i].topic, err, errlen)) {
            rc = M2A_ERR_CONFIG; /* checked at load: not reached */
            goto fail;
        }
    }
    d->ring = xcalloc(d->cap, sizeof(*d->ring));
    d->mconf = cfg->mqtt;
    d->mconf.clean_session = true; /* a publisher: nothing to keep between connections */
    d->client_id = make_client_id(&cfg->mqtt);
    d->rl_reject = (struct m2a_ratelimit)M2A_RATELIMIT_INIT(LOG_EVERY_MS);
    d->rl_refused = (struct m2a_ratelimit)M2A_RATELIMIT_INIT(LOG_EVERY_MS);
    m2a_failover_init(&d->nodes, cfg->amqp.nendpoints, (uint32_t)cfg->amqp.reconnect_min_ms,
                      (uint32_t)cfg->amqp.reconnect_max_ms);
    d->loop = m2a_loop_new();
    if (!d->loop) {
        snprintf(err, errlen, "cannot create the downlink thread's loop: %s", strerror(errno));
        rc = M2A_ERR_IO;
        goto fail;
    }
    struct m2a_mqtt_session_opts so = {
        .conf = &d->mconf,
        .client_id = d->client_id,
        .log_name = "mqtt-down",
        .loop = d->loop,
        /* More than libmosquitto's 20 per round trip where the broker's
         * Receive Maximum allows; not the whole prefetch (see may_deliver). */
        .send_maximum = d->cap < SEND_MAXIMUM ? (int)d->cap : SEND_MAXIMUM,
        .hooks = {.ud = d,
                  .readable = mqtt_readable,
                  .on_published = on_published,
                  .on_up = on_up,
                  .on_down = on_down,
                  .on_takeover = on_takeover},
    };
    if ((rc = m2a_mqtt_session_new(&so, &d->mqtt, err, errlen)) != 0)
        goto fail;
    int prc = m2a_thread_start(&d->thread, thread_main, d);
    if (prc != 0) {
        snprintf(err, errlen, "cannot start the downlink thread: %s", strerror(prc));
        rc = M2A_ERR_IO;
        goto fail;
    }
    *out = d;
    return 0;
fail:
    dl_free(d);
    return rc;
}

void m2a_downlink_request_stop(struct m2a_downlink *d, int timeout_ms)
{
    if (!d || d->stop_requested)
        return;
    d->stop_requested = true;
    if (timeout_ms < 0)
        timeout_ms = 0;
    m2a_loop_stop(d->loop, m2a_now_ms() + (uint64_t)timeout_ms + CLOSE_GRACE_MS);
}

void m2a_downlink_stop(struct m2a_downlink *d, int timeout_ms)
{
    if (!d)
        return;
    m2a_downlink_request_stop(d, timeout_ms);
    pthread_join(d->thread, NULL);
    dl_free(d);
}
