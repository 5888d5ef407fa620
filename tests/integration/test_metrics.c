/* test_metrics.c - /metrics, /healthz and /readyz over HTTP (issue 5, item
 * 5): scraped while traffic flows, the per-route counters grow; once it
 * stops they equal what the consumer counted by sequence number. /readyz
 * follows a side going down and coming back. The endpoints keep answering
 * while 200 slow clients hold connections (issue 9). */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "flow.h"
#include "harness.h"
#include "http.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define TIMEOUT_MS 5000

/* Routes ra and rb: seq s goes to topics[s % 2]. */
static const char *const topics[] = {"metrics/a/1", "metrics/b/2"};

struct setup {
    struct th_mosq *mq;
    struct th_bridge *b;
    struct th_amqp *c;
    int http_port;
};

static void setup_start(struct setup *s)
{
    s->mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(s->mq);
    s->b = th_bridge_new(s->mq);
    s->http_port = th_free_port();
    th_bridge_set(s->b, "METRICS_PORT", "%d", s->http_port);
    ck_assert_int_eq(th_bridge_config(s->b, "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, "
                                            "client_id: it-metrics, reconnect_max_ms: 500}\n"
                                            "amqp:\n"
                                            "  port: ${AMQP_PORT}\n"
                                            "  topology:\n"
                                            "    exchanges: [{name: it.metrics, type: topic}]\n"
                                            "    queues:\n"
                                            "      - name: it.metrics\n"
                                            "        bindings: [{exchange: it.metrics}]\n"
                                            "spool: {dir: ${SPOOL_DIR}}\n"
                                            "routes:\n"
                                            "  - {name: ra, topic: \"metrics/a/#\", "
                                            "exchange: it.metrics}\n"
                                            "  - {name: rb, topic: \"metrics/b/#\", "
                                            "exchange: it.metrics}\n"
                                            "metrics: {listen: \"127.0.0.1:${METRICS_PORT}\"}\n"
                                            "log: {stats_interval: 0}\n"),
                     0);
    s->c = th_amqp_consumer(th_rabbit_port(), "it.metrics", "it.metrics", "#");
    ck_assert_ptr_nonnull(s->c);
    ck_assert_int_eq(th_bridge_start_ready(s->b, 60000), 0);
}

static void setup_free(struct setup *s)
{
    th_amqp_free(s->c);
    th_bridge_free(s->b);
    th_mosq_free(s->mq);
}

/* Scrapes /metrics; the body is the caller's. */
static char *scrape(int port)
{
    struct th_http_reply r;
    ck_assert_int_eq(th_http(port, "GET", "/metrics", TIMEOUT_MS, &r), 0);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(r.ctype);
    ck_assert_ptr_nonnull(strstr(r.ctype, "version=0.0.4"));
    char *body = r.body;
    r.body = NULL;
    th_http_reply_free(&r);
    return body;
}

static double metric(int port, const char *series)
{
    char *body = scrape(port);
    double v = th_metric(body, series);
    free(body);
    return v;
}

struct metric_wait {
    int port;
    const char *series;
    double at_least;
};

static bool metric_reached(void *arg)
{
    struct metric_wait *w = arg;
    return metric(w->port, w->series) >= w->at_least;
}

static int wait_metric(int port, const char *series, double at_least, int timeout_ms)
{
    struct metric_wait w = {port, series, at_least};
    return th_poll_until(metric_reached, &w, timeout_ms);
}

static int status_of(int port, const char *method, const char *path, char **body)
{
    struct th_http_reply r;
    ck_assert_int_eq(th_http(port, method, path, TIMEOUT_MS, &r), 0);
    int st = r.status;
    if (body) {
        *body = r.body;
        r.body = NULL;
    }
    th_http_reply_free(&r);
    return st;
}

struct status_wait {
    int port;
    const char *path;
    int want;
};

static bool status_is(void *arg)
{
    struct status_wait *w = arg;
    return status_of(w->port, "GET", w->path, NULL) == w->want;
}

static int wait_status(int port, const char *path, int want, int timeout_ms)
{
    struct status_wait w = {port, path, want};
    return th_poll_until(status_is, &w, timeout_ms);
}

/* Issue 14: a live scrape passes `promtool check metrics` (Debian's
 * prometheus package), and every metric name the shipped alerting rules
 * and Grafana dashboard use is in it. */
