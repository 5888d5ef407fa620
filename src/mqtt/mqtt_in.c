/* mqtt_in.c - the MQTT side of the bridge: subscribe, map, spool, acknowledge.
 *
 * Threads: one thread (started here, "m2a-mqtt") owns the libmosquitto
 * handle, the route scratch, the spool writer (append, flush, tick) and a
 * reference to the generation it maps through. It shares only the counters
 * (atomics), the stop flag and the next generation's mailbox (an atomic
 * pointer) with other threads.
 *
 * Why the loop looks like this: libmosquitto has no manual-ack API; it queues
 * the PUBACK of a QoS 1 message around on_message. In external-thread mode
 * (mosquitto_threaded_set) queued packets leave the socket only when we call
 * mosquitto_loop_write. So each turn reads a batch (on_message appends every
 * mapped envelope to the spool), flushes the spool, and only if the flush
 * returned 0 writes. If an append or the flush fails the socket is shut down
 * before any write and the handle destroyed: the broker never sees those
 * PUBACKs and redelivers from the persistent session (at least once).
 *
 * Each connection gets a fresh mosquitto handle, so no packet queued on a
 * dead connection (a PUBACK whose message was never spooled) can ever be
 * written on the next one, where the broker reuses packet ids. Reconnects
 * follow our own backoff, not libmosquitto's. */
#include "mqtt2amqp/mqtt_in.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "mqtt2amqp/backoff.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/policy.h"
#include "mqtt2amqp/ratelimit.h"
#include "mqtt2amqp/route_stats.h"
#include "mqtt2amqp/tls.h"
#include "mqtt2amqp/util.h"

#define LOOP_TIMEOUT_MS 100      /* poll timeout: bounds stop latency and the spool tick period */
#define BATCH_MAX       1000     /* packets read before the batch is flushed and acknowledged */
#define STOP_DRAIN_MS   1000     /* how long stop waits for queued PUBACKs to leave */
#define LOG_INTERVAL_MS 5000     /* rate limit for repeated warnings and errors */
#define LOG_TOPIC_MAX   200      /* a topic is cut to this in log lines */
#define CORK_MIN        4        /* a batch of this many PUBACKs is written corked */
#define WAKE_SIGNAL     SIGRTMIN /* interrupts a blocking connect at stop */
#define WAKE_EVERY_MS   100      /* stop repeats it until the thread is out */
#define GATHER_US       1000     /* group commit: at most one batch flush per this */
#define COMPONENT       "mqtt"

struct m2a_mqtt_in {
    struct m2a_mqtt_in_opts o;
    pthread_t thread;
    atomic_bool stop;
    atomic_bool in_connect; /* inside libmosquitto's blocking connect: stop signals it */
    struct m2a_routes_scratch *scratch;
    /* The generation this thread runs (a reference of its own) and its
     * routes; a reload hands over the next one through `pending` (taken
     * with an atomic exchange, between two read batches). */
    struct m2a_generation *gen;
    const struct m2a_routes *routes;
    _Atomic(struct m2a_generation *) pending;
    char **subs; /* subscription strings, with the $share prefix if any */
    size_t nsubs;
    int *sub_mids; /* mid of the SUBSCRIBE sent for subs[i] on this connection */
    /* Filters a reload dropped while disconnected (unsubscribed at the next
     * CONNACK). */
    char **unsubs;
    size_t nunsubs;
    struct m2a_backoff backoff;
    SSL_CTX *ssl_ctx; /* NULL without tls; each handle takes a reference */
    uint64_t next_attempt_ms;
    bool paused;
    bool flush_wait;    /* the last batch waits in the spool for room: no reads, no PUBACKs */
    bool spool_failing; /* last connection ended on a spool error: keep backing off */
    uint64_t nconnacks; /* successful CONNACKs over the lifetime */

    /* The current connection; mosq is NULL while disconnected. */
    struct mosquitto *mosq;
    bool connack_ok;
    bool refused;   /* CONNACK carried a failure code */
    bool disc_seen; /* on_disconnect ran */
    int disc_rc;    /* its code: MOSQ_ERR_* or an MQTT 5 reason code */

    /* The read batch in progress. */
    size_t batch_msgs;      /* PUBLISHes handled (each QoS 1 one queued a PUBACK) */
    uint64_t batch_wall_ms; /* wall clock at the batch's start: its messages' timestamp */
    uint64_t last_flush_us; /* when the last batch's flush began (group commit) */
    size_t batch_appended;
    uint64_t batch_bytes; /* encoded sizes appended (record headers not counted) */
    int batch_err;        /* first append failure; the batch must not be acknowledged */
    const struct m2a_mqtt_msg *cur_msg;

    struct m2a_ratelimit rl_spool, rl_connect, rl_tick, rl_pause, rl_resume, rl_drop;
    struct m2a_policy *policy;
    uint64_t spool_dropped;  /* m2a_spool_stats.dropped already counted */
    uint64_t drops_unlogged; /* of those, not yet in a log line */
};

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

