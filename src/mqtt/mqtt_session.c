/* mqtt_session.c - one MQTT client session kept up across reconnects; see
 * mqtt_session.h.
 *
 * Threads: everything here runs on the thread of the session's loop: the
 * libmosquitto handle, the broker order, the timers, the subscription
 * table and every log line. libmosquitto's callbacks run inside our calls
 * to mosquitto_loop_read (the handle is in external-thread mode), so they
 * never race with us; the handle is never destroyed inside one of them.
 *
 * A connection goes IDLE -> TCP (non-blocking connect in progress) ->
 * CONNACK (CONNECT queued, TLS handshake and CONNACK to come) -> UP, with
 * one deadline (mqtt.connect_timeout) from the attempt to the CONNACK.
 * Every connection gets a fresh handle, so a packet queued on a dead
 * connection (a PUBACK whose message was never made durable) can never be
 * written on the next one, where the broker reuses packet ids. Reconnects
 * follow our backoff, not libmosquitto's: after a failure or a loss the
 * next broker of the list is tried. */
#include "mqtt2amqp/mqtt_session.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mqtt_protocol.h>
#include <openssl/ssl.h>

#include "mqtt2amqp/backoff.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/hostport.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/ratelimit.h"
#include "mqtt2amqp/tls.h"
#include "mqtt2amqp/util.h"

#define QOS              1    /* every subscription: see DESIGN.md */
#define PACKETS_PER_CALL 1000 /* max_packets of mosquitto_loop_read */
/* max_packets of mosquitto_loop_write: one call of libmosquitto's
 * packet__write already writes every queued packet (until EAGAIN), and each
 * further call, with nothing left, still takes and releases its two mutexes:
 * 1000 of them per write were half the downlink's CPU (issue 11). */
#define WRITE_CALLS          1
#define DEFAULT_SEND_MAXIMUM 20   /* libmosquitto's own, without MOSQ_OPT_SEND_MAXIMUM */
#define MISC_EVERY_MS        1000 /* keepalive bookkeeping while up (libmosquitto counts seconds) */
#define PAUSED_RECHECK       100  /* ms between connect attempts put off while reading pauses */
#define LOG_INTERVAL_MS      5000 /* rate limit of repeated connect failures */
#define SUB_RETRY_MIN_MS     1000 /* first retry of a refused subscription */
#define TAKEOVER_MIN_MS      1000 /* first delay once a take-over fight is seen */
#define TAKEOVER_CAP_MS      60000 /* at least; reconnect_max_ms if larger */
#define SUB_PENDING          (-1)  /* granted: no SUBACK yet */

enum conn_state {
    CONN_IDLE,    /* no handle: the next attempt is scheduled (or stopped) */
    CONN_TCP,     /* non-blocking TCP connect in progress */
    CONN_CONNACK, /* TCP up; TLS handshake, CONNECT and CONNACK to come */
    CONN_UP       /* CONNACK accepted */
};

struct sub {
    char *filter;      /* as subscribed: with the $share prefix if any */
    int mid;           /* of the SUBSCRIBE in flight on this connection, -1: none */
    int granted;       /* SUB_PENDING, the granted QoS, or a failure code >= 0x80 */
    unsigned refusals; /* in a row */
    /* New to the broker's session on this connection: its SUBSCRIBE's
     * retained messages are news (MQTT 3.1.1, retained_resend). */
    bool fresh;
    uint64_t retry_at; /* while refused and up: when to subscribe again */
    struct m2a_backoff backoff;
};

struct m2a_mqtt_session {
    struct m2a_mqtt_session_opts o;
    const char *client_id;
    SSL_CTX **ssl_ctx; /* one per endpoint (each verifies its host), or NULL without tls */
    size_t *order;     /* the endpoints in the order tried: shuffled once */
    size_t pos;        /* current index into order */
    char where[M2A_HOSTPORT_MAX]; /* that broker, "HOST:PORT" for log lines */
    struct m2a_backoff backoff, takeover;
    bool hold_backoff;
    struct m2a_ratelimit rl_connect;

    /* The current connection. */
    enum conn_state state;
    struct mosquitto *mosq;
    int fd;         /* the socket we watch, -1 with no handle */
    bool refused;   /* CONNACK carried a failure code (already logged) */
    bool disc_seen; /* on_disconnect ran */
    int disc_rc;    /* its code: MOSQ_ERR_* or an MQTT 5 reason code */
    uint64_t attempt_ms, connack_ms;
    uint64_t t_attempt, t_deadline, t_misc, t_subs; /* loop timer ids, 0: none */
    uint64_t nconnacks;
    unsigned send_window;    /* QoS 1 PUBLISHes in flight at most, this connection */
    unsigned short_sessions; /* closed by the broker soon after CONNACK, in a row */

    struct sub *subs;
    size_t nsubs;
    size_t suback_next; /* where on_subscribe looks first: SUBACKs come in send order */
    char **unsubs;      /* dropped while down: unsubscribed at the next CONNACK */
    size_t nunsubs;
};

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;

/* Once per process and never undone: another session may be alive, and
 * mosquitto_lib_cleanup() would pull OpenSSL from under it. */
static void lib_init(void)
{
    mosquitto_lib_init();
}

static const struct m2a_conf_endpoint *endpoint(const struct m2a_mqtt_session *s)
{
    return &s->o.conf->endpoints[s->order[s->pos]];
}

static void fd_event(struct m2a_loop *loop, int fd, unsigned events, void *ud);
static void connect_attempt(struct m2a_loop *loop, void *ud);

/* --- reasons ---------------------------------------------------------------------- */

/* A libmosquitto return code as a sentence; errno must be the call's. */
static const char *mosq_err_str(int rc, char *buf, size_t len)
{
    if (rc == MOSQ_ERR_ERRNO)
        return strerror_r(errno, buf, len);
    if (rc == MOSQ_ERR_EAI) { /* libmosquitto puts getaddrinfo's code in errno */
        snprintf(buf, len, "cannot resolve the host name: %s", gai_strerror(errno));
        return buf;
    }
    if (rc == MOSQ_ERR_KEEPALIVE) /* libmosquitto 2.0.11 has no text for it */
        return "keepalive timeout (no PINGRESP read)";
    if (rc == MOSQ_ERR_CONN_LOST)
        return "the broker closed the connection";
    return mosquitto_strerror(rc);
}