static void check_scrape_with_promtool_and_shipped_names(const char *body)
{
    const char *argv[] = {"promtool", "check", "metrics", NULL};
    struct th_run_result r;
    ck_assert_int_eq(th_run(argv, body, 30000, &r), 0);
    if (r.exit_code != 0)
        fprintf(stderr,
                "promtool check metrics (exit %d; 127: not installed, see "
                "scripts/deps.sh):\n%s%s\n",
                r.exit_code, r.out, r.err);
    ck_assert_int_eq(r.exit_code, 0);
    th_run_result_free(&r);

    static const char *const files[] = {M2A_SOURCE_DIR "/config/prometheus-alerts.yml",
                                        M2A_SOURCE_DIR "/config/grafana-dashboard.json"};
    for (size_t f = 0; f < sizeof(files) / sizeof(files[0]); f++) {
        char *text = th_read_file(files[f], NULL);
        ck_assert_ptr_nonnull(text);
        int names = 0;
        for (const char *p = strstr(text, "mqtt2amqp_"); p; p = strstr(p, "mqtt2amqp_")) {
            size_t n = strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_");
            char name[128];
            ck_assert_uint_lt(n, sizeof(name));
            memcpy(name, p, n);
            name[n] = '\0';
            p += n;
            /* a series line starts with the name, then '{' or ' ' */
            bool found = false;
            for (const char *l = body; l && *l && !found; l = strchr(l, '\n'), l = l ? l + 1 : l)
                found = strncmp(l, name, n) == 0 && (l[n] == '{' || l[n] == ' ');
            if (!found)
                fprintf(stderr, "%s uses %s, which /metrics does not serve\n", files[f], name);
            ck_assert(found);
            names++;
        }
        ck_assert_int_gt(names, 10);
        free(text);
    }
}

START_TEST(counters_grow_during_traffic_and_equal_deliveries_after)
{
    struct setup s = {0};
    setup_start(&s);
    ck_assert_int_eq(wait_status(s.http_port, "/readyz", 200, 10000), 0);

    struct th_flow f = {
        .port = s.mq->port, .topics = topics, .ntopics = 2, .chunk = 500, .max = 400000};
    th_flow_start(&f);
    struct th_msgs got = {0};
    ck_assert_int_eq(th_amqp_collect(s.c, &got, 1000, 60000), 0);
    /* During traffic: each route's confirmed count goes up between scrapes.
     * RabbitMQ delivers a persistent message before it confirms it (after
     * its message store syncs), so the first confirms may trail the
     * consumer: wait for them rather than expect them. */
    const char *ca = "mqtt2amqp_route_confirmed_total{route=\"ra\"}";
    const char *cb = "mqtt2amqp_route_confirmed_total{route=\"rb\"}";
    ck_assert_int_eq(wait_metric(s.http_port, ca, 1, 60000), 0);
    ck_assert_int_eq(wait_metric(s.http_port, cb, 1, 60000), 0);
    double a0 = metric(s.http_port, ca), b0 = metric(s.http_port, cb);
    ck_assert(a0 > 0 && b0 > 0);
    ck_assert_int_eq(wait_metric(s.http_port, ca, a0 + 500, 60000), 0);
    ck_assert_int_eq(wait_metric(s.http_port, cb, b0 + 500, 60000), 0);
    ck_assert_int_eq(th_flow_wait_published(&f, atomic_load(&f.published) + 1000, 60000), 0);
    long n = th_flow_stop(&f);
    ck_assert(!atomic_load(&f.failed));

    int rc = th_amqp_collect(s.c, &got, (size_t)n, 120000);
    th_amqp_drain(s.c, &got, 300);
    struct th_delivery d = th_check_msgs(0, n, &got);
    ck_assert_int_eq(rc, 0);
    TH_ASSERT_EXACT(d);
    long na = 0, nb = 0; /* per route, from the consumer's side */
    for (size_t i = 0; i < got.n; i++) {
        const char *t = th_msg_header(&got.v[i], "x-mqtt-topic");
        na += t && strcmp(t, topics[0]) == 0;
        nb += t && strcmp(t, topics[1]) == 0;
    }
    ck_assert_int_eq(na + nb, n);

    /* After traffic: the confirms of the last messages may trail the
     * consumer by a moment; then every counter equals the deliveries. */
    ck_assert_int_eq(wait_metric(s.http_port, "mqtt2amqp_confirmed_total", (double)n, 30000), 0);
    char *m = scrape(s.http_port);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_received_total"), n);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_confirmed_total"), n);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_unmatched_total"), 0);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_route_matched_total{route=\"ra\"}"), na);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_route_matched_total{route=\"rb\"}"), nb);
    ck_assert_int_eq((long)th_metric(m, ca), na);
    ck_assert_int_eq((long)th_metric(m, cb), nb);
    /* no reconnect happened, so nothing was published twice */
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_route_published_total{route=\"ra\"}"), na);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_route_published_total{route=\"rb\"}"), nb);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_route_returned_total{route=\"ra\"}"), 0);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_route_dropped_total{route=\"rb\"}"), 0);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_confirm_latency_seconds_count"), n);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_confirm_latency_seconds_bucket{le=\"+Inf\"}"),
                     n);
    ck_assert(th_metric(m, "mqtt2amqp_confirm_latency_seconds_sum") > 0);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_connected{side=\"mqtt\"}"), 1);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_connected{side=\"amqp\"}"), 1);
    ck_assert_int_eq((long)th_metric(m, "mqtt2amqp_reconnects_total{side=\"amqp\"}"), 0);
    check_scrape_with_promtool_and_shipped_names(m);
    free(m);
    ck_assert_int_eq(wait_metric(s.http_port, "mqtt2amqp_spool_messages", 0, 1000), 0);
    ck_assert_int_eq((long)metric(s.http_port, "mqtt2amqp_spool_messages"), 0);
    fprintf(stderr, "metrics: %ld delivered, ra=%ld rb=%ld, counters match\n", n, na, nb);

    th_msgs_free(&got);
    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    setup_free(&s);
}
END_TEST

