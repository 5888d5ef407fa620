/* amqp_out.c - the AMQP side of the bridge: one thread that reads the spool
 * and publishes to RabbitMQ with publisher confirms.
 *
 * Thread ownership: the AMQP thread owns the rabbitmq-c connection (never
 * shared: rabbitmq-c is not thread-safe), the confirm window and the spool
 * reader, and holds a reference to the generation it runs. start, stop and
 * offer run on the caller's thread and touch only the stop flag, the
 * offered generation (an atomic pointer), the wake eventfd and, as a last
 * resort when the thread is stuck in a blocking library call, shutdown() of
 * the socket under `mu`.
 *
 * The loop: connect (advertising connection.blocked and friends), declare
 * the topology, confirm.select, then alternate between reading frames
 * (acks, nacks, returns, blocked/unblocked, closes), committing the
 * confirmed prefix to the spool, publishing spool records while the window
 * has room, and poll() on the socket, the spool's notify fd and the wake fd.
 * rabbitmq-c 0.11 has no confirm wait and services heartbeats only inside
 * its own calls, so the poll timeout is short and every iteration calls
 * amqp_simple_wait_frame_noblock() at least once.
 *
 * Why not SO_SNDTIMEO: rabbitmq-c puts its sockets in O_NONBLOCK and waits
 * for POLLOUT itself with an infinite deadline in amqp_basic_publish, so a
 * send timeout never fires. Instead we publish only while the socket polls
 * writable (checked every WRITE_CHECK_BYTES), and stop() shuts the socket
 * down if the thread has not finished by its deadline, which makes any
 * blocked library call return an error.
 *
 * Publishing on plain TCP bypasses amqp_basic_publish: a pass's frames are
 * encoded into one buffer (amqp_frames.c) and written before any other
 * rabbitmq-c call, waiting for POLLOUT at most two heartbeat intervals.
 * Over TLS the bytes must go through rabbitmq-c's SSL socket, so each
 * publish is an amqp_basic_publish as before.
 *
 * On a lost connection every unconfirmed record is re-published from the
 * copies in the window (same message id), so the spool cursor never moves
 * back and confirmed-but-not-yet-committed records are not duplicated. */
#include "mqtt2amqp/amqp_out.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include "mqtt2amqp/amqp_frames.h"
#include "mqtt2amqp/backoff.h"
#include "mqtt2amqp/confirm_window.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/policy.h"
#include "mqtt2amqp/ratelimit.h"
#include "mqtt2amqp/route_stats.h"
#include "mqtt2amqp/tls.h"
#include "mqtt2amqp/util.h"

#define COMPONENT         "amqp"
#define CHANNEL           1
#define POLL_MAX_MS       100   /* also bounds heartbeat servicing */
#define CONNECT_TIMEOUT_S 5     /* TCP connect and AMQP handshake */
#define RPC_TIMEOUT_S     10    /* declare / confirm.select replies */
#define CLOSE_TIMEOUT_MS  1000  /* channel.close / connection.close at stop */
#define STOP_GRACE_MS     2000  /* after the stop deadline, before shutdown() */
#define WRITE_CHECK_BYTES 32768 /* re-check POLLOUT after this much published */
#define LOG_EVERY_MS      1000  /* rate limit of per-message warnings */
#define STABLE_SESSION_MS 10000 /* a session this long resets the backoff */
#define SPOOL_RETRY_MS    1000  /* after a spool read error */
#define FRAME_SLACK       4096  /* frame_max minus this bounds the properties */
#define SEND_STALL_MS     30000 /* a write taking nothing this long: connection lost */

/* What a session ended with. */
enum session_end {
    END_LOST = 1, /* connection failed: tear down, back off, reconnect */
    END_BROKER,   /* broker closed it (connection.close answered) */
    END_CHANNEL,  /* broker closed our channel: close the connection politely */
    END_STOPPED,  /* stop requested and drained (or timed out) */
};

/* Where a basic.return stands: its content header and body frames follow
 * the method on the channel. */
enum return_state {
    RETURN_NONE,
    RETURN_HEADER, /* the content header (naming the message) is next */
    RETURN_BODY,   /* body frames are next (skipped: the window has a copy) */
};

struct m2a_amqp_out {
    const struct m2a_conf_amqp *conf; /* connection settings: never reloaded */
    struct m2a_spool *spool;
    struct m2a_stats *stats;
    const char *spool_id;

    pthread_t thread;
    int wake_fd; /* eventfd: stop() interrupts poll() and the backoff sleep */
    _Atomic int stopping;
    _Atomic uint64_t stop_deadline_ms;
    pthread_mutex_t mu; /* guards sockfd and done */
    pthread_cond_t cv;  /* signalled when done */
    int sockfd;         /* the open connection's socket, else -1 */
    bool done;

    /* Live reload: the main thread offers the next generation here (newest
     * wins); the AMQP thread takes it, declares its topology and answers
     * through on_generation. */
    _Atomic(struct m2a_generation *) gen_offer;
    void (*on_generation)(void *ud, struct m2a_generation *gen, int rc, const char *why);
    void *on_generation_ud;

    /* --- AMQP thread only --- */
    /* The generation this thread runs (a reference of its own): the
     * topology declared at connect, the rules for undeliverable messages. */
    struct m2a_generation *gen;
    uint64_t trusted_from_seq; /* records from here on were written by this process */
    amqp_connection_state_t conn;
    struct m2a_cwin *cw;
    struct m2a_backoff backoff;      /* reconnects */
    struct m2a_backoff nack_backoff; /* per-message retries after basic.nack */
    uint64_t next_tag;               /* last delivery tag used on the channel */
    uint64_t connected_ms;
    uint64_t last_rx_ms; /* last time the broker sent anything */
    int heartbeat_s;     /* negotiated */
    bool blocked;
    bool progress;   /* a confirm arrived in this session */
    bool refused;    /* the broker refused the login or the topology */
    bool want_write; /* publishing waits for POLLOUT */
    uint64_t next_retry_ms;
    uint64_t spool_retry_ms; /* no spool reads before this (after an error) */
    unsigned nconnects;
    /* basic.return: its content header and body frames follow on the channel */
    enum return_state return_state;
    uint64_t return_left;
    char return_what[640]; /* the return's exchange, key and reply, for the log */
    struct m2a_ratelimit rl_spool, rl_drop;

    /* Undeliverable messages (see the comment above put_dead_letter). */
    struct m2a_policy *policy;
    struct m2a_buf dl_buf;
    struct m2a_cw_slot **nacked; /* the slots one basic.nack names */
    size_t nacked_cap;
    char end_reason[256];

    /* publish scratch, grown only */
    struct m2a_header *hdrs;
    size_t hdrs_cap;
    amqp_table_entry_t *entries;
    size_t entries_cap;
    /* Plain TCP: a pass's publishes are encoded here and written at once
     * (amqp_frames.h); empty whenever a rabbitmq-c call runs. */
    bool raw_frames;
    struct m2a_buf frames;
    /* One clock read per publish pass and per confirm frame, not per message. */
    uint64_t pass_us;  /* publish_some's start: the messages' sent time */
    uint64_t frame_us; /* arrival of the basic.ack being handled */
};