/* Once per process and never undone: another instance may be alive, and
 * mosquitto_lib_cleanup() would pull OpenSSL from under it. */
static void lib_init(void)
{
    mosquitto_lib_init();
}

/* A libmosquitto return code as a sentence; errno must be the call's. */
static const char *mosq_err_str(int rc, char *buf, size_t len)
{
    if (rc == MOSQ_ERR_ERRNO)
        return strerror_r(errno, buf, len);
    return mosquitto_strerror(rc);
}

/* on_disconnect gets either a MOSQ_ERR_* (local, all below 0x80) or, in
 * MQTT 5, the reason code of a DISCONNECT the broker sent; the ones worth
 * naming are errors, >= 0x80. */
static const char *disc_reason(const struct m2a_mqtt_in *mi, int rc)
{
    if (mi->o.conf->protocol == 5 && rc >= 0x80)
        return mosquitto_reason_string(rc);
    if (rc == MOSQ_ERR_SUCCESS)
        return "closed";
    if (rc == MOSQ_ERR_KEEPALIVE) /* libmosquitto 2.0.11 has no text for it */
        return "keepalive timeout (no PINGRESP read)";
    return mosquitto_strerror(rc);
}

static const char *connack_reason(const struct m2a_mqtt_in *mi, int rc)
{
    return mi->o.conf->protocol == 5 ? mosquitto_reason_string(rc) : mosquitto_connack_string(rc);
}

/* --- pause / resume on spool fill ------------------------------------------------ */

/* Transitions are logged at most once per LOG_INTERVAL_MS each way: a spool
 * hovering at the mark under sustained load would otherwise flap the log. */
