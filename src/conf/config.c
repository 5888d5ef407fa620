/* config.c - mqtt2amqp's configuration schema: the option tables that
 * conf_bind.c walks to fill struct m2a_config, and the rules that span
 * several keys.
 *
 * This file is the only validator of the tree. Whatever would make the
 * bridge refuse to start, or fail every time it connects, because of its
 * configuration is refused here, at load, with the key's file:line:column:
 * ranges; names that travel as AMQP short strings (255 bytes: exchanges,
 * queues, routing keys, header and argument names, content type, vhost) or
 * as MQTT strings (client id, user name, password, $share prefix); routes
 * and bindings against the declared exchanges; and the TLS files, loaded by
 * the same tls.c code that builds the connections' contexts (a CA OpenSSL
 * cannot read, a key that does not match its certificate). So `--check`,
 * the start and a reload refuse exactly the same files, and the modules
 * reading the struct only assert that its pointers are set.
 *
 * A new key is one table line (plus a check function for a rule of its
 * own); a new list of sections is one line plus its table. Options are
 * bound in table order: amqp (and its exchanges) before dead_letter and
 * routes, so those are checked against the declared exchanges wherever they
 * appear in the file.
 *
 * Runs on whichever thread loads the config (main, at start and on reload);
 * no global state. */
#include "mqtt2amqp/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <mosquitto.h>

#include "mqtt2amqp/downlink_topic.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/hostport.h"
#include "mqtt2amqp/policy.h"
#include "mqtt2amqp/routes.h"
#include "mqtt2amqp/tls.h"
#include "mqtt2amqp/topic.h"
#include "mqtt2amqp/util.h"

#define MSG_LEN           256
#define SHARE_PREFIX      "$share/"
#define MQTT_DEFAULT_PORT 1883
#define AMQP_DEFAULT_PORT 5672

/* ---- value checks ------------------------------------------------------- */

/* A TLS file: readable, and a regular file, since OpenSSL reads it at load
 * (a FIFO would block the load until a writer came). */
static int check_tls_file(const char *s, char *msg, size_t msglen)
{
    struct stat st;
    if (access(s, R_OK) != 0 || stat(s, &st) != 0) {
        snprintf(msg, msglen, "cannot read '%.100s': %s", s, strerror(errno));
        return -1;
    }
    if (S_ISREG(st.st_mode))
        return 0;
    snprintf(msg, msglen, "'%.100s' is not a regular file", s);
    return -1;
}

/* "HOST:PORT" (an IPv6 address in brackets); the name is resolved when the
 * metrics server starts. */
static int check_listen(const char *s, char *msg, size_t msglen)
{
    char host[M2A_HOST_MAX + 1];
    int port;
    return m2a_hostport_parse(s, 0, host, sizeof(host), &port, msg, msglen);
}

/* An element of mqtt.hosts / amqp.hosts: HOST:PORT, or HOST (the side's
 * default port). */
static int check_hostport(const char *s, char *msg, size_t msglen)
{
    char host[M2A_HOST_MAX + 1];
    int port;
    return m2a_hostport_parse(s, 1, host, sizeof(host), &port, msg, msglen);
}

/* What libmosquitto accepts as a client id or user name (mosquitto_new and
 * mosquitto_username_pw_set refuse anything else): UTF-8 without control
 * characters or non-characters. */
static int check_mqtt_string(const char *s, char *msg, size_t msglen)
{
    if (mosquitto_validate_utf8(s, (int)strlen(s)) == MOSQ_ERR_SUCCESS)
        return 0;
    snprintf(msg, msglen,
             "is not an MQTT string: UTF-8 without control characters or non-characters");
    return -1;
}

static int check_share_group(const char *s, char *msg, size_t msglen)
{
    if (strpbrk(s, "/+#")) {
        snprintf(msg, msglen, "'%.40s' must not contain '/', '+' or '#'", s);
        return -1;
    }
    return check_mqtt_string(s, msg, msglen);
}

static int check_exchange_type(const char *s, char *msg, size_t msglen)
{
    static const char *const types[] = {"direct", "fanout", "topic", "headers"};
    for (size_t i = 0; i < 4; i++)
        if (!strcmp(s, types[i]))
            return 0;
    if (!strncmp(s, "x-", 2) && s[2]) /* plugin types: x-delayed-message, ... */
        return 0;
    snprintf(msg, msglen, "'%.40s' is not direct, fanout, topic, headers or a plugin's x-... type",
             s);
    return -1;
}

static int check_not_reserved(const char *s, char *msg, size_t msglen)
{
    if (strncmp(s, "amq.", 4))
        return 0;
    snprintf(msg, msglen, "'%.60s': names starting with 'amq.' are reserved by RabbitMQ", s);
    return -1;
}

/* log.c owns the names of levels and formats. */
static int parse_log_level(const char *s, int *v)
{
    enum m2a_log_level l;
    if (m2a_log_level_parse(s, &l))
        return -1;
    *v = (int)l;
    return 0;
}