static bool stopping(const struct m2a_amqp_out *ao)
{
    return atomic_load_explicit(&ao->stopping, memory_order_acquire) != 0;
}

static amqp_bytes_t str_bytes(struct m2a_str s)
{
    amqp_bytes_t b = {s.len, (void *)s.ptr};
    return b;
}

static void set_end(struct m2a_amqp_out *ao, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_end(struct m2a_amqp_out *ao, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ao->end_reason, sizeof(ao->end_reason), fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------------ */
/* Connection set-up                                                   */

/* Describes a failed RPC in buf; true when the broker closed the channel
 * (we must answer close-ok), *conn_closed when it closed the connection. */
static void describe_reply(amqp_rpc_reply_t r, char *buf, size_t len, bool *chan_closed,
                           bool *conn_closed)
{
    *chan_closed = *conn_closed = false;
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        snprintf(buf, len, "ok");
        break;
    case AMQP_RESPONSE_NONE:
        snprintf(buf, len, "no reply");
        break;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buf, len, "%s", amqp_error_string2(r.library_error));
        break;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            const amqp_connection_close_t *m = r.reply.decoded;
            snprintf(buf, len, "connection closed by broker: %u %.*s", m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
            *conn_closed = true;
        } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            const amqp_channel_close_t *m = r.reply.decoded;
            snprintf(buf, len, "channel closed by broker: %u %.*s", m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
            *chan_closed = true;
        } else {
            snprintf(buf, len, "unexpected method 0x%08x from broker", (unsigned)r.reply.id);
        }
        break;
    }
}

/* Checks the reply of the last RPC. On failure sets end_reason to
 * "what: reason" and answers a broker-initiated close. Returns 0,
 * M2A_ERR_AMQP when the broker closed the channel (the connection is still
 * usable) or M2A_ERR_CLOSED when the connection is not. */
