/* amqp_publish.c - envelopes to basic.publish frames, and the write of a
 * pass of them (see amqp_publish.h). Runs on the thread that owns the
 * connection; owns its frame buffer and the scratch of the headers table.
 *
 * One path for TCP and TLS: the frames are ours on both (rabbitmq-c's
 * amqp_basic_publish costs three writes per message, and over TLS three
 * records as well); only the last step differs, send() on the socket or
 * SSL_write on the session (amqp_frames.c). That also bounds a TLS publish
 * by the same deadline as a TCP one, which rabbitmq-c's own send could not
 * be. */
#include "mqtt2amqp/amqp_publish.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/amqp_frames.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/props.h"
#include "mqtt2amqp/util.h"

#define SEND_STALL_MS     30000 /* without heartbeats: a write taking nothing this long fails */
#define FRAMES_KEEP_BYTES (1u << 20) /* a frame buffer grown past this is freed after the write */
#define BORROW_MIN        4096 /* body frames at least this long are written from the record */

struct m2a_amqp_publish {
    struct m2a_buf frames;
    /* Body frames written from the caller's record (the confirm window's
     * copy, unchanged until it is confirmed), not copied into frames. */
    struct m2a_amqp_frames_borrow borrow;
    amqp_table_entry_t *entries; /* headers table scratch, grown only */
    size_t entries_cap;
    /* MQTT 5 properties (props.h): the decoded blob's user properties and
     * what they map to, scratch reused across messages. */
    struct m2a_header *prop_user;
    size_t prop_user_cap;
    struct m2a_props_amqp prop_amqp;
};

struct m2a_amqp_publish *m2a_amqp_publish_new(void)
{
    return xcalloc(1, sizeof(struct m2a_amqp_publish));
}

void m2a_amqp_publish_free(struct m2a_amqp_publish *p)
{
    if (p) {
        free(p->entries);
        free(p->prop_user);
        m2a_props_amqp_free(&p->prop_amqp);
        m2a_buf_free(&p->frames);
        m2a_amqp_frames_borrow_free(&p->borrow);
    }
    free(p);
}

static amqp_bytes_t str_bytes(struct m2a_str s)
{
    amqp_bytes_t b = {s.len, (void *)s.ptr};
    return b;
}

static void set_entry_str(amqp_table_entry_t *e, const char *key, struct m2a_str v)
{
    e->key = amqp_cstring_bytes(key);
    e->value.kind = AMQP_FIELD_KIND_UTF8;
    e->value.value.bytes = str_bytes(v);
}

/* The headers table: x-mqtt-* as mh says, then the envelope's. Returns the
 * number of entries, in p->entries. */
static size_t headers(struct m2a_amqp_publish *p, const struct m2a_envelope *env,
                      enum m2a_mqtt_headers mh)
{
    /* A dead letter keeps x-mqtt-topic whatever mqtt_headers says: it is how
     * an operator finds where the message came from. */
    if (mh == M2A_MQTT_HEADERS_NONE && env->dead_letter)
        mh = M2A_MQTT_HEADERS_TOPIC;
    size_t nmqtt = mh == M2A_MQTT_HEADERS_ALL ? 3 : mh == M2A_MQTT_HEADERS_TOPIC ? 1 : 0;
    /* A retained-delete (retain flag, empty payload) says so, unless
     * mqtt_headers: none: an empty body alone is an ordinary message. */
    bool del = nmqtt > 0 && env->retain && env->body.len == 0;
    size_t n = nmqtt + del + env->nheaders;
    if (n > p->entries_cap) {
        p->entries = xrealloc(p->entries, n * sizeof(*p->entries));
        p->entries_cap = n;
    }
    amqp_table_entry_t *e = p->entries;
    if (nmqtt >= 1)
        set_entry_str(&e[0], "x-mqtt-topic", env->topic);
    if (nmqtt == 3) {
        e[1].key = amqp_cstring_bytes("x-mqtt-qos");
        e[1].value.kind = AMQP_FIELD_KIND_I32;
        e[1].value.value.i32 = env->qos;
        e[2].key = amqp_cstring_bytes("x-mqtt-retain");
        e[2].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        e[2].value.value.boolean = env->retain;
    }
    if (del) {
        e[nmqtt].key = amqp_cstring_bytes("x-mqtt-retained-delete");
        e[nmqtt].value.kind = AMQP_FIELD_KIND_BOOLEAN;
        e[nmqtt].value.value.boolean = 1;
        nmqtt++;
    }
    for (size_t i = 0; i < env->nheaders; i++) {
        e[nmqtt + i].key = str_bytes(env->headers[i].key);
        e[nmqtt + i].value.kind = AMQP_FIELD_KIND_UTF8;
        e[nmqtt + i].value.value.bytes = str_bytes(env->headers[i].value);
    }
    return n;
}

static bool has_entry(const amqp_table_entry_t *e, size_t n, struct m2a_str key)
{
    for (size_t i = 0; i < n; i++)
        if (e[i].key.len == key.len && memcmp(e[i].key.bytes, key.ptr, key.len) == 0)
            return true;
    return false;
}

/* The envelope's MQTT 5 properties (props.h) into props and the headers
 * table after its nent entries; returns the new count. The x-mqtt-* and the
 * route's headers win a name clash, and so does the route's content_type.
 * A blob that does not decode (a bug: the spool's CRC guards the disk) is
 * ignored: the message is still published, without them. */
