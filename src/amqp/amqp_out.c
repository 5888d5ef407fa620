/* amqp_out.c - the AMQP side of the bridge: one thread that reads the spool
 * and publishes to RabbitMQ with publisher confirms (see amqp_out.h).
 *
 * Thread ownership: the AMQP thread owns its event loop (core/loop.c), the
 * connection (amqp_conn.c: rabbitmq-c is never shared), the publisher
 * (amqp_publish.c), the confirm window (confirm_window.c), the spool
 * reader and its housekeeping, the policy scratch, and a reference to the
 * generation it runs. start, offer and stop run on the caller's thread and
 * touch only the loop's wake-ups and stop deadline, the offered generation
 * (an atomic pointer) and, as a last resort when the thread is stuck in a
 * send of rabbitmq-c's own past the stop deadline, shutdown() of the socket
 * under `mu`.
 *
 * The loop: connect to a node (amqp_conn.c), declare the topology,
 * confirm.select, then turn: read the frames that arrived (acks, nacks,
 * returns, blocked/unblocked, closes), take an offered generation, commit
 * the confirmed prefix to the spool, keep up the spool's housekeeping,
 * publish spool records while the window has room and the socket takes
 * data, and wait in the loop on the socket, the spool's maintenance and
 * notify descriptors and the wake-up (a stop, an offer). rabbitmq-c 0.11 has
 * no confirm wait and services heartbeats only inside its own calls, so a
 * turn lasts at most POLL_MAX_MS (less with a short heartbeat) and reads
 * frames every time.
 *
 * Deadlines: one stop deadline (m2a_loop_stop) bounds every blocking call
 * of the thread: the connect, the handshake and each RPC (amqp_conn.c), the
 * write of a pass of publishes, the polite close. The drain after a stop
 * ends CLOSE_GRACE_MS before it, so the close has that long.
 *
 * On a lost connection every unconfirmed record is re-published from the
 * copies in the window (same message id), so the spool cursor never moves
 * back and confirmed-but-not-yet-committed records are not duplicated. */
#include "mqtt2amqp/amqp_out.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "mqtt2amqp/amqp_conn.h"
#include "mqtt2amqp/amqp_publish.h"
#include "mqtt2amqp/backoff.h"
#include "mqtt2amqp/confirm_window.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/failover.h"
#include "mqtt2amqp/hostport.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/loop.h"
#include "mqtt2amqp/policy.h"
#include "mqtt2amqp/ratelimit.h"
#include "mqtt2amqp/route_stats.h"
#include "mqtt2amqp/util.h"

#define COMPONENT         "amqp"
#define CHANNEL           1
#define POLL_MAX_MS       100   /* a turn at least this often: heartbeats, housekeeping */
#define CLOSE_GRACE_MS    1000  /* the polite close after the drain of a stop */
#define STOP_GRACE_MS     2000  /* after the stop deadline, before shutdown() */
#define WRITE_CHECK_BYTES 32768 /* re-check POLLOUT after this much published */
#define LOG_EVERY_MS      1000  /* rate limit of per-message warnings */
#define STABLE_SESSION_MS 10000 /* a session this long resets the backoff */
#define SPOOL_RETRY_MS    1000  /* after a spool read error */

/* Wake-up reasons beside M2A_WAKE_STOP. */
#define WAKE_OFFER M2A_WAKE_USER_0 /* m2a_amqp_out_offer handed over a generation */

/* How a session ended. */
enum session_end {
    END_LOST,    /* the connection failed: tear down, back off, reconnect */
    END_CLOSED,  /* the broker closed it (connection.close answered) */
    END_CHANNEL, /* the broker closed our channel: close the connection politely */
    END_STOPPED, /* stop requested and drained (or the drain deadline passed) */
};

struct m2a_amqp_out {
    /* --- set by start, read-only after --- */
    const struct m2a_conf_amqp *conf; /* connection settings: never reloaded */
    struct m2a_spool *spool;
    struct m2a_stats *stats;
    const char *spool_id;
    void (*on_generation)(void *ud, struct m2a_generation *gen, int rc, const char *why);
    void *on_generation_ud;

    /* --- shared with the caller's thread --- */
    struct m2a_loop *loop; /* wake-ups (stop, offer) and the stop deadline */
    /* Live reload: the main thread offers the next generation here (newest
     * wins); the AMQP thread takes it, declares its topology and answers
     * through on_generation. */
    _Atomic(struct m2a_generation *) gen_offer;
    pthread_t thread;
    pthread_mutex_t mu; /* guards sockfd and done */
    pthread_cond_t cv;  /* signalled when done */
    int sockfd;         /* the open connection's socket, else -1 */
    bool done;

    /* --- AMQP thread only --- */
    /* The generation this thread runs (a reference of its own): the
     * topology declared at connect, the rules for undeliverable messages. */
    struct m2a_generation *gen;
    uint64_t trusted_from_seq; /* records from here on were written by this process */
    struct m2a_amqp_conn *conn;
    struct m2a_amqp_publish *pub;
    struct m2a_confirm_window *cw;
    struct m2a_failover nodes;       /* which node next, reconnect delays */
    struct m2a_backoff nack_backoff; /* per-message retries after basic.nack */
    uint64_t next_tag;               /* last delivery tag used on the channel */
    uint64_t connected_ms;
    bool blocked;
    bool progress;   /* a confirm arrived in this session */
    bool want_write; /* publishing waits for POLLOUT */
    uint64_t next_retry_ms;
    uint64_t spool_retry_ms; /* no spool reads before this (after an error) */
    unsigned nconnects;
    struct m2a_ratelimit rl_spool, rl_drop;
    char why[640];  /* why the session ended, for the log */
    char left[800]; /* the node left last and why: logged with the next connect */

    /* Routes (by id) of which a message was confirmed on this connection;
     * until then their nacks are not counted against max_retries (see
     * on_nack). Cleared at every connect. */
    unsigned char *route_acked;
    size_t route_acked_cap;
    bool none_acked; /* the same for records of no known route */

    /* Undeliverable messages (see the comment above put_dead_letter). */
    struct m2a_policy *policy;
    struct m2a_buf enc_buf; /* a record re-encoded: a dead letter, a version 1 one */
    struct m2a_confirm_window_slot **nacked; /* the slots one basic.nack names */
    size_t nacked_cap;
    struct m2a_header *hdrs; /* envelope decode scratch, grown only */
    size_t hdrs_cap;

