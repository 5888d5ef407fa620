/* mqtt_in.c - the MQTT side of the bridge: read -> map -> append -> flush
 * -> PUBACK.
 *
 * Threads: one thread (started here, "m2a-mqtt") runs one event loop
 * (core/loop.c) and owns everything on it: the MQTT session
 * (mqtt_session.c: the libmosquitto handle, the brokers, the
 * subscriptions), the route scratch, the spool writer (append, flush,
 * tick) and a reference to the generation it maps through. It shares only
 * the counters (atomics, stats.h), the loop's stop deadline and wake-ups,
 * and the next generation's mailbox (an atomic pointer) with other
 * threads. Stop and a new generation are wake-ups of that loop; nothing
 * polls for them.
 *
 * Why the loop looks like this: libmosquitto has no manual-ack API; it queues
 * the PUBACK of a QoS 1 message around on_message. In external-thread mode
 * (mosquitto_threaded_set) queued packets leave the socket only when we
 * write. So each readable event reads a batch (on_message appends every
 * mapped envelope to the spool), flushes the spool, and only if the flush
 * returned 0 writes: the session writes only through the may_write gate,
 * which is closed while a batch waits for room. If an append or the flush
 * fails the session is aborted before any write (socket shut down, handle
 * destroyed): the broker never sees those PUBACKs and redelivers from the
 * persistent session (at least once). test_puback_order proves it. */
#include "mqtt2amqp/mqtt_in.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/loop.h"
#include "mqtt2amqp/mqtt_session.h"
#include "mqtt2amqp/policy.h"
#include "mqtt2amqp/props.h"
#include "mqtt2amqp/ratelimit.h"
#include "mqtt2amqp/route_stats.h"
#include "mqtt2amqp/util.h"

#define TICK_MS         100        /* the spool tick and the pause check, at least this often */
#define BATCH_MAX       1000       /* packets read before the batch is flushed and acknowledged */
#define BATCH_BYTES     (8u << 20) /* ... or encoded bytes appended (the batch is in memory) */
#define STOP_BUDGET_MS  2000       /* stop: queued PUBACKs out, DISCONNECT, drain */
#define LOG_INTERVAL_MS 5000       /* rate limit for repeated warnings and errors */
#define LOG_TOPIC_MAX   200        /* a topic is cut to this in log lines */
#define CORK_MIN        4          /* a batch of this many PUBACKs is written corked */
#define GATHER_US       1000       /* group commit: at most one batch flush per this */
#define COMPONENT       "mqtt"

/* The loop's wake-up reasons beyond M2A_WAKE_STOP. */
#define WAKE_GENERATION M2A_WAKE_USER_0 /* m2a_mqtt_in_set_generation handed one over */

struct m2a_mqtt_in {
    struct m2a_mqtt_in_opts o;
    pthread_t thread;
    struct m2a_loop *loop;
    struct m2a_mqtt_session *session;
    struct m2a_routes_scratch *scratch;
    /* The generation this thread runs (a reference of its own) and its
     * routes; a reload hands over the next one through `pending` and a
     * WAKE_GENERATION (taken between two read batches). */
    struct m2a_generation *gen;
    const struct m2a_routes *routes;
    _Atomic(struct m2a_generation *) pending;
    bool paused;        /* spool above its high-water mark: no reads, no connects */
    bool flush_wait;    /* the last batch waits in the spool for room: no reads, no PUBACKs */
    bool room_watched;  /* the spool's room fd is in the loop */
    bool spool_failing; /* last connection ended on a spool error: keep backing off */
    uint64_t nconnacks; /* successful CONNACKs over the lifetime */
    uint64_t next_room_try_ms;

    /* The read batch in progress. */
    size_t batch_msgs;      /* PUBLISHes handled (each QoS 1 one queued a PUBACK) */
    uint64_t batch_wall_ms; /* wall clock at the batch's start: its messages' timestamp */
    uint64_t last_flush_us; /* when the last batch's flush began (group commit) */
    size_t batch_appended;
    uint64_t batch_bytes; /* encoded sizes appended (record headers not counted) */
    int batch_err;        /* first append failure; the batch must not be acknowledged */
    const struct m2a_mqtt_msg *cur_msg;
    struct m2a_str cur_props; /* its MQTT 5 properties blob (props.h), in props_buf */
    struct m2a_buf props_buf;

