/* amqp_conn.c - the rabbitmq-c adapter: one AMQP connection with one
 * channel, opened to one node, every wait bounded by the caller's deadline,
 * and the state machine of the frames the broker sends (see amqp_conn.h).
 *
 * Threads: a connection, its rabbitmq-c state, its socket and its TLS
 * session belong to the thread that created it; nothing here is shared.
 *
 * Deadlines: rabbitmq-c bounds the TCP/TLS connect by a timeval, the login
 * by its handshake timeout and each RPC by its RPC timeout; before each of
 * them the timeout is set to what is left until the caller's deadline (and
 * to at most this step's own limit), so no step outlives it. Sends the
 * library makes on its own (a heartbeat, a close-ok) wait for the socket
 * without a deadline inside rabbitmq-c; they are a few bytes, and the
 * owner keeps a last resort for a peer that reads nothing (amqp_out.c
 * shuts the socket down past its stop deadline).
 *
 * TLS: rabbitmq-c keeps the OpenSSL session to itself, but our publishes
 * must go through it too (amqp_frames.h). The session is created by
 * rabbitmq-c from the context we set up (tls.c), so an info callback on
 * that context learns it when the handshake completes. */
#include "mqtt2amqp/amqp_conn.h"

#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <openssl/ssl.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/tls.h"
#include "mqtt2amqp/util.h"

#define CONNECT_LIMIT_MS   5000       /* TCP connect and TLS handshake; then the AMQP handshake */
#define RPC_LIMIT_MS       10000      /* each declare, channel.open, confirm.select, qos, consume */
#define BODY_KEEP_BYTES    (1u << 20) /* a delivery buffer above this is freed after use */
#define CONNECTION_NAMELEN 128
#define IDLE_READ_MS       100 /* m2a_amqp_conn_read asks rabbitmq-c at least this often */

/* Where the frames of a message with content stand: its content header and
 * body frames follow the method on the channel. */
enum content_state {
    CONTENT_NONE,
    CONTENT_RETURN_HEADER,  /* basic.return: the header (naming the message) is next */
    CONTENT_RETURN_BODY,    /* skipped: the publisher keeps its own copy */
    CONTENT_DELIVER_HEADER, /* basic.deliver: the header (size, properties) is next */
    CONTENT_DELIVER_BODY,   /* gathered into body */
};

struct m2a_amqp_conn {
    const struct m2a_conf_amqp *conf;
    char name[CONNECTION_NAMELEN];

    amqp_connection_state_t st;
    /* The wire: the socket, and over TLS the session once the handshake
     * completed (owned by rabbitmq-c); heartbeat, frame_max, channel. */
    struct m2a_amqp_conn_params p;
    bool channel_open;
    uint64_t last_rx_ms;        /* the broker last sent something */
    uint64_t last_keepalive_ms; /* m2a_amqp_conn_keepalive last sent a heartbeat */
    /* The owner's wait saw the socket readable since the last read; and
     * when rabbitmq-c was last asked for frames (it sends due heartbeats
     * then). */
    bool input_pending;
    uint64_t last_read_ms;

    /* A message with content being received. The method (and, for a
     * delivery, the properties) live in rabbitmq-c's channel pool, which is
     * not released until the message is complete. */
    enum content_state content;
    const amqp_basic_return_t *ret;
    const amqp_basic_deliver_t *del;
    const amqp_basic_properties_t *del_props;
    uint64_t body_left;
    struct m2a_buf body;

    char why[640];
    bool refused;
};

static void set_why(struct m2a_amqp_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void set_why(struct m2a_amqp_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->why, sizeof(c->why), fmt, ap);
    va_end(ap);
}