static int parse_log_format(const char *s, int *v)
{
    enum m2a_log_format f;
    if (m2a_log_format_parse(s, &f))
        return -1;
    *v = (int)f;
    return 0;
}

/* ---- rules across keys ---------------------------------------------------- */

static const struct m2a_config *config_of(const struct m2a_bind_scope *s)
{
    return m2a_bind_root(s);
}

static const char *const builtin_exchanges[] = {
    "", "amq.direct", "amq.topic", "amq.fanout", "amq.headers", "amq.match", "amq.rabbitmq.trace",
};

/* The section's "exchange" must be built in or declared (amqp comes first
 * in the table, so the declared ones are known); to publish to it, it must
 * not be internal. */
static int check_exchange(const struct m2a_bind_scope *s, const char *name, bool publish)
{
    const struct m2a_conf_amqp *a = &config_of(s)->amqp;
    for (size_t i = 0; i < sizeof(builtin_exchanges) / sizeof(builtin_exchanges[0]); i++)
        if (!strcmp(name, builtin_exchanges[i]))
            return 0;
    for (size_t i = 0; i < a->nexchanges; i++) {
        if (strcmp(name, a->exchanges[i].name))
            continue;
        if (publish && a->exchanges[i].internal)
            return m2a_bind_fail_key(
                s, "exchange", "exchange '%.60s' is internal: nobody can publish to it", name);
        return 0;
    }
    return m2a_bind_fail_key(s, "exchange",
                             "exchange '%.60s' is not declared in amqp.topology.exchanges and is "
                             "not built in",
                             name);
}

/* The TLS files are loaded here by the code the connections use
 * (m2a_tls_ctx_new), so what it refuses fails the load, not each connect. */
static int check_tls(const struct m2a_bind_scope *s, const struct m2a_conf_tls *t, const char *host)
{
    char why[512];
    if (!t->enabled)
        return 0;
    SSL_CTX *ctx = m2a_tls_ctx_new(t, host, why, sizeof(why));
    if (!ctx)
        return m2a_bind_fail_key(s, "tls", "%s", why);
    SSL_CTX_free(ctx);
    return 0;
}

static void default_endpoint(struct m2a_conf_endpoint **out, size_t *nout, const char *host,
                             int port)
{
    *out = xcalloc(1, sizeof(**out));
    (*out)[0] = (struct m2a_conf_endpoint){xstrdup(host), port};
    *nout = 1;
}

/* Fills endpoints from hosts (each already checked by check_hostport), or
 * from the host/port shorthand; refuses both forms together and a broker
 * named twice. */
static int build_endpoints(const struct m2a_bind_scope *s, char **hosts, size_t nhosts,
                           const char *host, int port, int default_port,
                           struct m2a_conf_endpoint **out, size_t *nout)
{
    const char *path = m2a_bind_path(s);
    if (nhosts && (m2a_bind_has(s, "host") || m2a_bind_has(s, "port")))
        return m2a_bind_fail(s, m2a_bind_at(s, "hosts", NULL),
                             "%s: hosts and host/port are two ways to say the same: use one", path);
    if (m2a_bind_has(s, "hosts") && !nhosts)
        return m2a_bind_fail_key(s, "hosts", "the list is empty");
    if (!nhosts) {
        default_endpoint(out, nout, host, port);
        return 0;
    }
    size_t n = nhosts;
    struct m2a_conf_endpoint *e = xcalloc(n, sizeof(*e));
    *out = e;
    *nout = n;
    for (size_t i = 0; i < n; i++) {
        char h[M2A_HOST_MAX + 1], msg[160];
        int p;
        if (m2a_hostport_parse(hosts[i], default_port, h, sizeof(h), &p, msg, sizeof(msg)) != 0)
            return m2a_bind_fail_key(s, "hosts", "%s", msg); /* checked per element already */
        e[i] = (struct m2a_conf_endpoint){xstrdup(h), p};
        for (size_t j = 0; j < i; j++)
            if (e[j].port == p && !strcmp(e[j].host, h))
                return m2a_bind_fail_key(s, "hosts", "%s:%d is listed twice", h, p);
    }
    return 0;
}

static void free_endpoints(struct m2a_conf_endpoint *e, size_t n)
{
    for (size_t i = 0; e && i < n; i++)
        free(e[i].host);
    free(e);
}

/* What the two client sections share, but TLS: checked last, it reads files. */
static int check_client(const struct m2a_bind_scope *s, int min_ms, int max_ms)
{
    const char *path = m2a_bind_path(s);
    if (m2a_bind_has(s, "password") && m2a_bind_has(s, "password_file"))
        return m2a_bind_fail(s, m2a_bind_at(s, "password_file", NULL),
                             "%s: password and password_file are mutually exclusive", path);
    if (min_ms > max_ms)
        return m2a_bind_fail(s, m2a_bind_at(s, "reconnect_max_ms", "reconnect_min_ms", NULL),
                             "%s: reconnect_max_ms (%d) is below reconnect_min_ms (%d)", path,
                             max_ms, min_ms);
    return 0;
}