    struct m2a_ratelimit rl_spool, rl_tick, rl_pause, rl_resume, rl_drop;
    struct m2a_policy *policy;
    uint64_t spool_dropped;  /* m2a_spool_stats.dropped already counted */
    uint64_t drops_unlogged; /* of those, not yet in a log line */
};

/* --- pause / resume on spool fill ------------------------------------------------ */

/* Transitions are logged at most once per LOG_INTERVAL_MS each way: a spool
 * hovering at the mark under sustained load would otherwise flap the log. */
static void update_pause(struct m2a_mqtt_in *mi)
{
    uint64_t max = mi->o.spool_max_bytes, sup;
    /* drop_oldest makes room by discarding instead: reading pauses only
     * while a batch waits for the discard (flush_wait). */
    if (max == 0 || mi->o.spool_overflow == M2A_OVERFLOW_DROP_OLDEST)
        return;
    struct m2a_spool_stats ss;
    m2a_spool_get_stats(mi->o.spool, &ss);
    uint64_t high = max - max / 10, low = max - max / 5;
    if (!mi->paused && ss.bytes >= high) {
        mi->paused = true;
        M2A_STAT_SET(mi->o.stats, mqtt_paused, true);
        if (m2a_ratelimit_ok(&mi->rl_pause, &sup))
            m2a_warn(COMPONENT,
                     "spool holds %" PRIu64 " of %" PRIu64 " bytes (>= 90%%): pausing MQTT reads; "
                     "the broker keeps queueing in the persistent session (%" PRIu64
                     " pauses not logged)",
                     ss.bytes, max, sup);
    } else if (mi->paused && ss.bytes < low) {
        mi->paused = false;
        M2A_STAT_SET(mi->o.stats, mqtt_paused, false);
        if (m2a_ratelimit_ok(&mi->rl_resume, &sup))
            m2a_info(COMPONENT,
                     "spool down to %" PRIu64 " of %" PRIu64 " bytes (< 80%%): resuming MQTT "
                     "reads (%" PRIu64 " resumes not logged)",
                     ss.bytes, max, sup);
    }
}

/* --- mapping (inside on_message) ------------------------------------------------- */

/* Counts an appended record into the batch and the stats. */
static void appended(struct m2a_mqtt_in *mi, const struct m2a_envelope *env)
{
    size_t size = m2a_envelope_encoded_size(env);
    mi->batch_appended++;
    mi->batch_bytes += size;
    M2A_STAT_ADD(mi->o.stats, spooled, 1);
    M2A_STAT_ADD(mi->o.stats, spooled_bytes, size);
}

/* A message its route cannot forward (routing error, or too large): the
 * policy decides. A dead letter is appended to the spool in the current
 * batch, so the message's PUBACK leaves only once the dead letter is as
 * durable as any record (an append failure fails the batch: the broker
 * redelivers, and nothing is counted yet). A dead letter that cannot fit
 * either leaves the message dropped. */
static void undeliverable(struct m2a_mqtt_in *mi, const struct m2a_envelope *env,
                          enum m2a_policy_event event, const char *why)
{
    struct m2a_policy_case c = {.event = event, .env = env, .detail = why};
    struct m2a_envelope dle;
    enum m2a_fate fate = m2a_policy_decide(mi->policy, mi->gen, &c, &dle), done = fate;
    if (fate == M2A_FATE_DEAD_LETTER) {
        int rc = m2a_spool_append(mi->o.spool, &dle, NULL);
        if (rc != 0 && rc != M2A_ERR_ARG) {
            mi->batch_err = rc; /* transient: not acknowledged, redelivered */
            return;
        }
        if (rc == 0)
            appended(mi, &dle);
        else
            done = M2A_FATE_DROP;
    }
    m2a_policy_account(mi->policy, mi->gen, &c, fate, done, 0);
}