/* What is left of deadline_ms, at most limit_ms, as a timeval. */
static struct timeval until(uint64_t deadline_ms, uint64_t limit_ms)
{
    uint64_t now = m2a_now_ms(), ms = deadline_ms > now ? deadline_ms - now : 0;
    if (ms > limit_ms)
        ms = limit_ms;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* Bounds the next RPC by the deadline; false (why set) if it has passed. */
static bool rpc_deadline(struct m2a_amqp_conn *c, uint64_t deadline_ms, uint64_t limit_ms,
                         const char *what)
{
    if (m2a_now_ms() >= deadline_ms) {
        set_why(c, "%s: stop deadline reached", what);
        return false;
    }
    struct timeval tv = until(deadline_ms, limit_ms);
    amqp_set_rpc_timeout(c->st, &tv);
    return true;
}

struct m2a_amqp_conn *m2a_amqp_conn_new(const struct m2a_amqp_conn_opts *opts)
{
    struct m2a_amqp_conn *c = xcalloc(1, sizeof(*c));
    c->conf = opts->conf;
    snprintf(c->name, sizeof(c->name), "%s", opts->name ? opts->name : "mqtt2amqp");
    c->p.channel = opts->channel ? opts->channel : 1;
    c->p.wire.fd = -1;
    return c;
}

void m2a_amqp_conn_free(struct m2a_amqp_conn *c)
{
    if (!c)
        return;
    if (c->st)
        amqp_destroy_connection(c->st);
    m2a_buf_free(&c->body);
    free(c);
}

/* ------------------------------------------------------------------ */
/* Replies                                                             */

/* Checks the reply of the last RPC. On failure sets why to "what: reason"
 * and answers a broker-initiated close. Returns 0, M2A_ERR_AMQP when the
 * broker closed the channel (the connection still works) or M2A_ERR_CLOSED
 * when the connection does not. */
static int check_reply(struct m2a_amqp_conn *c, amqp_rpc_reply_t r, const char *what)
{
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL:
        return 0;
    case AMQP_RESPONSE_NONE:
        set_why(c, "%s: no reply", what);
        return M2A_ERR_CLOSED;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        set_why(c, "%s: %s", what, amqp_error_string2(r.library_error));
        return M2A_ERR_CLOSED;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        break;
    }
    c->refused = true;
    if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        const amqp_channel_close_t *m = r.reply.decoded;
        set_why(c, "%s: channel closed by broker: %u %.*s", what, m->reply_code,
                (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(c->st, c->p.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        c->channel_open = false;
        return M2A_ERR_AMQP;
    }
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        const amqp_connection_close_t *m = r.reply.decoded;
        set_why(c, "%s: connection closed by broker: %u %.*s", what, m->reply_code,
                (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        amqp_connection_close_ok_t ok = {0};
        amqp_send_method(c->st, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    } else {
        set_why(c, "%s: unexpected method 0x%08x from broker", what, (unsigned)r.reply.id);
    }
    return M2A_ERR_CLOSED;
}

/* ------------------------------------------------------------------ */
/* Opening                                                             */

/* OpenSSL calls this on the session rabbitmq-c created from our context:
 * the session our own frames are written through. */
static void tls_info(const SSL *ssl, int where, int ret)
{
    (void)ret;
    struct m2a_amqp_conn *c = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
    if (c && (where & SSL_CB_HANDSHAKE_DONE))
        c->p.wire.ssl = (SSL *)ssl;
}

static int open_socket(struct m2a_amqp_conn *c, const struct m2a_conf_endpoint *node,
                       uint64_t deadline_ms)
{
    const struct m2a_conf_amqp *conf = c->conf;
    amqp_socket_t *sock;
    if (conf->tls.enabled) {
        sock = amqp_ssl_socket_new(c->st);
        if (!sock) {
            set_why(c, "cannot create a TLS socket");
            return M2A_ERR_IO;
        }
        /* tls.c sets the context up: OpenSSL itself checks the name of the
         * node we connect to (IP literals too, which rabbitmq-c's own check
         * does not handle, so that one stays off) and records why it
         * refused a certificate. */
        char why[512];
        SSL_CTX *ctx = amqp_ssl_socket_get_context(sock);
        amqp_ssl_socket_set_verify_peer(sock, 1);
        amqp_ssl_socket_set_verify_hostname(sock, 0);
        if (m2a_tls_ctx_setup(ctx, &conf->tls, node->host, why, sizeof(why)) != 0) {
            set_why(c, "%s", why);
            c->refused = true;
            return M2A_ERR_CONFIG;
        }
        SSL_CTX_set_app_data(ctx, c);
        SSL_CTX_set_info_callback(ctx, tls_info);
    } else {
        sock = amqp_tcp_socket_new(c->st);
        if (!sock) {
            set_why(c, "cannot create a TCP socket");
            return M2A_ERR_IO;
        }
    }
    struct timeval tv = until(deadline_ms, CONNECT_LIMIT_MS);
    m2a_tls_failure_reset();
    int rc = amqp_socket_open_noblock(sock, node->host, node->port, &tv);
    if (rc != AMQP_STATUS_OK) {
        char tls[600];
        if (m2a_tls_failure(tls, sizeof(tls))) {
            set_why(c, "cannot connect: %s", tls);
            c->refused = true; /* needs an operator */
        } else {
            set_why(c, "cannot connect: %s", amqp_error_string2(rc));
        }
        return M2A_ERR_IO;
    }
    c->p.wire.fd = amqp_get_sockfd(c->st);
    if (conf->tls.enabled && !c->p.wire.ssl) {
        set_why(c, "cannot connect: the TLS session was not made from our context");
        return M2A_ERR_IO;
    }
    return 0;
}

/* The client properties: who we are in the management UI, and the
 * capabilities whose methods we handle. */
static int login(struct m2a_amqp_conn *c, uint64_t deadline_ms)
{
    const struct m2a_conf_amqp *conf = c->conf;
    static const char *const cap_names[] = {
        "publisher_confirms",     "connection.blocked",         "basic.nack",
        "consumer_cancel_notify", "exchange_exchange_bindings", "authentication_failure_close"};
    enum { NCAPS = sizeof(cap_names) / sizeof(cap_names[0]) };
    amqp_table_entry_t caps[NCAPS];
    for (size_t i = 0; i < NCAPS; i++) {
        caps[i].key = amqp_cstring_bytes(cap_names[i]);
        caps[i].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        caps[i].value.value.boolean = 1;
    }
    static const char *const names[] = {"product", "version", "platform", "connection_name"};
    const char *values[] = {"mqtt2amqp", M2A_VERSION, "C11 / rabbitmq-c", c->name};
    amqp_table_entry_t props[5];
    for (size_t i = 0; i < 4; i++) {
        props[i].key = amqp_cstring_bytes(names[i]);
        props[i].value.kind = AMQP_FIELD_KIND_UTF8;
        props[i].value.value.bytes = amqp_cstring_bytes(values[i]);
    }
    props[4].key = amqp_cstring_bytes("capabilities");
    props[4].value.kind = AMQP_FIELD_KIND_TABLE;
    props[4].value.value.table.num_entries = NCAPS;
    props[4].value.value.table.entries = caps;
    amqp_table_t client_props = {5, props};

    struct timeval hs = until(deadline_ms, CONNECT_LIMIT_MS);
    amqp_set_handshake_timeout(c->st, &hs);
    amqp_rpc_reply_t r = amqp_login_with_properties(
        c->st, conf->vhost, 0, AMQP_DEFAULT_FRAME_SIZE, conf->heartbeat, &client_props,
        AMQP_SASL_METHOD_PLAIN, conf->username, conf->password);
    return check_reply(c, r, "login");
}

int m2a_amqp_conn_open(struct m2a_amqp_conn *c, const struct m2a_conf_endpoint *node,
                       uint64_t deadline_ms)
{
    c->why[0] = '\0';
    c->refused = false;
    if (c->st) {
        set_why(c, "already opened");
        return M2A_ERR_ARG;
    }
    c->st = amqp_new_connection();
    if (!c->st)
        abort(); /* out of memory: see util.h */
    if (m2a_now_ms() >= deadline_ms) {
        set_why(c, "stop deadline reached");
        return M2A_ERR_TIMEOUT;
    }
    int rc = open_socket(c, node, deadline_ms);
    if (rc == 0)
        rc = login(c, deadline_ms);
    if (rc == 0 && rpc_deadline(c, deadline_ms, RPC_LIMIT_MS, "opening channel")) {
        amqp_channel_open(c->st, c->p.channel);
        rc = check_reply(c, amqp_get_rpc_reply(c->st), "opening channel");
        c->channel_open = rc == 0;
    } else if (rc == 0) {
        rc = M2A_ERR_TIMEOUT;
    }
    if (rc != 0)
        return rc;
    c->p.heartbeat_s = amqp_get_heartbeat(c->st);
    c->p.frame_max = (uint32_t)amqp_get_frame_max(c->st);
    c->last_rx_ms = c->last_keepalive_ms = m2a_now_ms();
    return 0;
}

/* ------------------------------------------------------------------ */
/* RPCs on the channel                                                 */

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

static size_t max_args(const struct m2a_conf_amqp *t)
{
    size_t n = 1;
    for (size_t i = 0; i < t->nexchanges; i++)
        n = t->exchanges[i].nargs > n ? t->exchanges[i].nargs : n;
    for (size_t i = 0; i < t->nqueues; i++) {
        const struct m2a_conf_queue *q = &t->queues[i];
        n = q->nargs > n ? q->nargs : n;
        for (size_t j = 0; j < q->nbindings; j++)
            n = q->bindings[j].nargs > n ? q->bindings[j].nargs : n;
    }
    return n;
}

/* One RPC's reply, bounded beforehand by rpc_deadline. */
static int rpc_done(struct m2a_amqp_conn *c, const char *what)
{
    return check_reply(c, amqp_get_rpc_reply(c->st), what);
}

static int declare_queue(struct m2a_amqp_conn *c, const struct m2a_conf_queue *q,
                         amqp_table_entry_t *entries, uint64_t deadline_ms)
{
    char what[600], line[32];
    snprintf(what, sizeof(what), "declaring queue '%s'%s", q->name,
             at_line(line, sizeof(line), q->mark));
    if (!rpc_deadline(c, deadline_ms, RPC_LIMIT_MS, what))
        return M2A_ERR_CLOSED;
    amqp_queue_declare_ok_t *ok =
        amqp_queue_declare(c->st, c->p.channel, amqp_cstring_bytes(q->name), 0, q->durable,
                           q->exclusive, q->auto_delete, conf_table(q->args, q->nargs, entries));
    int rc = rpc_done(c, what);
    if (rc)
        return rc;
    /* A server-named queue ("") is bound under the name it got. */
    char *qname = xstrndup(ok->queue.bytes, ok->queue.len);
    for (size_t j = 0; j < q->nbindings && rc == 0; j++) {
        const struct m2a_conf_binding *b = &q->bindings[j];
        const char *key = b->routing_key ? b->routing_key : "#";
        snprintf(what, sizeof(what), "binding queue '%s' to exchange '%s' with key '%s'%s", qname,
                 b->exchange, key, at_line(line, sizeof(line), b->mark));
        if (!rpc_deadline(c, deadline_ms, RPC_LIMIT_MS, what)) {
            rc = M2A_ERR_CLOSED;
            break;
        }
        amqp_queue_bind(c->st, c->p.channel, amqp_cstring_bytes(qname),
                        amqp_cstring_bytes(b->exchange), amqp_cstring_bytes(key),
                        conf_table(b->args, b->nargs, entries));
        rc = rpc_done(c, what);
    }
    free(qname);
    return rc;
}

int m2a_amqp_conn_declare(struct m2a_amqp_conn *c, const struct m2a_conf_amqp *topo,
                          uint64_t deadline_ms)
{
    char what[600], line[32];
    int rc = 0;
    amqp_table_entry_t *entries = xcalloc(max_args(topo), sizeof(*entries));
    for (size_t i = 0; i < topo->nexchanges && rc == 0; i++) {
        const struct m2a_conf_exchange *x = &topo->exchanges[i];
        snprintf(what, sizeof(what), "declaring exchange '%s'%s", x->name,
                 at_line(line, sizeof(line), x->mark));
        if (!rpc_deadline(c, deadline_ms, RPC_LIMIT_MS, what)) {
            rc = M2A_ERR_CLOSED;
            break;
        }
        amqp_exchange_declare(c->st, c->p.channel, amqp_cstring_bytes(x->name),
                              amqp_cstring_bytes(x->type ? x->type : "topic"), 0, x->durable,
                              x->auto_delete, x->internal, conf_table(x->args, x->nargs, entries));
        rc = rpc_done(c, what);
    }
    for (size_t i = 0; i < topo->nqueues && rc == 0; i++)
        rc = declare_queue(c, &topo->queues[i], entries, deadline_ms);
    free(entries);
    return rc;
}

int m2a_amqp_conn_confirm_select(struct m2a_amqp_conn *c, uint64_t deadline_ms)
{
    if (!rpc_deadline(c, deadline_ms, RPC_LIMIT_MS, "confirm.select"))
        return M2A_ERR_CLOSED;
    amqp_confirm_select(c->st, c->p.channel);
    return rpc_done(c, "confirm.select");
}

int m2a_amqp_conn_consume(struct m2a_amqp_conn *c, const char *queue, uint16_t prefetch, char *tag,
                          size_t tag_len, uint64_t deadline_ms)
{
    if (!rpc_deadline(c, deadline_ms, RPC_LIMIT_MS, "basic.qos"))
        return M2A_ERR_CLOSED;
    amqp_basic_qos(c->st, c->p.channel, 0, prefetch, 0);
    int rc = rpc_done(c, "basic.qos");
    char what[300];
    snprintf(what, sizeof(what), "consuming queue '%s'", queue);
    if (rc == 0 && !rpc_deadline(c, deadline_ms, RPC_LIMIT_MS, what))
        rc = M2A_ERR_CLOSED;
    if (rc)
        return rc;
    amqp_basic_consume_ok_t *ok = amqp_basic_consume(c->st, c->p.channel, amqp_cstring_bytes(queue),
                                                     amqp_empty_bytes, 0, 0, 0, amqp_empty_table);
    if ((rc = rpc_done(c, what)) != 0)
        return rc;
    if (tag && tag_len)
        snprintf(tag, tag_len, "%.*s", (int)ok->consumer_tag.len,
                 (const char *)ok->consumer_tag.bytes);
    return 0;
}

int m2a_amqp_conn_settle(struct m2a_amqp_conn *c, uint64_t delivery_tag,
                         enum m2a_amqp_conn_settlement how)
{
    bool ack = how == M2A_AMQP_CONN_ACK || how == M2A_AMQP_CONN_ACK_MULTIPLE;
    int rc =
        ack ? amqp_basic_ack(c->st, c->p.channel, delivery_tag, how == M2A_AMQP_CONN_ACK_MULTIPLE)
            : amqp_basic_reject(c->st, c->p.channel, delivery_tag, how == M2A_AMQP_CONN_REQUEUE);
    if (rc == AMQP_STATUS_OK)
        return 0;
    set_why(c, "%s: %s", ack ? "basic.ack" : "basic.reject", amqp_error_string2(rc));
    return M2A_ERR_IO;
}

/* ------------------------------------------------------------------ */
/* Frames from the broker                                              */

static void on_deliver_done(struct m2a_amqp_conn *c, const struct m2a_amqp_conn_events *ev,
                            void *ud)
{
    c->content = CONTENT_NONE;
    if (ev->deliver) {
        struct m2a_amqp_conn_delivery d = {.delivery_tag = c->del->delivery_tag,
                                           .redelivered = c->del->redelivered,
                                           .consumer_tag = c->del->consumer_tag,
                                           .exchange = c->del->exchange,
                                           .routing_key = c->del->routing_key,
                                           .props = c->del_props,
                                           .body = {c->body.len, c->body.data}};
        ev->deliver(ud, &d);
    }
    if (c->body.cap > BODY_KEEP_BYTES)
        m2a_buf_free(&c->body);
    m2a_buf_reset(&c->body);
}

/* A content header or body frame on our channel. */
static void on_content(struct m2a_amqp_conn *c, const amqp_frame_t *f,
                       const struct m2a_amqp_conn_events *ev, void *ud)
{
    if (f->frame_type == AMQP_FRAME_HEADER) {
        const amqp_basic_properties_t *p = f->payload.properties.decoded;
        c->body_left = f->payload.properties.body_size;
        if (c->content == CONTENT_RETURN_HEADER) {
            struct m2a_amqp_conn_return r = {.reply_code = c->ret->reply_code,
                                             .reply_text = c->ret->reply_text,
                                             .exchange = c->ret->exchange,
                                             .routing_key = c->ret->routing_key,
                                             .props = p};
            c->content = c->body_left ? CONTENT_RETURN_BODY : CONTENT_NONE;
            if (ev->returned)
                ev->returned(ud, &r);
        } else if (c->content == CONTENT_DELIVER_HEADER) {
            c->del_props = p;
            m2a_buf_reset(&c->body);
            c->content = CONTENT_DELIVER_BODY;
            if (c->body_left == 0)
                on_deliver_done(c, ev, ud);
        }
        return;
    }
    if (f->frame_type != AMQP_FRAME_BODY)
        return;
    size_t n = f->payload.body_fragment.len;
    if (c->content == CONTENT_DELIVER_BODY && n <= c->body_left)
        m2a_buf_append(&c->body, f->payload.body_fragment.bytes, n);
    if (c->content == CONTENT_RETURN_BODY || c->content == CONTENT_DELIVER_BODY) {
        c->body_left = n >= c->body_left ? 0 : c->body_left - n;
        if (c->body_left == 0 && c->content == CONTENT_DELIVER_BODY)
            on_deliver_done(c, ev, ud);
        else if (c->body_left == 0)
            c->content = CONTENT_NONE;
    }
}

static enum m2a_amqp_conn_state on_close(struct m2a_amqp_conn *c, const amqp_method_t *m)
{
    if (m->id == AMQP_CHANNEL_CLOSE_METHOD) {
        const amqp_channel_close_t *cc = m->decoded;
        set_why(c, "channel closed by broker: %u %.*s (class %u, method %u)", cc->reply_code,
                (int)cc->reply_text.len, (const char *)cc->reply_text.bytes, cc->class_id,
                cc->method_id);
        amqp_channel_close_ok_t ok = {0};
        amqp_send_method(c->st, c->p.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        c->channel_open = false;
        return M2A_AMQP_CONN_CHANNEL;
    }
    const amqp_connection_close_t *cc = m->decoded;
    set_why(c, "connection closed by broker: %u %.*s", cc->reply_code, (int)cc->reply_text.len,
            (const char *)cc->reply_text.bytes);
    amqp_connection_close_ok_t ok = {0};
    amqp_send_method(c->st, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
    return M2A_AMQP_CONN_CLOSED;
}

static enum m2a_amqp_conn_state on_method(struct m2a_amqp_conn *c, const amqp_method_t *m,
                                          const struct m2a_amqp_conn_events *ev, void *ud)
{
    switch (m->id) {
    case AMQP_BASIC_ACK_METHOD: {
        const amqp_basic_ack_t *a = m->decoded;
        if (ev->ack)
            ev->ack(ud, a->delivery_tag, a->multiple);
        break;
    }
    case AMQP_BASIC_NACK_METHOD: {
        const amqp_basic_nack_t *a = m->decoded;
        if (ev->nack)
            ev->nack(ud, a->delivery_tag, a->multiple);
        break;
    }
    case AMQP_BASIC_RETURN_METHOD:
        c->ret = m->decoded;
        c->content = CONTENT_RETURN_HEADER;
        break;
    case AMQP_BASIC_DELIVER_METHOD:
        c->del = m->decoded;
        c->content = CONTENT_DELIVER_HEADER;
        break;
    case AMQP_BASIC_CANCEL_METHOD: {
        const amqp_basic_cancel_t *cn = m->decoded;
        if (!cn->nowait) {
            amqp_basic_cancel_ok_t ok = {.consumer_tag = cn->consumer_tag};
            amqp_send_method(c->st, c->p.channel, AMQP_BASIC_CANCEL_OK_METHOD, &ok);
        }
        if (ev->cancelled)
            ev->cancelled(ud, cn->consumer_tag);
        break;
    }
    case AMQP_CONNECTION_BLOCKED_METHOD: {
        const amqp_connection_blocked_t *b = m->decoded;
        if (ev->blocked)
            ev->blocked(ud, true, b->reason);
        break;
    }
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
        if (ev->blocked)
            ev->blocked(ud, false, amqp_empty_bytes);
        break;
    case AMQP_CHANNEL_CLOSE_METHOD:
    case AMQP_CONNECTION_CLOSE_METHOD:
        return on_close(c, m);
    default:
        break; /* nothing else is ours to answer */
    }
    return M2A_AMQP_CONN_OK;
}

enum m2a_amqp_conn_state m2a_amqp_conn_read(struct m2a_amqp_conn *c,
                                            const struct m2a_amqp_conn_events *ev, void *ud)
{
    struct timeval zero = {0, 0};
    uint64_t now = m2a_now_ms();
    bool buffered = m2a_amqp_conn_buffered(c);
    if (buffered)
        c->last_rx_ms = now;
    /* Asking rabbitmq-c for a frame with nothing buffered costs a recv()
     * and a poll() that find nothing: only when the socket said it has
     * input, or now and then for the heartbeats rabbitmq-c sends from
     * there. After the first frame, only while frames are buffered: the
     * socket's next input shows in the owner's next wait. */
    bool first = c->input_pending || buffered || now - c->last_read_ms >= IDLE_READ_MS;
    c->input_pending = false;
    if (first)
        c->last_read_ms = now;
    for (bool go = first; go; go = m2a_amqp_conn_buffered(c)) {
        if (ev->may_deliver && c->content == CONTENT_NONE && !ev->may_deliver(ud))
            break;
        amqp_frame_t f;
        int rc = amqp_simple_wait_frame_noblock(c->st, &f, &zero);
        if (rc == AMQP_STATUS_TIMEOUT)
            break;
        if (rc != AMQP_STATUS_OK) {
            set_why(c, "reading from broker: %s", amqp_error_string2(rc));
            return M2A_AMQP_CONN_LOST;
        }
        c->last_rx_ms = now; /* a read takes no time to speak of: one clock read per call */
        enum m2a_amqp_conn_state s = M2A_AMQP_CONN_OK;
        if (f.frame_type == AMQP_FRAME_METHOD)
            s = on_method(c, &f.payload.method, ev, ud);
        else if (f.channel == c->p.channel)
            on_content(c, &f, ev, ud);
        if (s != M2A_AMQP_CONN_OK)
            return s;
    }
    /* Decoded frames live in the channel pools until released; a message
     * half received still points into them. */
    if (c->content == CONTENT_NONE && !amqp_frames_enqueued(c->st))
        amqp_maybe_release_buffers(c->st);
    int hb = c->p.heartbeat_s;
    if (hb > 0 && now > c->last_rx_ms && now - c->last_rx_ms > 2000u * (uint64_t)hb) {
        set_why(c, "heartbeat timeout: nothing from the broker for %d s", 2 * hb);
        return M2A_AMQP_CONN_LOST;
    }
    return M2A_AMQP_CONN_OK;
}

void m2a_amqp_conn_input_seen(struct m2a_amqp_conn *c)
{
    c->last_rx_ms = m2a_now_ms();
    c->input_pending = true;
}

bool m2a_amqp_conn_buffered(struct m2a_amqp_conn *c)
{
    return c->st && (amqp_frames_enqueued(c->st) || amqp_data_in_buffer(c->st));
}

int m2a_amqp_conn_keepalive(struct m2a_amqp_conn *c)
{
    int hb = c->p.heartbeat_s;
    uint64_t now = m2a_now_ms();
    if (!c->st || hb <= 0 || now - c->last_keepalive_ms < 500u * (uint64_t)hb)
        return 0;
    c->last_keepalive_ms = now;
    amqp_frame_t f = {.frame_type = AMQP_FRAME_HEARTBEAT, .channel = 0};
    int rc = amqp_send_frame(c->st, &f);
    if (rc != AMQP_STATUS_OK) {
        set_why(c, "sending a heartbeat: %s", amqp_error_string2(rc));
        return M2A_ERR_IO;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Closing and the rest                                                */

void m2a_amqp_conn_close(struct m2a_amqp_conn *c, bool close_channel, uint64_t deadline_ms)
{
    if (!c->st || c->p.wire.fd < 0)
        return;
    amqp_rpc_reply_t r = {.reply_type = AMQP_RESPONSE_NORMAL};
    if (close_channel && c->channel_open && rpc_deadline(c, deadline_ms, UINT64_MAX, "close"))
        r = amqp_channel_close(c->st, c->p.channel, AMQP_REPLY_SUCCESS);
    c->channel_open = false;
    if (r.reply_type == AMQP_RESPONSE_NORMAL && rpc_deadline(c, deadline_ms, UINT64_MAX, "close"))
        amqp_connection_close(c->st, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(c->st);
    c->st = NULL;
    c->p.wire.ssl = NULL;
    c->p.wire.fd = -1;
}

const struct m2a_amqp_conn_params *m2a_amqp_conn_params(const struct m2a_amqp_conn *c)
{
    return &c->p;
}

const char *m2a_amqp_conn_why(const struct m2a_amqp_conn *c)
{
    return c->why;
}

bool m2a_amqp_conn_refused(const struct m2a_amqp_conn *c)
{
    return c->refused;
}