/* on_disconnect gets either a MOSQ_ERR_* (local, all below 0x80) or, in
 * MQTT 5, the reason code of a DISCONNECT the broker sent; the ones worth
 * naming are errors, >= 0x80. */
static const char *loss_reason(const struct m2a_mqtt_session *s, int rc, char *buf, size_t len)
{
    if (s->o.conf->protocol == M2A_MQTT_V5 && rc >= 0x80)
        return mosquitto_reason_string(rc);
    if (rc == MOSQ_ERR_SUCCESS)
        return "closed";
    return mosq_err_str(rc, buf, len);
}

/* After a TLS failure on this attempt, why the broker's certificate was
 * refused (libmosquitto only says "A TLS error occurred"); else reason. */
static const char *tls_or(const char *reason, char *buf, size_t len)
{
    return m2a_tls_failure(buf, len) ? buf : reason;
}

/* How far an attempt got when its deadline passed. */
static const char *stage(const struct m2a_mqtt_session *s)
{
    if (s->state == CONN_TCP)
        return "the TCP connection was not established";
    SSL *ssl = s->mosq ? mosquitto_ssl_get(s->mosq) : NULL;
    if (ssl && !SSL_is_init_finished(ssl))
        return "TCP connected, the TLS handshake did not finish";
    if (s->mosq && mosquitto_want_write(s->mosq))
        return "TCP connected, CONNECT not yet written";
    return "TCP connected, CONNECT sent, no CONNACK";
}

/* --- subscriptions ---------------------------------------------------------------- */

static void sub_send(struct m2a_mqtt_session *s, struct sub *u)
{
    int mid = 0;
    /* MQTT 5: a resubscription on a session that has the subscription
     * (Mosquitto: SUB_EXISTS) sends no retained messages again, and live
     * ones keep their retain flag, which x-mqtt-retain reports. */
    int opts = s->o.conf->protocol == M2A_MQTT_V5
                   ? MQTT_SUB_OPT_SEND_RETAIN_NEW | MQTT_SUB_OPT_RETAIN_AS_PUBLISHED
                   : 0;
    int rc = mosquitto_subscribe_v5(s->mosq, &mid, u->filter, QOS, opts, NULL);
    u->mid = rc == MOSQ_ERR_SUCCESS ? mid : -1;
    u->retry_at = 0;
    if (rc != MOSQ_ERR_SUCCESS)
        m2a_error(s->o.log_name, "cannot subscribe to %s: %s", u->filter, mosquitto_strerror(rc));
}

static void unsub_send(struct m2a_mqtt_session *s, const char *filter)
{
    int rc = mosquitto_unsubscribe(s->mosq, NULL, filter);
    if (rc != MOSQ_ERR_SUCCESS)
        m2a_error(s->o.log_name, "cannot unsubscribe from %s: %s", filter, mosquitto_strerror(rc));
    else
        m2a_info(s->o.log_name, "unsubscribed from %s (no route needs it since the reload)",
                 filter);
}

static void subs_retry(struct m2a_loop *loop, void *ud);

/* The retry timer at the earliest due refused subscription. */
static void subs_schedule(struct m2a_mqtt_session *s)
{
    uint64_t next = M2A_LOOP_NEVER;
    for (size_t i = 0; i < s->nsubs; i++)
        if (s->subs[i].retry_at && s->subs[i].retry_at < next)
            next = s->subs[i].retry_at;
    m2a_loop_timer_del(s->o.loop, s->t_subs);
    s->t_subs = next == M2A_LOOP_NEVER ? 0 : m2a_loop_timer_add(s->o.loop, next, subs_retry, s);
}

static void subs_retry(struct m2a_loop *loop, void *ud)
{
    (void)loop;
    struct m2a_mqtt_session *s = ud;
    uint64_t now = m2a_now_ms();
    s->t_subs = 0;
    if (s->state != CONN_UP)
        return;
    for (size_t i = 0; i < s->nsubs; i++)
        if (s->subs[i].retry_at && s->subs[i].retry_at <= now)
            sub_send(s, &s->subs[i]);
    subs_schedule(s);
    m2a_mqtt_session_arm(s);
}

static void sub_init(struct m2a_mqtt_session *s, struct sub *u, const char *filter)
{
    uint32_t max = (uint32_t)s->o.conf->reconnect_max_ms;
    *u = (struct sub){.filter = xstrdup(filter), .mid = -1, .granted = SUB_PENDING, .fresh = true};
    m2a_backoff_init(&u->backoff, SUB_RETRY_MIN_MS,
                     max > SUB_RETRY_MIN_MS ? max : SUB_RETRY_MIN_MS);
}

static long find_str(char *const *v, size_t n, const char *str)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(v[i], str) == 0)
            return (long)i;
    return -1;
}