static void on_route(void *ud, size_t route_index, const struct m2a_envelope *env, int err)
{
    struct m2a_mqtt_in *mi = ud;
    const struct m2a_conf_mqtt *c = mi->o.conf;
    char why[200];

    if (mi->batch_err != 0)
        return; /* the batch will not be acknowledged anyway */
    M2A_ROUTE_ADD(m2a_routes_counters(mi->routes, route_index), matched, 1);
    if (err == M2A_ROUTES_SKIPPED) { /* retained: skip; acknowledged with the batch */
        M2A_ROUTE_ADD(m2a_routes_counters(mi->routes, route_index), retained_skipped, 1);
        M2A_STAT_ADD(mi->o.stats, retained_skipped, 1);
        return;
    }
    struct m2a_envelope with_props;
    if (mi->cur_props.len) { /* the routes know nothing of properties */
        with_props = *env;
        with_props.properties = mi->cur_props;
        env = &with_props;
    }
    if (err != 0) {
        undeliverable(mi, env, M2A_POLICY_ROUTING_ERROR, m2a_strerror(err));
        return;
    }
    /* Too big to bridge, or ever to fit: waiting would block the session
     * behind it forever, so it is acknowledged and dead-lettered or
     * dropped. */
    if (mi->cur_msg->payload_len > c->max_message_bytes) {
        snprintf(why, sizeof(why),
                 "a %zu-byte payload is larger than mqtt.max_message_bytes (%" PRIu64 ")",
                 mi->cur_msg->payload_len, c->max_message_bytes);
        undeliverable(mi, env, M2A_POLICY_TOO_LARGE, why);
        return;
    }
    int rc = m2a_spool_append(mi->o.spool, env, NULL);
    if (rc == M2A_ERR_ARG) {
        snprintf(why, sizeof(why),
                 "a %zu-byte message can never fit in the spool (max_bytes %" PRIu64
                 ", record limit %u)",
                 mi->cur_msg->payload_len, mi->o.spool_max_bytes, (unsigned)M2A_SPOOL_MAX_PAYLOAD);
        undeliverable(mi, env, M2A_POLICY_TOO_LARGE, why);
        return;
    }
    if (rc != 0) {
        mi->batch_err = rc;
        return;
    }
    appended(mi, env);
}

static void on_message(void *ud, const struct mosquitto_message *m, const mosquitto_property *props)
{
    struct m2a_mqtt_in *mi = ud;
    mi->batch_msgs++;
    M2A_STAT_ADD(mi->o.stats, received, 1);
    if (mi->batch_err != 0)
        return; /* connection is about to be dropped unacknowledged */
    if (m->retain && mi->o.conf->retained_resend == M2A_RETAINED_RESEND_SKIP &&
        m2a_mqtt_session_retained_resend(mi->session, m->topic)) {
        M2A_STAT_ADD(mi->o.stats, retained_resends, 1); /* forwarded before; acknowledged */
        return;
    }
    struct m2a_mqtt_msg msg = {.topic = m->topic,
                               .topic_len = strlen(m->topic),
                               .payload = m->payload,
                               .payload_len = m->payloadlen > 0 ? (size_t)m->payloadlen : 0,
                               .qos = m->qos,
                               .retain = m->retain,
                               .timestamp_ms = mi->batch_wall_ms};
    mi->cur_msg = &msg;
    mi->cur_props.len = 0;
    if (props) { /* MQTT 5 only; nothing to do for the common message without any */
        m2a_buf_reset(&mi->props_buf);
        mi->cur_props.len = m2a_props_from_mqtt(props, &mi->props_buf);
        mi->cur_props.ptr = (const char *)mi->props_buf.data;
    }
    size_t n = m2a_routes_map(mi->routes, &msg, mi->scratch, on_route, mi);
    mi->cur_msg = NULL;
    mi->cur_props.len = 0;
    if (n == 0) {
        M2A_STAT_ADD(mi->o.stats, unmatched, 1);
        m2a_debug(COMPONENT, "no route matches topic %.*s",
                  (int)(msg.topic_len > LOG_TOPIC_MAX ? LOG_TOPIC_MAX : msg.topic_len), msg.topic);
    }
}

/* --- session events -------------------------------------------------------------- */

static void on_up(void *ud, size_t endpoint, bool session_present)
{
    (void)session_present;
    struct m2a_mqtt_in *mi = ud;
    if (mi->nconnacks++ > 0)
        M2A_STAT_ADD(mi->o.stats, mqtt_reconnects, 1);
    M2A_STAT_SET(mi->o.stats, mqtt_endpoint, (uint32_t)endpoint + 1);
    M2A_STAT_SET(mi->o.stats, mqtt_connected, true);
}

static void on_down(void *ud)
{
    struct m2a_mqtt_in *mi = ud;
    M2A_STAT_SET(mi->o.stats, mqtt_connected, false);
    M2A_STAT_SET(mi->o.stats, mqtt_endpoint, 0);
}