static int mqtt_check(const struct m2a_bind_scope *s, void *base)
{
    struct m2a_conf_mqtt *m = base;
    int rc = build_endpoints(s, m->hosts, m->nhosts, m->host, m->port, MQTT_DEFAULT_PORT,
                             &m->endpoints, &m->nendpoints);
    if (rc == 0)
        rc = check_client(s, m->reconnect_min_ms, m->reconnect_max_ms);
    if (rc)
        return rc;
    if (m->downlink_client_id && !strcmp(m->downlink_client_id, m->client_id))
        return m2a_bind_fail_key(s, "downlink_client_id",
                                 "the downlinks need a session of their own: not client_id");
    /* MQTT 3.1.1 forbids a password without a user name; MQTT 5 allows it */
    if (m->protocol == M2A_MQTT_V311 && m->password && !m->username)
        return m2a_bind_fail(s, m2a_bind_at(s, "password", "password_file", NULL),
                             "%s: with protocol 311 a password needs a username", m2a_bind_path(s));
    return check_tls(s, &m->tls, m->endpoints[0].host);
}

static int amqp_check(const struct m2a_bind_scope *s, void *base)
{
    struct m2a_conf_amqp *a = base;
    int rc = build_endpoints(s, a->hosts, a->nhosts, a->host, a->port, AMQP_DEFAULT_PORT,
                             &a->endpoints, &a->nendpoints);
    if (rc == 0)
        rc = check_client(s, a->reconnect_min_ms, a->reconnect_max_ms);
    return rc ? rc : check_tls(s, &a->tls, a->endpoints[0].host);
}

static int tls_check(const struct m2a_bind_scope *s, void *base)
{
    struct m2a_conf_tls *t = base;
    if (!t->cert_file != !t->key_file)
        return m2a_bind_fail(s, m2a_bind_at(s, NULL), "%s: cert_file and key_file go together",
                             m2a_bind_path(s));
    return 0;
}

static int spool_check(const struct m2a_bind_scope *s, void *base)
{
    struct m2a_conf_spool *sp = base;
    char a[32], b[32];
    m2a_bind_format_size(a, sizeof(a), sp->max_bytes);
    m2a_bind_format_size(b, sizeof(b), sp->segment_bytes);
    if (sp->max_bytes < sp->segment_bytes)
        return m2a_bind_fail(s, m2a_bind_at(s, "max_bytes", "segment_bytes", NULL),
                             "%s: max_bytes (%s) is below segment_bytes (%s)", m2a_bind_path(s), a,
                             b);
    /* drop_oldest frees space by discarding whole segments other than the
     * one being written: with room for fewer than two, it could never free
     * any. */
    if (sp->overflow == M2A_OVERFLOW_DROP_OLDEST && sp->max_bytes / 2 < sp->segment_bytes)
        return m2a_bind_fail_key(s, "overflow",
                                 "drop_oldest discards whole segments, so max_bytes (%s) must be "
                                 "at least twice segment_bytes (%s)",
                                 a, b);
    return 0;
}

static const struct m2a_conf_arg *find_arg(const struct m2a_conf_arg *args, size_t n,
                                           const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(args[i].key, key))
            return &args[i];
    return NULL;
}

static int queue_check(const struct m2a_bind_scope *s, void *base)
{
    struct m2a_conf_queue *q = base;
    /* RabbitMQ refuses these at declare time; say so before connecting. */
    const struct m2a_conf_arg *t = find_arg(q->args, q->nargs, "x-queue-type");
    if (t && t->type == M2A_ARG_STRING && !strcmp(t->str, "quorum") &&
        (!q->durable || q->exclusive))
        return m2a_bind_fail_key(s, q->durable ? "exclusive" : "durable",
                                 "a quorum queue must be durable and not exclusive");
    return 0;
}

static int binding_check(const struct m2a_bind_scope *s, void *base)
{
    struct m2a_conf_binding *b = base;
    if (!b->exchange[0])
        return m2a_bind_fail_key(s, "exchange", "a queue cannot be bound to the default exchange");
    return check_exchange(s, b->exchange, false);
}

/* The bytes a routing key template gives whatever the message: its text
 * outside placeholders ("{{" and "}}" give one brace each). The template
 * has been checked, so every placeholder is closed. */
static size_t template_fixed_len(const char *t)
{
    size_t n = 0;
    while (*t) {
        if (*t == '{' && t[1] != '{') {
            t = strchr(t, '}') + 1;
            continue;
        }
        t += (*t == '{' || *t == '}') && t[1] == *t ? 2 : 1;
        n++;
    }
    return n;
}

