/* test_properties.c - MQTT 5 properties through the real bridge, both ways, and
 * request/reply end to end (issue 11 items 3 and 4), against real
 * RabbitMQ (the fixture) and a real Mosquitto:
 *  - uplink: an MQTT 5 publisher sets every property; the AMQP consumer
 *    sees them mapped (expiration with the time left, correlation_id or
 *    x-correlation-id, content_type, x-reply-to-topic, user properties
 *    sorted and unique); a huge expiry is clamped and does not cost the
 *    channel;
 *  - downlink: an AMQP publisher sets each property; an MQTT 5 subscriber
 *    sees them as MQTT 5 properties;
 *  - request/reply: a device publishes requests with a response topic and
 *    correlation data; a worker (rabbitmq-c, here) answers each to the
 *    `replies` exchange with routing key = x-reply-to-topic and the same
 *    correlation_id; a downlink delivers the replies to the device's
 *    response topic with its correlation data. Counted by sequence number.
 * The MQTT 5 clients are libmosquitto, threaded (loop_start); what they
 * receive is kept under a mutex. */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "harness.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

/* ---- an MQTT 5 client ------------------------------------------------------------------ */

struct rx {
    char *topic;
    long seq;    /* from "seq=<n>" in the body, -1 if none */
    char *props; /* rendered: ct=..|corr=..|rt=..|exp=..|up:k=v (in arrival order) */
    char *corr;  /* correlation data as a string, NULL if none */
};

struct m5 {
    struct mosquitto *m;
    pthread_mutex_t mu;
    bool connected, subscribed;
    long acked;
    struct rx *v;
    size_t n, cap;
};

static void on_connect(struct mosquitto *m, void *ud, int rc, int flags,
                       const mosquitto_property *p)
{
    (void)m, (void)flags, (void)p;
    struct m5 *c = ud;
    pthread_mutex_lock(&c->mu);
    c->connected = rc == 0;
    pthread_mutex_unlock(&c->mu);
}

static void on_subscribe(struct mosquitto *m, void *ud, int mid, int n, const int *q,
                         const mosquitto_property *p)
{
    (void)m, (void)mid, (void)n, (void)q, (void)p;
    struct m5 *c = ud;
    pthread_mutex_lock(&c->mu);
    c->subscribed = true;
    pthread_mutex_unlock(&c->mu);
}

static void on_publish(struct mosquitto *m, void *ud, int mid, int reason,
                       const mosquitto_property *p)
{
    (void)m, (void)mid, (void)p;
    struct m5 *c = ud;
    pthread_mutex_lock(&c->mu);
    if (reason < 0x80)
        c->acked++;
    pthread_mutex_unlock(&c->mu);
}

static void render(const mosquitto_property *l, struct m2a_buf *o, char **corr)
{
    const char *sep = "";
    for (const mosquitto_property *q = l; q; q = mosquitto_property_next(q)) {
        int id = mosquitto_property_identifier(q);
        char *s = NULL, *v = NULL, t[32];
        void *bin = NULL;
        uint16_t blen = 0;
        uint32_t u = 0;
        switch (id) {
        case MQTT_PROP_CONTENT_TYPE:
            mosquitto_property_read_string(q, id, &s, false);
            m2a_buf_append_str(o, sep), m2a_buf_append_str(o, "ct="), m2a_buf_append_str(o, s);
            break;
        case MQTT_PROP_RESPONSE_TOPIC:
            mosquitto_property_read_string(q, id, &s, false);
            m2a_buf_append_str(o, sep), m2a_buf_append_str(o, "rt="), m2a_buf_append_str(o, s);
            break;
        case MQTT_PROP_CORRELATION_DATA:
            mosquitto_property_read_binary(q, id, &bin, &blen, false);
            m2a_buf_append_str(o, sep), m2a_buf_append_str(o, "corr=");
            m2a_buf_append(o, bin, blen);
            free(*corr);
            *corr = xmalloc((size_t)blen + 1);
            memcpy(*corr, bin, blen);
            (*corr)[blen] = '\0';
            break;
        case MQTT_PROP_MESSAGE_EXPIRY_INTERVAL:
            mosquitto_property_read_int32(q, id, &u, false);
            snprintf(t, sizeof(t), "exp=%" PRIu32, u);
            m2a_buf_append_str(o, sep), m2a_buf_append_str(o, t);
            break;
        case MQTT_PROP_USER_PROPERTY:
            mosquitto_property_read_string_pair(q, id, &s, &v, false);
            m2a_buf_append_str(o, sep), m2a_buf_append_str(o, "up:"), m2a_buf_append_str(o, s);
            m2a_buf_append_char(o, '='), m2a_buf_append_str(o, v);
            break;
        default:
            continue; /* e.g. the subscription identifier: not ours */
        }
        sep = "|";
        free(s);
        free(v);
        free(bin);
    }
    m2a_buf_cstr(o);
}