/* What /readyz says about refused subscriptions (stats.h's note). */
static void publish_refused(struct m2a_mqtt_in *mi)
{
    char text[M2A_STATS_NOTE_MAX];
    size_t n = m2a_mqtt_session_refused(mi->session, COMPONENT ": ", text, sizeof(text));
    M2A_STAT_SET(mi->o.stats, mqtt_subscriptions_refused, (uint32_t)n);
    m2a_stats_note_set(&mi->o.stats->mqtt_refused, text);
}

static void on_suback(void *ud, const char *filter, int code)
{
    (void)filter;
    struct m2a_mqtt_in *mi = ud;
    if (code >= 0x80)
        M2A_STAT_ADD(mi->o.stats, mqtt_subscribe_refusals, 1);
    publish_refused(mi);
}

static void on_takeover(void *ud, unsigned n)
{
    (void)n;
    struct m2a_mqtt_in *mi = ud;
    M2A_STAT_ADD(mi->o.stats, mqtt_takeovers, 1);
}

static bool may_read(void *ud)
{
    const struct m2a_mqtt_in *mi = ud;
    return !mi->paused && !mi->flush_wait;
}

/* Every PUBACK queued belongs to a message whose batch was flushed, unless
 * the batch waits for room. */
static bool may_write(void *ud)
{
    const struct m2a_mqtt_in *mi = ud;
    return !mi->flush_wait;
}

/* --- the read batch -------------------------------------------------------------- */

/* The batch could not be made durable: make sure none of its PUBACKs leave. */
static void spool_failed(struct m2a_mqtt_in *mi, int err)
{
    uint64_t sup;
    M2A_STAT_ADD(mi->o.stats, spool_errors, 1);
    mi->spool_failing = true;
    m2a_mqtt_session_hold_backoff(mi->session, true);
    if (m2a_ratelimit_ok(&mi->rl_spool, &sup))
        m2a_error(COMPONENT,
                  "spool: %s; dropping the MQTT connection without acknowledging the batch, "
                  "the broker will redeliver (%" PRIu64 " similar suppressed)",
                  m2a_strerror(err), sup);
    m2a_mqtt_session_abort(mi->session);
}

/* overflow drop_oldest: the spool discarded records to make room (on the
 * AMQP thread, asked by our appends and flushes); they count as dropped,
 * and a rate-limited line says how many.
 * Called after every batch and every loop turn, so a last burst of discards
 * is logged within LOG_INTERVAL_MS too. */
static void count_spool_drops(struct m2a_mqtt_in *mi)
{
    if (mi->o.spool_overflow != M2A_OVERFLOW_DROP_OLDEST)
        return;
    struct m2a_spool_stats ss;
    uint64_t sup;
    m2a_spool_get_stats(mi->o.spool, &ss);
    if (ss.dropped != mi->spool_dropped) {
        uint64_t n = ss.dropped - mi->spool_dropped;
        mi->spool_dropped = ss.dropped;
        mi->drops_unlogged += n;
        M2A_STAT_ADD(mi->o.stats, dropped, n);
    }
    if (mi->drops_unlogged && m2a_ratelimit_ok(&mi->rl_drop, &sup)) {
        m2a_warn(COMPONENT,
                 "spool full (overflow: drop_oldest): discarded %" PRIu64 " of the oldest "
                 "unconfirmed messages (%" PRIu64 " since start)",
                 mi->drops_unlogged, ss.dropped);
        mi->drops_unlogged = 0;
    }
}

/* How many encoded bytes the batch may append before it stops: the spool
 * holds a batch in memory until its flush, so at most BATCH_BYTES (one
 * message more, at worst); and up to the high-water mark, so that a burst
 * pauses reading instead of running into M2A_ERR_FULL and a dropped
 * connection. */
static uint64_t batch_room(const struct m2a_mqtt_in *mi)
{
    uint64_t max = mi->o.spool_max_bytes;
    if (!max)
        return BATCH_BYTES;
    /* drop_oldest: no pause, but a batch small enough that discarding every
     * segment but the current one always makes room for it (config.c
     * requires max_bytes >= 2 segments). */
    if (mi->o.spool_overflow == M2A_OVERFLOW_DROP_OLDEST)
        return max / 4 < BATCH_BYTES ? max / 4 : BATCH_BYTES;
    struct m2a_spool_stats ss;
    m2a_spool_get_stats(mi->o.spool, &ss);
    uint64_t high = max - max / 10, room = ss.bytes < high ? high - ss.bytes : 0;
    return room < BATCH_BYTES ? room : BATCH_BYTES;
}