    /* One clock read per publish pass and per confirm frame, not per message. */
    uint64_t pass_us;  /* publish_some's start: the messages' sent time */
    uint64_t frame_us; /* arrival of the basic.ack being handled */
};

static bool stopping(const struct m2a_amqp_out *ao)
{
    return m2a_loop_stopping(ao->loop);
}

/* The deadline of a blocking call that wants up to want_ms from now. */
static uint64_t deadline_in(const struct m2a_amqp_out *ao, uint64_t want_ms)
{
    return m2a_loop_deadline(ao->loop,
                             want_ms == M2A_LOOP_NEVER ? want_ms : m2a_now_ms() + want_ms);
}

/* When the drain of a stop gives up: CLOSE_GRACE_MS before the deadline. */
static uint64_t drain_deadline(const struct m2a_amqp_out *ao)
{
    uint64_t d = m2a_loop_stop_deadline(ao->loop);
    return d > CLOSE_GRACE_MS ? d - CLOSE_GRACE_MS : 0;
}

static int conn_fd(const struct m2a_amqp_out *ao)
{
    return m2a_amqp_conn_params(ao->conn)->wire.fd;
}

static const struct m2a_conf_endpoint *node_now(const struct m2a_amqp_out *ao)
{
    return &ao->conf->endpoints[m2a_failover_node(&ao->nodes)];
}

/* "HOST:PORT" of the current node, for the log. */
static const char *node_name(const struct m2a_amqp_out *ao, char *buf, size_t len)
{
    return m2a_hostport_format(buf, len, node_now(ao)->host, node_now(ao)->port);
}

/* ------------------------------------------------------------------ */
/* Undeliverable messages                                              */

/* Dead-lettering on this side is made reliable by the confirm window, not by
 * the spool (the MQTT thread is the spool's only writer). The dead letter
 * replaces the record's copy in its window slot and is published like any
 * record: mandatory, with a publisher confirm, under the same message_id.
 * The spool commits only the contiguous prefix of confirmed slots, so the
 * original stays in the spool until the broker has confirmed its dead
 * letter: a crash or a lost connection before that replays the original
 * (or re-publishes the dead letter from the window), which takes the same
 * path again. At least once, nothing lost. What happens to which message is
 * the policy's (policy.h): a dead letter that is itself returned or nacked
 * is retried with backoff, never dropped or dead-lettered again. */

/* The counters of route id (NULL: not counted). */
static struct m2a_route_counters *route_ctr(struct m2a_amqp_out *ao, uint32_t id)
{
    return m2a_route_stats_at(ao->stats->routes, id);
}

/* Whether a message of route id was confirmed on this connection. */
static bool route_acked(const struct m2a_amqp_out *ao, uint32_t id)
{
    if (id == M2A_ROUTE_NONE)
        return ao->none_acked;
    return id < ao->route_acked_cap && ao->route_acked[id];
}

static void mark_route_acked(struct m2a_amqp_out *ao, uint32_t id)
{
    if (id == M2A_ROUTE_NONE) {
        ao->none_acked = true;
        return;
    }
    if (id >= ao->route_acked_cap) {
        size_t cap = ao->route_acked_cap ? ao->route_acked_cap : 64;
        while (cap <= id)
            cap *= 2;
        ao->route_acked = xrealloc(ao->route_acked, cap);
        memset(ao->route_acked + ao->route_acked_cap, 0, cap - ao->route_acked_cap);
        ao->route_acked_cap = cap;
    }
    ao->route_acked[id] = 1;
}

/* Per-route confirms and the confirm latency (set as the window's hook). */
static void on_confirmed(void *ctx, const struct m2a_confirm_window_slot *slot)
{
    struct m2a_amqp_out *ao = ctx;
    mark_route_acked(ao, slot->route);
    M2A_ROUTE_ADD((struct m2a_route_counters *)slot->ud, confirmed, 1);
    if (slot->sent_us)
        m2a_route_stats_observe_latency(ao->stats->routes, ao->frame_us - slot->sent_us);
}

/* env becomes the record of slot. env may point into the slot's record:
 * it is encoded elsewhere first (a buffer that a large record does not
 * pin). */
static void reencode(struct m2a_amqp_out *ao, struct m2a_confirm_window_slot *slot,
                     const struct m2a_envelope *env)
{
    m2a_buf_reset(&ao->enc_buf);
    m2a_envelope_encode(env, &ao->enc_buf);
    m2a_confirm_window_set_rec(ao->cw, slot, ao->enc_buf.data, ao->enc_buf.len);
    if (ao->enc_buf.cap > M2A_CONFIRM_WINDOW_KEEP_BYTES)
        m2a_buf_free(&ao->enc_buf);
}

/* The dead letter dle takes the place of the record in slot. */
static void put_dead_letter(struct m2a_amqp_out *ao, struct m2a_confirm_window_slot *slot,
                            const struct m2a_envelope *dle)
{
    reencode(ao, slot, dle); /* dle points into slot->rec */
    slot->retries = 0;       /* the dead letter's own nacks start from zero */
}