static int route_templates_check(const struct m2a_bind_scope *s, const struct m2a_conf_route *r)
{
    char msg[MSG_LEN] = "";
    int ncap = m2a_topic_filter_wildcards(r->topic);
    if (r->routing_key && m2a_routes_template_check(r->routing_key, ncap, msg, sizeof(msg)))
        return m2a_bind_fail_key(s, "routing_key", "%s", msg[0] ? msg : "invalid template");
    if (r->routing_key && template_fixed_len(r->routing_key) > M2A_AMQP_SHORTSTR_MAX)
        return m2a_bind_fail_key(s, "routing_key",
                                 "its fixed text alone is %zu bytes, more than the %d a routing "
                                 "key may have",
                                 template_fixed_len(r->routing_key), M2A_AMQP_SHORTSTR_MAX);
    for (size_t i = 0; i < r->nheaders; i++)
        if (m2a_routes_template_check(r->headers[i].value, ncap, msg, sizeof(msg)))
            return m2a_bind_fail(s, r->headers[i].mark, "%s.headers.%.60s: %s", m2a_bind_path(s),
                                 r->headers[i].key, msg[0] ? msg : "invalid template");
    return 0;
}

static int route_check(const struct m2a_bind_scope *s, void *base)
{
    struct m2a_conf_route *r = base;
    const struct m2a_config *cfg = config_of(s);
    const char *group = cfg->mqtt.share_group;
    char msg[MSG_LEN] = "";
    int rc;
    if (m2a_topic_filter_validate(r->topic, msg, sizeof(msg)))
        return m2a_bind_fail_key(s, "topic", "%s", msg[0] ? msg : "invalid topic filter");
    /* the subscription is "$share/GROUP/" + the filter, one MQTT string */
    size_t sub_len = group ? strlen(SHARE_PREFIX) + strlen(group) + 1 + strlen(r->topic) : 0;
    if (sub_len > M2A_MQTT_STRING_MAX)
        return m2a_bind_fail_key(s, "topic",
                                 "with mqtt.share_group the subscription is %zu bytes, more than "
                                 "the %d of an MQTT string",
                                 sub_len, M2A_MQTT_STRING_MAX);
    if ((rc = route_templates_check(s, r)) || (rc = check_exchange(s, r->exchange, true)))
        return rc;
    /* The default says dead_letter too, but means "dropped" without the
     * section; only asking for it explicitly needs the section. */
    if (m2a_bind_has(s, "unroutable") && r->unroutable == M2A_UNROUTABLE_DEAD_LETTER &&
        !cfg->dead_letter.enabled)
        return m2a_bind_fail_key(s, "unroutable",
                                 "dead_letter needs a top-level dead_letter section naming the "
                                 "exchange");
    return 0;
}

/* The dead-letter exchange is checked like a route's. */
static int dead_letter_check(const struct m2a_bind_scope *s, void *base)
{
    struct m2a_conf_dead_letter *d = base;
    return check_exchange(s, d->exchange, true);
}

/* A downlink consumes a queue the bridge declares (amqp comes first in the
 * table), and its topic template must compile. */
static int downlink_check(const struct m2a_bind_scope *s, void *base)
{
    struct m2a_conf_downlink *d = base;
    const struct m2a_conf_amqp *a = &config_of(s)->amqp;
    char msg[MSG_LEN] = "";
    struct m2a_downlink_topic *t = NULL;
    if (m2a_downlink_topic_compile(d->topic, &t, msg, sizeof(msg)) != 0)
        return m2a_bind_fail_key(s, "topic", "%s", msg);
    m2a_downlink_topic_free(t);
    for (size_t i = 0; i < a->nqueues; i++)
        if (!strcmp(a->queues[i].name, d->queue))
            return 0;
    return m2a_bind_fail_key(s, "queue", "queue '%.60s' is not declared in amqp.topology.queues",
                             d->queue);
}

static int top_check(const struct m2a_bind_scope *s, void *base)
{
    struct m2a_config *cfg = base;
    if (!cfg->nroutes && !cfg->ndownlinks)
        return m2a_bind_fail(s, m2a_bind_at(s, "routes", NULL),
                             "no routes: nothing to bridge (no downlinks either)");
    return 0;
}

/* ---- the schema ------------------------------------------------------------ */

#define MS_MAX 3600000
#define KiB    ((int64_t)1 << 10)
#define GiB    ((int64_t)1 << 30)
#define DAY_MS ((int64_t)86400 * 1000)
#define REQ    (M2A_BIND_REQUIRED | M2A_BIND_NONEMPTY)
#define RO     (M2A_BIND_NULLABLE | M2A_BIND_NONEMPTY) /* optional, but not "" when given */
#define SHORT  .max = M2A_AMQP_SHORTSTR_MAX
#define MQTTS  .max = M2A_MQTT_STRING_MAX

#define T struct m2a_conf_tls
static const struct m2a_bind_opt tls_opts[] = {
    M2A_BIND_STR(T, "ca_file", ca_file, NULL, RO, "CA certificates, PEM", .check = check_tls_file),
    M2A_BIND_STR(T, "cert_file", cert_file, NULL, RO, "client certificate, PEM",
                 .check = check_tls_file),
    M2A_BIND_STR(T, "key_file", key_file, NULL, RO, "client private key, PEM",
                 .check = check_tls_file),
    M2A_BIND_BOOL(T, "verify_hostname", verify_hostname, "true",
                  "check the server certificate's name"),
};
static const struct m2a_bind_section tls_section = {
    M2A_BIND_OPTS(tls_opts), .present = M2A_BIND_PRESENT(T, enabled), .check = tls_check};