static void update_pause(struct m2a_mqtt_in *mi)
{
    uint64_t max = mi->o.spool_max_bytes, sup;
    /* drop_oldest makes room by discarding instead: reading pauses only
     * while a batch waits for the discard (wait_room). */
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

/* --- callbacks (run on our thread, inside mosquitto_loop_*) ---------------------- */

/* Counts an appended record into the batch and the stats. */
static void appended(struct m2a_mqtt_in *mi, const struct m2a_envelope *env)
{
    size_t size = m2a_envelope_encoded_size(env);
    mi->batch_appended++;
    mi->batch_bytes += size;
    M2A_STAT_ADD(mi->o.stats, spooled, 1);
    M2A_STAT_ADD(mi->o.stats, spooled_bytes, size);
}

/* A message its route cannot forward (routing error, or too large for the
 * spool): the policy decides. A dead letter is appended to the spool in the
 * current batch, so the message's PUBACK leaves only once the dead letter
 * is as durable as any record (an append failure fails the batch: the
 * broker redelivers, and nothing is counted yet). A dead letter that
 * cannot fit either leaves the message dropped. */
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
    char why[160];

    if (mi->batch_err != 0)
        return; /* the batch will not be acknowledged anyway */
    M2A_ROUTE_ADD(m2a_routes_counters(mi->routes, route_index), matched, 1);
    if (err != 0) {
        undeliverable(mi, env, M2A_POLICY_ROUTING_ERROR, m2a_strerror(err));
        return;
    }
    int rc = m2a_spool_append(mi->o.spool, env, NULL);
    if (rc == M2A_ERR_ARG) {
        /* Too big to ever fit: waiting would block the session behind it
         * forever, so it is acknowledged and dead-lettered or dropped. */
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

static void on_message(struct mosquitto *mosq, void *ud, const struct mosquitto_message *m)
{
    (void)mosq;
    struct m2a_mqtt_in *mi = ud;
    mi->batch_msgs++;
    M2A_STAT_ADD(mi->o.stats, received, 1);
    if (mi->batch_err != 0)
        return; /* connection is about to be dropped unacknowledged */
    struct m2a_mqtt_msg msg = {.topic = m->topic,
                               .topic_len = strlen(m->topic),
                               .payload = m->payload,
                               .payload_len = m->payloadlen > 0 ? (size_t)m->payloadlen : 0,
                               .qos = m->qos,
                               .retain = m->retain,
                               .timestamp_ms = mi->batch_wall_ms};
    mi->cur_msg = &msg;
    size_t n = m2a_routes_map(mi->routes, &msg, mi->scratch, on_route, mi);
    mi->cur_msg = NULL;
    if (n == 0) {
        M2A_STAT_ADD(mi->o.stats, unmatched, 1);
        m2a_debug(COMPONENT, "no route matches topic %.*s",
                  (int)(msg.topic_len > LOG_TOPIC_MAX ? LOG_TOPIC_MAX : msg.topic_len), msg.topic);
    }
}

static void subscribe_one(struct m2a_mqtt_in *mi, struct mosquitto *mosq, size_t i)
{
    int mid = 0;
    int rc = mosquitto_subscribe(mosq, &mid, mi->subs[i], 1);
    mi->sub_mids[i] = rc == MOSQ_ERR_SUCCESS ? mid : -1;
    if (rc != MOSQ_ERR_SUCCESS)
        m2a_error(COMPONENT, "cannot subscribe to %s: %s", mi->subs[i], mosquitto_strerror(rc));
}

static void subscribe_all(struct m2a_mqtt_in *mi, struct mosquitto *mosq)
{
    for (size_t i = 0; i < mi->nsubs; i++)
        subscribe_one(mi, mosq, i);
}

static void unsubscribe_one(struct mosquitto *mosq, const char *sub)
{
    int rc = mosquitto_unsubscribe(mosq, NULL, sub);
    if (rc != MOSQ_ERR_SUCCESS)
        m2a_error(COMPONENT, "cannot unsubscribe from %s: %s", sub, mosquitto_strerror(rc));
    else
        m2a_info(COMPONENT, "unsubscribed from %s (no route needs it since the reload)", sub);
}

/* Filters a reload dropped while we were away: the session may still hold them. */
static void unsubscribe_pending(struct m2a_mqtt_in *mi, struct mosquitto *mosq)
{
    for (size_t i = 0; i < mi->nunsubs; i++) {
        unsubscribe_one(mosq, mi->unsubs[i]);
        free(mi->unsubs[i]);
    }
    mi->nunsubs = 0;
}

static void on_connect(struct mosquitto *mosq, void *ud, int rc, int flags,
                       const mosquitto_property *props)
{
    (void)props;
    struct m2a_mqtt_in *mi = ud;
    const struct m2a_conf_mqtt *c = mi->o.conf;
    uint64_t sup;

    if (rc != 0) {
        mi->refused = true;
        if (m2a_ratelimit_ok(&mi->rl_connect, &sup))
            m2a_error(COMPONENT,
                      "%s:%d refused the connection: %s (%" PRIu64 " similar suppressed)", c->host,
                      c->port, connack_reason(mi, rc), sup);
        return;
    }
    bool session_present = (flags & 1) != 0;
    mi->connack_ok = true;
    if (mi->nconnacks++ > 0)
        M2A_STAT_ADD(mi->o.stats, mqtt_reconnects, 1);
    M2A_STAT_SET(mi->o.stats, mqtt_connected, true);
    if (!mi->spool_failing)
        m2a_backoff_reset(&mi->backoff);
    mi->rl_connect.next_ms = 0; /* the next failure is news again */
    m2a_info(COMPONENT, "connected to %s:%d (%s, session present: %s)", c->host, c->port,
             c->protocol == 5 ? "MQTT 5" : "MQTT 3.1.1", session_present ? "yes" : "no");
    if (!session_present && !c->clean_session && mi->nconnacks > 1)
        m2a_warn(COMPONENT,
                 "the broker had no session for client id %s: messages published "
                 "while the bridge was away were not kept (session expired, or the "
                 "broker restarted without persistence)",
                 c->client_id);
    /* Always resubscribe: cheap, and right even if the broker lost the session. */
    subscribe_all(mi, mosq);
    unsubscribe_pending(mi, mosq);
}

static void on_subscribe(struct mosquitto *mosq, void *ud, int mid, int count, const int *granted,
                         const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct m2a_mqtt_in *mi = ud;
    for (size_t i = 0; i < mi->nsubs; i++) {
        if (mi->sub_mids[i] != mid)
            continue;
        int g = count > 0 ? granted[0] : 0x80;
        if (g >= 0x80)
            m2a_error(COMPONENT, "the broker refused the subscription to %s: %s", mi->subs[i],
                      mi->o.conf->protocol == 5 ? mosquitto_reason_string(g) : "failure (0x80)");
        else if (g < 1)
            m2a_warn(COMPONENT, "subscribed to %s, but only at QoS 0: messages can be lost",
                     mi->subs[i]);
        else
            m2a_info(COMPONENT, "subscribed to %s (QoS %d)", mi->subs[i], g);
        return;
    }
}

static void on_disconnect(struct mosquitto *mosq, void *ud, int rc, const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct m2a_mqtt_in *mi = ud;
    if (!mi->disc_seen) {
        mi->disc_seen = true;
        mi->disc_rc = rc;
    }
}

/* --- connection lifetime -------------------------------------------------------- */

/* A configured handle, not connected. Returns NULL with a sentence in err. */
static struct mosquitto *new_client(struct m2a_mqtt_in *mi, char *err, size_t errlen)
{
    const struct m2a_conf_mqtt *c = mi->o.conf;
    int rc = MOSQ_ERR_SUCCESS;
    const char *what = "";
    struct mosquitto *mosq = mosquitto_new(c->client_id, c->clean_session, mi);
    if (!mosq) {
        snprintf(err, errlen, "mosquitto_new failed: %s", strerror(errno));
        return NULL;
    }
    if ((rc = mosquitto_threaded_set(mosq, true)) != 0) {
        what = "threaded mode";
        goto out;
    }
    if (c->protocol == 5) {
        if ((rc = mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5)) != 0 ||
            (rc = mosquitto_int_option(mosq, MOSQ_OPT_RECEIVE_MAXIMUM, c->receive_maximum)) != 0) {
            what = "MQTT 5 options";
            goto out;
        }
    } else if ((rc = mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311)) !=
               0) {
        what = "protocol version";
        goto out;
    }
    if (c->username && (rc = mosquitto_username_pw_set(mosq, c->username, c->password)) != 0) {
        what = "username/password";
        goto out;
    }
    /* Our own context (tls.c) rather than mosquitto_tls_set: libmosquitto
     * 2.0.11 only logs "certificate verify failed" and does not check IP
     * addresses against the certificate; ours records why and does. */
    if (mi->ssl_ctx && ((rc = mosquitto_int_option(mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0)) != 0 ||
                        (rc = mosquitto_void_option(mosq, MOSQ_OPT_SSL_CTX, mi->ssl_ctx)) != 0)) {
        what = "TLS context";
        goto out;
    }
    mosquitto_connect_v5_callback_set(mosq, on_connect);
    mosquitto_disconnect_v5_callback_set(mosq, on_disconnect);
    mosquitto_subscribe_v5_callback_set(mosq, on_subscribe);
    mosquitto_message_callback_set(mosq, on_message);
out:
    if (rc != MOSQ_ERR_SUCCESS) {
        snprintf(err, errlen, "%s: %s", what, mosquitto_strerror(rc));
        mosquitto_destroy(mosq);
        return NULL;
    }
    return mosq;
}