static void on_message(struct mosquitto *m, void *ud, const struct mosquitto_message *msg,
                       const mosquitto_property *p)
{
    (void)m;
    struct m5 *c = ud;
    struct rx r = {.topic = xstrdup(msg->topic), .seq = -1};
    char body[64];
    size_t n = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
    if (n < sizeof(body)) {
        memcpy(body, msg->payload, n);
        body[n] = '\0';
        if (strncmp(body, "seq=", 4) == 0)
            r.seq = strtol(body + 4, NULL, 10);
    }
    struct m2a_buf o = {0};
    render(p, &o, &r.corr);
    r.props = xstrdup(o.len ? (const char *)o.data : "");
    m2a_buf_free(&o);
    pthread_mutex_lock(&c->mu);
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->v = xrealloc(c->v, c->cap * sizeof(*c->v));
    }
    c->v[c->n++] = r;
    pthread_mutex_unlock(&c->mu);
}

static bool m5_flag(struct m5 *c, const bool *flag)
{
    pthread_mutex_lock(&c->mu);
    bool v = *flag;
    pthread_mutex_unlock(&c->mu);
    return v;
}

static bool is_connected(void *arg)
{
    struct m5 *c = arg;
    return m5_flag(c, &c->connected);
}

static bool is_subscribed(void *arg)
{
    struct m5 *c = arg;
    return m5_flag(c, &c->subscribed);
}