static void free_strs(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static int cmp_sub_filter(const void *a, const void *b)
{
    return strcmp((*(struct sub *const *)a)->filter, (*(struct sub *const *)b)->filter);
}

/* The one of BY_FILTER (N subscriptions sorted by filter) whose filter is
 * FILTER, or NULL. */
static struct sub *find_sub(struct sub *const *by_filter, size_t n, const char *filter)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(by_filter[mid]->filter, filter);
        if (c == 0)
            return by_filter[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

void m2a_mqtt_session_subscribe(struct m2a_mqtt_session *s, char *const *filters, size_t n,
                                size_t *added, size_t *removed)
{
    struct sub *old = s->subs;
    size_t nold = s->nsubs, nadd = 0, nrem = 0;
    bool up = s->state == CONN_UP;
    /* The old subscriptions by filter, so that a reload of thousands of
     * filters is n log n, not n * m string compares. */
    struct sub **by_filter = xmalloc((nold ? nold : 1) * sizeof(*by_filter));
    bool *kept = xcalloc(nold ? nold : 1, sizeof(*kept));
    for (size_t k = 0; k < nold; k++)
        by_filter[k] = &old[k];
    qsort(by_filter, nold, sizeof(*by_filter), cmp_sub_filter);
    s->subs = xcalloc(n ? n : 1, sizeof(*s->subs));
    s->nsubs = n;
    s->suback_next = 0;
    for (size_t i = 0; i < n; i++) {
        long u = find_str(s->unsubs, s->nunsubs, filters[i]);
        if (u >= 0) { /* dropped by an earlier reload, wanted again */
            free(s->unsubs[u]);
            s->unsubs[u] = s->unsubs[--s->nunsubs];
        }
        struct sub *o = find_sub(by_filter, nold, filters[i]);
        size_t j = o ? (size_t)(o - old) : 0;
        if (o && !kept[j]) { /* kept, with its state (and its filter) */
            s->subs[i] = old[j];
            kept[j] = true;
            continue;
        }
        sub_init(s, &s->subs[i], filters[i]);
        nadd++;
        if (up)
            sub_send(s, &s->subs[i]);
    }
    for (size_t k = 0; k < nold; k++) {
        if (kept[k])
            continue;
        nrem++;
        if (up) {
            unsub_send(s, old[k].filter);
            free(old[k].filter);
        } else {
            s->unsubs = xrealloc(s->unsubs, (s->nunsubs + 1) * sizeof(*s->unsubs));
            s->unsubs[s->nunsubs++] = old[k].filter;
        }
    }
    free(old);
    free(by_filter);
    free(kept);
    subs_schedule(s);
    m2a_mqtt_session_arm(s);
    if (added)
        *added = nadd;
    if (removed)
        *removed = nrem;
}

bool m2a_mqtt_session_retained_resend(const struct m2a_mqtt_session *s, const char *topic)
{
    if (s->o.conf->protocol == M2A_MQTT_V5)
        return false;
    bool matched = false;
    for (size_t i = 0; i < s->nsubs; i++) {
        const char *f = s->subs[i].filter;
        if (strncmp(f, "$share/", 7) == 0) { /* $share/GROUP/filter */
            const char *slash = strchr(f + 7, '/');
            f = slash ? slash + 1 : f;
        }
        bool m = false;
        if (mosquitto_topic_matches_sub(f, topic, &m) != MOSQ_ERR_SUCCESS || !m)
            continue;
        if (s->subs[i].fresh)
            return false;
        matched = true;
    }
    return matched;
}

size_t m2a_mqtt_session_refused(const struct m2a_mqtt_session *s, const char *prefix, char *buf,
                                size_t len)
{
    size_t used = 0, count = 0;
    if (len)
        buf[0] = '\0';
    for (size_t i = 0; i < s->nsubs; i++) {
        const struct sub *u = &s->subs[i];
        if (u->granted < 0x80)
            continue;
        count++;
        if (used + 1 >= len)
            continue;
        const char *why = s->o.conf->protocol == M2A_MQTT_V5 ? mosquitto_reason_string(u->granted)
                                                             : "failure (0x80)";
        int w = snprintf(buf + used, len - used,
                         "%ssubscription to %s refused by the broker: %s (%u refusals, retrying)\n",
                         prefix, u->filter, why, u->refusals);
        if (w > 0)
            used += (size_t)w < len - used ? (size_t)w : len - used - 1;
    }
    return count;
}

/* --- libmosquitto callbacks (inside mosquitto_loop_read) ----------------------------- */

static void on_connect(struct mosquitto *mosq, void *ud, int rc, int flags,
                       const mosquitto_property *props)
{
    (void)mosq;
    struct m2a_mqtt_session *s = ud;
    const struct m2a_conf_mqtt *c = s->o.conf;
    uint64_t sup;

    if (rc != 0) {
        s->refused = true;
        if (m2a_ratelimit_ok(&s->rl_connect, &sup))
            m2a_error(s->o.log_name,
                      "%s refused the connection: %s (%" PRIu64 " similar suppressed)", s->where,
                      c->protocol == M2A_MQTT_V5 ? mosquitto_reason_string(rc)
                                                 : mosquitto_connack_string(rc),
                      sup);
        return;
    }
    bool present = (flags & 1) != 0;
    s->state = CONN_UP;
    /* libmosquitto takes the broker's Receive Maximum as its send quota when
     * the CONNACK has one, else keeps ours (MOSQ_OPT_SEND_MAXIMUM, 20). */
    uint16_t rmax = 0;
    s->send_window = s->o.send_maximum > 0 ? (unsigned)s->o.send_maximum : DEFAULT_SEND_MAXIMUM;
    if (c->protocol == M2A_MQTT_V5 &&
        mosquitto_property_read_int16(props, MQTT_PROP_RECEIVE_MAXIMUM, &rmax, false) && rmax > 0)
        s->send_window = rmax;
    s->connack_ms = m2a_now_ms();
    m2a_loop_timer_del(s->o.loop, s->t_deadline);
    s->t_deadline = 0;
    if (!s->hold_backoff)
        m2a_backoff_reset(&s->backoff);
    s->rl_connect.next_ms = 0; /* the next failure is news again */
    char where[64] = "";
    if (c->nendpoints > 1)
        snprintf(where, sizeof(where), ", broker %zu of %zu", s->order[s->pos] + 1, c->nendpoints);
    m2a_info(s->o.log_name, "connected to %s (%s, session present: %s%s)", s->where,
             c->protocol == M2A_MQTT_V5 ? "MQTT 5" : "MQTT 3.1.1", present ? "yes" : "no", where);
    if (!present && !c->clean_session && s->nconnacks > 0)
        m2a_warn(s->o.log_name,
                 "the broker had no session for client id %s: messages published while the "
                 "bridge was away were not kept (session expired, another broker, or the broker "
                 "restarted without persistence)",
                 s->client_id);
    /* A subscription is new to the session unless the broker kept the
     * session and the subscription was granted in it (by this process, or,
     * at the first CONNACK, by the one before: the same config is assumed). */
    for (size_t i = 0; i < s->nsubs; i++) {
        struct sub *u = &s->subs[i];
        bool had = s->nconnacks == 0 || (u->granted != SUB_PENDING && u->granted < 0x80);
        u->fresh = !(present && had);
    }
    s->nconnacks++;
    /* Always resubscribe: cheap, and right even if the broker lost the session. */
    for (size_t i = 0; i < s->nsubs; i++)
        sub_send(s, &s->subs[i]);
    for (size_t i = 0; i < s->nunsubs; i++)
        unsub_send(s, s->unsubs[i]);
    free_strs(s->unsubs, s->nunsubs);
    s->unsubs = NULL;
    s->nunsubs = 0;
    if (s->o.hooks.on_up)
        s->o.hooks.on_up(s->o.hooks.ud, s->order[s->pos], present);
}

static void on_subscribe(struct mosquitto *mosq, void *ud, int mid, int count, const int *granted,
                         const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct m2a_mqtt_session *s = ud;
    struct sub *u = NULL;
    /* From where the last SUBACK matched: the SUBSCRIBEs go out in order and
     * their SUBACKs come back in order, so this is one step, not a scan of
     * thousands of filters per SUBACK. */
    for (size_t k = 0; k < s->nsubs && !u; k++) {
        size_t i = (s->suback_next + k) % s->nsubs;
        if (s->subs[i].mid == mid) {
            u = &s->subs[i];
            s->suback_next = i + 1;
        }
    }
    if (!u)
        return; /* dropped by a reload meanwhile */
    int g = count > 0 ? granted[0] : 0x80;
    u->mid = -1;
    u->granted = g;
    if (g >= 0x80) {
        const char *why =
            s->o.conf->protocol == M2A_MQTT_V5 ? mosquitto_reason_string(g) : "failure (0x80)";
        uint32_t delay = m2a_backoff_next(&u->backoff);
        u->retry_at = m2a_now_ms() + delay;
        /* The first refusal is an operator's problem (ACL, filter): an
         * error; the retries of the same refusal are not news. */
        if (u->refusals++ == 0)
            m2a_error(s->o.log_name,
                      "the broker refused the subscription to %s: %s; retrying in %" PRIu32
                      " ms, with backoff (/readyz answers 503 meanwhile)",
                      u->filter, why, delay);
        else
            m2a_debug(s->o.log_name, "subscription to %s refused again (%u times): %s", u->filter,
                      u->refusals, why);
        subs_schedule(s);
    } else {
        if (g < 1)
            m2a_warn(s->o.log_name, "subscribed to %s, but only at QoS %d: messages can be lost",
                     u->filter, g);
        else if (u->refusals)
            m2a_info(s->o.log_name, "subscribed to %s (QoS %d) after %u refusals", u->filter, g,
                     u->refusals);
        else
            m2a_info(s->o.log_name, "subscribed to %s (QoS %d)", u->filter, g);
        u->refusals = 0;
        u->retry_at = 0;
        m2a_backoff_reset(&u->backoff);
    }
    if (s->o.hooks.on_suback)
        s->o.hooks.on_suback(s->o.hooks.ud, u->filter, g);
}

static void on_disconnect(struct mosquitto *mosq, void *ud, int rc, const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct m2a_mqtt_session *s = ud;
    if (!s->disc_seen) {
        s->disc_seen = true;
        s->disc_rc = rc;
    }
}

static void on_message(struct mosquitto *mosq, void *ud, const struct mosquitto_message *m,
                       const mosquitto_property *props)
{
    (void)mosq;
    struct m2a_mqtt_session *s = ud;
    if (s->o.hooks.on_message)
        s->o.hooks.on_message(s->o.hooks.ud, m, props);
}

static void on_publish(struct mosquitto *mosq, void *ud, int mid, int reason,
                       const mosquitto_property *props)
{
    (void)mosq;
    (void)props;
    struct m2a_mqtt_session *s = ud;
    if (s->o.hooks.on_published)
        s->o.hooks.on_published(s->o.hooks.ud, mid, reason);
}

/* --- connection lifetime ----------------------------------------------------------- */

/* A configured handle for endpoint idx, not connected. NULL with a
 * sentence in err. */
static struct mosquitto *new_handle(struct m2a_mqtt_session *s, size_t idx, char *err,
                                    size_t errlen)
{
    const struct m2a_conf_mqtt *c = s->o.conf;
    int rc = MOSQ_ERR_SUCCESS;
    const char *what = "";
    struct mosquitto *mosq = mosquitto_new(s->client_id, c->clean_session, s);
    if (!mosq) {
        snprintf(err, errlen, "mosquitto_new failed: %s", strerror(errno));
        return NULL;
    }
    if ((rc = mosquitto_threaded_set(mosq, true)) != 0) {
        what = "threaded mode";
        goto out;
    }
    if (c->protocol == M2A_MQTT_V5) {
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
    if (s->o.send_maximum > 0 &&
        (rc = mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, s->o.send_maximum)) != 0) {
        what = "send maximum";
        goto out;
    }
    if (c->username && (rc = mosquitto_username_pw_set(mosq, c->username, c->password)) != 0) {
        what = "username/password";
        goto out;
    }
    /* Our own context (tls.c) rather than mosquitto_tls_set: libmosquitto
     * 2.0.11 only logs "certificate verify failed" and does not check IP
     * addresses against the certificate; ours records why and does. */
    if (s->ssl_ctx &&
        ((rc = mosquitto_int_option(mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0)) != 0 ||
         (rc = mosquitto_void_option(mosq, MOSQ_OPT_SSL_CTX, s->ssl_ctx[idx])) != 0)) {
        what = "TLS context";
        goto out;
    }
    mosquitto_connect_v5_callback_set(mosq, on_connect);
    mosquitto_disconnect_v5_callback_set(mosq, on_disconnect);
    mosquitto_subscribe_v5_callback_set(mosq, on_subscribe);
    mosquitto_message_v5_callback_set(mosq, on_message);
    mosquitto_publish_v5_callback_set(mosq, on_publish);
out:
    if (rc != MOSQ_ERR_SUCCESS) {
        snprintf(err, errlen, "%s: %s", what, mosquitto_strerror(rc));
        mosquitto_destroy(mosq);
        return NULL;
    }
    return mosq;
}

/* Stores the MQTT 5 CONNECT properties in the handle (see mqtt_session.h:
 * a connect with no host stores them and fails before the network), then
 * starts a non-blocking connect that sends them. */
static int start_connect(struct m2a_mqtt_session *s, const struct m2a_conf_endpoint *e)
{
    const struct m2a_conf_mqtt *c = s->o.conf;
    mosquitto_property *props = NULL;
    int rc = MOSQ_ERR_SUCCESS;
    if (c->protocol == M2A_MQTT_V5) {
        if (!c->clean_session)
            rc = mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
                                              c->session_expiry);
        if (rc == MOSQ_ERR_SUCCESS && s->o.max_packet_bytes)
            rc = mosquitto_property_add_int32(&props, MQTT_PROP_MAXIMUM_PACKET_SIZE,
                                              s->o.max_packet_bytes);
        if (rc == MOSQ_ERR_SUCCESS && props) {
            rc = mosquitto_connect_bind_v5(s->mosq, NULL, e->port, c->keepalive, NULL, props);
            rc = rc == MOSQ_ERR_INVAL ? MOSQ_ERR_SUCCESS : MOSQ_ERR_NOT_SUPPORTED;
        }
        mosquitto_property_free_all(&props);
        if (rc != MOSQ_ERR_SUCCESS)
            return rc;
    }
    return mosquitto_connect_bind_async(s->mosq, e->host, e->port, c->keepalive, NULL);
}

/* Closes the current connection without writing anything more. */
static void drop_handle(struct m2a_mqtt_session *s)
{
    if (s->fd >= 0)
        m2a_loop_unwatch(s->o.loop, s->fd);
    s->fd = -1;
    m2a_loop_timer_del(s->o.loop, s->t_deadline);
    m2a_loop_timer_del(s->o.loop, s->t_misc);
    m2a_loop_timer_del(s->o.loop, s->t_subs);
    s->t_deadline = s->t_misc = s->t_subs = 0;
    if (s->mosq) {
        int fd = mosquitto_socket(s->mosq);
        if (fd >= 0)
            shutdown(fd, SHUT_RDWR); /* not even a TLS close_notify after queued packets */
        mosquitto_destroy(s->mosq);  /* closes the socket; queued packets die with it */
    }
    s->mosq = NULL;
    s->state = CONN_IDLE;
    for (size_t i = 0; i < s->nsubs; i++)
        s->subs[i].mid = -1;
}

static void schedule(struct m2a_mqtt_session *s, uint64_t delay_ms)
{
    m2a_loop_timer_del(s->o.loop, s->t_attempt);
    s->t_attempt = m2a_loop_timer_add(s->o.loop, m2a_now_ms() + delay_ms, connect_attempt, s);
}

static void set_pos(struct m2a_mqtt_session *s, size_t pos)
{
    s->pos = pos;
    m2a_hostport_format(s->where, sizeof(s->where), endpoint(s)->host, endpoint(s)->port);
}

/* After a failure or a loss: the next broker, after delay_ms. */
static void next_broker(struct m2a_mqtt_session *s, uint64_t delay_ms)
{
    set_pos(s, (s->pos + 1) % s->o.conf->nendpoints);
    schedule(s, delay_ms);
}

/* " (next: HOST:PORT in N ms)" when there are several brokers. */
static void next_hint(const struct m2a_mqtt_session *s, uint64_t delay, char *buf, size_t len)
{
    const struct m2a_conf_mqtt *c = s->o.conf;
    const struct m2a_conf_endpoint *n = &c->endpoints[s->order[(s->pos + 1) % c->nendpoints]];
    char name[M2A_HOSTPORT_MAX];
    if (c->nendpoints > 1)
        snprintf(buf, len, "; next: %s in %" PRIu64 " ms",
                 m2a_hostport_format(name, sizeof(name), n->host, n->port), delay);
    else
        snprintf(buf, len, "; again in %" PRIu64 " ms", delay);
}

/* An attempt failed before CONNACK; why is NULL when already logged. */
static void attempt_failed(struct m2a_mqtt_session *s, const char *what, const char *why)
{
    uint64_t sup, delay = m2a_backoff_next(&s->backoff);
    char hint[320];
    drop_handle(s);
    s->short_sessions = 0; /* the broker is not simply there: no take-over fight */
    m2a_backoff_reset(&s->takeover);
    next_hint(s, delay, hint, sizeof(hint));
    if (why && m2a_ratelimit_ok(&s->rl_connect, &sup))
        m2a_warn(s->o.log_name, "%s %s: %s%s (%" PRIu64 " similar suppressed)", what, s->where, why,
                 hint, sup);
    next_broker(s, delay);
}

/* The take-over check of a connection the broker closed, up for up_ms:
 * true when it is the streak's M2A_MQTT_TAKEOVER_STREAK-th or later. */
static bool takeover_suspected(struct m2a_mqtt_session *s, int rc, uint64_t up_ms)
{
    uint64_t cap = s->takeover.max_ms;
    /* Closed by the broker: an EOF (Mosquitto 2.0 sends no reason to the
     * client it throws out), or MQTT 5's "session taken over". A session
     * kept longer than two take-over delays ends the streak. */
    bool kicked = rc == MOSQ_ERR_CONN_LOST || rc == MQTT_RC_SESSION_TAKEN_OVER;
    if (!kicked || up_ms >= 2 * cap) {
        s->short_sessions = 0;
        m2a_backoff_reset(&s->takeover);
        return false;
    }
    s->short_sessions++;
    return s->short_sessions >= M2A_MQTT_TAKEOVER_STREAK || rc == MQTT_RC_SESSION_TAKEN_OVER;
}

/* A connection that was up ended: rc is the failing call's code (or the
 * broker's DISCONNECT reason, which on_disconnect recorded). */
static void connection_lost(struct m2a_mqtt_session *s, int rc, bool paused)
{
    char buf[128], hint[320];
    uint64_t up_ms = m2a_now_ms() - s->connack_ms;
    if (s->disc_seen)
        rc = s->disc_rc;
    drop_handle(s);
    bool takeover = takeover_suspected(s, rc, up_ms);
    uint64_t delay = takeover ? m2a_backoff_next(&s->takeover) : m2a_backoff_next(&s->backoff);
    next_hint(s, delay, hint, sizeof(hint));
    const char *why = loss_reason(s, rc, buf, sizeof(buf));
    if (takeover)
        m2a_warn(s->o.log_name,
                 "the broker %s closed the session %.1f s after its CONNACK (%s), %u times in "
                 "a row while connecting works: another client with client_id %s is probably "
                 "connected, and the broker hands the session to whichever connected last; each "
                 "bridge needs its own client_id. Backing off further each time%s",
                 s->where, (double)up_ms / 1000.0, why, s->short_sessions, s->client_id, hint);
    else if (paused && (rc == MOSQ_ERR_KEEPALIVE || rc == MOSQ_ERR_CONN_LOST))
        m2a_info(s->o.log_name,
                 "connection to %s ended while reads are paused (%s): expected, as keepalive "
                 "cannot be serviced without reading; the session keeps queueing, reconnecting "
                 "once the spool drains",
                 s->where, why);
    else
        m2a_warn(s->o.log_name, "disconnected from %s: %s%s", s->where, why, hint);
    if (takeover && s->o.hooks.on_takeover)
        s->o.hooks.on_takeover(s->o.hooks.ud, s->short_sessions);
    if (s->o.hooks.on_down)
        s->o.hooks.on_down(s->o.hooks.ud);
    next_broker(s, delay);
}

/* The current connection failed with rc (a call's return code). */
static void failed(struct m2a_mqtt_session *s, int rc)
{
    char buf[128], tls[600], why[760];
    bool paused = s->o.hooks.may_read && !s->o.hooks.may_read(s->o.hooks.ud);
    if (s->state == CONN_UP) {
        connection_lost(s, rc, paused);
        return;
    }
    if (s->refused) { /* on_connect said why */
        attempt_failed(s, NULL, NULL);
        return;
    }
    if (s->disc_seen)
        rc = s->disc_rc;
    const char *reason = rc == MOSQ_ERR_CONN_LOST
                             ? "the broker closed the connection before CONNACK"
                             : tls_or(loss_reason(s, rc, buf, sizeof(buf)), tls, sizeof(tls));
    snprintf(why, sizeof(why), "%s", reason);
    attempt_failed(s, "connection failed before CONNACK from", why);
}

static bool alive(struct m2a_mqtt_session *s, int rc)
{
    if (!s->mosq)
        return false;
    if (rc == MOSQ_ERR_SUCCESS && !s->refused && mosquitto_socket(s->mosq) >= 0)
        return true;
    failed(s, rc == MOSQ_ERR_SUCCESS ? MOSQ_ERR_CONN_LOST : rc);
    return false;
}

static void connect_deadline(struct m2a_loop *loop, void *ud)
{
    (void)loop;
    struct m2a_mqtt_session *s = ud;
    char why[200];
    s->t_deadline = 0;
    if (s->state != CONN_TCP && s->state != CONN_CONNACK)
        return;
    snprintf(why, sizeof(why), "no CONNACK within %.1f s (%s)",
             (double)s->o.conf->connect_timeout_ms / 1000.0, stage(s));
    attempt_failed(s, "connection failed before CONNACK from", why);
}

static void misc_tick(struct m2a_loop *loop, void *ud)
{
    (void)loop;
    struct m2a_mqtt_session *s = ud;
    s->t_misc = 0;
    if (s->state != CONN_UP)
        return;
    if (!alive(s, mosquitto_loop_misc(s->mosq)))
        return;
    s->t_misc = m2a_loop_timer_add(s->o.loop, m2a_now_ms() + MISC_EVERY_MS, misc_tick, s);
    m2a_mqtt_session_arm(s);
}

static void connect_attempt(struct m2a_loop *loop, void *ud)
{
    (void)loop;
    struct m2a_mqtt_session *s = ud;
    const struct m2a_conf_endpoint *e = endpoint(s);
    char err[256], buf[128];
    uint64_t sup;
    s->t_attempt = 0;
    if (s->o.hooks.may_read && !s->o.hooks.may_read(s->o.hooks.ud)) {
        schedule(s, PAUSED_RECHECK); /* no connection while reading pauses */
        return;
    }
    if (!(s->mosq = new_handle(s, s->order[s->pos], err, sizeof(err)))) {
        if (m2a_ratelimit_ok(&s->rl_connect, &sup))
            m2a_error(s->o.log_name, "cannot create the MQTT client: %s", err);
        attempt_failed(s, NULL, NULL);
        return;
    }
    s->refused = s->disc_seen = false;
    s->disc_rc = 0;
    s->attempt_ms = m2a_now_ms();
    errno = 0;
    m2a_tls_failure_reset();
    m2a_debug(s->o.log_name, "connecting to %s", s->where);
    int rc = start_connect(s, e);
    if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(s->mosq) < 0) {
        attempt_failed(s, "cannot connect to", mosq_err_str(rc, buf, sizeof(buf)));
        return;
    }
    s->state = CONN_TCP;
    s->fd = mosquitto_socket(s->mosq);
    if (m2a_loop_watch(s->o.loop, s->fd, M2A_LOOP_WRITE, fd_event, s) != 0) {
        s->fd = -1;
        attempt_failed(s, "cannot connect to", "too many descriptors in the loop");
        return;
    }
    s->t_deadline = m2a_loop_timer_add(s->o.loop, s->attempt_ms + s->o.conf->connect_timeout_ms,
                                       connect_deadline, s);
}