/* After a TLS failure on this connection attempt, why the broker's
 * certificate was refused (libmosquitto only says "A TLS error occurred");
 * else reason. */
static const char *tls_or(const char *reason, char *buf, size_t len)
{
    return m2a_tls_failure(buf, len) ? buf : reason;
}

/* Opens the TCP connection and queues CONNECT (written by the loop). The TCP
 * connect itself blocks (libmosquitto 2.0.11 has no async connect that
 * carries MQTT 5 properties), for up to the kernel's SYN timeout (about two
 * minutes) when the broker's host drops SYNs; m2a_mqtt_in_stop interrupts
 * it with WAKE_SIGNAL (its handler does nothing: connect() returns EINTR). */
static void try_connect(struct m2a_mqtt_in *mi)
{
    const struct m2a_conf_mqtt *c = mi->o.conf;
    char err[256], ebuf[128];
    uint64_t sup;
    mosquitto_property *props = NULL;
    int rc;

    struct mosquitto *mosq = new_client(mi, err, sizeof(err));
    if (!mosq) {
        if (m2a_ratelimit_ok(&mi->rl_connect, &sup))
            m2a_error(COMPONENT, "cannot create the MQTT client: %s", err);
        goto fail;
    }
    if (c->protocol == 5 && !c->clean_session)
        mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, c->session_expiry);
    errno = 0;
    m2a_tls_failure_reset();
    m2a_debug(COMPONENT, "connecting to %s:%d", c->host, c->port);
    atomic_store(&mi->in_connect, true);
    rc = atomic_load(&mi->stop)
             ? MOSQ_ERR_NO_CONN
             : mosquitto_connect_bind_v5(mosq, c->host, c->port, c->keepalive, NULL, props);
    atomic_store(&mi->in_connect, false);
    mosquitto_property_free_all(&props);
    if (rc != MOSQ_ERR_SUCCESS) {
        char tls[600];
        if (!atomic_load(&mi->stop) && m2a_ratelimit_ok(&mi->rl_connect, &sup))
            m2a_warn(COMPONENT, "cannot connect to %s:%d: %s (%" PRIu64 " similar suppressed)",
                     c->host, c->port,
                     tls_or(mosq_err_str(rc, ebuf, sizeof(ebuf)), tls, sizeof(tls)), sup);
        mosquitto_destroy(mosq);
        goto fail;
    }
    mi->mosq = mosq;
    mi->connack_ok = mi->refused = mi->disc_seen = false;
    mi->disc_rc = 0;
    m2a_debug(COMPONENT, "TCP connected to %s:%d, CONNECT queued", c->host, c->port);
    return;
fail:
    mi->next_attempt_ms = m2a_now_ms() + m2a_backoff_next(&mi->backoff);
}

static void on_wake_signal(int sig)
{
    (void)sig;
}

static void log_disconnect(struct m2a_mqtt_in *mi, int why)
{
    const struct m2a_conf_mqtt *c = mi->o.conf;
    uint64_t sup;

    if (mi->connack_ok && mi->paused && (why == MOSQ_ERR_KEEPALIVE || why == MOSQ_ERR_CONN_LOST))
        m2a_info(COMPONENT,
                 "connection to %s:%d ended while reads are paused (%s): expected, as "
                 "keepalive cannot be serviced without reading; the session keeps "
                 "queueing, reconnecting once the spool drains",
                 c->host, c->port, disc_reason(mi, why));
    else if (mi->connack_ok)
        m2a_warn(COMPONENT, "disconnected from %s:%d: %s", c->host, c->port, disc_reason(mi, why));
    else if (!mi->refused && m2a_ratelimit_ok(&mi->rl_connect, &sup)) {
        char tls[600];
        m2a_warn(COMPONENT,
                 "connection to %s:%d failed before CONNACK: %s (%" PRIu64 " similar suppressed)",
                 c->host, c->port, tls_or(disc_reason(mi, why), tls, sizeof(tls)), sup);
    }
}