/* Reads up to BATCH_MAX packets. Returns false when the connection ended.
 *
 * mosquitto_loop_read handles one packet per call whatever max_packets says
 * (with no QoS 2 in flight), so we call it until a call delivers no
 * message: the socket is drained, or held a partial packet or a control
 * packet. This costs one empty read() per batch where asking poll() after
 * each packet cost one system call per message.
 *
 * Group commit: a batch is flushed no sooner than GATHER_US after the
 * previous flush began; until then we wait for more packets. Under load
 * this makes batches (and the AMQP side's writes) larger for at most
 * GATHER_US more latency; a message arriving after a quiet spell is flushed
 * at once. */
static bool read_packets(struct m2a_mqtt_in *mi)
{
    uint64_t room = batch_room(mi), gather_until = mi->last_flush_us + GATHER_US;
    int reads = 0;
    for (;;) {
        for (; reads < BATCH_MAX; reads++) {
            size_t before = mi->batch_msgs;
            if (!m2a_mqtt_session_read(mi->session))
                return false;
            if (mi->batch_err != 0 || mi->batch_bytes >= room)
                return true;
            if (mi->batch_msgs == before)
                break;
        }
        if (reads >= BATCH_MAX || mi->batch_appended == 0)
            return true;
        uint64_t now = m2a_now_us();
        if (now >= gather_until)
            return true;
        struct pollfd p = {.fd = m2a_mqtt_session_fd(mi->session), .events = POLLIN};
        struct timespec ts = {0, (long)(gather_until - now) * 1000};
        if (ppoll(&p, 1, &ts, NULL) <= 0)
            return true;
    }
}

/* The session's readable hook: a batch is read, made durable, and only then
 * are its PUBACKs written. */
static void read_batch(void *ud)
{
    struct m2a_mqtt_in *mi = ud;
    mi->batch_msgs = 0;
    mi->batch_wall_ms = m2a_wall_ms();
    mi->batch_appended = 0;
    mi->batch_err = 0;
    mi->batch_bytes = 0;
    bool alive = read_packets(mi);
    if (mi->batch_appended > 0) {
        mi->last_flush_us = m2a_now_us();
        int frc = m2a_spool_flush(mi->o.spool);
        mi->flush_wait = frc == M2A_ERR_FULL; /* kept: see room_ready */
        if (frc != 0 && !mi->flush_wait && mi->batch_err == 0)
            mi->batch_err = frc;
        if (frc == 0 && mi->spool_failing && mi->batch_err == 0) {
            mi->spool_failing = false;
            m2a_mqtt_session_hold_backoff(mi->session, false);
            m2a_info(COMPONENT, "spool: appends succeed again; reading MQTT normally");
        }
    }
    count_spool_drops(mi);
    if (mi->batch_err != 0) {
        spool_failed(mi, mi->batch_err);
        return;
    }
    if (alive)
        m2a_mqtt_session_write(mi->session, mi->batch_msgs >= CORK_MIN);
}

/* The last batch did not fit (overflow drop_oldest: m2a_spool_flush kept
 * it and asked the AMQP thread to discard). Nothing is read and no PUBACK
 * leaves until it is flushed: one AMQP turn as a rule (spool.h states the
 * worst case). Tried when the spool's room fd says so, and every TICK_MS.
 * A failed flush ends the connection unacknowledged. */
static void try_flush_wait(struct m2a_mqtt_in *mi)
{
    mi->next_room_try_ms = m2a_now_ms() + TICK_MS;
    int rc = m2a_spool_flush(mi->o.spool);
    if (rc == M2A_ERR_FULL)
        return;
    mi->flush_wait = false;
    if (rc != 0)
        spool_failed(mi, rc);
    else
        m2a_mqtt_session_write(mi->session, true);
}

static void room_ready(struct m2a_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    (void)fd;
    (void)events;
    try_flush_wait(ud);
}