START_TEST(health_and_readiness_follow_the_connections)
{
    struct setup s = {0};
    setup_start(&s);
    char *body = NULL;
    ck_assert_int_eq(status_of(s.http_port, "GET", "/healthz", &body), 200);
    ck_assert_str_eq(body, "ok\n");
    free(body);
    ck_assert_int_eq(wait_status(s.http_port, "/readyz", 200, 10000), 0);

    /* MQTT side down: not ready, and the reason says which side. */
    ck_assert_int_eq(th_mosq_stop(s.mq), 0);
    ck_assert_int_eq(wait_status(s.http_port, "/readyz", 503, 30000), 0);
    ck_assert_int_eq(status_of(s.http_port, "GET", "/readyz", &body), 503);
    ck_assert_str_eq(body, "mqtt: not connected\n");
    free(body);
    ck_assert_int_eq((long)metric(s.http_port, "mqtt2amqp_connected{side=\"mqtt\"}"), 0);
    ck_assert_int_eq(status_of(s.http_port, "GET", "/healthz", NULL), 200); /* alive all along */

    ck_assert_int_eq(th_mosq_restart(s.mq), 0);
    ck_assert_int_eq(wait_status(s.http_port, "/readyz", 200, 30000), 0);
    ck_assert_int_ge((long)metric(s.http_port, "mqtt2amqp_reconnects_total{side=\"mqtt\"}"), 1);

    ck_assert_int_eq(status_of(s.http_port, "GET", "/nothing", NULL), 404);
    ck_assert_int_eq(status_of(s.http_port, "POST", "/metrics", NULL), 405);
    ck_assert_int_eq(status_of(s.http_port, "HEAD", "/healthz", NULL), 200);

    ck_assert_int_eq(th_bridge_stop(s.b, 30000), 0);
    ck_assert(!th_port_open(s.http_port)); /* the socket went with the process */
    setup_free(&s);
}
END_TEST

START_TEST(a_taken_metrics_port_fails_the_start)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_STOCK);
    ck_assert_ptr_nonnull(mq);
    struct th_bridge *b = th_bridge_new(mq);
    /* Mosquitto's own port is certainly taken. */
    th_bridge_set(b, "METRICS_PORT", "%d", mq->port);
    ck_assert_int_eq(th_bridge_config(b, "mqtt: {port: ${MQTT_PORT}, client_id: it-metrics-taken}\n"
                                         "amqp: {port: ${AMQP_PORT}}\n"
                                         "spool: {dir: ${SPOOL_DIR}}\n"
                                         "routes: [{name: r, topic: \"x/#\", exchange: \"\"}]\n"
                                         "metrics: {listen: \"127.0.0.1:${METRICS_PORT}\"}\n"),
                     0);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    int code = -1;
    ck_assert_int_eq(th_bridge_wait_exit(b, 30000, &code), 0);
    ck_assert_int_eq(code, 1);
    ck_assert_int_eq(th_bridge_wait_log(b, "Address already in use", 1000), 0);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* ---- slow clients (issue 9) --------------------------------------------
 * A pool of connections that hold the server's slots the way a slow or
 * idle client does: each sends a request line, then either nothing more
 * (idle: some wait for the server to time them out, some give up after
 * 3 s) or one header line every 1-4 s (trickling), never the blank line
 * that ends the request. A connection that ends is opened again at once,
 * as a client that insists would. Runs in a thread of its own until told
 * to stop (bounded by LORIS_MAX_MS in any case). */