/* A clean MQTT 5 session as id; subscribed to filter (QoS 1) unless NULL. */
static struct m5 *m5_new(int port, const char *id, const char *filter)
{
    struct m5 *c = xcalloc(1, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    c->m = mosquitto_new(id, true, c);
    ck_assert_ptr_nonnull(c->m);
    mosquitto_int_option(c->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_connect_v5_callback_set(c->m, on_connect);
    mosquitto_subscribe_v5_callback_set(c->m, on_subscribe);
    mosquitto_publish_v5_callback_set(c->m, on_publish);
    mosquitto_message_v5_callback_set(c->m, on_message);
    ck_assert_int_eq(mosquitto_connect(c->m, "127.0.0.1", port, 30), MOSQ_ERR_SUCCESS);
    ck_assert_int_eq(mosquitto_loop_start(c->m), MOSQ_ERR_SUCCESS);
    ck_assert_int_eq(th_poll_until(is_connected, c, 10000), 0);
    if (filter) {
        ck_assert_int_eq(mosquitto_subscribe_v5(c->m, NULL, filter, 1, 0, NULL), MOSQ_ERR_SUCCESS);
        ck_assert_int_eq(th_poll_until(is_subscribed, c, 10000), 0);
    }
    return c;
}

static void m5_free(struct m5 *c)
{
    if (!c)
        return;
    mosquitto_disconnect(c->m);
    mosquitto_loop_stop(c->m, false);
    mosquitto_destroy(c->m);
    for (size_t i = 0; i < c->n; i++) {
        free(c->v[i].topic);
        free(c->v[i].props);
        free(c->v[i].corr);
    }
    free(c->v);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

struct wait_n {
    struct m5 *c;
    size_t n;
    bool acks; /* PUBACKs rather than messages */
};

static bool has_n(void *arg)
{
    struct wait_n *w = arg;
    pthread_mutex_lock(&w->c->mu);
    size_t have = w->acks ? (size_t)w->c->acked : w->c->n;
    pthread_mutex_unlock(&w->c->mu);
    return have >= w->n;
}

static int m5_wait(struct m5 *c, size_t n, bool acks, int timeout_ms)
{
    struct wait_n w = {c, n, acks};
    return th_poll_until(has_n, &w, timeout_ms);
}

static void m5_publish(struct m5 *c, const char *topic, long seq, mosquitto_property *props)
{
    char body[32];
    int n = snprintf(body, sizeof(body), "seq=%ld", seq);
    ck_assert_int_eq(mosquitto_publish_v5(c->m, NULL, topic, n, body, 1, false, props),
                     MOSQ_ERR_SUCCESS);
}

/* ---- an AMQP publisher with every property (rabbitmq-c) ---------------------------------- */

static amqp_connection_state_t amqp_open(void)
{
    amqp_connection_state_t a = amqp_new_connection();
    amqp_socket_t *s = amqp_tcp_socket_new(a);
    ck_assert_ptr_nonnull(s);
    ck_assert_int_eq(amqp_socket_open(s, "127.0.0.1", th_rabbit_port()), 0);
    amqp_rpc_reply_t r = amqp_login(a, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
    ck_assert_int_eq(r.reply_type, AMQP_RESPONSE_NORMAL);
    amqp_channel_open(a, 1);
    ck_assert_int_eq(amqp_get_rpc_reply(a).reply_type, AMQP_RESPONSE_NORMAL);
    return a;
}

/* A synchronous round trip after publishes: the channel handles its frames
 * in order, so they are routed once it returns. */
static void amqp_barrier(amqp_connection_state_t a)
{
    amqp_basic_qos(a, 1, 0, 0, 0);
    ck_assert_int_eq(amqp_get_rpc_reply(a).reply_type, AMQP_RESPONSE_NORMAL);
}

static void amqp_close(amqp_connection_state_t a)
{
    amqp_channel_close(a, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(a, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(a);
}

static void amqp_pub(amqp_connection_state_t a, const char *exchange, const char *key, long seq,
                     const amqp_basic_properties_t *p)
{
    char body[32];
    snprintf(body, sizeof(body), "seq=%ld", seq);
    ck_assert_int_eq(amqp_basic_publish(a, 1, amqp_cstring_bytes(exchange), amqp_cstring_bytes(key),
                                        0, 0, p, amqp_cstring_bytes(body)),
                     AMQP_STATUS_OK);
}

/* ---- uplink ---------------------------------------------------------------------------- */

static const char *const up_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-props-up, protocol: 5}\n"
    "amqp: {port: ${AMQP_PORT}, topology: {exchanges: [{name: it.props, type: topic}]}}\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - {name: plain, topic: \"props/plain/#\", exchange: it.props}\n"
    "  - {name: typed, topic: \"props/typed/#\", exchange: it.props, content_type: "
    "application/json, headers: {a: route}}\n"
    "log: {level: info, stats_interval: 1}\n";

#define UP_N 20

START_TEST(uplink_properties_reach_the_amqp_consumer)
{
    struct th_mosq *mosq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mosq);
    struct th_amqp *c = th_amqp_consumer(th_rabbit_port(), "it.props", "it.props", "#");
    ck_assert_ptr_nonnull(c);
    struct th_bridge *b = th_bridge_new(mosq);
    ck_assert_int_eq(th_bridge_config(b, up_yaml), 0);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "subscribed", 30000), 0);
    struct m5 *dev = m5_new(mosq->port, "it-props-device", NULL);

    char corr[64], big[301];
    memset(big, 'c', 300);
    big[300] = '\0';
    for (long i = 0; i < UP_N; i++) {
        mosquitto_property *p = NULL;
        /* every fifth: a huge expiry, correlation data too long for a
         * shortstr, the route's content type and header */
        bool odd = i % 5 == 4;
        mosquitto_property_add_int32(&p, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL,
                                     odd ? UINT32_MAX : 3600);
        mosquitto_property_add_string(&p, MQTT_PROP_CONTENT_TYPE, "text/plain");
        mosquitto_property_add_string(&p, MQTT_PROP_RESPONSE_TOPIC, "devices/d1/reply.v2");
        snprintf(corr, sizeof(corr), "req-%ld", i);
        if (odd)
            mosquitto_property_add_binary(&p, MQTT_PROP_CORRELATION_DATA, big, 300);
        else
            mosquitto_property_add_binary(&p, MQTT_PROP_CORRELATION_DATA, corr,
                                          (uint16_t)strlen(corr));
        mosquitto_property_add_string_pair(&p, MQTT_PROP_USER_PROPERTY, "b", "2");
        mosquitto_property_add_string_pair(&p, MQTT_PROP_USER_PROPERTY, "a", "1");
        mosquitto_property_add_string_pair(&p, MQTT_PROP_USER_PROPERTY, "a", "dup");
        mosquitto_property_add_string_pair(&p, MQTT_PROP_USER_PROPERTY, "x-mqtt-topic", "evil");
        m5_publish(dev, odd ? "props/typed/x" : "props/plain/x", i, p);
        mosquitto_property_free_all(&p);
    }
    ck_assert_int_eq(m5_wait(dev, UP_N, true, 10000), 0);
    struct th_msgs ms = {0};
    ck_assert_int_eq(th_amqp_collect(c, &ms, UP_N, 30000), 0);
    struct th_delivery d = th_check_msgs(0, UP_N, &ms);
    TH_ASSERT_EXACT(d);
    for (size_t k = 0; k < ms.n; k++) {
        const struct th_msg *m = &ms.v[k];
        bool odd = m->seq % 5 == 4;
        snprintf(corr, sizeof(corr), "req-%ld", m->seq);
        ck_assert_ptr_nonnull(m->expiration);
        long long exp = atoll(m->expiration);
        if (odd) {
            ck_assert_str_eq(m->expiration, "4294967295");         /* clamped: RabbitMQ's limit */
            ck_assert_str_eq(m->content_type, "application/json"); /* the route's wins */
            ck_assert_ptr_null(m->correlation_id);
            ck_assert_str_eq(th_msg_header(m, "x-correlation-id"), big);
            ck_assert_str_eq(th_msg_header(m, "a"), "route"); /* the route's header wins */
        } else {
            /* the time left: at most the hour, and not a minute less */
            ck_assert_msg(exp <= 3600000 && exp > 3540000, "expiration %s", m->expiration);
            ck_assert_str_eq(m->content_type, "text/plain");
            ck_assert_ptr_nonnull(m->correlation_id);
            ck_assert_str_eq(m->correlation_id, corr);
            ck_assert_ptr_null(th_msg_header(m, "x-correlation-id"));
            ck_assert_str_eq(th_msg_header(m, "a"), "1"); /* the first duplicate */
        }
        ck_assert_str_eq(th_msg_header(m, "x-reply-to-topic"), "devices.d1.reply/v2");
        ck_assert_str_eq(th_msg_header(m, "b"), "2");
        ck_assert_str_eq(th_msg_header(m, "x-mqtt-topic"), odd ? "props/typed/x" : "props/plain/x");
        /* user properties: once each, in name order, after the bridge's */
        size_t na = 0, ia = 0, ib = 0, itopic = 0;
        for (size_t h = 0; h < m->nheaders; h++) {
            if (strcmp(m->headers[h].key, "a") == 0)
                na++, ia = h;
            if (strcmp(m->headers[h].key, "b") == 0)
                ib = h;
            if (strcmp(m->headers[h].key, "x-mqtt-topic") == 0)
                itopic = h;
        }
        ck_assert_uint_eq(na, 1);
        if (!odd)
            ck_assert_uint_lt(ia, ib);
        ck_assert_uint_lt(itopic, ib);
    }
    ck_assert_int_eq(th_bridge_stop(b, 20000), 0);
    ck_assert_int_eq(th_bridge_stat(b, "published"), UP_N);
    th_msgs_free(&ms);
    m5_free(dev);
    th_bridge_free(b);
    th_amqp_free(c);
    th_mosq_free(mosq);
}
END_TEST

/* ---- downlink -------------------------------------------------------------------------- */

static const char *const down_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-props-down, protocol: 5}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  topology:\n"
    "    exchanges: [{name: it.pdl, type: topic}]\n"
    "    queues:\n"
    "      - {name: it.pdl.cmds, bindings: [{exchange: it.pdl, routing_key: \"#\"}]}\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "downlinks:\n"
    "  - {name: cmds, queue: it.pdl.cmds, topic: \"pdl/{1}\", qos: 1}\n"
    "log: {level: info, stats_interval: 1}\n";

START_TEST(downlink_properties_reach_the_mqtt_subscriber)
{
    struct th_mosq *mosq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mosq);
    struct m5 *dev = m5_new(mosq->port, "it-props-sub", "pdl/#");
    struct th_bridge *b = th_bridge_new(mosq);
    ck_assert_int_eq(th_bridge_config(b, down_yaml), 0);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "consuming 1 queue(s)", 30000), 0);
    struct th_amqp *q = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(q);
    th_amqp_purge(q, "it.pdl.cmds");

    amqp_connection_state_t a = amqp_open();
    amqp_table_entry_t e[6] = {
        {amqp_cstring_bytes("x-reply-to-topic"),
         {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("devices.d1.reply/v2")}}},
        {amqp_cstring_bytes("s"), {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("text")}}},
        {amqp_cstring_bytes("i"), {AMQP_FIELD_KIND_I32, {.i32 = -7}}},
        {amqp_cstring_bytes("t"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 1}}},
        {amqp_cstring_bytes("bin"), {AMQP_FIELD_KIND_BYTES, {.bytes = {2, (void *)"\x01\x02"}}}},
        {amqp_cstring_bytes("x-mqtt-retain"), {AMQP_FIELD_KIND_BOOLEAN, {.boolean = 0}}},
    };
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof(p));
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_CORRELATION_ID_FLAG |
               AMQP_BASIC_EXPIRATION_FLAG | AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.delivery_mode = 2;
    p.content_type = amqp_cstring_bytes("application/json");
    p.correlation_id = amqp_cstring_bytes("req-1");
    p.expiration = amqp_cstring_bytes("60000");
    p.headers = (amqp_table_t){6, e};
    amqp_pub(a, "it.pdl", "d1", 0, &p);
    /* the second: no correlation_id (x-correlation-id instead), 500 ms */
    p._flags &= ~(amqp_flags_t)AMQP_BASIC_CORRELATION_ID_FLAG;
    p.expiration = amqp_cstring_bytes("500");
    e[1] = (amqp_table_entry_t){amqp_cstring_bytes("x-correlation-id"),
                                {AMQP_FIELD_KIND_UTF8, {.bytes = amqp_cstring_bytes("long")}}};
    amqp_pub(a, "it.pdl", "d2", 1, &p);
    amqp_barrier(a);
    amqp_close(a);

    ck_assert_int_eq(m5_wait(dev, 2, false, 30000), 0);
    pthread_mutex_lock(&dev->mu);
    struct rx r0 = dev->v[0], r1 = dev->v[1];
    pthread_mutex_unlock(&dev->mu);
    if (r0.seq == 1) {
        struct rx t = r0;
        r0 = r1, r1 = t;
    }
    ck_assert_int_eq(r0.seq, 0);
    ck_assert_str_eq(r0.topic, "pdl/d1");
    /* Mosquitto forwards what the bridge set; the expiry it counts down */
    ck_assert_msg(strstr(r0.props, "ct=application/json") && strstr(r0.props, "corr=req-1") &&
                      strstr(r0.props, "rt=devices/d1/reply.v2") &&
                      strstr(r0.props, "up:s=text|up:i=-7|up:t=true") &&
                      (strstr(r0.props, "exp=60") || strstr(r0.props, "exp=59")) &&
                      !strstr(r0.props, "bin") && !strstr(r0.props, "x-mqtt") &&
                      !strstr(r0.props, "x-reply-to-topic"),
                  "got %s", r0.props);
    ck_assert_int_eq(r1.seq, 1);
    ck_assert_msg(strstr(r1.props, "corr=long") && strstr(r1.props, "exp=1") &&
                      !strstr(r1.props, "x-correlation-id"),
                  "got %s", r1.props);
    ck_assert_int_eq(th_bridge_wait_stat(b, "down_acked", 2, 10000), 0);
    ck_assert_int_eq(th_bridge_stop(b, 20000), 0);
    ck_assert_int_eq(th_bridge_stat(b, "down_rejected"), 0);
    th_amqp_free(q);
    th_bridge_free(b);
    m5_free(dev);
    th_mosq_free(mosq);
}
END_TEST