#undef T

#define T struct m2a_conf_mqtt
static const struct m2a_bind_opt mqtt_opts[] = {
    M2A_BIND_STRS(T, "hosts", hosts, nhosts, M2A_BIND_NONEMPTY,
                  "brokers to try in turn, HOST:PORT each", .check = check_hostport),
    M2A_BIND_STR(T, "host", host, "127.0.0.1", M2A_BIND_NONEMPTY, "MQTT broker host"),
    M2A_BIND_INT(T, "port", port, "1883", 1, 65535, "MQTT broker TCP port"),
    M2A_BIND_STR(T, "client_id", client_id, "mqtt2amqp", M2A_BIND_NONEMPTY,
                 "fixed client id of the session", MQTTS, .check = check_mqtt_string),
    M2A_BIND_STR(T, "downlink_client_id", downlink_client_id, NULL, RO,
                 "client id of the downlinks' session, default client_id + \"-down\"", MQTTS,
                 .check = check_mqtt_string),
    M2A_BIND_BOOL(T, "clean_session", clean_session, "false", "false keeps a persistent session"),
    M2A_BIND_ENUM(T, "retained_resend", retained_resend, "skip",
                  M2A_BIND_CHOICES({"skip", M2A_RETAINED_RESEND_SKIP},
                                   {"forward", M2A_RETAINED_RESEND_FORWARD}),
                  "MQTT 3.1.1: retained messages resent for a subscription the session had"),
    M2A_BIND_INT(T, "keepalive", keepalive, "30", 5, 65535, "seconds between MQTT pings"),
    M2A_BIND_ENUM(T, "protocol", protocol, "5",
                  M2A_BIND_CHOICES({"311", M2A_MQTT_V311}, {"5", M2A_MQTT_V5}),
                  "MQTT version: 311 or 5"),
    M2A_BIND_STR(T, "username", username, NULL, M2A_BIND_NULLABLE, "MQTT user name", MQTTS,
                 .check = check_mqtt_string),
    M2A_BIND_STR(T, "password", password, NULL, M2A_BIND_NULLABLE | M2A_BIND_SECRET,
                 "MQTT password", MQTTS),
    M2A_BIND_SECRET_FILE(T, "password_file", password, "file holding the MQTT password", MQTTS),
    M2A_BIND_INT(T, "receive_maximum", receive_maximum, "65535", 1, 65535,
                 "MQTT 5 in-flight messages the broker may send"),
    M2A_BIND_U32(T, "session_expiry", session_expiry, "604800", 0, UINT32_MAX,
                 "MQTT 5 session expiry interval, seconds"),
    M2A_BIND_STR(T, "share_group", share_group, NULL, RO, "subscribe as $share/GROUP/filter", MQTTS,
                 .check = check_share_group),
    M2A_BIND_INT(T, "reconnect_min_ms", reconnect_min_ms, "100", 1, MS_MAX,
                 "first reconnect delay, ms"),
    M2A_BIND_INT(T, "reconnect_max_ms", reconnect_max_ms, "30000", 1, MS_MAX,
                 "longest reconnect delay, ms"),
    M2A_BIND_DURATION(T, "connect_timeout", connect_timeout_ms, "10s", 100, MS_MAX,
                      "from a connect attempt to the CONNACK"),
    M2A_BIND_SIZE(T, "max_message_bytes", max_message_bytes, "16MiB", 1,
                  M2A_MQTT_PACKET_MAX - M2A_MQTT_PUBLISH_OVERHEAD,
                  "largest payload bridged; MQTT 5: the broker sends nothing larger"),
    M2A_BIND_SECTION(T, "tls", tls, tls_section, "TLS to the MQTT broker"),
};
static const struct m2a_bind_section mqtt_section = {M2A_BIND_OPTS(mqtt_opts), .check = mqtt_check};
#undef T

#define T struct m2a_conf_exchange
static const struct m2a_bind_opt exchange_opts[] = {
    M2A_BIND_STR(T, "name", name, NULL, REQ, "exchange name, an AMQP short string", SHORT,
                 .check = check_not_reserved, .unique = "exchange", .unique_verb = "declared"),
    M2A_BIND_STR(T, "type", type, "topic", M2A_BIND_NONEMPTY, "exchange type", SHORT,
                 .check = check_exchange_type),
    M2A_BIND_BOOL(T, "durable", durable, "true", "survives a broker restart"),
    M2A_BIND_BOOL(T, "auto_delete", auto_delete, "false", "deleted when its last binding goes"),
    M2A_BIND_BOOL(T, "internal", internal, "false", "only other exchanges may publish to it"),
    M2A_BIND_ARGS(T, "arguments", args, nargs, "argument names: AMQP short strings", SHORT),
};
static const struct m2a_bind_section exchange_section = {M2A_BIND_ITEMS(T, exchange_opts, mark)};
#undef T