/* Ends the current connection without writing anything more and schedules
 * the next attempt. rc is what the failing call returned; quiet when the
 * caller already said why. */
static void drop_connection(struct m2a_mqtt_in *mi, int rc, bool quiet)
{
    if (!quiet)
        log_disconnect(mi, mi->disc_seen ? mi->disc_rc : rc);
    mosquitto_destroy(mi->mosq); /* closes the socket; queued packets die with it */
    mi->mosq = NULL;
    mi->connack_ok = false;
    M2A_STAT_SET(mi->o.stats, mqtt_connected, false);
    mi->next_attempt_ms = m2a_now_ms() + m2a_backoff_next(&mi->backoff);
}

/* The batch could not be made durable: make sure none of its PUBACKs leave. */
static void spool_failed(struct m2a_mqtt_in *mi, int err)
{
    uint64_t sup;
    int fd = mosquitto_socket(mi->mosq);
    if (fd >= 0)
        shutdown(fd, SHUT_RDWR);
    M2A_STAT_ADD(mi->o.stats, spool_errors, 1);
    mi->spool_failing = true;
    if (m2a_ratelimit_ok(&mi->rl_spool, &sup))
        m2a_error(COMPONENT,
                  "spool: %s; dropping the MQTT connection without acknowledging the batch, "
                  "the broker will redeliver (%" PRIu64 " similar suppressed)",
                  m2a_strerror(err), sup);
    drop_connection(mi, MOSQ_ERR_CONN_LOST, true);
}

/* --- routes: the generation and live reload ------------------------------------- */

static void free_subs(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

/* subs from the routes' subscription set, with the $share prefix if any. */
static void set_subscriptions(struct m2a_mqtt_in *mi)
{
    const char *group = mi->o.conf->share_group;
    mi->nsubs = m2a_routes_nsubscriptions(mi->routes);
    mi->subs = xcalloc(mi->nsubs ? mi->nsubs : 1, sizeof(*mi->subs));
    mi->sub_mids = xcalloc(mi->nsubs ? mi->nsubs : 1, sizeof(*mi->sub_mids));
    for (size_t i = 0; i < mi->nsubs; i++) {
        const char *f = m2a_routes_subscription(mi->routes, i);
        mi->subs[i] = group ? xasprintf("$share/%s/%s", group, f) : xstrdup(f);
    }
}

static long find_sub(char *const *v, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], s) == 0)
            return (long)i;
    return -1;
}

/* Takes the generation m2a_mqtt_in_set_generation handed over, between two
 * read batches: every message of a batch maps through one generation.
 * Subscribes to the filters it adds before unsubscribing from the ones it
 * drops, so no message published meanwhile falls between the two (one
 * matching both an added and a dropped filter in that instant may arrive
 * twice: at least once holds). Drops our reference to the old one. */
static void adopt_generation(struct m2a_mqtt_in *mi)
{
    struct m2a_generation *g = atomic_exchange(&mi->pending, NULL);
    if (!g)
        return;
    char **old = mi->subs;
    size_t nold = mi->nsubs, added = 0, removed = 0;
    int *old_mids = mi->sub_mids;
    m2a_generation_unref(mi->gen);
    mi->gen = g;
    mi->routes = m2a_generation_routes(g);
    set_subscriptions(mi);
    bool live = mi->mosq && mi->connack_ok;
    for (size_t i = 0; i < mi->nsubs; i++) {
        long j = find_sub(old, nold, mi->subs[i]);
        long u = find_sub(mi->unsubs, mi->nunsubs, mi->subs[i]);
        if (u >= 0) { /* dropped by an earlier reload, wanted again */
            free(mi->unsubs[u]);
            mi->unsubs[u] = mi->unsubs[--mi->nunsubs];
        }
        if (j >= 0) {
            mi->sub_mids[i] = old_mids[j];
            continue;
        }
        added++;
        if (live)
            subscribe_one(mi, mi->mosq, i);
    }
    for (size_t j = 0; j < nold; j++) {
        if (find_sub(mi->subs, mi->nsubs, old[j]) >= 0)
            continue;
        removed++;
        if (live) {
            unsubscribe_one(mi->mosq, old[j]);
        } else {
            mi->unsubs = xrealloc(mi->unsubs, (mi->nunsubs + 1) * sizeof(*mi->unsubs));
            mi->unsubs[mi->nunsubs++] = xstrdup(old[j]);
        }
    }
    free_subs(old, nold);
    free(old_mids);
    m2a_info(COMPONENT,
             "routes reloaded (generation %" PRIu64 "): %zu routes, %zu subscriptions (%zu "
             "added, %zu removed)",
             m2a_generation_number(g), m2a_routes_count(mi->routes), mi->nsubs, added, removed);
}

