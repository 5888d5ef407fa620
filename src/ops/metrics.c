/* metrics.c - /metrics, /healthz and /readyz over libmicrohttpd; see
 * metrics.h.
 *
 * Threads: libmicrohttpd's internal epoll thread answers every request
 * (one at a time) and only reads: relaxed atomics, the spool's stats under
 * its lock, the route registry (lock-free). start/stop run on the main
 * thread. We bind the listening socket ourselves so a taken port fails the
 * start with errno's sentence. libmicrohttpd's own messages go through our
 * log, rate-limited by one limiter per thread that emits them.
 *
 * Slow clients (issue 9): libmicrohttpd times a connection out only after
 * IDLE_TIMEOUT_S without a byte, so a client that trickles a header line
 * every few seconds keeps its slot for as long as it likes; 32 of them used
 * to take every slot and fail the health probes. The defence is room that
 * costs little: one epoll thread, up to M2A_METRICS_MAX_CONNECTIONS
 * connections (fewer when RLIMIT_NOFILE would not leave the bridge its own
 * descriptors), half of them at most from one address, 16 KiB of buffer
 * each. */
#include "mqtt2amqp/metrics.h"

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/hostport.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/ratelimit.h"
#include "mqtt2amqp/route_stats.h"

#define COMPONENT       "metrics"
#define IDLE_TIMEOUT_S  5
#define CONN_MEMORY     (16 * 1024) /* per connection: request headers and reply head */
#define LISTEN_BACKLOG  128
#define LOG_INTERVAL_MS 10000

struct m2a_metrics {
    struct m2a_metrics_opts o;
    struct MHD_Daemon *daemon;
};

/* ---- exposition -------------------------------------------------------- */