#define T struct m2a_conf_binding
static const struct m2a_bind_opt binding_opts[] = {
    M2A_BIND_STR(T, "exchange", exchange, NULL, M2A_BIND_REQUIRED,
                 "exchange name, an AMQP short string", SHORT),
    M2A_BIND_STR(T, "routing_key", routing_key, "#", 0, "binding key, an AMQP short string", SHORT),
    M2A_BIND_ARGS(T, "arguments", args, nargs, "argument names: AMQP short strings", SHORT),
};
static const struct m2a_bind_section binding_section = {M2A_BIND_ITEMS(T, binding_opts, mark),
                                                        .check = binding_check};
#undef T

#define T struct m2a_conf_queue
static const struct m2a_bind_opt queue_opts[] = {
    M2A_BIND_STR(T, "name", name, NULL, REQ, "queue name, an AMQP short string", SHORT,
                 .check = check_not_reserved, .unique = "queue", .unique_verb = "declared"),
    M2A_BIND_BOOL(T, "durable", durable, "true", "survives a broker restart"),
    M2A_BIND_BOOL(T, "exclusive", exclusive, "false", "used by one connection only"),
    M2A_BIND_BOOL(T, "auto_delete", auto_delete, "false", "deleted when its last consumer goes"),
    M2A_BIND_ARGS(T, "arguments", args, nargs, "argument names: AMQP short strings", SHORT),
    M2A_BIND_LIST(T, "bindings", bindings, nbindings, binding_section, "what the queue receives"),
};
static const struct m2a_bind_section queue_section = {M2A_BIND_ITEMS(T, queue_opts, mark),
                                                      .check = queue_check};
#undef T

#define T struct m2a_conf_amqp
/* Exchanges come before queues: bindings are checked against them. */
static const struct m2a_bind_opt topology_opts[] = {
    M2A_BIND_LIST(T, "exchanges", exchanges, nexchanges, exchange_section, "exchanges to declare"),
    M2A_BIND_LIST(T, "queues", queues, nqueues, queue_section, "queues to declare and bind"),
};
static const struct m2a_bind_section topology_section = {M2A_BIND_OPTS(topology_opts)};

static const struct m2a_bind_opt amqp_opts[] = {
    M2A_BIND_STRS(T, "hosts", hosts, nhosts, M2A_BIND_NONEMPTY,
                  "cluster nodes to try in turn, HOST:PORT each", .check = check_hostport),
    M2A_BIND_STR(T, "host", host, "127.0.0.1", M2A_BIND_NONEMPTY, "RabbitMQ host"),
    M2A_BIND_INT(T, "port", port, "5672", 1, 65535, "RabbitMQ TCP port"),
    M2A_BIND_STR(T, "vhost", vhost, "/", M2A_BIND_NONEMPTY, "virtual host, an AMQP short string",
                 SHORT),
    M2A_BIND_STR(T, "username", username, "guest", M2A_BIND_NONEMPTY, "AMQP user name"),
    M2A_BIND_STR(T, "password", password, "guest", M2A_BIND_SECRET, "AMQP password"),
    M2A_BIND_SECRET_FILE(T, "password_file", password, "file holding the AMQP password"),
    M2A_BIND_INT(T, "heartbeat", heartbeat, "30", 0, 3600, "AMQP heartbeat, seconds, 0 disables"),
    M2A_BIND_INT(T, "confirm_window", confirm_window, "1000", 1, 65535,
                 "most unconfirmed publishes in flight"),
    M2A_BIND_SIZE(T, "max_inflight_bytes", max_inflight_bytes, "32MiB", 64 * KiB, INT64_MAX,
                  "bytes of unconfirmed messages held at most (one message always fits)"),
    M2A_BIND_INT(T, "reconnect_min_ms", reconnect_min_ms, "100", 1, MS_MAX,
                 "first reconnect delay, ms"),
    M2A_BIND_INT(T, "reconnect_max_ms", reconnect_max_ms, "30000", 1, MS_MAX,
                 "longest reconnect delay, ms"),
    M2A_BIND_ENUM(T, "mqtt_headers", mqtt_headers, "all",
                  M2A_BIND_CHOICES({"all", M2A_MQTT_HEADERS_ALL}, {"topic", M2A_MQTT_HEADERS_TOPIC},
                                   {"none", M2A_MQTT_HEADERS_NONE}),
                  "x-mqtt-* headers on each message: all, topic or none"),
    M2A_BIND_SECTION(T, "tls", tls, tls_section, "TLS to RabbitMQ"),
    /* the topology's lists live in struct m2a_conf_amqp itself */
    M2A_BIND_INLINE("topology", topology_section, "exchanges and queues declared at connect"),
};
static const struct m2a_bind_section amqp_section = {M2A_BIND_OPTS(amqp_opts), .check = amqp_check};
#undef T