/* The non-blocking connect finished: how it went is in SO_ERROR. */
static bool tcp_connected(struct m2a_mqtt_session *s)
{
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) != 0)
        soerr = errno;
    if (soerr != 0) {
        char buf[128];
        attempt_failed(s, "cannot connect to", strerror_r(soerr, buf, sizeof(buf)));
        return false;
    }
    s->state = CONN_CONNACK;
    m2a_debug(s->o.log_name, "TCP connected to %s, CONNECT queued", s->where);
    return true;
}

static bool may(bool (*gate)(void *), void *ud)
{
    return !gate || gate(ud);
}

/* libmosquitto drives the TLS handshake from mosquitto_loop_read and
 * writes nothing until it is done, while mosquitto_want_write may still
 * say yes (a WANT_WRITE from the attempt made before TCP was up): asking
 * for writability then would spin for a round trip. */
static bool handshake_done(const struct m2a_mqtt_session *s)
{
    SSL *ssl = mosquitto_ssl_get(s->mosq);
    return !ssl || SSL_is_init_finished(ssl);
}

static void fd_event(struct m2a_loop *loop, int fd, unsigned events, void *ud)
{
    (void)loop;
    (void)fd;
    struct m2a_mqtt_session *s = ud;
    const struct m2a_mqtt_session_hooks *h = &s->o.hooks;
    if (s->state == CONN_TCP && !tcp_connected(s))
        return;
    /* Before CONNACK reads drive the TLS handshake too (libmosquitto does
     * it in mosquitto_loop_read), whatever fired. */
    bool pre = s->state == CONN_CONNACK;
    if (pre || (events & (M2A_LOOP_READ | M2A_LOOP_HUP | M2A_LOOP_ERR))) {
        if (pre || may(h->may_read, h->ud)) {
            if (h->readable)
                h->readable(h->ud);
            else
                m2a_mqtt_session_read(s);
        } else if (events & (M2A_LOOP_HUP | M2A_LOOP_ERR)) {
            failed(s, MOSQ_ERR_CONN_LOST); /* paused: the peer hung up */
        }
        if (!s->mosq)
            return;
    }
    if (!m2a_mqtt_session_write(s, false))
        return;
    if (s->state == CONN_UP && !alive(s, mosquitto_loop_misc(s->mosq)))
        return;
    m2a_mqtt_session_arm(s);
}