/* --- the loop -------------------------------------------------------------------- */

/* Holds the PUBACKs of a batch back until they are all written, so they
 * leave in one segment: libmosquitto sends each packet with its own send(),
 * and on loopback every send() otherwise becomes a segment the broker wakes
 * up for. Worth its two system calls only for a batch of several. */
static void cork(int fd, int on)
{
    (void)setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on));
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

/* Reads up to BATCH_MAX packets, then makes the batch durable. Returns false
 * when the connection was dropped. */
static bool read_batch(struct m2a_mqtt_in *mi)
{
    int rc = MOSQ_ERR_SUCCESS;
    mi->batch_msgs = 0;
    mi->batch_wall_ms = m2a_wall_ms();
    mi->batch_appended = 0;
    mi->batch_err = 0;
    mi->batch_bytes = 0;
    /* Stop the batch at the high-water mark, so that a burst pauses reading
     * instead of running into M2A_ERR_FULL and a dropped connection. */
    uint64_t room = UINT64_MAX;
    if (mi->o.spool_max_bytes && mi->o.spool_overflow == M2A_OVERFLOW_DROP_OLDEST) {
        /* No pause, but a batch small enough that discarding every segment
         * but the current one always makes room for it (config.c requires
         * max_bytes >= 2 segments). */
        room = mi->o.spool_max_bytes / 4;
    } else if (mi->o.spool_max_bytes) {
        struct m2a_spool_stats ss;
        m2a_spool_get_stats(mi->o.spool, &ss);
        uint64_t high = mi->o.spool_max_bytes - mi->o.spool_max_bytes / 10;
        room = ss.bytes < high ? high - ss.bytes : 0;
    }
    /* mosquitto_loop_read handles one packet per call whatever max_packets
     * says (with no QoS 2 in flight), so we call it until a call delivers no
     * message: the socket is drained, or held a partial packet or a control
     * packet. This costs one empty read() per batch where asking poll()
     * after each packet cost one system call per message.
     *
     * Group commit: a batch is flushed no sooner than GATHER_US after the
     * previous flush began; until then we wait for more packets. Under load
     * this makes batches (and the AMQP side's writes) larger for at most
     * GATHER_US more latency; a message arriving after a quiet spell is
     * flushed at once. */
    uint64_t gather_until = mi->last_flush_us + GATHER_US;
    int reads = 0;
    for (;;) {
        bool stop = false;
        for (; reads < BATCH_MAX; reads++) {
            size_t before = mi->batch_msgs;
            rc = mosquitto_loop_read(mi->mosq, BATCH_MAX);
            if (rc != MOSQ_ERR_SUCCESS || mi->batch_err != 0 || mi->refused ||
                mi->batch_bytes >= room || mosquitto_socket(mi->mosq) < 0) {
                stop = true;
                break;
            }
            if (mi->batch_msgs == before)
                break;
        }
        if (stop || reads >= BATCH_MAX || mi->batch_appended == 0)
            break;
        uint64_t now = m2a_now_us();
        if (now >= gather_until)
            break;
        struct pollfd p = {.fd = mosquitto_socket(mi->mosq), .events = POLLIN};
        struct timespec ts = {0, (long)(gather_until - now) * 1000};
        if (ppoll(&p, 1, &ts, NULL) <= 0)
            break;
    }
    if (mi->batch_appended > 0) {
        mi->last_flush_us = m2a_now_us();
        int frc = m2a_spool_flush(mi->o.spool);
        mi->flush_wait = frc == M2A_ERR_FULL; /* kept: see wait_room */
        if (frc != 0 && !mi->flush_wait && mi->batch_err == 0)
            mi->batch_err = frc;
        if (frc == 0 && mi->spool_failing && mi->batch_err == 0) {
            mi->spool_failing = false;
            m2a_backoff_reset(&mi->backoff);
            m2a_info(COMPONENT, "spool: appends succeed again; reading MQTT normally");
        }
    }
    count_spool_drops(mi);
    if (mi->batch_err != 0) {
        spool_failed(mi, mi->batch_err);
        return false;
    }
    if (rc != MOSQ_ERR_SUCCESS || mi->refused || mosquitto_socket(mi->mosq) < 0) {
        drop_connection(mi, rc, false);
        return false;
    }
    return true;
}