#define LORIS_CLIENTS   200
#define LORIS_MAX_MS    120000
#define PROBE_WINDOW_MS 15000 /* longer than the server's idle timeout, old and new */
#define PROBE_BOUND_MS  2000

struct loris_conn {
    int fd;         /* -1: to open */
    bool started;   /* request line sent */
    int period_ms;  /* 0: idle after the request line, else a header line this often */
    int give_up_ms; /* idle: 0, or close after this long */
    uint64_t next_ms;
};

struct loris {
    int port;
    struct loris_conn c[LORIS_CLIENTS];
    pthread_t thread;
    atomic_bool stop;
    atomic_long opened, lines, held, max_held;
};

static void loris_open(struct loris *l, struct loris_conn *c)
{
    c->started = false;
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)l->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) != 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return;
    }
    atomic_fetch_add(&l->opened, 1);
}

static void loris_close(struct loris_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->started = false;
}

static bool loris_send(struct loris_conn *c, const char *s)
{
    size_t n = strlen(s);
    return send(c->fd, s, n, MSG_NOSIGNAL) == (ssize_t)n;
}

static void *loris_run(void *arg)
{
    struct loris *l = arg;
    struct pollfd p[LORIS_CLIENTS];
    uint64_t end = m2a_now_ms() + LORIS_MAX_MS;
    while (!atomic_load(&l->stop) && m2a_now_ms() < end) {
        for (int i = 0; i < LORIS_CLIENTS; i++) {
            if (l->c[i].fd < 0)
                loris_open(l, &l->c[i]);
            p[i] = (struct pollfd){.fd = l->c[i].fd,
                                   .events = POLLIN | (l->c[i].started ? 0 : POLLOUT)};
        }
        if (poll(p, LORIS_CLIENTS, 50) < 0 && errno != EINTR)
            break;
        uint64_t now = m2a_now_ms();
        long held = 0;
        for (int i = 0; i < LORIS_CLIENTS; i++) {
            struct loris_conn *c = &l->c[i];
            if (c->fd < 0)
                continue;
            if (p[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                char buf[512]; /* an answer (408, 431...) or the close: start over */
                ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
                if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
                    loris_close(c);
                    continue;
                }
            }
            if (!c->started && (p[i].revents & POLLOUT)) {
                if (!loris_send(c, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")) {
                    loris_close(c);
                    continue;
                }
                c->started = true;
                c->next_ms = now + (uint64_t)(c->period_ms ? c->period_ms : c->give_up_ms);
            } else if (c->started && c->give_up_ms && now >= c->next_ms) {
                loris_close(c);
                continue;
            } else if (c->started && c->period_ms && now >= c->next_ms) {
                if (!loris_send(c, "X-Slow: 1\r\n")) {
                    loris_close(c);
                    continue;
                }
                atomic_fetch_add(&l->lines, 1);
                c->next_ms = now + (uint64_t)c->period_ms;
            }
            held += c->started;
        }
        atomic_store(&l->held, held);
        if (held > atomic_load(&l->max_held))
            atomic_store(&l->max_held, held);
    }
    for (int i = 0; i < LORIS_CLIENTS; i++)
        loris_close(&l->c[i]);
    return NULL;
}

static void loris_start(struct loris *l, int port)
{
    /* Our 200 sockets plus the probes' must fit under the soft limit. */
    struct rlimit rl;
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < 1024 && rl.rlim_max >= 1024) {
        rl.rlim_cur = 1024;
        ck_assert_int_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    memset(l, 0, sizeof(*l));
    l->port = port;
    for (int i = 0; i < LORIS_CLIENTS; i++) {
        l->c[i].fd = -1;
        /* one in three idle (half of those give up after 3 s), the others
         * trickle every 1, 2, 3 or 4 s */
        l->c[i].period_ms = i % 3 == 0 ? 0 : 1000 * (1 + i % 4);
        l->c[i].give_up_ms = i % 6 == 3 ? 3000 : 0;
    }
    ck_assert_int_eq(pthread_create(&l->thread, NULL, loris_run, l), 0);
}

static void loris_stop(struct loris *l)
{
    atomic_store(&l->stop, true);
    pthread_join(l->thread, NULL);
}

static bool loris_all_held(void *arg)
{
    return atomic_load(&((struct loris *)arg)->held) >= LORIS_CLIENTS;
}

/* One probe: 0 when path answered 200 within PROBE_BOUND_MS; *ms its time. */
static int probe(int port, const char *path, uint64_t *ms)
{
    uint64_t t0 = m2a_now_ms();
    struct th_http_reply r;
    int rc = th_http(port, "GET", path, PROBE_BOUND_MS, &r);
    *ms = m2a_now_ms() - t0;
    int st = rc == 0 ? r.status : 0;
    th_http_reply_free(&r);
    if (rc == 0 && st == 200 && *ms <= PROBE_BOUND_MS)
        return 0;
    fprintf(stderr, "slow clients: GET %s: rc %d, status %d after %llu ms\n", path, rc, st,
            (unsigned long long)*ms);
    return -1;
}

/* Issue 9: 32 slow clients used to take every slot of the HTTP server, so
 * /healthz failed for as long as they stayed (a container marked
 * unhealthy). With 200 of them holding connections, each probe of /healthz
 * and /metrics answers 200 within the bound, for longer than the server's
 * idle timeout; and libmicrohttpd's complaints about the requests they
 * leave incomplete do not flood the log. */
START_TEST(health_answers_while_200_slow_clients_hold_connections)
{
    struct setup s = {0};
    setup_start(&s);
    ck_assert_int_eq(status_of(s.http_port, "GET", "/healthz", NULL), 200);
    int warns_before = th_proc_log_count(&s.b->proc, " metrics: ");

    struct loris l;
    loris_start(&l, s.http_port);
    /* Every slow client connected and sent its request line: with the old
     * 32-connection limit that never happens (the rest wait in the listen
     * backlog or are dropped), so only report it here; the probes below are
     * the assertion. */
    int all = th_poll_until(loris_all_held, &l, 10000);
    fprintf(stderr, "slow clients: %ld of %d holding a connection%s\n", atomic_load(&l.held),
            LORIS_CLIENTS, all == 0 ? "" : " (not all)");

    long probes = 0, failed = 0;
    uint64_t worst = 0, end = m2a_now_ms() + PROBE_WINDOW_MS;
    while (m2a_now_ms() < end) {
        uint64_t ms;
        failed += probe(s.http_port, probes % 2 ? "/metrics" : "/healthz", &ms) != 0;
        worst = ms > worst ? ms : worst;
        probes++;
        /* a prober's pace, not a wait for a condition */
        nanosleep(&(struct timespec){.tv_nsec = 100 * 1000 * 1000}, NULL);
    }
    long held = atomic_load(&l.held), max_held = atomic_load(&l.max_held);
    loris_stop(&l);
    fprintf(stderr,
            "slow clients: %ld probes in %d ms, %ld failed, slowest %llu ms; %ld connections "
            "opened, %ld header lines trickled, %ld held at the end (max %ld)\n",
            probes, PROBE_WINDOW_MS, failed, (unsigned long long)worst, atomic_load(&l.opened),
            atomic_load(&l.lines), held, max_held);
    ck_assert_int_eq(failed, 0);
    ck_assert_int_gt(probes, 50);
    ck_assert_int_eq(max_held, LORIS_CLIENTS); /* they did hold their connections */
    ck_assert_int_gt(atomic_load(&l.lines), 0);

    ck_assert_int_eq(status_of(s.http_port, "GET", "/healthz", NULL), 200);

    ck_assert_int_eq(th_bridge_signal(s.b, SIGTERM), 0);
    int code = -1;
    ck_assert_int_eq(th_bridge_wait_exit(s.b, 30000, &code), 0);
    ck_assert_int_eq(code, 0);
    /* libmicrohttpd's lines about the hundreds of requests abandoned (one
     * a connection that gave up: ~330 in the window, ~200 at the end):
     * rate-limited to one per 10 s. */
    int warns = th_proc_log_count(&s.b->proc, " metrics: ") - warns_before;
    fprintf(stderr, "slow clients: %d metrics lines in the log\n", warns);
    ck_assert_int_le(warns, 4);
    setup_free(&s);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("metrics");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, counters_grow_during_traffic_and_equal_deliveries_after);
    tcase_add_test(tc, health_and_readiness_follow_the_connections);
    tcase_add_test(tc, a_taken_metrics_port_fails_the_start);
    tcase_add_test(tc, health_answers_while_200_slow_clients_hold_connections);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