/* --- public ------------------------------------------------------------------------- */

bool m2a_mqtt_session_read(struct m2a_mqtt_session *s)
{
    if (!s->mosq || s->state < CONN_CONNACK)
        return false;
    bool was_up = s->state == CONN_UP;
    if (!alive(s, mosquitto_loop_read(s->mosq, PACKETS_PER_CALL)))
        return false;
    if (!was_up && s->state == CONN_UP)
        s->t_misc = m2a_loop_timer_add(s->o.loop, m2a_now_ms() + MISC_EVERY_MS, misc_tick, s);
    return true;
}

/* Holds small packets back until all are written, so that a batch leaves
 * in one segment: libmosquitto sends each packet with its own send(), and
 * on loopback every send() otherwise becomes a segment the broker wakes up
 * for. */
static void cork(int fd, int on)
{
    (void)setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on));
}

bool m2a_mqtt_session_write(struct m2a_mqtt_session *s, bool corked)
{
    const struct m2a_mqtt_session_hooks *h = &s->o.hooks;
    if (!s->mosq)
        return false;
    if (s->state < CONN_CONNACK || !mosquitto_want_write(s->mosq) || !may(h->may_write, h->ud))
        return true;
    int fd = mosquitto_socket(s->mosq);
    if (corked)
        cork(fd, 1);
    int rc = mosquitto_loop_write(s->mosq, WRITE_CALLS);
    if (corked && mosquitto_socket(s->mosq) >= 0)
        cork(fd, 0);
    return alive(s, rc);
}