/* One turn with a live connection. */
static void turn_connected(struct m2a_mqtt_in *mi)
{
    int fd = mosquitto_socket(mi->mosq);
    if (fd < 0) {
        drop_connection(mi, MOSQ_ERR_NO_CONN, false);
        return;
    }
    struct pollfd p = {.fd = fd, .events = mi->paused ? POLLRDHUP : POLLIN};
    if (mosquitto_want_write(mi->mosq))
        p.events |= POLLOUT;
    if (poll(&p, 1, LOOP_TIMEOUT_MS) < 0 && errno != EINTR) {
        m2a_error(COMPONENT, "poll: %s", strerror(errno));
        return;
    }
    if (!mi->paused && (p.revents & (POLLIN | POLLHUP | POLLERR))) {
        if (!read_batch(mi))
            return;
    } else if (mi->paused && (p.revents & (POLLRDHUP | POLLHUP | POLLERR))) {
        drop_connection(mi, MOSQ_ERR_CONN_LOST, false);
        return;
    }
    /* Every PUBACK queued now belongs to a message whose batch was flushed,
     * unless the batch waits for room. */
    int rc = MOSQ_ERR_SUCCESS;
    if (mosquitto_want_write(mi->mosq) && !mi->flush_wait) {
        bool corked = mi->batch_msgs >= CORK_MIN;
        if (corked)
            cork(fd, 1);
        rc = mosquitto_loop_write(mi->mosq, BATCH_MAX);
        if (corked)
            cork(fd, 0);
    }
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_loop_misc(mi->mosq);
    if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(mi->mosq) < 0)
        drop_connection(mi, rc, false);
}

/* The last batch did not fit (overflow drop_oldest: m2a_spool_flush kept
 * it and asked the AMQP thread to discard). Nothing is read and no PUBACK
 * leaves until it is flushed: one AMQP turn as a rule (spool.h states the
 * worst case). A failed flush ends the connection unacknowledged. */
static void wait_room(struct m2a_mqtt_in *mi)
{
    struct pollfd p = {.fd = m2a_spool_room_fd(mi->o.spool), .events = POLLIN};
    poll(&p, 1, LOOP_TIMEOUT_MS);
    int rc = m2a_spool_flush(mi->o.spool);
    if (rc == M2A_ERR_FULL)
        return;
    mi->flush_wait = false;
    if (rc != 0 && mi->mosq)
        spool_failed(mi, rc);
}

static void turn_disconnected(struct m2a_mqtt_in *mi)
{
    uint64_t now = m2a_now_ms();
    if (!mi->paused && now >= mi->next_attempt_ms) {
        try_connect(mi);
        if (mi->mosq)
            return;
        now = m2a_now_ms();
    }
    uint64_t wait = LOOP_TIMEOUT_MS;
    if (!mi->paused && mi->next_attempt_ms > now && mi->next_attempt_ms - now < wait)
        wait = mi->next_attempt_ms - now;
    poll(NULL, 0, (int)wait); /* idle wait between attempts; stop is checked each turn */
}

/* Ends the connection so that the broker reads every PUBACK we sent.
 * libmosquitto closes its socket right after writing the DISCONNECT; the
 * broker's PUBLISHes still unread in our receive buffer then make the kernel
 * send RST, and Mosquitto drops the connection on the error without reading
 * the PUBACKs before it (seen as "closed its connection" in its log and as
 * duplicates after every clean stop: tests/fault, test_tls). So we hold a
 * duplicate of the descriptor: libmosquitto's close() (after its TLS
 * close_notify, over TLS) only drops its reference; then we half-close and
 * discard what the broker still sends until it closes, bounded. The
 * discarded PUBLISHes were never acknowledged: the session redelivers them.
 * Over TLS they are encrypted records nobody needs. */
static void disconnect_and_drain(struct mosquitto *mosq, uint64_t deadline)
{
    int fd = mosquitto_socket(mosq);
    int keep = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (mosquitto_disconnect(mosq) == MOSQ_ERR_SUCCESS)
        mosquitto_loop_write(mosq, 1);
    if (keep < 0)
        return;
    shutdown(keep, SHUT_WR);
    char buf[4096];
    for (;;) {
        uint64_t now = m2a_now_ms();
        struct pollfd p = {.fd = keep, .events = POLLIN};
        if (now >= deadline)
            break;
        int pr = poll(&p, 1, (int)(deadline - now));
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr <= 0)
            break;
        ssize_t n = recv(keep, buf, sizeof(buf), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN))
            break; /* the broker closed: it has read everything */
    }
    close(keep);
}

/* Stop: reading has stopped and every batch read was flushed at the end of its
 * turn, so all queued PUBACKs may leave; give them up to STOP_DRAIN_MS. */
static void shutdown_connection(struct m2a_mqtt_in *mi)
{
    if (!mi->mosq)
        return;
    /* A batch still waiting for room was never acknowledged: none of its
     * PUBACKs may leave, so neither a drain nor a DISCONNECT. */
    bool unflushed = mi->flush_wait && m2a_spool_flush(mi->o.spool) != 0;
    if (mi->connack_ok && !unflushed) {
        uint64_t deadline = m2a_now_ms() + STOP_DRAIN_MS;
        while (mosquitto_want_write(mi->mosq) && mosquitto_socket(mi->mosq) >= 0) {
            uint64_t now = m2a_now_ms();
            if (now >= deadline)
                break;
            struct pollfd p = {.fd = mosquitto_socket(mi->mosq), .events = POLLOUT};
            poll(&p, 1, (int)(deadline - now));
            if (mosquitto_loop_write(mi->mosq, BATCH_MAX) != MOSQ_ERR_SUCCESS)
                break;
        }
        if (mosquitto_socket(mi->mosq) >= 0)
            disconnect_and_drain(mi->mosq, m2a_now_ms() + STOP_DRAIN_MS);
        m2a_info(COMPONENT, "disconnected from %s:%d (stopping)", mi->o.conf->host,
                 mi->o.conf->port);
    }
    mosquitto_destroy(mi->mosq);
    mi->mosq = NULL;
    M2A_STAT_SET(mi->o.stats, mqtt_connected, false);
}