/* Our message ids are "<spool id>-<seq>": the seq, or false if not ours. */
static bool parse_message_id(const struct m2a_amqp_out *ao, amqp_bytes_t id, uint64_t *seq)
{
    size_t n = strlen(ao->spool_id);
    const char *p = id.bytes;
    if (id.len <= n + 1 || memcmp(p, ao->spool_id, n) != 0 || p[n] != '-')
        return false;
    uint64_t v = 0;
    for (size_t i = n + 1; i < id.len; i++) {
        if (p[i] < '0' || p[i] > '9' || v > (UINT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (uint64_t)(p[i] - '0');
    }
    *seq = v;
    return true;
}

static uint32_t nack_delay(void *ctx, uint32_t retries)
{
    struct m2a_backoff *b = ctx;
    b->attempt = retries;
    return m2a_backoff_next(b);
}

static bool decode_slot(struct m2a_amqp_out *ao, const struct m2a_confirm_window_slot *slot,
                        struct m2a_envelope *env)
{
    return m2a_envelope_decode(slot->rec.data, slot->rec.len, env, &ao->hdrs, &ao->hdrs_cap) == 0;
}

/* basic.return, once its content header named the message: the policy
 * decides. The slot is still INFLIGHT (the broker acks a returned message
 * after returning it); a dead letter or a retry moves it to RETRY, so that
 * ack finds a stale tag and is ignored, while a drop lets the ack confirm
 * it. */
static void on_returned(void *ud, const struct m2a_amqp_conn_return *r)
{
    struct m2a_amqp_out *ao = ud;
    M2A_STAT_ADD(ao->stats, returned, 1);
    char what[640];
    snprintf(what, sizeof(what), "exchange '%.*s', routing key '%.*s': %u %.*s",
             (int)r->exchange.len, (const char *)r->exchange.bytes, (int)r->routing_key.len,
             (const char *)r->routing_key.bytes, r->reply_code, (int)r->reply_text.len,
             (const char *)r->reply_text.bytes);
    uint64_t seq;
    if (!r->props || !(r->props->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) ||
        !parse_message_id(ao, r->props->message_id, &seq)) {
        m2a_warn(COMPONENT, "returned message without a message id of ours: ignored (%s)", what);
        return;
    }
    struct m2a_confirm_window_slot *slot = m2a_confirm_window_find(ao->cw, seq);
    struct m2a_envelope env, dle;
    uint64_t now = m2a_now_ms();
    if (!slot || slot->state != M2A_CONFIRM_WINDOW_INFLIGHT || !decode_slot(ao, slot, &env)) {
        m2a_debug(COMPONENT, "returned message %" PRIu64 " is not in flight: ignored", seq);
        return;
    }
    slot->returns++;
    struct m2a_policy_case c = {.event = M2A_POLICY_RETURNED,
                                .env = &env,
                                .seq = seq,
                                .attempts = slot->returns,
                                .detail = what};
    enum m2a_fate fate = m2a_policy_decide(ao->policy, ao->gen, &c, &dle);
    uint32_t delay = 0;
    if (fate == M2A_FATE_DEAD_LETTER) {
        m2a_policy_account(ao->policy, ao->gen, &c, fate, fate, 0);
        put_dead_letter(ao, slot, &dle); /* env and dle are gone from here */
        m2a_confirm_window_retry(ao->cw, slot, now);
        return;
    }
    if (fate == M2A_FATE_RETRY) {
        delay = nack_delay(&ao->nack_backoff, slot->returns - 1);
        m2a_confirm_window_retry(ao->cw, slot, now + delay);
    }
    m2a_policy_account(ao->policy, ao->gen, &c, fate, fate, delay);
}

/* basic.nack: every slot it names goes to RETRY with backoff (the window
 * counts the nack); then the policy decides for each, by name: one nacked
 * more than dead_letter.max_retries times becomes a dead letter, sent at
 * once. Without a dead_letter section nacks are retried for ever.
 *
 * A message is dead-lettered for its nacks only once RabbitMQ has
 * confirmed something of its route on this connection (policy.h: unready):
 * until then the nacks say that the route's destination is not ready for
 * this connection, not that it refuses this message. That is what a
 * quorum queue without a reachable leader does in RabbitMQ 3.10: a channel
 * registers with the queue's leader before its first publish there, and
 * until that works every publish of the channel to the queue is nacked, at
 * once when the node it asks is down, after net_ticktime + 5 s (65 s) when
 * no leader answers; so each connection made after a node failure or
 * during a lost majority meets a burst of nacks. Confirms lag behind
 * rejections (a persistent message is confirmed once on disk), so the
 * check is made at each nack, not against the first one: a queue that
 * took the earlier messages and rejects the rest (x-overflow
 * reject-publish) dead-letters them after max_retries nacks as before. */
static void on_nack(void *ud, uint64_t tag, bool multiple)
{
    struct m2a_amqp_out *ao = ud;
    size_t n = 0;
    for (uint32_t i = 0; i < m2a_confirm_window_count(ao->cw); i++) {
        struct m2a_confirm_window_slot *slot = m2a_confirm_window_at(ao->cw, i);
        if (slot->state != M2A_CONFIRM_WINDOW_INFLIGHT ||
            (multiple ? slot->tag > tag : slot->tag != tag))
            continue;
        if (n == ao->nacked_cap) {
            ao->nacked_cap = ao->nacked_cap ? 2 * ao->nacked_cap : 16;
            ao->nacked = xrealloc(ao->nacked, ao->nacked_cap * sizeof(*ao->nacked));
        }
        ao->nacked[n++] = slot;
    }
    uint64_t now = m2a_now_ms();
    size_t nacked =
        m2a_confirm_window_nack(ao->cw, tag, multiple, now, nack_delay, &ao->nack_backoff);
    M2A_STAT_ADD(ao->stats, nacked, nacked);
    for (size_t k = 0; k < n; k++) {
        struct m2a_confirm_window_slot *slot = ao->nacked[k];
        struct m2a_envelope env, dle;
        if (slot->state != M2A_CONFIRM_WINDOW_RETRY || !decode_slot(ao, slot, &env))
            continue;
        struct m2a_policy_case c = {.event = M2A_POLICY_NACKED,
                                    .env = &env,
                                    .seq = slot->seq,
                                    .attempts = slot->retries,
                                    .unready = !route_acked(ao, slot->route)};
        enum m2a_fate fate = m2a_policy_decide(ao->policy, ao->gen, &c, &dle);
        uint32_t delay = slot->retry_at_ms > now ? (uint32_t)(slot->retry_at_ms - now) : 0;
        m2a_policy_account(ao->policy, ao->gen, &c, fate, fate, delay);
        if (fate == M2A_FATE_DEAD_LETTER) {
            put_dead_letter(ao, slot, &dle);
            m2a_confirm_window_retry(ao->cw, slot, now);
        }
    }
}

static void on_ack(void *ud, uint64_t tag, bool multiple)
{
    struct m2a_amqp_out *ao = ud;
    ao->frame_us = m2a_now_us(); /* for on_confirmed */
    size_t n = m2a_confirm_window_ack(ao->cw, tag, multiple);
    M2A_STAT_ADD(ao->stats, confirmed, n);
    ao->progress |= n > 0;
}

static void on_blocked(void *ud, bool blocked, amqp_bytes_t reason)
{
    struct m2a_amqp_out *ao = ud;
    ao->blocked = blocked;
    M2A_STAT_SET(ao->stats, amqp_blocked, blocked);
    if (blocked)
        m2a_warn(COMPONENT, "connection blocked by broker: %.*s; publishing paused",
                 (int)reason.len, (const char *)reason.bytes);
    else
        m2a_info(COMPONENT, "connection unblocked; publishing resumed");
}

static const struct m2a_amqp_conn_events conn_events = {
    .ack = on_ack,
    .nack = on_nack,
    .returned = on_returned,
    .blocked = on_blocked,
};

/* spool.max_age, checked when a record is read from the spool: an older one
 * is dead-lettered (reason expired) or, without a dead_letter section,
 * dropped. Age is wall-clock time since the bridge received the message.
 * Dead letters never expire. */
static void check_age(struct m2a_amqp_out *ao, struct m2a_confirm_window_slot *slot)
{
    struct m2a_envelope env, dle;
    uint64_t now = m2a_wall_ms();
    if (!m2a_generation_max_age_ms(ao->gen) || !decode_slot(ao, slot, &env) ||
        !m2a_policy_expired(ao->gen, &env, now))
        return;
    char why[128];
    snprintf(why, sizeof(why), "received %" PRIu64 " ms ago, max_age %" PRIu64 " ms",
             now - env.timestamp_ms, m2a_generation_max_age_ms(ao->gen));
    struct m2a_policy_case c = {
        .event = M2A_POLICY_EXPIRED, .env = &env, .seq = slot->seq, .detail = why};
    enum m2a_fate fate = m2a_policy_decide(ao->policy, ao->gen, &c, &dle);
    m2a_policy_account(ao->policy, ao->gen, &c, fate, fate, 0);
    if (fate == M2A_FATE_DEAD_LETTER)
        put_dead_letter(ao, slot, &dle);
    else
        m2a_confirm_window_drop(ao->cw, slot);
}

/* A record spooled by an earlier process carries a route id of that
 * process (or none: envelope version 1): resolve it by name, once, as it is
 * read, so that everything after joins on the id. A name no route ever had
 * in this process stays M2A_ROUTE_NONE (not counted; the default policy). */
static void resolve_route(struct m2a_amqp_out *ao, struct m2a_confirm_window_slot *slot)
{
    struct m2a_envelope env;
    if (!decode_slot(ao, slot, &env))
        return; /* dropped when published */
    uint32_t id = m2a_route_stats_lookup(ao->stats->routes, env.route.ptr, env.route.len);
    if (m2a_envelope_set_route_id(slot->rec.data, slot->rec.len, id) == 0)
        return;
    env.route_id = id; /* version 1: re-encoded as version 2 */
    reencode(ao, slot, &env);
}

/* ------------------------------------------------------------------ */
/* Publishing                                                          */

static void drop_record(struct m2a_amqp_out *ao, struct m2a_confirm_window_slot *slot,
                        const char *why)
{
    uint64_t sup;
    M2A_STAT_ADD(ao->stats, dropped, 1);
    if (m2a_ratelimit_ok(&ao->rl_drop, &sup))
        m2a_error(COMPONENT,
                  "dropping spool record %" PRIu64 ": %s (%" PRIu64 " similar suppressed)",
                  slot->seq, why, sup);
    m2a_confirm_window_drop(ao->cw, slot);
}

/* A record that cannot be published at all: through the policy, as
 * unpublishable. True if a dead letter now holds its slot (to publish). */
static bool unpublishable(struct m2a_amqp_out *ao, struct m2a_confirm_window_slot *slot,
                          const struct m2a_envelope *env, const char *why)
{
    struct m2a_envelope dle;
    struct m2a_policy_case c = {
        .event = M2A_POLICY_UNPUBLISHABLE, .env = env, .seq = slot->seq, .detail = why};
    enum m2a_fate fate = m2a_policy_decide(ao->policy, ao->gen, &c, &dle);
    m2a_policy_account(ao->policy, ao->gen, &c, fate, fate, 0);
    if (fate != M2A_FATE_DEAD_LETTER) {
        m2a_confirm_window_drop(ao->cw, slot);
        return false;
    }
    put_dead_letter(ao, slot, &dle);
    return true;
}

/* Encodes the slot's record as a publish (or, if it cannot be published,
 * its dead letter) into the pass's frames. */
static void publish_slot(struct m2a_amqp_out *ao, struct m2a_confirm_window_slot *slot)
{
    struct m2a_envelope env;
    char msgid[160];
    int idlen = snprintf(msgid, sizeof(msgid), "%s-%" PRIu64, ao->spool_id, slot->seq);
    for (int attempt = 0;; attempt++) {
        if (!decode_slot(ao, slot, &env)) {
            drop_record(ao, slot, "cannot decode the envelope");
            return;
        }
        if (m2a_amqp_publish_add(ao->pub, ao->conn, &env, m2a_generation_mqtt_headers(ao->gen),
                                 msgid, (size_t)idlen) == 0)
            break;
        /* Once: a dead letter that cannot be published is dropped. */
        if (attempt > 0 || !unpublishable(ao, slot, &env,
                                          "properties and headers do not fit one AMQP frame, or a "
                                          "name is longer than 255 bytes"))
            return;
    }
    m2a_confirm_window_sent(ao->cw, slot, ++ao->next_tag);
    M2A_STAT_ADD(ao->stats, published, 1);
    /* A dead letter counts in its route's dead_lettered, not as a publish. */
    slot->ud = env.dead_letter ? NULL : route_ctr(ao, env.route_id);
    slot->route = env.route_id;
    slot->sent_us = ao->pass_us;
    M2A_ROUTE_ADD((struct m2a_route_counters *)slot->ud, published, 1);
}

/* The spool reads a record straight into the window's next slot (the
 * caller checked that the window has room). */
static void *window_sink(void *ctx, size_t len)
{
    void *buf = m2a_confirm_window_prepare(ctx, len);
    assert(buf);
    return buf;
}

/* Moves the next spool record into a new window slot. NULL when none. */
static struct m2a_confirm_window_slot *read_record(struct m2a_amqp_out *ao, uint64_t now)
{
    if (now < ao->spool_retry_ms)
        return NULL;
    uint64_t seq;
    size_t len;
    int rc = m2a_spool_read_to(ao->spool, &seq, &len, window_sink, ao->cw);
    if (rc == M2A_ERR_AGAIN)
        return NULL;
    if (rc != 0) {
        uint64_t sup;
        if (m2a_ratelimit_ok(&ao->rl_spool, &sup))
            m2a_error(COMPONENT, "reading the spool: %s (%" PRIu64 " similar suppressed)",
                      m2a_strerror(rc), sup);
        ao->spool_retry_ms = now + SPOOL_RETRY_MS;
        return NULL;
    }
    struct m2a_confirm_window_slot *slot = m2a_confirm_window_push_prepared(ao->cw, seq, len);
    if (seq < ao->trusted_from_seq)
        resolve_route(ao, slot);
    check_age(ao, slot);
    return slot;
}

/* Writes the frames encoded so far, bounded by the stop deadline. */
static int flush_frames(struct m2a_amqp_out *ao)
{
    return m2a_amqp_publish_flush(ao->pub, ao->conn, deadline_in(ao, M2A_LOOP_NEVER), ao->why,
                                  sizeof(ao->why));
}

/* Publishes due retries, re-sends after a reconnect and new spool records
 * while the window has room and the socket takes data: the frames go out
 * in one write per WRITE_CHECK_BYTES, and all are written before this
 * returns. */
static int publish_some(struct m2a_amqp_out *ao)
{
    ao->pass_us = m2a_now_us();
    uint64_t now = ao->pass_us / 1000;
    size_t budget = 0;
    ao->want_write = false;
    ao->next_retry_ms = UINT64_MAX;
    if (ao->blocked)
        return 0;
    for (;;) {
        struct m2a_confirm_window_slot *slot =
            m2a_confirm_window_next_to_send(ao->cw, now, &ao->next_retry_ms);
        if (!slot && !m2a_confirm_window_full(ao->cw) && !stopping(ao))
            slot = read_record(ao, now);
        if (!slot)
            break;
        if (slot->state == M2A_CONFIRM_WINDOW_CONFIRMED)
            continue; /* expired and dropped as it was read */
        if (budget == 0) {
            int rc = flush_frames(ao);
            if (rc)
                return rc;
            if (!m2a_amqp_publish_writable(ao->conn)) {
                ao->want_write = true;
                return 0;
            }
            budget = WRITE_CHECK_BYTES;
        }
        size_t cost = slot->rec.len + 256;
        budget = cost >= budget ? 0 : budget - cost;
        publish_slot(ao, slot);
    }
    return flush_frames(ao);
}

/* The spool's housekeeping belongs to this thread (checkpoint, deleting
 * segments, the MQTT thread's requests for room): every turn, in every
 * state, or the MQTT side waits. */
static void maintain_spool(struct m2a_amqp_out *ao)
{
    m2a_confirm_window_trim(ao->cw, m2a_now_ms());
    int rc = m2a_spool_maintain(ao->spool);
    uint64_t sup;
    if (rc != 0 && m2a_ratelimit_ok(&ao->rl_spool, &sup))
        m2a_error(COMPONENT, "spool housekeeping: %s (%" PRIu64 " similar suppressed)",
                  m2a_strerror(rc), sup);
}

static void commit_confirmed(struct m2a_amqp_out *ao)
{
    uint64_t seq;
    if (!m2a_confirm_window_pop_confirmed(ao->cw, &seq))
        return;
    int rc = m2a_spool_commit(ao->spool, seq);
    uint64_t sup;
    if (rc != 0 && m2a_ratelimit_ok(&ao->rl_spool, &sup))
        m2a_error(COMPONENT,
                  "committing spool position %" PRIu64 ": %s (%" PRIu64 " similar "
                  "suppressed)",
                  seq, m2a_strerror(rc), sup);
}

/* ------------------------------------------------------------------ */
/* Live reload                                                         */

/* Tells the owner what became of an offered generation (rc 0: this thread
 * runs it now; else why not). */
static void answer(struct m2a_amqp_out *ao, struct m2a_generation *g, int rc, const char *why)
{
    if (ao->on_generation)
        ao->on_generation(ao->on_generation_ud, g, rc, why);
}

/* Takes the generation m2a_amqp_out_offer handed over. Connected, it
 * declares the new topology on the live channel at once (so the new
 * routes' records, which the MQTT thread spools only once it runs the
 * generation, find their exchanges), in between publishes: acks arriving
 * meanwhile are queued by rabbitmq-c and read next. If the broker refuses
 * it, the running generation stays, and since the refusal closed the
 * channel the session ends (the unconfirmed messages are re-published
 * after the reconnect: at least once). Disconnected, it is taken for the
 * next connect. Either way the owner hears of it through on_generation.
 * Returns 0, or a session end. */
static int adopt_offer(struct m2a_amqp_out *ao, bool connected, enum session_end *end)
{
    m2a_loop_take_wakes(ao->loop, WAKE_OFFER); /* the pointer below is what counts */
    /* A blocked connection is not read by the broker: an RPC would hang.
     * The offer waits (a newer one may replace it meanwhile). */
    if (!atomic_load_explicit(&ao->gen_offer, memory_order_relaxed) || (connected && ao->blocked))
        return 0;
    struct m2a_generation *g = atomic_exchange(&ao->gen_offer, NULL);
    if (!g)
        return 0;
    const struct m2a_conf_amqp *topo = m2a_generation_topology(g);
    int rc = connected ? m2a_amqp_conn_declare(ao->conn, topo, deadline_in(ao, M2A_LOOP_NEVER)) : 0;
    if (rc != 0) {
        const char *why = m2a_amqp_conn_why(ao->conn);
        snprintf(ao->why, sizeof(ao->why), "%s", why);
        m2a_error(COMPONENT,
                  "reload: the broker refused the topology of generation %" PRIu64
                  ": %s; keeping generation %" PRIu64,
                  m2a_generation_number(g), why, m2a_generation_number(ao->gen));
        answer(ao, g, M2A_ERR_AMQP, why);
        m2a_generation_unref(g);
        *end = rc == M2A_ERR_AMQP ? END_CHANNEL : END_LOST;
        return -1;
    }
    m2a_info(COMPONENT,
             "reload: generation %" PRIu64 ": topology of %zu exchanges and %zu queues %s",
             m2a_generation_number(g), topo->nexchanges, topo->nqueues,
             connected ? "declared" : "taken (declared at the next connect)");
    m2a_generation_unref(ao->gen);
    ao->gen = g;
    answer(ao, g, 0, NULL);
    return 0;
}

/* ------------------------------------------------------------------ */
/* The loop                                                            */

/* The turn reads the frames; a readable socket says the broker is there
 * even when all it sent was a heartbeat. */
static void on_socket(struct m2a_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop, (void)fd;
    struct m2a_amqp_out *ao = ud;
    if (events & (M2A_LOOP_READ | M2A_LOOP_HUP | M2A_LOOP_ERR))
        m2a_amqp_conn_input_seen(ao->conn);
}

static void on_spool_maint(struct m2a_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop, (void)fd, (void)events, (void)ud; /* every turn maintains the spool */
}

static void on_spool_notify(struct m2a_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop, (void)fd, (void)events;
    struct m2a_amqp_out *ao = ud;
    m2a_spool_notify_clear(ao->spool); /* then the turn reads the spool */
}

/* One wait of a connected session: on the socket (and POLLOUT while a
 * write waits for room), the spool's descriptors and the wake-up, until
 * the next thing due. */
static void wait_turn(struct m2a_amqp_out *ao)
{
    uint64_t now = m2a_now_ms();
    uint64_t t = POLL_MAX_MS;
    int hb = m2a_amqp_conn_params(ao->conn)->heartbeat_s;
    if (hb > 0 && (uint64_t)hb * 500u < t)
        t = (uint64_t)hb * 500u;
    uint64_t until = now + t;
    if (!ao->blocked && ao->next_retry_ms < until)
        until = ao->next_retry_ms;
    if (ao->spool_retry_ms > now && ao->spool_retry_ms < until)
        until = ao->spool_retry_ms;
    if (stopping(ao) && drain_deadline(ao) < until)
        until = drain_deadline(ao);
    if (m2a_amqp_conn_buffered(ao->conn))
        until = now; /* the socket will not signal what the library holds */
    /* Spool news matters only if we would read it now. */
    bool reading = !ao->blocked && !stopping(ao) && !m2a_confirm_window_full(ao->cw);
    m2a_loop_set_events(ao->loop, m2a_spool_notify_fd(ao->spool), reading ? M2A_LOOP_READ : 0);
    m2a_loop_set_events(ao->loop, conn_fd(ao),
                        M2A_LOOP_READ | (ao->want_write ? M2A_LOOP_WRITE : 0));
    m2a_loop_once(ao->loop, until);
}

/* Runs one connected session. Returns how it ended (ao->why says why). */
static enum session_end session(struct m2a_amqp_out *ao)
{
    m2a_loop_watch(ao->loop, conn_fd(ao), M2A_LOOP_READ, on_socket, ao);
    for (;;) {
        enum session_end end;
        enum m2a_amqp_conn_state s = m2a_amqp_conn_read(ao->conn, &conn_events, ao);
        if (s != M2A_AMQP_CONN_OK) {
            snprintf(ao->why, sizeof(ao->why), "%s", m2a_amqp_conn_why(ao->conn));
            return s == M2A_AMQP_CONN_CHANNEL  ? END_CHANNEL
                   : s == M2A_AMQP_CONN_CLOSED ? END_CLOSED
                                               : END_LOST;
        }
        if (adopt_offer(ao, true, &end) != 0)
            return end;
        commit_confirmed(ao);
        maintain_spool(ao);
        if (stopping(ao)) {
            if (m2a_confirm_window_count(ao->cw) == 0)
                return END_STOPPED;
            if (m2a_now_ms() >= drain_deadline(ao)) {
                m2a_warn(COMPONENT,
                         "stop deadline reached with %u unconfirmed message(s); "
                         "they stay in the spool",
                         m2a_confirm_window_count(ao->cw));
                return END_STOPPED;
            }
        }
        if (publish_some(ao) != 0)
            return END_LOST;
        wait_turn(ao);
    }
}

/* Waits ms (disconnected), or less if a stop comes; takes an offered
 * generation meanwhile and keeps up the spool's housekeeping. */
static void pause_for(struct m2a_amqp_out *ao, uint32_t ms)
{
    uint64_t until = m2a_now_ms() + ms;
    enum session_end unused;
    for (;;) {
        adopt_offer(ao, false, &unused);
        maintain_spool(ao);
        uint64_t now = m2a_now_ms();
        if (stopping(ao) || now >= until)
            return;
        m2a_loop_once(ao->loop, until - now < POLL_MAX_MS ? until : now + POLL_MAX_MS);
    }
}

static void publish_sockfd(struct m2a_amqp_out *ao, int fd)
{
    pthread_mutex_lock(&ao->mu);
    ao->sockfd = fd;
    pthread_mutex_unlock(&ao->mu);
}

/* Opens a connection to the current node: connect, login, channel, the
 * generation's topology, confirms. On failure ao->why says why and the
 * connection is left for teardown. */
static int connect_node(struct m2a_amqp_out *ao)
{
    char name[128];
    /* Names this bridge in the management UI; the spool id tells instances apart. */
    snprintf(name, sizeof(name), "mqtt2amqp %s", ao->spool_id);
    ao->conn = m2a_amqp_conn_new(
        &(struct m2a_amqp_conn_opts){.conf = ao->conf, .name = name, .channel = CHANNEL});
    uint64_t deadline = deadline_in(ao, M2A_LOOP_NEVER);
    int rc = m2a_amqp_conn_open(ao->conn, node_now(ao), deadline);
    if (rc == 0) {
        publish_sockfd(ao, conn_fd(ao));
        rc = m2a_amqp_conn_declare(ao->conn, m2a_generation_topology(ao->gen), deadline);
    }
    if (rc == 0)
        rc = m2a_amqp_conn_confirm_select(ao->conn, deadline);
    if (rc != 0)
        snprintf(ao->why, sizeof(ao->why), "%s", m2a_amqp_conn_why(ao->conn));
    return rc;
}

/* Ends the connection: politely (bounded by CLOSE_GRACE_MS and the stop
 * deadline) or not, and resets what belonged to it. */
static void teardown(struct m2a_amqp_out *ao, bool polite)
{
    if (!ao->conn)
        return;
    int fd = conn_fd(ao);
    if (fd >= 0)
        m2a_loop_unwatch(ao->loop, fd);
    m2a_loop_set_events(ao->loop, m2a_spool_notify_fd(ao->spool), 0); /* read when connected */
    if (polite)
        m2a_amqp_conn_close(ao->conn, true,
                            m2a_loop_deadline(ao->loop, m2a_now_ms() + CLOSE_GRACE_MS));
    publish_sockfd(ao, -1); /* before the fd is closed: stop() must not shut a reused fd */
    m2a_amqp_conn_free(ao->conn);
    ao->conn = NULL;
    M2A_STAT_SET(ao->stats, amqp_connected, false);
    M2A_STAT_SET(ao->stats, amqp_node, 0u);
    if (ao->blocked)
        M2A_STAT_SET(ao->stats, amqp_blocked, false);
    ao->blocked = false;
    ao->want_write = false;
    m2a_amqp_publish_discard(ao->pub);  /* never written: the window re-publishes them */
    m2a_confirm_window_requeue(ao->cw); /* tags restart at 1 on the next channel */
    ao->next_tag = 0;
}

/* Why the last node was left, for the line that says where we went. */
static void remember_left(struct m2a_amqp_out *ao, const char *node)
{
    if (ao->conf->nendpoints > 1)
        snprintf(ao->left, sizeof(ao->left), "%s: %.500s", node, ao->why);
}

static void log_connected(struct m2a_amqp_out *ao)
{
    const struct m2a_conf_amqp *c = ao->conf;
    char node[M2A_HOSTPORT_MAX], which[48] = "";
    if (c->nendpoints > 1)
        snprintf(which, sizeof(which), " (node %zu of %zu)", m2a_failover_node(&ao->nodes) + 1,
                 c->nendpoints);
    m2a_info(COMPONENT,
             "connected to %s%s vhost '%s' as '%s' (heartbeat %d s, confirm window %d, "
             "%u to re-publish)%s%s",
             node_name(ao, node, sizeof(node)), which, c->vhost, c->username,
             m2a_amqp_conn_params(ao->conn)->heartbeat_s, c->confirm_window,
             m2a_confirm_window_count(ao->cw), ao->left[0] ? "; left " : "", ao->left);
    ao->left[0] = '\0';
}

/* A connect failed: moves on (the next node, or a backoff after a round)
 * and says so. */
static void connect_failed(struct m2a_amqp_out *ao, bool refused)
{
    char node[M2A_HOSTPORT_MAX], next[M2A_HOSTPORT_MAX];
    node_name(ao, node, sizeof(node));
    remember_left(ao, node);
    bool round_over;
    uint32_t delay = m2a_failover_failed(&ao->nodes, &round_over);
    node_name(ao, next, sizeof(next));
    /* Refusals (credentials, vhost, topology, certificates) need an operator: error. */
    enum m2a_log_level lvl = refused ? M2A_LOG_ERROR : M2A_LOG_WARN;
    if (ao->conf->nendpoints == 1)
        M2A_LOG(lvl, COMPONENT, "%s: %s; retrying in %u ms", node, ao->why, delay);
    else if (!round_over)
        M2A_LOG(lvl, COMPONENT, "%s: %s; trying %s next", node, ao->why, next);
    else
        M2A_LOG(lvl, COMPONENT, "%s: %s; none of the %zu nodes answered: retrying from %s in %u ms",
                node, ao->why, ao->conf->nendpoints, next, delay);
    pause_for(ao, delay);
}

static void *thread_main(void *arg)
{
    struct m2a_amqp_out *ao = arg;
    enum session_end unused;
    char node[M2A_HOSTPORT_MAX], next[M2A_HOSTPORT_MAX + 8];
    while (!stopping(ao)) {
        ao->why[0] = '\0';
        ao->progress = false;
        adopt_offer(ao, false, &unused);
        maintain_spool(ao); /* not served while connect_node blocks: see spool.h */
        int rc = connect_node(ao);
        if (rc != 0) {
            bool refused = m2a_amqp_conn_refused(ao->conn);
            /* A channel-level failure (topology) leaves the connection usable. */
            teardown(ao, rc == M2A_ERR_AMQP);
            if (stopping(ao)) {
                m2a_info(COMPONENT, "%s: %s; stopping", node_name(ao, node, sizeof(node)), ao->why);
                break;
            }
            connect_failed(ao, refused);
            continue;
        }
        m2a_failover_connected(&ao->nodes);
        if (ao->route_acked)
            memset(ao->route_acked, 0, ao->route_acked_cap);
        ao->none_acked = false;
        if (ao->nconnects++ > 0)
            M2A_STAT_ADD(ao->stats, amqp_reconnects, 1);
        M2A_STAT_SET(ao->stats, amqp_connected, true);
        M2A_STAT_SET(ao->stats, amqp_node, (unsigned)m2a_failover_node(&ao->nodes) + 1);
        ao->connected_ms = m2a_now_ms();
        log_connected(ao);

        enum session_end end = session(ao);
        node_name(ao, node, sizeof(node));
        if (end == END_STOPPED) {
            teardown(ao, true);
            m2a_info(COMPONENT, "disconnected from %s: stopping", node);
            break;
        }
        bool stable = ao->progress || m2a_now_ms() - ao->connected_ms >= STABLE_SESSION_MS;
        teardown(ao, end == END_CHANNEL);
        remember_left(ao, node);
        uint32_t delay = m2a_failover_lost(&ao->nodes, stable);
        next[0] = '\0';
        if (ao->conf->nendpoints > 1) {
            memcpy(next, " to ", 5);
            node_name(ao, next + 4, sizeof(next) - 4);
        }
        m2a_warn(COMPONENT,
                 "disconnected from %s: %s; %u unconfirmed message(s) will be "
                 "re-published; reconnecting%s in %u ms",
                 node, ao->why, m2a_confirm_window_count(ao->cw), next, delay);
        pause_for(ao, delay);
    }
    pthread_mutex_lock(&ao->mu);
    ao->done = true;
    pthread_cond_signal(&ao->cv);
    pthread_mutex_unlock(&ao->mu);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* Public API (caller's thread)                                        */

/* The config was validated when it was loaded (config.c): only pointers. */
static int validate(const struct m2a_amqp_out_opts *o, char *err, size_t errlen)
{
    if (o && o->conf && o->conf->nendpoints > 0 && o->generation && o->spool && o->stats)
        return 0;
    snprintf(err, errlen, "missing configuration, generation, spool or stats");
    return M2A_ERR_ARG;
}

static void out_free(struct m2a_amqp_out *ao)
{
    m2a_loop_free(ao->loop);
    pthread_mutex_destroy(&ao->mu);
    pthread_cond_destroy(&ao->cv);
    m2a_confirm_window_free(ao->cw);
    m2a_amqp_publish_free(ao->pub);
    m2a_policy_free(ao->policy);
    m2a_generation_unref(atomic_exchange(&ao->gen_offer, NULL));
    m2a_generation_unref(ao->gen);
    free(ao->nacked);
    free(ao->route_acked);
    m2a_buf_free(&ao->enc_buf);
    free(ao->hdrs);
    free(ao);
}

int m2a_amqp_out_start(const struct m2a_amqp_out_opts *opts, struct m2a_amqp_out **out, char *err,
                       size_t errlen)
{
    int rc = validate(opts, err, errlen);
    if (rc)
        return rc;
    const struct m2a_conf_amqp *c = opts->conf;
    struct m2a_amqp_out *ao = xcalloc(1, sizeof(*ao));
    ao->conf = c;
    ao->gen = m2a_generation_ref(opts->generation);
    atomic_init(&ao->gen_offer, NULL);
    ao->on_generation = opts->on_generation;
    ao->on_generation_ud = opts->on_generation_ud;
    ao->trusted_from_seq = opts->trusted_from_seq;
    ao->spool = opts->spool;
    ao->stats = opts->stats;
    ao->spool_id = m2a_spool_id(opts->spool);
    ao->sockfd = -1;
    ao->policy = m2a_policy_new(&(struct m2a_policy_opts){.stats = opts->stats,
                                                          .component = COMPONENT,
                                                          .spool_id = ao->spool_id,
                                                          .log_interval_ms = LOG_EVERY_MS});
    ao->rl_spool = (struct m2a_ratelimit)M2A_RATELIMIT_INIT(LOG_EVERY_MS);
    ao->rl_drop = (struct m2a_ratelimit)M2A_RATELIMIT_INIT(LOG_EVERY_MS);
    ao->cw = m2a_confirm_window_new((uint32_t)c->confirm_window, c->max_inflight_bytes);
    m2a_confirm_window_on_confirm(ao->cw, on_confirmed, ao);
    ao->pub = m2a_amqp_publish_new();
    m2a_failover_init(&ao->nodes, c->nendpoints, (uint32_t)c->reconnect_min_ms,
                      (uint32_t)c->reconnect_max_ms);
    m2a_backoff_init(&ao->nack_backoff, (uint32_t)c->reconnect_min_ms,
                     (uint32_t)c->reconnect_max_ms);
    ao->next_retry_ms = UINT64_MAX;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ao->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&ao->mu, NULL);
    ao->loop = m2a_loop_new();
    if (!ao->loop) {
        snprintf(err, errlen, "cannot create the AMQP thread's loop: %s", strerror(errno));
        rc = M2A_ERR_IO;
        goto fail;
    }
    /* In every state: the writer's requests for room, and spool news. */
    if (m2a_loop_watch(ao->loop, m2a_spool_maint_fd(ao->spool), M2A_LOOP_READ, on_spool_maint,
                       ao) != 0 ||
        m2a_loop_watch(ao->loop, m2a_spool_notify_fd(ao->spool), 0, on_spool_notify, ao) != 0) {
        snprintf(err, errlen, "cannot watch the spool's descriptors");
        rc = M2A_ERR_ARG;
        goto fail;
    }
    int prc = m2a_thread_start(&ao->thread, thread_main, ao);
    if (prc != 0) {
        snprintf(err, errlen, "cannot start the AMQP thread: %s", strerror(prc));
        rc = M2A_ERR_IO;
        goto fail;
    }
    *out = ao;
    return 0;
fail:
    out_free(ao);
    return rc;
}

bool m2a_amqp_out_offer(struct m2a_amqp_out *ao, struct m2a_generation *gen)
{
    struct m2a_generation *old = atomic_exchange(&ao->gen_offer, m2a_generation_ref(gen));
    m2a_generation_unref(old);
    m2a_loop_wake(ao->loop, WAKE_OFFER);
    return old != NULL;
}

void m2a_amqp_out_stop(struct m2a_amqp_out *ao, int timeout_ms)
{
    if (!ao)
        return;
    if (timeout_ms < 0)
        timeout_ms = 0;
    /* The drain may last timeout_ms; the polite close CLOSE_GRACE_MS more. */
    uint64_t deadline = m2a_now_ms() + (uint64_t)timeout_ms + CLOSE_GRACE_MS;
    m2a_loop_stop(ao->loop, deadline);

    /* The thread honours the deadline itself; if a send of rabbitmq-c's own
     * (a heartbeat, a close-ok: they wait for the socket without a deadline)
     * is stuck past it because the broker reads nothing, shutting the socket
     * down makes that call fail. */
    uint64_t give_up = deadline + STOP_GRACE_MS;
    struct timespec ts = {.tv_sec = (time_t)(give_up / 1000),
                          .tv_nsec = (long)(give_up % 1000) * 1000000L};
    pthread_mutex_lock(&ao->mu);
    while (!ao->done && pthread_cond_timedwait(&ao->cv, &ao->mu, &ts) != ETIMEDOUT)
        ;
    if (!ao->done && ao->sockfd >= 0) {
        m2a_warn(COMPONENT,
                 "AMQP thread still busy %d ms after the stop deadline: aborting "
                 "the connection",
                 STOP_GRACE_MS);
        shutdown(ao->sockfd, SHUT_RDWR);
    }
    pthread_mutex_unlock(&ao->mu);
    pthread_join(ao->thread, NULL);
    out_free(ao);
}