void m2a_mqtt_session_arm(struct m2a_mqtt_session *s)
{
    const struct m2a_mqtt_session_hooks *h = &s->o.hooks;
    if (!s->mosq || s->fd < 0)
        return;
    unsigned ev = 0;
    bool wants = mosquitto_want_write(s->mosq);
    switch (s->state) {
    case CONN_TCP:
        ev = M2A_LOOP_WRITE;
        break;
    case CONN_CONNACK:
        ev = M2A_LOOP_READ | (wants && handshake_done(s) ? M2A_LOOP_WRITE : 0);
        break;
    case CONN_UP:
        ev = may(h->may_read, h->ud) ? M2A_LOOP_READ : M2A_LOOP_HUP;
        if (wants && may(h->may_write, h->ud))
            ev |= M2A_LOOP_WRITE;
        break;
    case CONN_IDLE:
        return;
    }
    m2a_loop_set_events(s->o.loop, s->fd, ev);
}

int m2a_mqtt_session_fd(const struct m2a_mqtt_session *s)
{
    return s->mosq ? mosquitto_socket(s->mosq) : -1;
}

unsigned m2a_mqtt_session_send_window(const struct m2a_mqtt_session *s)
{
    return s->state == CONN_UP ? s->send_window : 0;
}

bool m2a_mqtt_session_up(const struct m2a_mqtt_session *s)
{
    return s->state == CONN_UP;
}