static void *run(void *arg)
{
    struct m2a_mqtt_in *mi = arg;
    uint64_t sup;
    pthread_setname_np(pthread_self(), "m2a-mqtt");
    while (!atomic_load(&mi->stop)) {
        adopt_generation(mi);
        update_pause(mi);
        count_spool_drops(mi);
        if (mi->flush_wait)
            wait_room(mi);
        else if (mi->mosq)
            turn_connected(mi);
        else
            turn_disconnected(mi);
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
static int check_conf(const struct m2a_mqtt_in_opts *o, char *err, size_t errlen)
{
    if (o->conf && o->generation && o->spool && o->stats)
        return 0;
    snprintf(err, errlen, "missing conf, generation, spool or stats");
    return M2A_ERR_ARG;
}

static void free_mi(struct m2a_mqtt_in *mi)
{
    free_subs(mi->subs, mi->nsubs);
    free(mi->sub_mids);
    free_subs(mi->unsubs, mi->nunsubs);
    m2a_generation_unref(atomic_exchange(&mi->pending, NULL));
    m2a_generation_unref(mi->gen);
    m2a_routes_scratch_free(mi->scratch);
    m2a_policy_free(mi->policy);
    SSL_CTX_free(mi->ssl_ctx);
    free(mi);
}

int m2a_mqtt_in_start(const struct m2a_mqtt_in_opts *opts, struct m2a_mqtt_in **out, char *err,
                      size_t errlen)
{
    int rc = check_conf(opts, err, errlen);
    if (rc != 0)
        return rc;
    pthread_once(&lib_once, lib_init);

    struct m2a_mqtt_in *mi = xcalloc(1, sizeof(*mi));
    mi->o = *opts;
    atomic_init(&mi->stop, false);
    struct m2a_ratelimit *limiters[] = {&mi->rl_spool, &mi->rl_connect, &mi->rl_tick,
                                        &mi->rl_pause, &mi->rl_resume,  &mi->rl_drop};
    for (size_t i = 0; i < sizeof(limiters) / sizeof(limiters[0]); i++)
        *limiters[i] = (struct m2a_ratelimit)M2A_RATELIMIT_INIT(LOG_INTERVAL_MS);
    mi->scratch = m2a_routes_scratch_new();
    mi->policy = m2a_policy_new(&(struct m2a_policy_opts){
        .stats = opts->stats, .component = COMPONENT, .log_interval_ms = LOG_INTERVAL_MS});
    const struct m2a_conf_mqtt *c = opts->conf;
    mi->gen = m2a_generation_ref(opts->generation);
    mi->routes = m2a_generation_routes(mi->gen);
    atomic_init(&mi->pending, NULL);
    set_subscriptions(mi);
    m2a_backoff_init(&mi->backoff, (uint32_t)c->reconnect_min_ms, (uint32_t)c->reconnect_max_ms);

    /* Build one handle now so bad settings (TLS files...) fail the start,
     * not a log line per reconnect. */
    char why[512];
    if (c->tls.enabled && !(mi->ssl_ctx = m2a_tls_ctx_new(&c->tls, c->host, why, sizeof(why)))) {
        snprintf(err, errlen, "MQTT TLS: %s", why);
        rc = M2A_ERR_CONFIG;
        goto out;
    }
    struct mosquitto *probe = new_client(mi, why, sizeof(why));
    if (!probe) {
        snprintf(err, errlen, "MQTT client: %s", why);
        rc = M2A_ERR_MQTT;
        goto out;
    }
    mosquitto_destroy(probe);

    /* No SA_RESTART: the blocking connect returns EINTR (see try_connect). */
    struct sigaction sa = {.sa_handler = on_wake_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(WAKE_SIGNAL, &sa, NULL);
    int prc = pthread_create(&mi->thread, NULL, run, mi);
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
}

void m2a_mqtt_in_stop(struct m2a_mqtt_in *mi)
{
    if (!mi)
        return;
    atomic_store(&mi->stop, true);
    /* Repeated: a signal that lands just before connect() starts is lost. */
    for (;;) {
        if (atomic_load(&mi->in_connect))
            pthread_kill(mi->thread, WAKE_SIGNAL);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += WAKE_EVERY_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        if (pthread_timedjoin_np(mi->thread, NULL, &ts) == 0)
            break;
    }
    free_mi(mi);
}