static size_t apply_props(struct m2a_amqp_publish *p, const struct m2a_envelope *env,
                          amqp_basic_properties_t *props, size_t nent)
{
    struct m2a_props mp;
    if (m2a_props_decode(env->properties.ptr, env->properties.len, &mp, &p->prop_user,
                         &p->prop_user_cap) != 0)
        return nent;
    struct m2a_props_amqp *a = &p->prop_amqp;
    m2a_props_to_amqp(&mp, env->timestamp_ms, m2a_wall_ms(), !env->dead_letter, a);
    if (a->has_expiration) {
        props->_flags |= AMQP_BASIC_EXPIRATION_FLAG;
        props->expiration = amqp_cstring_bytes(a->expiration);
    }
    if (a->has_correlation_id) {
        props->_flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
        props->correlation_id = str_bytes(a->correlation_id);
    }
    if (a->content_type.len && !(props->_flags & AMQP_BASIC_CONTENT_TYPE_FLAG)) {
        props->_flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        props->content_type = str_bytes(a->content_type);
    }
    if (nent + a->nheaders > p->entries_cap) {
        p->entries = xrealloc(p->entries, (nent + a->nheaders) * sizeof(*p->entries));
        p->entries_cap = nent + a->nheaders;
    }
    size_t n = nent;
    for (size_t i = 0; i < a->nheaders; i++) {
        if (has_entry(p->entries, nent, a->headers[i].key))
            continue;
        p->entries[n].key = str_bytes(a->headers[i].key);
        p->entries[n].value.kind = AMQP_FIELD_KIND_UTF8;
        p->entries[n].value.value.bytes = str_bytes(a->headers[i].value);
        n++;
    }
    return n;
}

/* rabbitmq-c's encoders do not check that a short string fits. */
static bool shortstrs_fit(const struct m2a_envelope *env)
{
    if (env->exchange.len > M2A_AMQP_SHORTSTR_MAX || env->routing_key.len > M2A_AMQP_SHORTSTR_MAX ||
        env->content_type.len > M2A_AMQP_SHORTSTR_MAX)
        return false;
    for (size_t i = 0; i < env->nheaders; i++)
        if (env->headers[i].key.len > M2A_AMQP_SHORTSTR_MAX)
            return false;
    return true;
}

int m2a_amqp_publish_add(struct m2a_amqp_publish *p, const struct m2a_amqp_conn *c,
                         const struct m2a_envelope *env, enum m2a_mqtt_headers mqtt_headers,
                         const char *message_id, size_t message_id_len)
{
    if (!shortstrs_fit(env) || message_id_len > M2A_AMQP_SHORTSTR_MAX)
        return M2A_ERR_ARG;
    size_t nent = headers(p, env, mqtt_headers);
    amqp_basic_properties_t props;
    memset(&props, 0, sizeof(props));
    props._flags =
        AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG;
    if (nent > 0)
        props._flags |= AMQP_BASIC_HEADERS_FLAG;
    props.delivery_mode = env->persistent ? AMQP_DELIVERY_PERSISTENT : AMQP_DELIVERY_NONPERSISTENT;
    props.timestamp = env->timestamp_ms / 1000u;
    props.message_id.bytes = (void *)message_id;
    props.message_id.len = message_id_len;
    if (env->content_type.len) {
        props._flags |= AMQP_BASIC_CONTENT_TYPE_FLAG;
        props.content_type = str_bytes(env->content_type);
    }
    if (env->properties.len) {
        nent = apply_props(p, env, &props, nent);
        if (nent > 0)
            props._flags |= AMQP_BASIC_HEADERS_FLAG;
    }
    props.headers.num_entries = (int)nent;
    props.headers.entries = p->entries;
    amqp_basic_publish_t m = {.exchange = str_bytes(env->exchange),
                              .routing_key = str_bytes(env->routing_key),
                              .mandatory = 1};
    const struct m2a_amqp_conn_params *cp = m2a_amqp_conn_params(c);
    return m2a_amqp_frames_publish_borrow(&p->frames, &p->borrow, cp->channel, cp->frame_max, &m,
                                          &props, str_bytes(env->body), BORROW_MIN);
}

size_t m2a_amqp_publish_pending(const struct m2a_amqp_publish *p)
{
    return p->frames.len + p->borrow.bytes;
}

int m2a_amqp_publish_flush(struct m2a_amqp_publish *p, const struct m2a_amqp_conn *c,
                           uint64_t deadline_ms, char *why, size_t whylen)
{
    if (p->frames.len == 0 && p->borrow.n == 0)
        return 0;
    const struct m2a_amqp_conn_params *cp = m2a_amqp_conn_params(c);
    int stall_ms = cp->heartbeat_s > 0 ? cp->heartbeat_s * 2000 : SEND_STALL_MS;
    int rc = m2a_amqp_frames_sendv(&cp->wire, &p->frames, &p->borrow, stall_ms, deadline_ms);
    if (rc == M2A_ERR_TIMEOUT)
        snprintf(why, whylen, "publishing: the broker took no data for %d ms%s", stall_ms,
                 m2a_now_ms() >= deadline_ms ? " (stop deadline reached)" : "");
    else if (rc != 0)
        snprintf(why, whylen, "publishing: %s", strerror(errno));
    if (rc == 0 && p->frames.cap > FRAMES_KEEP_BYTES)
        m2a_buf_free(&p->frames); /* one large message must not pin its size */
    return rc;
}

bool m2a_amqp_publish_writable(const struct m2a_amqp_conn *c)
{
    struct pollfd p = {.fd = m2a_amqp_conn_params(c)->wire.fd, .events = POLLOUT};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLOUT);
}

void m2a_amqp_publish_discard(struct m2a_amqp_publish *p)
{
    p->frames.len = 0;
    p->borrow.n = 0;
    p->borrow.bytes = 0;
    if (p->frames.cap > FRAMES_KEEP_BYTES)
        m2a_buf_free(&p->frames);
}