/* The room fd is watched exactly while a batch waits for room. */
static void watch_room(struct m2a_mqtt_in *mi)
{
    int fd = m2a_spool_room_fd(mi->o.spool);
    if (mi->flush_wait && !mi->room_watched)
        mi->room_watched = m2a_loop_watch(mi->loop, fd, M2A_LOOP_READ, room_ready, mi) == 0;
    else if (!mi->flush_wait && mi->room_watched) {
        m2a_loop_unwatch(mi->loop, fd);
        mi->room_watched = false;
    }
}

/* --- routes: the generation and live reload ------------------------------------- */

/* The routes' subscription set, with the $share prefix if any, handed to
 * the session; *added / *removed get what changed. */
static void set_subscriptions(struct m2a_mqtt_in *mi, size_t *added, size_t *removed)
{
    const char *group = mi->o.conf->share_group;
    size_t n = m2a_routes_nsubscriptions(mi->routes);
    char **subs = xcalloc(n ? n : 1, sizeof(*subs));
    for (size_t i = 0; i < n; i++) {
        const char *f = m2a_routes_subscription(mi->routes, i);
        subs[i] = group ? xasprintf("$share/%s/%s", group, f) : xstrdup(f);
    }
    m2a_mqtt_session_subscribe(mi->session, subs, n, added, removed);
    for (size_t i = 0; i < n; i++)
        free(subs[i]);
    free(subs);
    publish_refused(mi);
}

/* Takes the generation m2a_mqtt_in_set_generation handed over, between two
 * read batches: every message of a batch maps through one generation. The
 * session subscribes to the filters it adds before unsubscribing from the
 * ones it drops, so no message published meanwhile falls between the two
 * (one matching both an added and a dropped filter in that instant may
 * arrive twice: at least once holds). Drops our reference to the old one. */
static void adopt_generation(struct m2a_mqtt_in *mi)
{
    struct m2a_generation *g = atomic_exchange(&mi->pending, NULL);
    if (!g)
        return;
    size_t added = 0, removed = 0;
    m2a_generation_unref(mi->gen);
    mi->gen = g;
    mi->routes = m2a_generation_routes(g);
    set_subscriptions(mi, &added, &removed);
    m2a_info(COMPONENT,
             "routes reloaded (generation %" PRIu64 "): %zu routes, %zu subscriptions (%zu "
             "added, %zu removed)",
             m2a_generation_number(g), m2a_routes_count(mi->routes),
             m2a_routes_nsubscriptions(mi->routes), added, removed);
}

/* --- the thread ------------------------------------------------------------------ */

/* Stop: reading has stopped and every batch read was flushed at the end of
 * its event, so all queued PUBACKs may leave before the DISCONNECT; but a
 * batch still waiting for room was never acknowledged: none of its PUBACKs
 * may leave, so neither a drain nor a DISCONNECT. */
static void shutdown_connection(struct m2a_mqtt_in *mi)
{
    bool unflushed = mi->flush_wait && m2a_spool_flush(mi->o.spool) != 0;
    m2a_mqtt_session_close(mi->session, m2a_loop_stop_deadline(mi->loop), !unflushed);
}

static void *run(void *arg)
{
    struct m2a_mqtt_in *mi = arg;
    uint64_t sup;
    pthread_setname_np(pthread_self(), "m2a-mqtt");
    m2a_mqtt_session_start(mi->session);
    while (!m2a_loop_stopping(mi->loop)) {
        if (m2a_loop_take_wakes(mi->loop, WAKE_GENERATION))
            adopt_generation(mi);
        update_pause(mi);
        count_spool_drops(mi);
        if (mi->flush_wait && m2a_now_ms() >= mi->next_room_try_ms)
            try_flush_wait(mi);
        watch_room(mi);
        m2a_mqtt_session_arm(mi->session);
        m2a_loop_once(mi->loop, m2a_now_ms() + TICK_MS);
        int rc = m2a_spool_tick(mi->o.spool);
        if (rc != 0 && m2a_ratelimit_ok(&mi->rl_tick, &sup))
            m2a_error(COMPONENT, "spool: periodic sync failed: %s (%" PRIu64 " similar suppressed)",
                      m2a_strerror(rc), sup);
    }
    shutdown_connection(mi);
    return NULL;
}

/* --- public ---------------------------------------------------------------------- */