static void appendf(struct m2a_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void appendf(struct m2a_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    m2a_buf_reserve(b, (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void header(struct m2a_buf *b, const char *name, const char *type, const char *help)
{
    appendf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void single(struct m2a_buf *b, const char *name, const char *type, const char *help,
                   uint64_t v)
{
    header(b, name, type, help);
    appendf(b, "%s %" PRIu64 "\n", name, v);
}

/* A label value with \, " and newline escaped, as the text format wants. */
static void label_value(struct m2a_buf *b, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"')
            m2a_buf_append_char(b, '\\');
        if (*s == '\n')
            m2a_buf_append_str(b, "\\n");
        else
            m2a_buf_append_char(b, *s);
    }
}

struct route_series {
    const char *name;
    const char *help;
    size_t off; /* of the counter in struct m2a_route_counters */
};

static const struct route_series route_series[] = {
    {"mqtt2amqp_route_matched_total", "MQTT messages the route matched",
     offsetof(struct m2a_route_counters, matched)},
    {"mqtt2amqp_route_published_total", "basic.publish sent for the route, re-publishes included",
     offsetof(struct m2a_route_counters, published)},
    {"mqtt2amqp_route_confirmed_total", "basic.ack received for the route's messages",
     offsetof(struct m2a_route_counters, confirmed)},
    {"mqtt2amqp_route_returned_total", "the route's messages returned unroutable (basic.return)",
     offsetof(struct m2a_route_counters, returned)},
    {"mqtt2amqp_route_dead_lettered_total", "dead letters made of the route's messages",
     offsetof(struct m2a_route_counters, dead_lettered)},
    {"mqtt2amqp_route_dropped_total", "the route's messages given up without a dead letter",
     offsetof(struct m2a_route_counters, dropped)},
    {"mqtt2amqp_route_retained_skipped_total",
     "retained messages the route skipped (retained: skip)",
     offsetof(struct m2a_route_counters, retained_skipped)},
};

static void render_routes(struct m2a_buf *b, struct m2a_route_stats *rs)
{
    size_t n = m2a_route_stats_count(rs);
    for (size_t k = 0; k < sizeof(route_series) / sizeof(route_series[0]); k++) {
        header(b, route_series[k].name, "counter", route_series[k].help);
        for (size_t i = 0; i < n; i++) {
            char *base = (char *)m2a_route_stats_at(rs, i);
            _Atomic uint64_t *ctr = (_Atomic uint64_t *)(base + route_series[k].off);
            appendf(b, "%s{route=\"", route_series[k].name);
            label_value(b, m2a_route_stats_name(rs, i));
            appendf(b, "\"} %" PRIu64 "\n", atomic_load_explicit(ctr, memory_order_relaxed));
        }
    }
}

static void render_latency(struct m2a_buf *b, struct m2a_route_stats *rs)
{
    const char *name = "mqtt2amqp_confirm_latency_seconds";
    struct m2a_latency_snapshot l;
    m2a_route_stats_latency(rs, &l);
    header(b, name, "histogram", "time from basic.publish to its basic.ack");
    uint64_t cum = 0;
    for (size_t i = 0; i < M2A_LATENCY_BUCKETS; i++) {
        cum += l.bucket[i];
        appendf(b, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, m2a_latency_bounds_s[i], cum);
    }
    cum += l.bucket[M2A_LATENCY_BUCKETS];
    appendf(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
    appendf(b, "%s_sum %.6f\n%s_count %" PRIu64 "\n", name, (double)l.sum_us / 1e6, name, cum);
}

/* Which broker of its list each side is connected to: 1 for that one, 0 for
 * the others (all 0 while disconnected). */
static void render_brokers(struct m2a_buf *b, const struct m2a_metrics_opts *o)
{
    static const char *const sides[] = {"mqtt", "amqp"};
    const struct m2a_conf_endpoint *lists[] = {o->mqtt_endpoints, o->amqp_nodes};
    const size_t lens[] = {o->mqtt_nendpoints, o->namqp_nodes};
    const unsigned cur[] = {M2A_STAT_GET(o->stats, mqtt_endpoint),
                            M2A_STAT_GET(o->stats, amqp_node)};
    if (!lens[0] && !lens[1])
        return;
    header(b, "mqtt2amqp_broker_connected", "gauge",
           "1 for the broker a side is connected to, 0 for the others of its list");
    for (size_t s = 0; s < 2; s++)
        for (size_t i = 0; i < lens[s]; i++) {
            char name[M2A_HOSTPORT_MAX];
            appendf(b, "mqtt2amqp_broker_connected{side=\"%s\",host=\"", sides[s]);
            label_value(
                b, m2a_hostport_format(name, sizeof(name), lists[s][i].host, lists[s][i].port));
            appendf(b, "\"} %d\n", cur[s] == i + 1);
        }
}

/* The MQTT side's subscriptions and session take-overs. */
static void render_mqtt(struct m2a_buf *b, const struct m2a_metrics_opts *o)
{
    struct m2a_stats *st = o->stats;
    single(b, "mqtt2amqp_mqtt_subscribe_refusals_total", "counter",
           "SUBACKs with a failure code (each retry counts)",
           M2A_STAT_GET(st, mqtt_subscribe_refusals));
    single(b, "mqtt2amqp_mqtt_subscriptions_refused", "gauge",
           "subscriptions the MQTT broker refuses now",
           M2A_STAT_GET(st, mqtt_subscriptions_refused));
    single(b, "mqtt2amqp_mqtt_takeovers_total", "counter",
           "MQTT sessions closed by the broker soon after CONNACK, repeatedly: another client "
           "with the same client_id",
           M2A_STAT_GET(st, mqtt_takeovers));
}

struct downlink_series {
    const char *name;
    const char *type;
    const char *help;
    size_t off; /* of the counter in struct m2a_downlink_counters */
};

static const struct downlink_series downlink_series[] = {
    {"mqtt2amqp_downlink_received_total", "counter", "messages delivered from the queue",
     offsetof(struct m2a_downlink_counters, received)},
    {"mqtt2amqp_downlink_published_total", "counter", "MQTT PUBLISHes sent, redeliveries included",
     offsetof(struct m2a_downlink_counters, published)},
    {"mqtt2amqp_downlink_acked_total", "counter",
     "messages acknowledged to RabbitMQ after the MQTT broker's PUBACK",
     offsetof(struct m2a_downlink_counters, acked)},
    {"mqtt2amqp_downlink_rejected_total", "counter",
     "messages rejected without requeue (to the queue's dead-letter exchange)",
     offsetof(struct m2a_downlink_counters, rejected)},
    {"mqtt2amqp_downlink_in_flight", "gauge", "messages published, not yet acknowledged",
     offsetof(struct m2a_downlink_counters, inflight)},
};

static void render_downlinks(struct m2a_buf *b, const struct m2a_stats *st)
{
    if (!st->ndownlinks)
        return;
    for (size_t k = 0; k < sizeof(downlink_series) / sizeof(downlink_series[0]); k++) {
        header(b, downlink_series[k].name, downlink_series[k].type, downlink_series[k].help);
        for (size_t i = 0; i < st->ndownlinks; i++) {
            char *base = (char *)&st->downlinks[i];
            _Atomic uint64_t *ctr = (_Atomic uint64_t *)(base + downlink_series[k].off);
            appendf(b, "%s{downlink=\"", downlink_series[k].name);
            label_value(b, st->downlinks[i].name);
            appendf(b, "\"} %" PRIu64 "\n", atomic_load_explicit(ctr, memory_order_relaxed));
        }
    }
    header(b, "mqtt2amqp_downlink_connected", "gauge",
           "1 while the downlinks' connection to the side is up");
    appendf(b, "mqtt2amqp_downlink_connected{side=\"mqtt\"} %d\n",
            M2A_STAT_GET(st, downlink_mqtt_connected));
    appendf(b, "mqtt2amqp_downlink_connected{side=\"amqp\"} %d\n",
            M2A_STAT_GET(st, downlink_amqp_connected));
}

void m2a_metrics_render(const struct m2a_metrics_opts *o, struct m2a_buf *b)
{
    struct m2a_stats *st = o->stats;
    struct m2a_spool_stats ss;
    m2a_spool_get_stats(o->spool, &ss);

    header(b, "mqtt2amqp_build_info", "gauge", "version of the running bridge");
    appendf(b, "mqtt2amqp_build_info{version=\"%s\"} 1\n", M2A_VERSION);
#define COUNTER(n, f, h) single(b, "mqtt2amqp_" n "_total", "counter", h, M2A_STAT_GET(st, f))
    COUNTER("received", received, "MQTT messages received");
    COUNTER("unmatched", unmatched, "MQTT messages no route matched");
    COUNTER("retained_skipped", retained_skipped, "retained messages a route skipped");
    COUNTER("retained_resends", retained_resends,
            "MQTT 3.1.1 retained messages resent by a resubscription, skipped");
    COUNTER("route_errors", route_errors, "routing key or template failures");
    COUNTER("spooled", spooled, "records appended to the spool");
    COUNTER("spooled_bytes", spooled_bytes, "encoded bytes appended to the spool");
    COUNTER("spool_errors", spool_errors, "spool append or flush failures (batch redelivered)");
    COUNTER("published", published, "basic.publish sent, re-publishes included");
    COUNTER("confirmed", confirmed, "basic.ack received");
    COUNTER("returned", returned, "basic.return received (unroutable)");
    COUNTER("nacked", nacked, "basic.nack received");
    COUNTER("dead_lettered", dead_lettered, "dead letters made");
    COUNTER("dropped", dropped, "messages given up without a dead letter");
    COUNTER("expired", expired, "records older than spool.max_age");
#undef COUNTER
    render_routes(b, st->routes);

    single(b, "mqtt2amqp_spool_messages", "gauge", "records in the spool not yet confirmed",
           ss.messages);
    single(b, "mqtt2amqp_spool_bytes", "gauge", "bytes of spool segments not yet deleted",
           ss.bytes);
    single(b, "mqtt2amqp_spool_max_bytes", "gauge", "spool.max_bytes", o->spool_max_bytes);
    single(b, "mqtt2amqp_spool_segments", "gauge", "spool segment files", ss.segments);

    header(b, "mqtt2amqp_connected", "gauge", "1 while the side's connection is up");
    appendf(b, "mqtt2amqp_connected{side=\"mqtt\"} %d\n", M2A_STAT_GET(st, mqtt_connected));
    appendf(b, "mqtt2amqp_connected{side=\"amqp\"} %d\n", M2A_STAT_GET(st, amqp_connected));
    header(b, "mqtt2amqp_reconnects_total", "counter", "connections made after the first");
    appendf(b, "mqtt2amqp_reconnects_total{side=\"mqtt\"} %" PRIu64 "\n",
            M2A_STAT_GET(st, mqtt_reconnects));
    appendf(b, "mqtt2amqp_reconnects_total{side=\"amqp\"} %" PRIu64 "\n",
            M2A_STAT_GET(st, amqp_reconnects));
    render_brokers(b, o);
    single(b, "mqtt2amqp_amqp_blocked", "gauge", "1 while RabbitMQ blocks publishing",
           (uint64_t)M2A_STAT_GET(st, amqp_blocked));
    single(b, "mqtt2amqp_mqtt_paused", "gauge", "1 while MQTT reads pause on a full spool",
           (uint64_t)M2A_STAT_GET(st, mqtt_paused));
    render_mqtt(b, o);
    render_downlinks(b, st);
    render_latency(b, st->routes);
}

bool m2a_metrics_ready(const struct m2a_metrics_opts *o, char *why, size_t len)
{
    size_t used = 0;
    why[0] = '\0';
#define REASON(...)                                                                                \
    do {                                                                                           \
        int n_ = snprintf(why + used, len - used, __VA_ARGS__);                                    \
        if (n_ > 0)                                                                                \
            used += (size_t)n_ < len - used ? (size_t)n_ : len - used - 1;                         \
    } while (0)
    if (!M2A_STAT_GET(o->stats, mqtt_connected))
        REASON("mqtt: not connected\n");
    if (M2A_STAT_GET(o->stats, mqtt_subscriptions_refused)) {
        char refused[M2A_STATS_NOTE_MAX];
        m2a_stats_note_get(&o->stats->mqtt_refused, refused, sizeof(refused));
        REASON("%s", refused[0] ? refused : "mqtt: a subscription is refused by the broker\n");
    }
    if (!M2A_STAT_GET(o->stats, amqp_connected))
        REASON("amqp: not connected\n");
    if (o->stats->ndownlinks && !M2A_STAT_GET(o->stats, downlink_mqtt_connected))
        REASON("downlink: mqtt not connected\n");
    if (o->stats->ndownlinks && !M2A_STAT_GET(o->stats, downlink_amqp_connected))
        REASON("downlink: amqp not connected\n");
    if (o->spool_max_bytes) {
        struct m2a_spool_stats ss;
        m2a_spool_get_stats(o->spool, &ss);
        uint64_t high = o->spool_max_bytes - o->spool_max_bytes / 10;
        if (ss.bytes >= high)
            REASON("spool: %" PRIu64 " of %" PRIu64 " bytes, at or above the 90%% high-water "
                   "mark\n",
                   ss.bytes, o->spool_max_bytes);
    }
#undef REASON
    return used == 0;
}

/* ---- HTTP -------------------------------------------------------------- */

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *ctype,
                             const void *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    MHD_add_response_header(r, "Cache-Control", "no-store");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result text(struct MHD_Connection *conn, unsigned status, const char *s)
{
    return reply(conn, status, "text/plain; charset=utf-8", s, strlen(s));
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload;
    struct m2a_metrics *m = cls;
    if (*con_cls == NULL) { /* first call: headers only; answer on the next */
        *con_cls = m;
        return MHD_YES;
    }
    if (*upload_size) { /* a body we do not want */
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return text(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    if (strcmp(url, "/metrics") == 0) {
        struct m2a_buf b = {0};
        m2a_metrics_render(&m->o, &b);
        enum MHD_Result r =
            reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", b.data, b.len);
        m2a_buf_free(&b);
        return r;
    }
    if (strcmp(url, "/healthz") == 0) {
        uint64_t beat = atomic_load_explicit(m->o.heartbeat_ms, memory_order_relaxed);
        uint64_t now = m2a_now_ms();
        if (now - beat < M2A_HEALTH_STALL_MS)
            return text(conn, MHD_HTTP_OK, "ok\n");
        char msg[128];
        snprintf(msg, sizeof(msg), "main loop stalled for %" PRIu64 " ms\n", now - beat);
        return text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, msg);
    }
    if (strcmp(url, "/readyz") == 0) {
        char why[2048];
        if (m2a_metrics_ready(&m->o, why, sizeof(why)))
            return text(conn, MHD_HTTP_OK, "ready\n");
        return text(conn, MHD_HTTP_SERVICE_UNAVAILABLE, why);
    }
    return text(conn, MHD_HTTP_NOT_FOUND, "not found: try /metrics, /healthz or /readyz\n");
}

/* libmicrohttpd's messages (a client that went away mid-request, a
 * refused connection...) come once per connection: a slow or hostile client
 * would flood the log. At most one line per LOG_INTERVAL_MS per thread
 * (the epoll thread, and the main thread during start and stop), saying
 * how many were swallowed. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    static _Thread_local struct m2a_ratelimit rl = M2A_RATELIMIT_INIT(LOG_INTERVAL_MS);
    uint64_t sup;
    if (!m2a_ratelimit_ok(&rl, &sup))
        return;
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    if (sup)
        m2a_warn(COMPONENT, "%s (%" PRIu64 " more HTTP server messages not logged)", line, sup);
    else
        m2a_warn(COMPONENT, "%s", line);
}

unsigned m2a_metrics_connection_limit(uint64_t nofile)
{
    if (nofile >= (uint64_t)M2A_METRICS_MAX_CONNECTIONS + M2A_METRICS_FD_RESERVE)
        return M2A_METRICS_MAX_CONNECTIONS;
    if (nofile >= 2 * (uint64_t)M2A_METRICS_FD_RESERVE)
        return (unsigned)(nofile - M2A_METRICS_FD_RESERVE);
    return nofile >= 16 ? (unsigned)(nofile / 4) : 4;
}

/* A listening socket on "HOST:PORT"; -1 with a sentence in err. */
static int listen_on(const char *spec, bool *v6, char *err, size_t errlen)
{
    char host[M2A_HOST_MAX + 1], port[8];
    int p;
    if (m2a_hostport_parse(spec, 0, host, sizeof(host), &p, err, errlen) != 0)
        return -1;
    snprintf(port, sizeof(port), "%d", p);
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    int grc = getaddrinfo(host, port, &hints, &ai);
    if (grc != 0) {
        snprintf(err, errlen, "cannot resolve '%s': %s", host, gai_strerror(grc));
        return -1;
    }
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s", spec, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    *v6 = ai->ai_family == AF_INET6;
    freeaddrinfo(ai);
    return fd;
}

int m2a_metrics_start(const struct m2a_metrics_opts *opts, struct m2a_metrics **out, char *err,
                      size_t errlen)
{
    if (!opts->listen || !opts->stats || !opts->spool || !opts->heartbeat_ms) {
        snprintf(err, errlen, "missing listen address, stats, spool or heartbeat");
        return M2A_ERR_ARG;
    }
    bool v6 = false;
    int fd = listen_on(opts->listen, &v6, err, errlen);
    if (fd < 0)
        return M2A_ERR_IO;
    struct rlimit rl = {0};
    uint64_t nofile = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                          ? (uint64_t)rl.rlim_cur
                          : UINT64_MAX;
    unsigned limit = m2a_metrics_connection_limit(nofile);
    if (limit < M2A_METRICS_MAX_CONNECTIONS)
        m2a_warn(COMPONENT,
                 "the open-file limit (%" PRIu64 ") allows the HTTP server only %u connections "
                 "instead of %u: raise it (LimitNOFILE=, ulimit -n) to %u or more",
                 nofile, limit, M2A_METRICS_MAX_CONNECTIONS,
                 M2A_METRICS_MAX_CONNECTIONS + M2A_METRICS_FD_RESERVE);
    struct m2a_metrics *m = xcalloc(1, sizeof(*m));
    m->o = *opts;
    unsigned flags =
        (MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES ? MHD_USE_EPOLL_INTERNAL_THREAD
                                                                : MHD_USE_POLL_INTERNAL_THREAD) |
        MHD_USE_ERROR_LOG | (v6 ? MHD_USE_IPv6 : 0);
    m->daemon =
        MHD_start_daemon(flags, 0, NULL, NULL, handle, m, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                         MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_LIMIT, limit,
                         MHD_OPTION_PER_IP_CONNECTION_LIMIT, limit / 2,
                         MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)IDLE_TIMEOUT_S,
                         MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY, MHD_OPTION_END);
    if (!m->daemon) {
        snprintf(err, errlen, "cannot start the HTTP server on %s", opts->listen);
        close(fd);
        free(m);
        return M2A_ERR_IO;
    }
    *out = m;
    return 0;
}

void m2a_metrics_stop(struct m2a_metrics *m)
{
    if (!m)
        return;
    MHD_stop_daemon(m->daemon); /* closes the listening socket */
    free(m);
}