static int check_reply(struct m2a_amqp_out *ao, amqp_rpc_reply_t r, const char *what)
{
    if (r.reply_type == AMQP_RESPONSE_NORMAL)
        return 0;
    char why[512];
    bool chan_closed, conn_closed;
    describe_reply(r, why, sizeof(why), &chan_closed, &conn_closed);
    ao->refused = r.reply_type == AMQP_RESPONSE_SERVER_EXCEPTION;
    set_end(ao, "%s: %s", what, why);
    if (chan_closed) {
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(ao->conn, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        return M2A_ERR_AMQP;
    }
    if (conn_closed) {
        amqp_connection_close_ok_t ok = {0};
        amqp_send_method(ao->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    }
    return M2A_ERR_CLOSED;
}

/* Builds an AMQP table from configured arguments; entries must hold n. */
static amqp_table_t conf_table(const struct m2a_conf_arg *args, size_t n,
                               amqp_table_entry_t *entries)
{
    for (size_t i = 0; i < n; i++) {
        entries[i].key = amqp_cstring_bytes(args[i].key);
        switch (args[i].type) {
        case M2A_ARG_STRING:
            entries[i].value.kind = AMQP_FIELD_KIND_UTF8;
            entries[i].value.value.bytes = amqp_cstring_bytes(args[i].str);
            break;
        case M2A_ARG_INT:
            entries[i].value.kind = AMQP_FIELD_KIND_I64;
            entries[i].value.value.i64 = args[i].num;
            break;
        case M2A_ARG_BOOL:
            entries[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
            entries[i].value.value.boolean = args[i].flag;
            break;
        }
    }
    amqp_table_t t = {(int)n, n ? entries : NULL};
    return t;
}

static const char *at_line(char *buf, size_t len, struct m2a_conf_mark m)
{
    if (m.line > 0)
        snprintf(buf, len, " (config line %d)", m.line);
    else
        buf[0] = '\0';
    return buf;
}

/* Declares exchanges, queues and bindings. A refusal (say, a queue that
 * exists with other arguments) closes the channel: the caller closes the
 * connection politely and retries with backoff, since an operator may fix
 * the broker side without restarting us. */
static int declare_topology(struct m2a_amqp_out *ao, const struct m2a_conf_amqp *c)
{
    char what[600], line[32];
    int rc = 0;
    size_t maxargs = 1;
    for (size_t i = 0; i < c->nexchanges; i++)
        maxargs = c->exchanges[i].nargs > maxargs ? c->exchanges[i].nargs : maxargs;
    for (size_t i = 0; i < c->nqueues; i++) {
        const struct m2a_conf_queue *q = &c->queues[i];
        maxargs = q->nargs > maxargs ? q->nargs : maxargs;
        for (size_t j = 0; j < q->nbindings; j++)
            maxargs = q->bindings[j].nargs > maxargs ? q->bindings[j].nargs : maxargs;
    }
    amqp_table_entry_t *entries = xcalloc(maxargs, sizeof(*entries));

    for (size_t i = 0; i < c->nexchanges; i++) {
        const struct m2a_conf_exchange *x = &c->exchanges[i];
        amqp_exchange_declare(ao->conn, CHANNEL, amqp_cstring_bytes(x->name),
                              amqp_cstring_bytes(x->type ? x->type : "topic"), 0, x->durable,
                              x->auto_delete, x->internal, conf_table(x->args, x->nargs, entries));
        snprintf(what, sizeof(what), "declaring exchange '%s'%s", x->name,
                 at_line(line, sizeof(line), x->mark));
        if ((rc = check_reply(ao, amqp_get_rpc_reply(ao->conn), what)) != 0)
            goto out;
    }
    for (size_t i = 0; i < c->nqueues; i++) {
        const struct m2a_conf_queue *q = &c->queues[i];
        amqp_queue_declare_ok_t *ok = amqp_queue_declare(
            ao->conn, CHANNEL, amqp_cstring_bytes(q->name), 0, q->durable, q->exclusive,
            q->auto_delete, conf_table(q->args, q->nargs, entries));
        snprintf(what, sizeof(what), "declaring queue '%s'%s", q->name,
                 at_line(line, sizeof(line), q->mark));
        if ((rc = check_reply(ao, amqp_get_rpc_reply(ao->conn), what)) != 0)
            goto out;
        /* A server-named queue ("") is bound under the name it got. */
        char *qname = xstrndup(ok->queue.bytes, ok->queue.len);
        for (size_t j = 0; j < q->nbindings && rc == 0; j++) {
            const struct m2a_conf_binding *b = &q->bindings[j];
            const char *key = b->routing_key ? b->routing_key : "#";
            amqp_queue_bind(ao->conn, CHANNEL, amqp_cstring_bytes(qname),
                            amqp_cstring_bytes(b->exchange), amqp_cstring_bytes(key),
                            conf_table(b->args, b->nargs, entries));
            snprintf(what, sizeof(what), "binding queue '%s' to exchange '%s' with key '%s'%s",
                     qname, b->exchange, key, at_line(line, sizeof(line), b->mark));
            rc = check_reply(ao, amqp_get_rpc_reply(ao->conn), what);
        }
        free(qname);
        if (rc)
            goto out;
    }
out:
    free(entries);
    return rc;
}

static void publish_sockfd(struct m2a_amqp_out *ao, int fd)
{
    pthread_mutex_lock(&ao->mu);
    ao->sockfd = fd;
    pthread_mutex_unlock(&ao->mu);
}

static int open_socket(struct m2a_amqp_out *ao)
{
    const struct m2a_conf_amqp *c = ao->conf;
    amqp_socket_t *sock;
    if (c->tls.enabled) {
        sock = amqp_ssl_socket_new(ao->conn);
        if (!sock) {
            set_end(ao, "cannot create a TLS socket");
            return M2A_ERR_IO;
        }
        /* The context is set up by tls.c: OpenSSL itself checks the host name
         * (IP literals too, which rabbitmq-c's own check does not handle, so
         * that one stays off) and the reason of a refusal is recorded. */
        char why[512];
        amqp_ssl_socket_set_verify_peer(sock, 1);
        amqp_ssl_socket_set_verify_hostname(sock, 0);
        if (m2a_tls_ctx_setup(amqp_ssl_socket_get_context(sock), &c->tls, c->host, why,
                              sizeof(why)) != 0) {
            set_end(ao, "%s", why);
            ao->refused = true;
            return M2A_ERR_CONFIG;
        }
    } else {
        sock = amqp_tcp_socket_new(ao->conn);
        if (!sock) {
            set_end(ao, "cannot create a TCP socket");
            return M2A_ERR_IO;
        }
    }
    struct timeval tv = {CONNECT_TIMEOUT_S, 0};
    m2a_tls_failure_reset();
    int rc = amqp_socket_open_noblock(sock, c->host, c->port, &tv);
    if (rc != AMQP_STATUS_OK) {
        char tls[600];
        if (m2a_tls_failure(tls, sizeof(tls))) {
            set_end(ao, "cannot connect: %s", tls);
            ao->refused = true; /* needs an operator: logged as an error */
        } else {
            set_end(ao, "cannot connect: %s", amqp_error_string2(rc));
        }
        return M2A_ERR_IO;
    }
    publish_sockfd(ao, amqp_get_sockfd(ao->conn));
    /* stop() may have looked for a socket to shut down just before. */
    if (stopping(ao)) {
        set_end(ao, "stop requested while connecting");
        return M2A_ERR_CLOSED;
    }
    return 0;
}

static int login(struct m2a_amqp_out *ao)
{
    const struct m2a_conf_amqp *c = ao->conf;
    amqp_table_entry_t caps[6];
    const char *cap_names[] = {
        "publisher_confirms",     "connection.blocked",         "basic.nack",
        "consumer_cancel_notify", "exchange_exchange_bindings", "authentication_failure_close"};
    for (size_t i = 0; i < 6; i++) {
        caps[i].key = amqp_cstring_bytes(cap_names[i]);
        caps[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        caps[i].value.value.boolean = 1;
    }
    amqp_table_entry_t props[5];
    const char *names[] = {"product", "version", "platform", "connection_name"};
    /* Names this bridge in the management UI; the spool id tells instances apart. */
    char name[128];
    snprintf(name, sizeof(name), "mqtt2amqp %s", ao->spool_id);
    const char *values[] = {"mqtt2amqp", M2A_VERSION, "C11 / rabbitmq-c", name};
    for (size_t i = 0; i < 4; i++) {
        props[i].key = amqp_cstring_bytes(names[i]);
        props[i].value.kind = AMQP_FIELD_KIND_UTF8;
        props[i].value.value.bytes = amqp_cstring_bytes(values[i]);
    }
    props[4].key = amqp_cstring_bytes("capabilities");
    props[4].value.kind = AMQP_FIELD_KIND_TABLE;
    props[4].value.value.table.num_entries = 6;
    props[4].value.value.table.entries = caps;
    amqp_table_t client_props = {5, props};

    amqp_rpc_reply_t r =
        amqp_login_with_properties(ao->conn, c->vhost, 0, AMQP_DEFAULT_FRAME_SIZE, c->heartbeat,
                                   &client_props, AMQP_SASL_METHOD_PLAIN, c->username, c->password);
    return check_reply(ao, r, "login");
}

/* Connects, declares the topology and enables confirms. On failure
 * end_reason says why and the connection (if any) is left for teardown. */
static int connect_broker(struct m2a_amqp_out *ao)
{
    int rc;
    ao->conn = amqp_new_connection();
    if (!ao->conn)
        abort(); /* out of memory: see util.h */
    struct timeval hs = {CONNECT_TIMEOUT_S, 0}, rpc = {RPC_TIMEOUT_S, 0};
    amqp_set_handshake_timeout(ao->conn, &hs);
    amqp_set_rpc_timeout(ao->conn, &rpc);
    if ((rc = open_socket(ao)) != 0)
        return rc;
    if ((rc = login(ao)) != 0)
        return rc;
    amqp_channel_open(ao->conn, CHANNEL);
    if ((rc = check_reply(ao, amqp_get_rpc_reply(ao->conn), "opening channel")) != 0)
        return rc;
    if ((rc = declare_topology(ao, m2a_generation_topology(ao->gen))) != 0)
        return rc;
    amqp_confirm_select(ao->conn, CHANNEL);
    if ((rc = check_reply(ao, amqp_get_rpc_reply(ao->conn), "confirm.select")) != 0)
        return rc;
    ao->heartbeat_s = amqp_get_heartbeat(ao->conn);
    ao->raw_frames = !ao->conf->tls.enabled;
    return 0;
}

/* Closes politely if `polite` (bounded by CLOSE_TIMEOUT_MS), then destroys. */
static void teardown(struct m2a_amqp_out *ao, bool polite, bool channel_open)
{
    if (!ao->conn)
        return;
    if (polite) {
        struct timeval tv = {0, CLOSE_TIMEOUT_MS * 1000};
        amqp_set_rpc_timeout(ao->conn, &tv);
        amqp_rpc_reply_t r = {.reply_type = AMQP_RESPONSE_NORMAL};
        if (channel_open)
            r = amqp_channel_close(ao->conn, CHANNEL, AMQP_REPLY_SUCCESS);
        if (r.reply_type == AMQP_RESPONSE_NORMAL)
            amqp_connection_close(ao->conn, AMQP_REPLY_SUCCESS);
    }
    publish_sockfd(ao, -1); /* before the fd is closed: stop() must not shut a reused fd */
    amqp_destroy_connection(ao->conn);
    ao->conn = NULL;
    M2A_STAT_SET(ao->stats, amqp_connected, false);
    if (ao->blocked)
        M2A_STAT_SET(ao->stats, amqp_blocked, false);
    ao->blocked = false;
    ao->return_state = RETURN_NONE;
    ao->want_write = false;
    ao->frames.len = 0;       /* never written: the window re-publishes them */
    m2a_cwin_requeue(ao->cw); /* tags restart at 1 on the next channel */
    ao->next_tag = 0;
}

/* ------------------------------------------------------------------ */
/* Frames from the broker                                              */

static uint32_t nack_delay(void *ctx, uint32_t retries)
{
    struct m2a_backoff *b = ctx;
    b->attempt = retries;
    return m2a_backoff_next(b);
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

/* Per-route confirms and the confirm latency (set as the window's hook). */
static void on_confirmed(void *ctx, const struct m2a_cw_slot *slot)
{
    struct m2a_amqp_out *ao = ctx;
    M2A_ROUTE_ADD((struct m2a_route_counters *)slot->ud, confirmed, 1);
    if (slot->sent_us)
        m2a_route_stats_observe_latency(ao->stats->routes, ao->frame_us - slot->sent_us);
}

/* The dead letter dle takes the place of the record in slot. */
static void put_dead_letter(struct m2a_amqp_out *ao, struct m2a_cw_slot *slot,
                            const struct m2a_envelope *dle)
{
    /* dle points into slot->rec: encode elsewhere first. */
    m2a_buf_reset(&ao->dl_buf);
    m2a_envelope_encode(dle, &ao->dl_buf);
    m2a_buf_reset(&slot->rec);
    m2a_buf_append(&slot->rec, ao->dl_buf.data, ao->dl_buf.len);
    slot->retries = 0; /* the dead letter's own nacks start from zero */
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

static uint32_t nack_delay(void *ctx, uint32_t retries);

static bool decode_slot(struct m2a_amqp_out *ao, const struct m2a_cw_slot *slot,
                        struct m2a_envelope *env)
{
    return m2a_envelope_decode(slot->rec.data, slot->rec.len, env, &ao->hdrs, &ao->hdrs_cap) == 0;
}

/* basic.return, once its content header named the message: the policy
 * decides. The slot is still INFLIGHT (the broker acks a returned message
 * after returning it); a dead letter or a retry moves it to RETRY, so that
 * ack finds a stale tag and is ignored, while a drop lets the ack confirm
 * it. */
static void on_returned(struct m2a_amqp_out *ao, uint64_t seq)
{
    struct m2a_cw_slot *slot = m2a_cwin_find(ao->cw, seq);
    struct m2a_envelope env, dle;
    uint64_t now = m2a_now_ms();
    if (!slot || slot->state != M2A_CW_INFLIGHT || !decode_slot(ao, slot, &env)) {
        m2a_debug(COMPONENT, "returned message %" PRIu64 " is not in flight: ignored", seq);
        return;
    }
    slot->returns++;
    struct m2a_policy_case c = {.event = M2A_POLICY_RETURNED,
                                .env = &env,
                                .seq = seq,
                                .attempts = slot->returns,
                                .detail = ao->return_what};
    enum m2a_fate fate = m2a_policy_decide(ao->policy, ao->gen, &c, &dle);
    uint32_t delay = 0;
    if (fate == M2A_FATE_DEAD_LETTER) {
        m2a_policy_account(ao->policy, ao->gen, &c, fate, fate, 0);
        put_dead_letter(ao, slot, &dle); /* env and dle are gone from here */
        m2a_cwin_retry(ao->cw, slot, now);
        return;
    }
    if (fate == M2A_FATE_RETRY) {
        delay = nack_delay(&ao->nack_backoff, slot->returns - 1);
        m2a_cwin_retry(ao->cw, slot, now + delay);
    }
    m2a_policy_account(ao->policy, ao->gen, &c, fate, fate, delay);
}

static void on_return(struct m2a_amqp_out *ao, const amqp_basic_return_t *m)
{
    M2A_STAT_ADD(ao->stats, returned, 1);
    ao->return_state = RETURN_HEADER;
    /* What the message is comes with the content header (its message_id). */
    snprintf(ao->return_what, sizeof(ao->return_what),
             "exchange '%.*s', routing key '%.*s': %u %.*s", (int)m->exchange.len,
             (const char *)m->exchange.bytes, (int)m->routing_key.len,
             (const char *)m->routing_key.bytes, m->reply_code, (int)m->reply_text.len,
             (const char *)m->reply_text.bytes);
}

/* basic.nack: every slot it names goes to RETRY with backoff (the window
 * counts the nack); then the policy decides for each, by name: one nacked
 * more than dead_letter.max_retries times becomes a dead letter, sent at
 * once. Without a dead_letter section nacks are retried for ever. */
static size_t on_nack(struct m2a_amqp_out *ao, uint64_t tag, bool multiple)
{
    size_t n = 0;
    for (uint32_t i = 0; i < m2a_cwin_count(ao->cw); i++) {
        struct m2a_cw_slot *slot = m2a_cwin_at(ao->cw, i);
        if (slot->state != M2A_CW_INFLIGHT || (multiple ? slot->tag > tag : slot->tag != tag))
            continue;
        if (n == ao->nacked_cap) {
            ao->nacked_cap = ao->nacked_cap ? 2 * ao->nacked_cap : 16;
            ao->nacked = xrealloc(ao->nacked, ao->nacked_cap * sizeof(*ao->nacked));
        }
        ao->nacked[n++] = slot;
    }
    uint64_t now = m2a_now_ms();
    size_t nacked = m2a_cwin_nack(ao->cw, tag, multiple, now, nack_delay, &ao->nack_backoff);
    for (size_t k = 0; k < n; k++) {
        struct m2a_cw_slot *slot = ao->nacked[k];
        struct m2a_envelope env, dle;
        if (slot->state != M2A_CW_RETRY || !decode_slot(ao, slot, &env))
            continue;
        struct m2a_policy_case c = {
            .event = M2A_POLICY_NACKED, .env = &env, .seq = slot->seq, .attempts = slot->retries};
        enum m2a_fate fate = m2a_policy_decide(ao->policy, ao->gen, &c, &dle);
        uint32_t delay = slot->retry_at_ms > now ? (uint32_t)(slot->retry_at_ms - now) : 0;
        m2a_policy_account(ao->policy, ao->gen, &c, fate, fate, delay);
        if (fate == M2A_FATE_DEAD_LETTER) {
            put_dead_letter(ao, slot, &dle);
            m2a_cwin_retry(ao->cw, slot, now);
        }
    }
    return nacked;
}

/* spool.max_age, checked when a record is read from the spool: an older one
 * is dead-lettered (reason expired) or, without a dead_letter section,
 * dropped. Age is wall-clock time since the bridge received the message.
 * Dead letters never expire. */
static void check_age(struct m2a_amqp_out *ao, struct m2a_cw_slot *slot)
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
        m2a_cwin_drop(ao->cw, slot);
}

/* A record spooled by an earlier process carries a route id of that
 * process (or none: envelope version 1): resolve it by name, once, as it is
 * read, so that everything after joins on the id. A name no route ever had
 * in this process stays M2A_ROUTE_NONE (not counted; the default policy). */
static void resolve_route(struct m2a_amqp_out *ao, struct m2a_cw_slot *slot)
{
    struct m2a_envelope env;
    if (!decode_slot(ao, slot, &env))
        return; /* dropped when published */
    uint32_t id = m2a_route_stats_lookup(ao->stats->routes, env.route.ptr, env.route.len);
    if (m2a_envelope_set_route_id(slot->rec.data, slot->rec.len, id) == 0)
        return;
    env.route_id = id; /* version 1: re-encoded as version 2 */
    m2a_buf_reset(&ao->dl_buf);
    m2a_envelope_encode(&env, &ao->dl_buf);
    m2a_buf_reset(&slot->rec);
    m2a_buf_append(&slot->rec, ao->dl_buf.data, ao->dl_buf.len);
}

/* Returns 0 to go on, or how the session ended. */
static int on_method(struct m2a_amqp_out *ao, const amqp_method_t *m)
{
    switch (m->id) {
    case AMQP_BASIC_ACK_METHOD: {
        const amqp_basic_ack_t *a = m->decoded;
        ao->frame_us = m2a_now_us(); /* for on_confirmed */
        size_t n = m2a_cwin_ack(ao->cw, a->delivery_tag, a->multiple);
        M2A_STAT_ADD(ao->stats, confirmed, n);
        ao->progress |= n > 0;
        return 0;
    }
    case AMQP_BASIC_NACK_METHOD: {
        const amqp_basic_nack_t *a = m->decoded;
        M2A_STAT_ADD(ao->stats, nacked, on_nack(ao, a->delivery_tag, a->multiple));
        return 0;
    }
    case AMQP_BASIC_RETURN_METHOD:
        on_return(ao, m->decoded);
        return 0;
    case AMQP_CONNECTION_BLOCKED_METHOD: {
        const amqp_connection_blocked_t *b = m->decoded;
        ao->blocked = true;
        M2A_STAT_SET(ao->stats, amqp_blocked, true);
        m2a_warn(COMPONENT, "connection blocked by broker: %.*s; publishing paused",
                 (int)b->reason.len, (const char *)b->reason.bytes);
        return 0;
    }
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
        ao->blocked = false;
        M2A_STAT_SET(ao->stats, amqp_blocked, false);
        m2a_info(COMPONENT, "connection unblocked; publishing resumed");
        return 0;
    case AMQP_CHANNEL_CLOSE_METHOD: {
        const amqp_channel_close_t *c = m->decoded;
        set_end(ao, "channel closed by broker: %u %.*s (class %u, method %u)", c->reply_code,
                (int)c->reply_text.len, (const char *)c->reply_text.bytes, c->class_id,
                c->method_id);
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(ao->conn, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        return END_CHANNEL;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        const amqp_connection_close_t *c = m->decoded;
        set_end(ao, "connection closed by broker: %u %.*s", c->reply_code, (int)c->reply_text.len,
                (const char *)c->reply_text.bytes);
        amqp_connection_close_ok_t ok = {0};
        amqp_send_method(ao->conn, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        return END_BROKER;
    }
    default:
        m2a_debug(COMPONENT, "ignoring method 0x%08x on channel", (unsigned)m->id);
        return 0;
    }
}

static void on_content(struct m2a_amqp_out *ao, const amqp_frame_t *f)
{
    /* Only a basic.return carries content to a publisher: its header names
     * the message; the body is skipped (the window has a copy). */
    if (f->frame_type == AMQP_FRAME_HEADER && ao->return_state == RETURN_HEADER) {
        const amqp_basic_properties_t *p = f->payload.properties.decoded;
        uint64_t seq;
        if (p && (p->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
            parse_message_id(ao, p->message_id, &seq))
            on_returned(ao, seq);
        else
            m2a_warn(COMPONENT, "returned message without a message id of ours: ignored (%s)",
                     ao->return_what);
        ao->return_left = f->payload.properties.body_size;
        ao->return_state = ao->return_left ? RETURN_BODY : RETURN_NONE;
    } else if (f->frame_type == AMQP_FRAME_BODY && ao->return_state == RETURN_BODY) {
        size_t n = f->payload.body_fragment.len;
        ao->return_left = n >= ao->return_left ? 0 : ao->return_left - n;
        if (ao->return_left == 0)
            ao->return_state = RETURN_NONE;
    }
}

/* Reads every frame available now (buffered or on the socket) without
 * blocking. Also sends a heartbeat if one is due. Returns 0 to go on, or
 * how the session ended (end_reason set). */
static int read_frames(struct m2a_amqp_out *ao)
{
    struct timeval zero = {0, 0};
    if (amqp_data_in_buffer(ao->conn) || amqp_frames_enqueued(ao->conn))
        ao->last_rx_ms = m2a_now_ms();
    for (;;) {
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame_noblock(ao->conn, &f, &zero);
        if (rc == AMQP_STATUS_TIMEOUT)
            break;
        if (rc != AMQP_STATUS_OK) {
            set_end(ao, "reading from broker: %s", amqp_error_string2(rc));
            return END_LOST;
        }
        ao->last_rx_ms = m2a_now_ms();
        if (f.frame_type == AMQP_FRAME_METHOD) {
            int end = on_method(ao, &f.payload.method);
            if (end)
                return end;
        } else {
            on_content(ao, &f);
        }
    }
    /* Decoded frames live in the channel pools until released. */
    amqp_maybe_release_buffers(ao->conn);
    if (ao->heartbeat_s > 0 && m2a_now_ms() - ao->last_rx_ms > 2000u * (uint64_t)ao->heartbeat_s) {
        set_end(ao, "heartbeat timeout: nothing from the broker for %d s", 2 * ao->heartbeat_s);
        return END_LOST;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Publishing                                                          */

static void drop_record(struct m2a_amqp_out *ao, struct m2a_cw_slot *slot, const char *why)
{
    uint64_t sup;
    M2A_STAT_ADD(ao->stats, dropped, 1);
    if (m2a_ratelimit_ok(&ao->rl_drop, &sup))
        m2a_error(COMPONENT,
                  "dropping spool record %" PRIu64 ": %s (%" PRIu64 " similar suppressed)",
                  slot->seq, why, sup);
    m2a_cwin_drop(ao->cw, slot);
}

/* Properties must fit in one frame: a header frame that fails to encode
 * after basic.publish went out would wedge the channel. */
static const char *unpublishable(const struct m2a_envelope *env, size_t frame_max)
{
    if (env->exchange.len > 255)
        return "exchange name longer than 255 bytes";
    if (env->routing_key.len > 255)
        return "routing key longer than 255 bytes";
    if (env->content_type.len > 255)
        return "content type longer than 255 bytes";
    size_t size = 512 + env->content_type.len + env->topic.len;
    for (size_t i = 0; i < env->nheaders; i++) {
        if (env->headers[i].key.len > 255)
            return "header name longer than 255 bytes";
        size += 6 + env->headers[i].key.len + env->headers[i].value.len;
    }
    if (size + FRAME_SLACK > frame_max)
        return "headers too large for one AMQP frame";
    return NULL;
}

static void set_entry_str(amqp_table_entry_t *e, const char *key, struct m2a_str v)
{
    e->key = amqp_cstring_bytes(key);
    e->value.kind = AMQP_FIELD_KIND_UTF8;
    e->value.value.bytes = str_bytes(v);
}

static int publish_slot(struct m2a_amqp_out *ao, struct m2a_cw_slot *slot)
{
    struct m2a_envelope env;
    if (!decode_slot(ao, slot, &env)) {
        drop_record(ao, slot, "cannot decode the envelope");
        return 0;
    }
    const char *bad = unpublishable(&env, (size_t)amqp_get_frame_max(ao->conn));
    if (bad) {
        struct m2a_envelope dle;
        struct m2a_policy_case c = {
            .event = M2A_POLICY_UNPUBLISHABLE, .env = &env, .seq = slot->seq, .detail = bad};
        enum m2a_fate fate = m2a_policy_decide(ao->policy, ao->gen, &c, &dle);
        m2a_policy_account(ao->policy, ao->gen, &c, fate, fate, 0);
        if (fate != M2A_FATE_DEAD_LETTER) {
            m2a_cwin_drop(ao->cw, slot);
            return 0;
        }
        put_dead_letter(ao, slot, &dle);
        return publish_slot(ao, slot); /* once: a dead letter is not dead-lettered again */
    }
    /* A dead letter keeps x-mqtt-topic whatever mqtt_headers says: it is how
     * an operator finds where the message came from. */
    enum m2a_mqtt_headers mh = m2a_generation_mqtt_headers(ao->gen);
    if (mh == M2A_MQTT_HEADERS_NONE && env.dead_letter)
        mh = M2A_MQTT_HEADERS_TOPIC;
    size_t nmqtt = mh == M2A_MQTT_HEADERS_ALL ? 3 : mh == M2A_MQTT_HEADERS_TOPIC ? 1 : 0;
    size_t nent = nmqtt + env.nheaders;
    if (nent > ao->entries_cap) {
        ao->entries = xrealloc(ao->entries, nent * sizeof(*ao->entries));
        ao->entries_cap = nent;
    }
    amqp_table_entry_t *e = ao->entries;
    if (nmqtt >= 1)
        set_entry_str(&e[0], "x-mqtt-topic", env.topic);
    if (nmqtt == 3) {
        e[1].key = amqp_cstring_bytes("x-mqtt-qos");
        e[1].value.kind = AMQP_FIELD_KIND_I32;
        e[1].value.value.i32 = env.qos;
        e[2].key = amqp_cstring_bytes("x-mqtt-retain");
        e[2].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        e[2].value.value.boolean = env.retain;
    }
    for (size_t i = 0; i < env.nheaders; i++) {
        e[nmqtt + i].key = str_bytes(env.headers[i].key);
        e[nmqtt + i].value.kind = AMQP_FIELD_KIND_UTF8;
        e[nmqtt + i].value.value.bytes = str_bytes(env.headers[i].value);
    }

    char msgid[160];
    int idlen = snprintf(msgid, sizeof(msgid), "%s-%" PRIu64, ao->spool_id, slot->seq);
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof(p));
    p._flags =
        AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    if (nent > 0)
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
    p.delivery_mode = env.persistent ? AMQP_DELIVERY_PERSISTENT : AMQP_DELIVERY_NONPERSISTENT;
    p.timestamp = env.timestamp_ms / 1000u;
    p.message_id.bytes = msgid;
    p.message_id.len = idlen < (int)sizeof(msgid) ? (size_t)idlen : sizeof(msgid) - 1;
    p.headers.num_entries = (int)nent;
    p.headers.entries = e;
    if (env.content_type.len) {
        p._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        p.content_type = str_bytes(env.content_type);
    }

    if (ao->raw_frames) {
        amqp_basic_publish_t m = {.exchange = str_bytes(env.exchange),
                                  .routing_key = str_bytes(env.routing_key),
                                  .mandatory = 1};
        if (m2a_amqp_frames_publish(&ao->frames, CHANNEL, (uint32_t)amqp_get_frame_max(ao->conn),
                                    &m, &p, str_bytes(env.body)) != 0) {
            set_end(ao, "publishing: the message's frames cannot be encoded");
            return M2A_ERR_AMQP;
        }
    } else {
        int rc = amqp_basic_publish(ao->conn, CHANNEL, str_bytes(env.exchange),
                                    str_bytes(env.routing_key), 1, 0, &p, str_bytes(env.body));
        if (rc != AMQP_STATUS_OK) {
            set_end(ao, "publishing: %s", amqp_error_string2(rc));
            return M2A_ERR_AMQP;
        }
    }
    m2a_cwin_sent(ao->cw, slot, ++ao->next_tag);
    M2A_STAT_ADD(ao->stats, published, 1);
    /* A dead letter counts in its route's dead_lettered, not as a publish. */
    slot->ud = env.dead_letter ? NULL : route_ctr(ao, env.route_id);
    slot->sent_us = ao->pass_us;
    M2A_ROUTE_ADD((struct m2a_route_counters *)slot->ud, published, 1);
    return 0;
}

/* Moves the next spool record into a new window slot. NULL when none. */
static struct m2a_cw_slot *read_record(struct m2a_amqp_out *ao, uint64_t now)
{
    if (now < ao->spool_retry_ms)
        return NULL;
    uint64_t seq;
    const void *data;
    size_t len;
    int rc = m2a_spool_read(ao->spool, &seq, &data, &len);
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
    struct m2a_cw_slot *slot = m2a_cwin_push(ao->cw, seq);
    m2a_buf_append(&slot->rec, data, len);
    if (seq < ao->trusted_from_seq)
        resolve_route(ao, slot);
    check_age(ao, slot);
    return slot;
}

static bool socket_writable(struct m2a_amqp_out *ao)
{
    struct pollfd p = {.fd = amqp_get_sockfd(ao->conn), .events = POLLOUT};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLOUT);
}

/* Writes the frames encoded so far. A peer that takes nothing for two
 * heartbeat intervals (SEND_STALL_MS without heartbeats) is gone. */
static int flush_frames(struct m2a_amqp_out *ao)
{
    if (ao->frames.len == 0)
        return 0;
    int stall_ms = ao->heartbeat_s > 0 ? ao->heartbeat_s * 2000 : SEND_STALL_MS;
    int rc = m2a_amqp_frames_send(amqp_get_sockfd(ao->conn), &ao->frames, stall_ms);
    if (rc == M2A_ERR_TIMEOUT) {
        set_end(ao, "publishing: the broker took no data for %d ms", stall_ms);
        return M2A_ERR_AMQP;
    }
    if (rc != 0) {
        set_end(ao, "publishing: %s", strerror(errno));
        return M2A_ERR_AMQP;
    }
    return 0;
}

/* Publishes due retries, re-sends after a reconnect and new spool records
 * while the window has room and the socket takes data. On plain TCP the
 * frames go out in one write per WRITE_CHECK_BYTES, and all are written
 * before this returns. */
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
        struct m2a_cw_slot *slot = m2a_cwin_next_to_send(ao->cw, now, &ao->next_retry_ms);
        if (!slot && !m2a_cwin_full(ao->cw) && !stopping(ao))
            slot = read_record(ao, now);
        if (!slot)
            break;
        if (slot->state == M2A_CW_CONFIRMED)
            continue; /* expired and dropped as it was read */
        if (budget == 0) {
            int rc = flush_frames(ao);
            if (rc)
                return rc;
            if (!socket_writable(ao)) {
                ao->want_write = true;
                return 0;
            }
            budget = WRITE_CHECK_BYTES;
        }
        size_t cost = slot->rec.len + 256;
        budget = cost >= budget ? 0 : budget - cost;
        int rc = publish_slot(ao, slot);
        if (rc)
            return rc;
    }
    return flush_frames(ao);
}

/* The spool's housekeeping belongs to this thread (checkpoint, deleting
 * segments, the MQTT thread's requests for room): every turn, in every
 * state, or the MQTT side waits. */
static void maintain_spool(struct m2a_amqp_out *ao)
{
    int rc = m2a_spool_maintain(ao->spool);
    uint64_t sup;
    if (rc != 0 && m2a_ratelimit_ok(&ao->rl_spool, &sup))
        m2a_error(COMPONENT, "spool housekeeping: %s (%" PRIu64 " similar suppressed)",
                  m2a_strerror(rc), sup);
}

static void commit_confirmed(struct m2a_amqp_out *ao)
{
    uint64_t seq;
    if (!m2a_cwin_pop_confirmed(ao->cw, &seq))
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
/* The session loop                                                    */

static int poll_timeout(struct m2a_amqp_out *ao, uint64_t now)
{
    if (amqp_frames_enqueued(ao->conn) || amqp_data_in_buffer(ao->conn))
        return 0;
    uint64_t t = POLL_MAX_MS;
    if (ao->heartbeat_s > 0 && (uint64_t)ao->heartbeat_s * 500u < t)
        t = (uint64_t)ao->heartbeat_s * 500u;
    if (!ao->blocked && ao->next_retry_ms != UINT64_MAX)
        t = ao->next_retry_ms <= now ? 0
                                     : (ao->next_retry_ms - now < t ? ao->next_retry_ms - now : t);
    if (ao->spool_retry_ms > now && ao->spool_retry_ms - now < t)
        t = ao->spool_retry_ms - now;
    if (stopping(ao)) {
        uint64_t dl = atomic_load(&ao->stop_deadline_ms);
        t = dl <= now ? 0 : (dl - now < t ? dl - now : t);
    }
    return (int)t;
}

static void wait_events(struct m2a_amqp_out *ao)
{
    uint64_t now = m2a_now_ms();
    struct pollfd p[4] = {
        {.fd = amqp_get_sockfd(ao->conn), .events = POLLIN | (ao->want_write ? POLLOUT : 0)},
        {.fd = ao->wake_fd, .events = POLLIN},
        {.fd = m2a_spool_maint_fd(ao->spool), .events = POLLIN}, /* cleared by maintain_spool */
        {.fd = m2a_spool_notify_fd(ao->spool), .events = POLLIN},
    };
    /* Spool news matters only if we would read it now. */
    nfds_t n = (!ao->blocked && !stopping(ao) && !m2a_cwin_full(ao->cw)) ? 4 : 3;
    int rc = poll(p, n, poll_timeout(ao, now));
    if (rc <= 0)
        return; /* timeout or EINTR: the loop re-checks everything */
    if (p[0].revents & (POLLIN | POLLHUP | POLLERR))
        ao->last_rx_ms = m2a_now_ms();
    if (p[1].revents & POLLIN) {
        /* Drained, or the stop drain phase would spin; the flag stays set. */
        uint64_t v;
        (void)!read(ao->wake_fd, &v, sizeof(v));
    }
    if (n == 4 && (p[3].revents & POLLIN))
        m2a_spool_notify_clear(ao->spool);
}

static int adopt_offer(struct m2a_amqp_out *ao, bool connected);

/* Runs one connected session. Returns how it ended. */
static int session(struct m2a_amqp_out *ao)
{
    for (;;) {
        int end = read_frames(ao);
        if (end)
            return end;
        if ((end = adopt_offer(ao, true)) != 0)
            return end;
        commit_confirmed(ao);
        maintain_spool(ao);
        if (stopping(ao)) {
            if (m2a_cwin_count(ao->cw) == 0)
                return END_STOPPED;
            if (m2a_now_ms() >= atomic_load(&ao->stop_deadline_ms)) {
                m2a_warn(COMPONENT,
                         "stop deadline reached with %u unconfirmed message(s); "
                         "they stay in the spool",
                         m2a_cwin_count(ao->cw));
                return END_STOPPED;
            }
        }
        if (publish_some(ao) != 0)
            return END_LOST;
        wait_events(ao);
    }
}

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
static int adopt_offer(struct m2a_amqp_out *ao, bool connected)
{
    /* A blocked connection is not read by the broker: an RPC would hang.
     * The offer waits (a newer one may replace it meanwhile). */
    if (!atomic_load_explicit(&ao->gen_offer, memory_order_relaxed) || (connected && ao->blocked))
        return 0;
    struct m2a_generation *g = atomic_exchange(&ao->gen_offer, NULL);
    if (!g)
        return 0;
    const struct m2a_conf_amqp *topo = m2a_generation_topology(g);
    int rc = connected ? declare_topology(ao, topo) : 0;
    if (rc != 0) {
        m2a_error(COMPONENT,
                  "reload: the broker refused the topology of generation %" PRIu64
                  ": %s; keeping generation %" PRIu64,
                  m2a_generation_number(g), ao->end_reason, m2a_generation_number(ao->gen));
        answer(ao, g, M2A_ERR_AMQP, ao->end_reason);
        m2a_generation_unref(g);
        return rc == M2A_ERR_AMQP ? END_CHANNEL : END_LOST;
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

/* Sleeps ms, or less if stop() is called; takes an offered generation
 * meanwhile, and keeps up the spool's housekeeping. A wake-up only
 * interrupts the wait: what it was for (stop, an offer) is in the flags
 * checked each time round, so the eventfd is always drained. Leaving it readable because the offer
 * it announced had already been taken elsewhere (by the session loop, just before the session
 * ended) made every poll return at once: a spin for the whole delay. */
static void sleep_interruptible(struct m2a_amqp_out *ao, uint32_t ms)
{
    struct pollfd p[2] = {{.fd = ao->wake_fd, .events = POLLIN},
                          {.fd = m2a_spool_maint_fd(ao->spool), .events = POLLIN}};
    uint64_t until = m2a_now_ms() + ms;
    while (!stopping(ao)) {
        adopt_offer(ao, false);
        maintain_spool(ao);
        uint64_t now = m2a_now_ms();
        if (now >= until)
            return;
        uint64_t t = until - now < POLL_MAX_MS ? until - now : POLL_MAX_MS;
        if (poll(p, 2, (int)t) > 0 && (p[0].revents & POLLIN)) {
            uint64_t v;
            (void)!read(ao->wake_fd, &v, sizeof(v));
        }
    }
}

static void *thread_main(void *arg)
{
    struct m2a_amqp_out *ao = arg;
    const struct m2a_conf_amqp *c = ao->conf;
    while (!stopping(ao)) {
        ao->end_reason[0] = '\0';
        ao->progress = false;
        ao->refused = false;
        adopt_offer(ao, false);
        maintain_spool(ao); /* not served while connect_broker blocks: see spool.h */
        int rc = connect_broker(ao);
        if (rc != 0) {
            /* A channel-level failure (topology) leaves the connection usable. */
            bool polite = rc == M2A_ERR_AMQP;
            teardown(ao, polite, false);
            if (stopping(ao)) {
                m2a_info(COMPONENT, "%s:%d: %s; stopping", c->host, c->port, ao->end_reason);
                break;
            }
            uint32_t delay = m2a_backoff_next(&ao->backoff);
            /* Refusals (credentials, vhost, topology) need an operator: error. */
            M2A_LOG(ao->refused ? M2A_LOG_ERROR : M2A_LOG_WARN, COMPONENT,
                    "%s:%d: %s; retrying in %u ms", c->host, c->port, ao->end_reason, delay);
            sleep_interruptible(ao, delay);
            continue;
        }
        if (ao->nconnects++ > 0)
            M2A_STAT_ADD(ao->stats, amqp_reconnects, 1);
        M2A_STAT_SET(ao->stats, amqp_connected, true);
        ao->connected_ms = ao->last_rx_ms = m2a_now_ms();
        m2a_info(COMPONENT,
                 "connected to %s:%d vhost '%s' as '%s' (heartbeat %d s, confirm window %d, "
                 "%u to re-publish)",
                 c->host, c->port, c->vhost, c->username, ao->heartbeat_s, c->confirm_window,
                 m2a_cwin_count(ao->cw));

        int end = session(ao);
        if (end == END_STOPPED) {
            teardown(ao, true, true);
            m2a_info(COMPONENT, "disconnected from %s:%d: stopping", c->host, c->port);
            break;
        }
        bool stable = ao->progress || m2a_now_ms() - ao->connected_ms >= STABLE_SESSION_MS;
        teardown(ao, end == END_CHANNEL, false);
        if (stable)
            m2a_backoff_reset(&ao->backoff);
        uint32_t delay = m2a_backoff_next(&ao->backoff);
        m2a_warn(COMPONENT,
                 "disconnected from %s:%d: %s; %u unconfirmed message(s) will be "
                 "re-published; reconnecting in %u ms",
                 c->host, c->port, ao->end_reason, m2a_cwin_count(ao->cw), delay);
        sleep_interruptible(ao, delay);
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
    if (o && o->conf && o->generation && o->spool && o->stats)
        return 0;
    snprintf(err, errlen, "missing configuration, generation, spool or stats");
    return M2A_ERR_ARG;
}

int m2a_amqp_out_start(const struct m2a_amqp_out_opts *opts, struct m2a_amqp_out **out, char *err,
                       size_t errlen)
{
    int rc = validate(opts, err, errlen);
    if (rc)
        return rc;
    struct m2a_amqp_out *ao = xcalloc(1, sizeof(*ao));
    ao->conf = opts->conf;
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
    ao->cw = m2a_cwin_new((uint32_t)opts->conf->confirm_window);
    m2a_cwin_on_confirm(ao->cw, on_confirmed, ao);
    m2a_backoff_init(&ao->backoff, (uint32_t)opts->conf->reconnect_min_ms,
                     (uint32_t)opts->conf->reconnect_max_ms);
    m2a_backoff_init(&ao->nack_backoff, (uint32_t)opts->conf->reconnect_min_ms,
                     (uint32_t)opts->conf->reconnect_max_ms);
    ao->next_retry_ms = UINT64_MAX;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&ao->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&ao->mu, NULL);
    ao->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ao->wake_fd < 0) {
        snprintf(err, errlen, "eventfd: %s", strerror(errno));
        rc = M2A_ERR_IO;
        goto fail;
    }
    /* Signals belong to the main thread: the new thread starts with all blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int prc = pthread_create(&ao->thread, NULL, thread_main, ao);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (prc != 0) {
        snprintf(err, errlen, "cannot start the AMQP thread: %s", strerror(prc));
        rc = M2A_ERR_IO;
        goto fail;
    }
    *out = ao;
    return 0;
fail:
    if (ao->wake_fd >= 0)
        close(ao->wake_fd);
    pthread_mutex_destroy(&ao->mu);
    pthread_cond_destroy(&ao->cv);
    m2a_cwin_free(ao->cw);
    m2a_policy_free(ao->policy);
    m2a_generation_unref(ao->gen);
    free(ao);
    return rc;
}

bool m2a_amqp_out_offer(struct m2a_amqp_out *ao, struct m2a_generation *gen)
{
    struct m2a_generation *old = atomic_exchange(&ao->gen_offer, m2a_generation_ref(gen));
    m2a_generation_unref(old);
    uint64_t one = 1;
    (void)!write(ao->wake_fd, &one, sizeof(one));
    return old != NULL;
}

void m2a_amqp_out_stop(struct m2a_amqp_out *ao, int timeout_ms)
{
    if (!ao)
        return;
    if (timeout_ms < 0)
        timeout_ms = 0;
    uint64_t deadline = m2a_now_ms() + (uint64_t)timeout_ms;
    atomic_store(&ao->stop_deadline_ms, deadline);
    atomic_store_explicit(&ao->stopping, 1, memory_order_release);
    uint64_t one = 1;
    (void)!write(ao->wake_fd, &one, sizeof(one));

    /* The thread honours the deadline itself; if a library call is stuck
     * (socket full, broker silent) past it, shutting the socket down makes
     * that call fail. */
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

    close(ao->wake_fd);
    pthread_mutex_destroy(&ao->mu);
    pthread_cond_destroy(&ao->cv);
    m2a_cwin_free(ao->cw);
    m2a_policy_free(ao->policy);
    m2a_generation_unref(atomic_exchange(&ao->gen_offer, NULL));
    m2a_generation_unref(ao->gen);
    free(ao->nacked);
    m2a_buf_free(&ao->dl_buf);
    m2a_buf_free(&ao->frames);
    free(ao->hdrs);
    free(ao->entries);
    free(ao);
}