/* The config was validated when it was loaded (config.c): only pointers. */
static int check_opts(const struct m2a_mqtt_in_opts *o, char *err, size_t errlen)
{
    if (o->conf && o->conf->nendpoints && o->generation && o->spool && o->stats)
        return 0;
    snprintf(err, errlen, "missing conf, brokers, generation, spool or stats");
    return M2A_ERR_ARG;
}

static void free_mi(struct m2a_mqtt_in *mi)
{
    m2a_mqtt_session_free(mi->session);
    m2a_loop_free(mi->loop);
    m2a_generation_unref(atomic_exchange(&mi->pending, NULL));
    m2a_generation_unref(mi->gen);
    m2a_routes_scratch_free(mi->scratch);
    m2a_policy_free(mi->policy);
    m2a_buf_free(&mi->props_buf);
    free(mi);
}

/* The largest packet we accept: the payload limit and what a PUBLISH
 * carries beside it. */
static uint32_t max_packet(const struct m2a_conf_mqtt *c)
{
    uint64_t n = c->max_message_bytes + M2A_MQTT_PUBLISH_OVERHEAD;
    return n > M2A_MQTT_PACKET_MAX ? M2A_MQTT_PACKET_MAX : (uint32_t)n;
}

int m2a_mqtt_in_start(const struct m2a_mqtt_in_opts *opts, struct m2a_mqtt_in **out, char *err,
                      size_t errlen)
{
    int rc = check_opts(opts, err, errlen);
    if (rc != 0)
        return rc;
    struct m2a_mqtt_in *mi = xcalloc(1, sizeof(*mi));
    mi->o = *opts;
    struct m2a_ratelimit *limiters[] = {&mi->rl_spool, &mi->rl_tick, &mi->rl_pause, &mi->rl_resume,
                                        &mi->rl_drop};
    for (size_t i = 0; i < sizeof(limiters) / sizeof(limiters[0]); i++)
        *limiters[i] = (struct m2a_ratelimit)M2A_RATELIMIT_INIT(LOG_INTERVAL_MS);
    mi->scratch = m2a_routes_scratch_new();
    mi->policy = m2a_policy_new(&(struct m2a_policy_opts){
        .stats = opts->stats, .component = COMPONENT, .log_interval_ms = LOG_INTERVAL_MS});
    mi->gen = m2a_generation_ref(opts->generation);
    mi->routes = m2a_generation_routes(mi->gen);
    atomic_init(&mi->pending, NULL);
    if (!(mi->loop = m2a_loop_new())) {
        snprintf(err, errlen, "cannot create the MQTT thread's loop: %s", strerror(errno));
        rc = M2A_ERR_IO;
        goto out;
    }
    struct m2a_mqtt_session_opts so = {.conf = opts->conf,
                                       .log_name = COMPONENT,
                                       .loop = mi->loop,
                                       .max_packet_bytes = max_packet(opts->conf),
                                       .hooks = {.ud = mi,
                                                 .readable = read_batch,
                                                 .may_read = may_read,
                                                 .may_write = may_write,
                                                 .on_message = on_message,
                                                 .on_up = on_up,
                                                 .on_down = on_down,
                                                 .on_suback = on_suback,
                                                 .on_takeover = on_takeover}};
    if ((rc = m2a_mqtt_session_new(&so, &mi->session, err, errlen)) != 0)
        goto out;
    set_subscriptions(mi, NULL, NULL);
    int prc = m2a_thread_start(&mi->thread, run, mi);
    if (prc != 0) {
        snprintf(err, errlen, "cannot start the MQTT thread: %s", strerror(prc));
        rc = M2A_ERR_IO;
        goto out;
    }
    *out = mi;
    mi = NULL;
out:
    if (mi)
        free_mi(mi);
    return rc;
}

void m2a_mqtt_in_set_generation(struct m2a_mqtt_in *mi, struct m2a_generation *gen)
{
    /* One handed over earlier but not adopted yet is superseded. */
    m2a_generation_unref(atomic_exchange(&mi->pending, m2a_generation_ref(gen)));
    m2a_loop_wake(mi->loop, WAKE_GENERATION);
}

void m2a_mqtt_in_stop(struct m2a_mqtt_in *mi)
{
    if (!mi)
        return;
    m2a_loop_stop(mi->loop, m2a_now_ms() + STOP_BUDGET_MS);
    pthread_join(mi->thread, NULL);
    free_mi(mi);
}