#define T struct m2a_conf_spool
static const struct m2a_bind_opt spool_opts[] = {
    M2A_BIND_STR(T, "dir", dir, "/var/lib/mqtt2amqp", M2A_BIND_NONEMPTY, "spool directory"),
    M2A_BIND_SIZE(T, "max_bytes", max_bytes, "1GiB", 64 * KiB, INT64_MAX, "spool size limit"),
    M2A_BIND_SIZE(T, "segment_bytes", segment_bytes, "64MiB", 64 * KiB, GiB, "segment file size"),
    M2A_BIND_ENUM(T, "fsync", fsync, "batch",
                  M2A_BIND_CHOICES({"batch", M2A_FSYNC_BATCH}, {"interval", M2A_FSYNC_INTERVAL},
                                   {"never", M2A_FSYNC_NEVER}),
                  "when appends are fsynced"),
    M2A_BIND_ENUM(
        T, "overflow", overflow, "block",
        M2A_BIND_CHOICES({"block", M2A_OVERFLOW_BLOCK}, {"drop_oldest", M2A_OVERFLOW_DROP_OLDEST}),
        "when full: block or drop_oldest"),
    M2A_BIND_DURATION(T, "max_age", max_age_ms, "0", 0, 10 * DAY_MS * 365,
                      "records older than this are dead-lettered, 0 never"),
};
static const struct m2a_bind_section spool_section = {M2A_BIND_OPTS(spool_opts),
                                                      .check = spool_check};
#undef T

#define T struct m2a_conf_dead_letter
static const struct m2a_bind_opt dead_letter_opts[] = {
    M2A_BIND_STR(T, "exchange", exchange, NULL, M2A_BIND_REQUIRED,
                 "exchange name, an AMQP short string", SHORT),
    M2A_BIND_STR(T, "routing_key", routing_key, "{route}", 0, "template of {route} and {reason}",
                 .check = m2a_policy_key_check),
    M2A_BIND_INT(T, "max_retries", max_retries, "10", 0, 1000000,
                 "re-publishes after a nack before dead-lettering"),
};
static const struct m2a_bind_section dead_letter_section = {
    M2A_BIND_OPTS(dead_letter_opts), .mark = M2A_BIND_MARK(T, mark),
    .present = M2A_BIND_PRESENT(T, enabled), .check = dead_letter_check};
#undef T

#define T struct m2a_conf_route
static const struct m2a_bind_opt route_opts[] = {
    M2A_BIND_STR(T, "name", name, NULL, REQ, "route name", SHORT, .unique = "route name"),
    M2A_BIND_STR(T, "topic", topic, NULL, REQ, "MQTT topic filter"),
    M2A_BIND_STR(T, "exchange", exchange, NULL, M2A_BIND_REQUIRED,
                 "exchange name, an AMQP short string", SHORT),
    M2A_BIND_STR(T, "routing_key", routing_key, NULL, RO, "routing key template"),
    M2A_BIND_BOOL(T, "persistent", persistent, "true", "delivery mode 2"),
    M2A_BIND_STR(T, "content_type", content_type, NULL, RO, "content_type, an AMQP short string",
                 SHORT),
    M2A_BIND_MAP(T, "headers", headers, nheaders, "header names: AMQP short strings", SHORT),
    M2A_BIND_BOOL(T, "continue", cont, "false", "keep matching later routes"),
    M2A_BIND_ENUM(T, "unroutable", unroutable, "dead_letter",
                  M2A_BIND_CHOICES({"dead_letter", M2A_UNROUTABLE_DEAD_LETTER},
                                   {"drop", M2A_UNROUTABLE_DROP}, {"retry", M2A_UNROUTABLE_RETRY}),
                  "on basic.return: dead_letter, drop or retry"),
    M2A_BIND_ENUM(T, "retained", retained, "forward",
                  M2A_BIND_CHOICES({"forward", M2A_RETAINED_FORWARD}, {"skip", M2A_RETAINED_SKIP}),
                  "messages with the retain flag: forward or skip (counted)"),
};
static const struct m2a_bind_section route_section = {M2A_BIND_ITEMS(T, route_opts, mark),
                                                      .check = route_check};
#undef T

#define T struct m2a_conf_downlink
static const struct m2a_bind_opt downlink_opts[] = {
    M2A_BIND_STR(T, "name", name, NULL, REQ, "downlink name", SHORT, .unique = "downlink name"),
    M2A_BIND_STR(T, "queue", queue, NULL, REQ, "queue consumed, declared in amqp.topology", SHORT),
    M2A_BIND_STR(T, "topic", topic, NULL, REQ, "MQTT topic template"),
    M2A_BIND_INT(T, "qos", qos, "1", 0, 1, "MQTT QoS of the publishes: 0 or 1"),
    M2A_BIND_ENUM(T, "retain", retain, "false",
                  M2A_BIND_CHOICES({"false", M2A_DOWNLINK_RETAIN_FALSE},
                                   {"true", M2A_DOWNLINK_RETAIN_TRUE},
                                   {"from_header", M2A_DOWNLINK_RETAIN_FROM_HEADER}),
                  "MQTT retain flag: false, true or from_header (x-mqtt-retain)"),
    M2A_BIND_INT(T, "prefetch", prefetch, "100", 1, 65535,
                 "deliveries in flight at most (not yet PUBACKed)"),
};
static const struct m2a_bind_section downlink_section = {M2A_BIND_ITEMS(T, downlink_opts, mark),
                                                         .check = downlink_check};