void m2a_mqtt_session_abort(struct m2a_mqtt_session *s)
{
    if (!s->mosq)
        return;
    bool was_up = s->state == CONN_UP;
    drop_handle(s);
    if (was_up && s->o.hooks.on_down)
        s->o.hooks.on_down(s->o.hooks.ud);
    schedule(s, m2a_backoff_next(&s->backoff));
}

void m2a_mqtt_session_hold_backoff(struct m2a_mqtt_session *s, bool hold)
{
    if (s->hold_backoff && !hold)
        m2a_backoff_reset(&s->backoff);
    s->hold_backoff = hold;
}

int m2a_mqtt_session_publish(struct m2a_mqtt_session *s, int *mid, const char *topic,
                             const void *payload, size_t len, int qos, bool retain,
                             const mosquitto_property *props)
{
    if (s->state != CONN_UP)
        return M2A_ERR_CLOSED;
    if (len > INT32_MAX)
        return M2A_ERR_ARG;
    int rc = mosquitto_publish_v5(s->mosq, mid, topic, (int)len, payload, qos, retain, props);
    if (rc != MOSQ_ERR_SUCCESS)
        return M2A_ERR_MQTT;
    m2a_mqtt_session_arm(s);
    return 0;
}

/* Ends the connection so that the broker reads every packet we sent.
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
        struct pollfd p = {.fd = keep, .events = POLLIN};
        int timeout = m2a_loop_timeout_ms(deadline);
        if (timeout == 0)
            break;
        int pr = poll(&p, 1, timeout);
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

void m2a_mqtt_session_close(struct m2a_mqtt_session *s, uint64_t deadline_ms, bool drain)
{
    m2a_loop_timer_del(s->o.loop, s->t_attempt);
    s->t_attempt = 0;
    if (!s->mosq)
        return;
    uint64_t deadline = m2a_loop_deadline(s->o.loop, deadline_ms);
    bool was_up = s->state == CONN_UP;
    if (was_up && drain) {
        while (mosquitto_want_write(s->mosq) && mosquitto_socket(s->mosq) >= 0) {
            int timeout = m2a_loop_timeout_ms(deadline);
            if (timeout == 0)
                break;
            struct pollfd p = {.fd = mosquitto_socket(s->mosq), .events = POLLOUT};
            poll(&p, 1, timeout);
            if (mosquitto_loop_write(s->mosq, PACKETS_PER_CALL) != MOSQ_ERR_SUCCESS)
                break;
        }
        if (mosquitto_socket(s->mosq) >= 0)
            disconnect_and_drain(s->mosq, deadline);
        m2a_info(s->o.log_name, "disconnected from %s (stopping)", s->where);
    }
    drop_handle(s); /* after a drain libmosquitto has closed its socket already */
    if (was_up && s->o.hooks.on_down)
        s->o.hooks.on_down(s->o.hooks.ud);
}