/* ---- request / reply ------------------------------------------------------------------- */

static const char *const rr_yaml =
    "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, client_id: it-props-rr, protocol: 5}\n"
    "amqp:\n"
    "  port: ${AMQP_PORT}\n"
    "  topology:\n"
    "    exchanges:\n"
    "      - {name: it.requests, type: topic}\n"
    "      - {name: replies, type: topic}\n"
    "    queues:\n"
    "      - {name: it.rr.work, bindings: [{exchange: it.requests, routing_key: \"#\"}]}\n"
    "      - {name: it.rr.replies, bindings: [{exchange: replies, routing_key: \"#\"}]}\n"
    "spool: {dir: ${SPOOL_DIR}}\n"
    "routes:\n"
    "  - {name: requests, topic: \"requests/+\", exchange: it.requests}\n"
    "downlinks:\n"
    "  - {name: replies, queue: it.rr.replies, topic: \"{routing_key}\", qos: 1}\n"
    "log: {level: info, stats_interval: 1}\n";

#define RR_N 200

START_TEST(request_reply_end_to_end)
{
    struct th_mosq *mosq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mosq);
    struct th_bridge *b = th_bridge_new(mosq);
    ck_assert_int_eq(th_bridge_config(b, rr_yaml), 0);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "consuming 1 queue(s)", 30000), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "subscribed", 30000), 0);
    struct th_amqp *worker = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(worker);
    th_amqp_purge(worker, "it.rr.work");
    th_amqp_purge(worker, "it.rr.replies");
    ck_assert_int_eq(th_amqp_consume(worker, "it.rr.work"), 0);
    /* the device listens on its response topic */
    struct m5 *dev = m5_new(mosq->port, "it-props-dev7", "devices/dev7/replies/#");

    char corr[32];
    for (long i = 0; i < RR_N; i++) {
        mosquitto_property *p = NULL;
        snprintf(corr, sizeof(corr), "req-%ld", i);
        mosquitto_property_add_string(&p, MQTT_PROP_RESPONSE_TOPIC, "devices/dev7/replies");
        mosquitto_property_add_binary(&p, MQTT_PROP_CORRELATION_DATA, corr, (uint16_t)strlen(corr));
        m5_publish(dev, "requests/dev7", i, p);
        mosquitto_property_free_all(&p);
    }
    /* the worker: each request answered to `replies`, routing key =
     * x-reply-to-topic (already in AMQP form), the same correlation_id */
    struct th_msgs reqs = {0};
    ck_assert_int_eq(th_amqp_collect(worker, &reqs, RR_N, 60000), 0);
    struct th_delivery dq = th_check_msgs(0, RR_N, &reqs);
    TH_ASSERT_EXACT(dq);
    amqp_connection_state_t a = amqp_open();
    for (size_t k = 0; k < reqs.n; k++) {
        const struct th_msg *m = &reqs.v[k];
        const char *rt = th_msg_header(m, "x-reply-to-topic");
        ck_assert_ptr_nonnull(rt);
        ck_assert_str_eq(rt, "devices.dev7.replies");
        ck_assert_ptr_nonnull(m->correlation_id);
        amqp_basic_properties_t p;
        memset(&p, 0, sizeof(p));
        p._flags = AMQP_BASIC_CORRELATION_ID_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG;
        p.delivery_mode = 2;
        p.correlation_id = amqp_cstring_bytes(m->correlation_id);
        amqp_pub(a, "replies", rt, m->seq, &p);
    }
    amqp_barrier(a);
    amqp_close(a);

    ck_assert_int_eq(m5_wait(dev, RR_N, false, 60000), 0);
    ck_assert_int_eq(th_bridge_wait_stat(b, "down_acked", RR_N, 10000), 0);
    ck_assert_int_eq(th_bridge_stop(b, 20000), 0);
    pthread_mutex_lock(&dev->mu);
    long *seqs = xmalloc((dev->n + 1) * sizeof(*seqs));
    size_t n = dev->n, wrong = 0;
    for (size_t k = 0; k < n; k++) {
        const struct rx *r = &dev->v[k];
        seqs[k] = r->seq;
        snprintf(corr, sizeof(corr), "req-%ld", r->seq);
        /* on the response topic, with the request's correlation data */
        if (strcmp(r->topic, "devices/dev7/replies") != 0 || !r->corr || strcmp(r->corr, corr))
            wrong++;
    }
    pthread_mutex_unlock(&dev->mu);
    struct th_delivery d = th_check_seqs(0, RR_N, seqs, n);
    free(seqs);
    TH_ASSERT_EXACT(d);
    ck_assert_uint_eq(wrong, 0);
    printf("request/reply: %d requests, %zu replies, lost %ld dup %ld unexpected %ld\n", RR_N, n,
           d.lost, d.duplicated, d.unexpected);
    th_msgs_free(&reqs);
    th_amqp_free(worker);
    m5_free(dev);
    th_bridge_free(b);
    th_mosq_free(mosq);
}
END_TEST

static void add(Suite *s, const char *name, const TTest *t)
{
    TCase *tc = tcase_create(name);
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, t);
    suite_add_tcase(s, tc);
}

int main(void)
{
    mosquitto_lib_init();
    Suite *s = suite_create("props");
    add(s, "uplink", uplink_properties_reach_the_amqp_consumer);
    add(s, "downlink", downlink_properties_reach_the_mqtt_subscriber);
    add(s, "request_reply", request_reply_end_to_end);
    int rc = m2a_check_run(s);
    mosquitto_lib_cleanup();
    return rc;
}