#undef T

#define T struct m2a_conf_log
static const struct m2a_bind_opt log_opts[] = {
    /* names only: log.c gives the values */
    M2A_BIND_ENUM(T, "level", level, "info",
                  M2A_BIND_CHOICES({"error"}, {"warn"}, {"info"}, {"debug"}),
                  "error, warn, info or debug", .parse = parse_log_level),
    M2A_BIND_ENUM(T, "format", format, "text", M2A_BIND_CHOICES({"text"}, {"json"}), "text or json",
                  .parse = parse_log_format),
    M2A_BIND_INT(T, "stats_interval", stats_interval, "30", 0, 86400,
                 "seconds between stats lines, 0 off"),
};
static const struct m2a_bind_section log_section = {M2A_BIND_OPTS(log_opts)};
#undef T

#define T struct m2a_conf_metrics
static const struct m2a_bind_opt metrics_opts[] = {
    M2A_BIND_STR(T, "listen", listen, "127.0.0.1:9464", M2A_BIND_NONEMPTY,
                 "HOST:PORT of /metrics, /healthz and /readyz", .check = check_listen),
};
static const struct m2a_bind_section metrics_section = {M2A_BIND_OPTS(metrics_opts),
                                                        .present = M2A_BIND_PRESENT(T, enabled)};
#undef T

#define T struct m2a_config
/* amqp before dead_letter and routes: they are checked against the declared
 * exchanges; mqtt before routes: their subscriptions carry its share_group;
 * dead_letter before routes: unroutable: dead_letter needs it. */
static const struct m2a_bind_opt top_opts[] = {
    M2A_BIND_SECTION(T, "mqtt", mqtt, mqtt_section, "the MQTT side"),
    M2A_BIND_SECTION(T, "amqp", amqp, amqp_section, "the RabbitMQ side"),
    M2A_BIND_SECTION(T, "spool", spool, spool_section, "the on-disk retry queue"),
    M2A_BIND_SECTION(T, "dead_letter", dead_letter, dead_letter_section, "undeliverable messages"),
    M2A_BIND_LIST(T, "routes", routes, nroutes, route_section, "MQTT filter -> exchange mappings"),
    M2A_BIND_LIST(T, "downlinks", downlinks, ndownlinks, downlink_section,
                  "queue -> MQTT topic mappings (AMQP -> MQTT)"),
    M2A_BIND_SECTION(T, "log", log, log_section, "logging"),
    M2A_BIND_SECTION(T, "metrics", metrics, metrics_section,
                     "Prometheus metrics and health endpoints"),
    M2A_BIND_INT(T, "shutdown_timeout", shutdown_timeout, "10", 0, 3600,
                 "seconds to drain the spool on shutdown"),
};
static const struct m2a_bind_section top_section = {M2A_BIND_OPTS(top_opts), .check = top_check};
#undef T

/* ---- loading --------------------------------------------------------------- */

int m2a_config_load_buffer(const char *name, const char *data, size_t len, struct m2a_config **out,
                           char *err, size_t errlen)
{
    struct m2a_config *cfg = xcalloc(1, sizeof(*cfg));
    cfg->path = xstrdup(name);
    int rc = m2a_bind_parse(&top_section, cfg, cfg, name, data, len, err, errlen);
    /* A section left out was never checked: its broker is the shorthand's
     * defaults. */
    if (rc == 0 && !cfg->mqtt.endpoints)
        default_endpoint(&cfg->mqtt.endpoints, &cfg->mqtt.nendpoints, cfg->mqtt.host,
                         cfg->mqtt.port);
    if (rc == 0 && !cfg->amqp.endpoints)
        default_endpoint(&cfg->amqp.endpoints, &cfg->amqp.nendpoints, cfg->amqp.host,
                         cfg->amqp.port);
    if (rc) {
        m2a_config_free(cfg);
        cfg = NULL;
    }
    *out = cfg;
    return rc;
}

int m2a_config_load(const char *path, struct m2a_config **out, char *err, size_t errlen)
{
    char *data = NULL;
    size_t len = 0;
    *out = NULL;
    int rc = m2a_bind_read_file(path, &data, &len, err, errlen);
    if (rc == 0)
        rc = m2a_config_load_buffer(path, data, len, out, err, errlen);
    free(data);
    return rc;
}

void m2a_config_free(struct m2a_config *cfg)
{
    if (!cfg)
        return;
    free_endpoints(cfg->mqtt.endpoints, cfg->mqtt.nendpoints);
    free_endpoints(cfg->amqp.endpoints, cfg->amqp.nendpoints);
    m2a_bind_free(&top_section, cfg);
    free(cfg->path);
    free(cfg);
}