/* Fisher-Yates with the backoff's generator: bridges started together
 * spread over the brokers instead of all trying the first. */
static void shuffle(struct m2a_mqtt_session *s, size_t n)
{
    s->order = xcalloc(n, sizeof(*s->order));
    for (size_t i = 0; i < n; i++)
        s->order[i] = i;
    for (size_t i = n; i > 1; i--) {
        size_t j = m2a_backoff_next(&s->takeover) % i;
        size_t t = s->order[i - 1];
        s->order[i - 1] = s->order[j];
        s->order[j] = t;
    }
    m2a_backoff_reset(&s->takeover);
    set_pos(s, 0);
}

int m2a_mqtt_session_new(const struct m2a_mqtt_session_opts *opts, struct m2a_mqtt_session **out,
                         char *err, size_t errlen)
{
    const struct m2a_conf_mqtt *c = opts->conf;
    if (!c || !opts->loop || !opts->log_name || !c->nendpoints) {
        snprintf(err, errlen, "missing conf, brokers, loop or log name");
        return M2A_ERR_ARG;
    }
    pthread_once(&lib_once, lib_init);
    struct m2a_mqtt_session *s = xcalloc(1, sizeof(*s));
    int rc = 0;
    char why[512];
    s->o = *opts;
    s->client_id = opts->client_id ? opts->client_id : c->client_id;
    s->fd = -1;
    s->rl_connect = (struct m2a_ratelimit)M2A_RATELIMIT_INIT(LOG_INTERVAL_MS);
    m2a_backoff_init(&s->backoff, (uint32_t)c->reconnect_min_ms, (uint32_t)c->reconnect_max_ms);
    uint32_t max = (uint32_t)c->reconnect_max_ms;
    m2a_backoff_init(&s->takeover, TAKEOVER_MIN_MS, max > TAKEOVER_CAP_MS ? max : TAKEOVER_CAP_MS);
    shuffle(s, c->nendpoints);
    if (c->tls.enabled) {
        s->ssl_ctx = xcalloc(c->nendpoints, sizeof(*s->ssl_ctx));
        for (size_t i = 0; i < c->nendpoints; i++) {
            s->ssl_ctx[i] = m2a_tls_ctx_new(&c->tls, c->endpoints[i].host, why, sizeof(why));
            if (!s->ssl_ctx[i]) {
                snprintf(err, errlen, "MQTT TLS: %s", why);
                rc = M2A_ERR_CONFIG;
                goto out;
            }
        }
    }
    /* One handle now, so bad settings fail the start, not a log line per
     * reconnect. */
    struct mosquitto *probe = new_handle(s, 0, why, sizeof(why));
    if (!probe) {
        snprintf(err, errlen, "MQTT client: %s", why);
        rc = M2A_ERR_MQTT;
        goto out;
    }
    mosquitto_destroy(probe);
    *out = s;
    s = NULL;
out:
    m2a_mqtt_session_free(s);
    return rc;
}

void m2a_mqtt_session_start(struct m2a_mqtt_session *s)
{
    schedule(s, 0);
}

void m2a_mqtt_session_free(struct m2a_mqtt_session *s)
{
    if (!s)
        return;
    drop_handle(s);
    m2a_loop_timer_del(s->o.loop, s->t_attempt);
    for (size_t i = 0; s->ssl_ctx && i < s->o.conf->nendpoints; i++)
        SSL_CTX_free(s->ssl_ctx[i]);
    free(s->ssl_ctx);
    for (size_t i = 0; i < s->nsubs; i++)
        free(s->subs[i].filter);
    free(s->subs);
    free_strs(s->unsubs, s->nunsubs);
    free(s->order);
    free(s);
}
