/* app.c - process lifetime: start-up, the main thread's loop (signals,
 * stats, the answers of a reload in flight), and orderly shutdown.
 *
 * Threads: the main thread (this file) blocks every signal it handles before
 * any other thread exists, so libmosquitto's, rabbitmq-c's and our service
 * threads inherit the mask and signals are only ever taken here, through a
 * signalfd polled next to the reload's answer fd (reload.c): the main
 * thread never waits for another thread while it runs, so a SIGTERM is
 * acted on at once, also in the middle of a reload. It owns the start
 * generation (the settings a reload does not apply) and the route
 * registry; the MQTT thread (mqtt_in.c) and the AMQP thread (amqp_out.c)
 * each hold the generation they run, and share the spool and the
 * counters. */
#include "mqtt2amqp/app.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "mqtt2amqp/amqp_out.h"
#include "mqtt2amqp/downlink.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/generation.h"
#include "mqtt2amqp/hostport.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/metrics.h"
#include "mqtt2amqp/mqtt_in.h"
#include "mqtt2amqp/notify.h"
#include "mqtt2amqp/reload.h"
#include "mqtt2amqp/route_stats.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/stats.h"
#include "mqtt2amqp/util.h"

static const char *fsync_name(enum m2a_fsync_policy p)
{
    switch (p) {
    case M2A_FSYNC_BATCH:
        return "batch";
    case M2A_FSYNC_INTERVAL:
        return "interval";
    case M2A_FSYNC_NEVER:
        return "never";
    }
    return "?";
}

#define HEARTBEAT_MS 250 /* the main loop turns at least this often (/healthz) */

/* "HOST:PORT, HOST:PORT, ..." of a side's brokers, cut to fit. */
static const char *endpoints_str(const struct m2a_conf_endpoint *e, size_t n, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && used + 1 < len; i++) {
        char one[M2A_HOSTPORT_MAX];
        int w = snprintf(buf + used, len - used, "%s%s", i ? ", " : "",
                         m2a_hostport_format(one, sizeof(one), e[i].host, e[i].port));
        if (w > 0)
            used += (size_t)w < len - used ? (size_t)w : len - used - 1;
    }
    return buf;
}

static void log_start(const struct m2a_config *cfg, const struct m2a_routes *routes)
{
    const struct m2a_conf_mqtt *m = &cfg->mqtt;
    const struct m2a_conf_amqp *a = &cfg->amqp;
    char brokers[512], nodes[512];
    m2a_info("bridge",
             "mqtt2amqp %s starting: config %s; mqtt %s (%s%s, client_id %s, %s session); "
             "amqp %s%s vhost %s as %s; %zu routes, %zu subscriptions; spool %s "
             "(max %" PRIu64 " bytes, fsync %s, overflow %s); dead letters: %s%s%s",
             M2A_VERSION, cfg->path ? cfg->path : "-",
             endpoints_str(m->endpoints, m->nendpoints, brokers, sizeof(brokers)),
             m->protocol == 5 ? "MQTT 5" : "MQTT 3.1.1", m->tls.enabled ? ", TLS" : "",
             m->client_id, m->clean_session ? "clean" : "persistent",
             endpoints_str(a->endpoints, a->nendpoints, nodes, sizeof(nodes)),
             a->tls.enabled ? " (TLS)" : "", a->vhost, a->username, m2a_routes_count(routes),
             m2a_routes_nsubscriptions(routes), cfg->spool.dir, cfg->spool.max_bytes,
             fsync_name(cfg->spool.fsync),
             cfg->spool.overflow == M2A_OVERFLOW_DROP_OLDEST ? "drop_oldest" : "block",
             cfg->dead_letter.enabled ? "exchange '" : "none (counted as dropped)",
             cfg->dead_letter.enabled ? cfg->dead_letter.exchange : "",
             cfg->dead_letter.enabled ? "'" : "");
}

/* The broker of a side's list in use, "HOST:PORT" (index: 1 + its place in
 * the list, 0 for none), or NULL. */
static const char *in_use(unsigned i, const struct m2a_conf_endpoint *e, size_t n, char *buf,
                          size_t len)
{
    if (i == 0 || i > n)
        return NULL;
    return m2a_hostport_format(buf, len, e[i - 1].host, e[i - 1].port);
}

/* The downlinks' part of the stats line ("" without downlinks): totals,
 * then each downlink's counters when there are several. */
static const char *downlink_stats(struct m2a_stats *st, char *buf, size_t len)
{
    buf[0] = '\0';
    if (!st->ndownlinks)
        return buf;
    uint64_t t[5] = {0};
    char each[768] = "";
    size_t used = 0;
    for (size_t i = 0; i < st->ndownlinks; i++) {
        struct m2a_downlink_counters *c = &st->downlinks[i];
        uint64_t v[5] = {M2A_STAT_GET(c, received), M2A_STAT_GET(c, published),
                         M2A_STAT_GET(c, acked), M2A_STAT_GET(c, rejected),
                         M2A_STAT_GET(c, inflight)};
        for (size_t k = 0; k < 5; k++)
            t[k] += v[k];
        if (st->ndownlinks > 1 && used + 1 < sizeof(each)) {
            int w = snprintf(each + used, sizeof(each) - used,
                             " down[%s]=%" PRIu64 "/%" PRIu64 "/%" PRIu64 "/%" PRIu64 "/%" PRIu64,
                             c->name, v[0], v[1], v[2], v[3], v[4]);
            if (w > 0)
                used += (size_t)w < sizeof(each) - used ? (size_t)w : sizeof(each) - used - 1;
        }
    }
    snprintf(buf, len,
             " down_received=%" PRIu64 " down_published=%" PRIu64 " down_acked=%" PRIu64
             " down_rejected=%" PRIu64 " down_inflight=%" PRIu64 " down_mqtt=%s down_amqp=%s%s",
             t[0], t[1], t[2], t[3], t[4],
             M2A_STAT_GET(st, downlink_mqtt_connected) ? "up" : "down",
             M2A_STAT_GET(st, downlink_amqp_connected) ? "up" : "down", each);
    return buf;
}

static void log_stats(struct m2a_stats *st, struct m2a_spool *spool, const struct m2a_config *cfg)
{
    struct m2a_spool_stats ss;
    char broker[M2A_HOSTPORT_MAX], node[M2A_HOSTPORT_MAX], down[1280];
    const char *b = in_use(M2A_STAT_GET(st, mqtt_endpoint), cfg->mqtt.endpoints,
                           cfg->mqtt.nendpoints, broker, sizeof(broker));
    const char *n = in_use(M2A_STAT_GET(st, amqp_node), cfg->amqp.endpoints, cfg->amqp.nendpoints,
                           node, sizeof(node));
    m2a_spool_get_stats(spool, &ss);
    m2a_info(
        "stats",
        "received=%" PRIu64 " unmatched=%" PRIu64 " route_errors=%" PRIu64 " spooled=%" PRIu64
        " spooled_bytes=%" PRIu64 " published=%" PRIu64 " confirmed=%" PRIu64 " returned=%" PRIu64
        " nacked=%" PRIu64 " dead_lettered=%" PRIu64 " dropped=%" PRIu64 " expired=%" PRIu64
        " spool_messages=%" PRIu64 " spool_bytes=%" PRIu64 " mqtt=%s%s%s amqp=%s%s%s%s%s"
        " mqtt_reconnects=%" PRIu64 " amqp_reconnects=%" PRIu64 "%s",
        M2A_STAT_GET(st, received), M2A_STAT_GET(st, unmatched), M2A_STAT_GET(st, route_errors),
        M2A_STAT_GET(st, spooled), M2A_STAT_GET(st, spooled_bytes), M2A_STAT_GET(st, published),
        M2A_STAT_GET(st, confirmed), M2A_STAT_GET(st, returned), M2A_STAT_GET(st, nacked),
        M2A_STAT_GET(st, dead_lettered), M2A_STAT_GET(st, dropped), M2A_STAT_GET(st, expired),
        ss.messages, ss.bytes, M2A_STAT_GET(st, mqtt_connected) ? "up" : "down",
        b ? " mqtt_broker=" : "", b ? b : "", M2A_STAT_GET(st, amqp_connected) ? "up" : "down",
        n ? " amqp_node=" : "", n ? n : "", M2A_STAT_GET(st, amqp_blocked) ? " amqp_blocked=1" : "",
        M2A_STAT_GET(st, mqtt_paused) ? " mqtt_paused=1" : "", M2A_STAT_GET(st, mqtt_reconnects),
        M2A_STAT_GET(st, amqp_reconnects), downlink_stats(st, down, sizeof(down)));
}

static void log_recovery(const struct m2a_spool_recovery *rec, const char *dir)
{
    m2a_info("spool", "opened %s: %" PRIu64 " segments, %" PRIu64 " records, %" PRIu64 " to replay",
             dir, rec->segments, rec->records, rec->unconfirmed);
    if (rec->truncated_bytes)
        m2a_warn("spool", "truncated a torn tail of %" PRIu64 " bytes (a write cut by a crash)",
                 rec->truncated_bytes);
    if (rec->corrupt_records)
        m2a_error("spool", "%" PRIu64 " damaged records quarantined beside the spool in %s",
                  rec->corrupt_records, dir);
}

/* What the main loop works on (main thread only, except heartbeat_ms,
 * read by the metrics thread for /healthz). */
struct live {
    struct m2a_stats *st;
    const struct m2a_config *cfg; /* the start config: its broker lists are never reloaded */
    struct m2a_spool *spool;
    struct m2a_reload *reload;
    int sigfd; /* signalfd of SIGTERM, SIGINT, SIGHUP */
    _Atomic uint64_t heartbeat_ms;
    struct m2a_notify *notify; /* systemd's socket; NULL when not run by systemd */
    int mqtt_up, amqp_up;      /* as last told in STATUS= (-1: not yet) */
};

/* The config whose main-thread settings apply now (log, stats interval,
 * shutdown timeout): the last generation a reload applied. */
static const struct m2a_config *running_cfg(const struct live *lv)
{
    return m2a_generation_config(m2a_reload_running(lv->reload));
}

static uint64_t stats_interval_ms(const struct live *lv)
{
    return (uint64_t)running_cfg(lv)->log.stats_interval * 1000u;
}

/* STATUS= for systemctl status: the key figures of the stats line. Sent at
 * start, each stats interval and when a side connects or disconnects. */
static void notify_status(struct live *lv, const char *extra)
{
    if (!lv->notify)
        return;
    struct m2a_stats *st = lv->st;
    struct m2a_spool_stats ss;
    char msg[512];
    m2a_spool_get_stats(lv->spool, &ss);
    lv->mqtt_up = M2A_STAT_GET(st, mqtt_connected) != 0;
    lv->amqp_up = M2A_STAT_GET(st, amqp_connected) != 0;
    snprintf(msg, sizeof(msg),
             "%sSTATUS=mqtt %s, amqp %s; received=%" PRIu64 " confirmed=%" PRIu64
             " dead_lettered=%" PRIu64 " dropped=%" PRIu64 "; spool %" PRIu64 " messages, %" PRIu64
             " bytes",
             extra ? extra : "", lv->mqtt_up ? "up" : "down", lv->amqp_up ? "up" : "down",
             M2A_STAT_GET(st, received), M2A_STAT_GET(st, confirmed),
             M2A_STAT_GET(st, dead_lettered), M2A_STAT_GET(st, dropped), ss.messages, ss.bytes);
    (void)m2a_notify_send(lv->notify, msg);
}

static bool connections_changed(const struct live *lv)
{
    return lv->mqtt_up != (M2A_STAT_GET(lv->st, mqtt_connected) != 0) ||
           lv->amqp_up != (M2A_STAT_GET(lv->st, amqp_connected) != 0);
}

/* The signal signalfd has for us, or 0. */
static int take_signal(int sigfd)
{
    struct signalfd_siginfo si;
    ssize_t n = read(sigfd, &si, sizeof(si));
    return n == (ssize_t)sizeof(si) ? (int)si.ssi_signo : 0;
}

/* The main loop: waits on the signals and on the reload's answers from the
 * AMQP thread, never on another thread, until SIGTERM/SIGINT; logs stats on
 * schedule; reloads on SIGHUP. Each turn it is the heartbeat of /healthz
 * and, under systemd, pings the watchdog when due: only this loop does, so
 * a main thread stuck anywhere (a blocked log write, a lock) stops the
 * pings and systemd restarts the bridge WatchdogSec later. */
static int wait_for_stop(struct live *lv)
{
    uint64_t interval = stats_interval_ms(lv);
    uint64_t next_stats = m2a_now_ms() + interval;
    for (;;) {
        uint64_t now = m2a_now_ms();
        atomic_store_explicit(&lv->heartbeat_ms, now, memory_order_relaxed);
        m2a_notify_watchdog(lv->notify, now);
        if (lv->notify && connections_changed(lv))
            notify_status(lv, NULL);
        uint64_t timeout = m2a_notify_wait_ms(lv->notify, now, HEARTBEAT_MS);
        if (interval && next_stats > now && next_stats - now < timeout)
            timeout = next_stats - now;
        else if (interval && next_stats <= now)
            timeout = 0;
        struct pollfd p[2] = {{.fd = lv->sigfd, .events = POLLIN},
                              {.fd = m2a_reload_fd(lv->reload), .events = POLLIN}};
        if (poll(p, 2, (int)timeout) < 0 && errno != EINTR) {
            m2a_error("bridge", "poll: %s", strerror(errno));
            return SIGTERM;
        }
        if (p[0].revents & POLLIN) {
            int sig = take_signal(lv->sigfd);
            if (sig == SIGTERM || sig == SIGINT)
                return sig;
            if (sig == SIGHUP)
                m2a_reload_request(lv->reload);
        }
        if ((p[1].revents & POLLIN) && m2a_reload_handle(lv->reload) &&
            stats_interval_ms(lv) != interval) {
            interval = stats_interval_ms(lv);
            next_stats = m2a_now_ms() + interval;
        }
        if (interval && m2a_now_ms() >= next_stats) {
            log_stats(lv->st, lv->spool, lv->cfg);
            notify_status(lv, NULL);
            next_stats += interval;
        }
    }
}

int m2a_app_run(struct m2a_config *cfg)
{
    int rc = M2A_EXIT_RUNTIME;
    char err[1024] = "";
    struct m2a_generation *start = NULL;
    struct m2a_spool *spool = NULL;
    struct m2a_mqtt_in *mi = NULL;
    struct m2a_amqp_out *ao = NULL;
    struct m2a_downlink *down = NULL;
    struct m2a_metrics *metrics = NULL;
    struct m2a_stats *st = xcalloc(1, sizeof(*st));
    struct live lv = {.st = st, .cfg = cfg, .sigfd = -1, .mqtt_up = -1, .amqp_up = -1};
    sigset_t set, pipe;

    /* Before any thread exists, so that every thread inherits the mask and
     * these signals only ever reach the signalfd. */
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe, NULL);

    m2a_log_set_level((enum m2a_log_level)cfg->log.level);
    m2a_log_set_format((enum m2a_log_format)cfg->log.format);

    st->routes = m2a_route_stats_new();
    st->ndownlinks = cfg->ndownlinks;
    st->downlinks = st->ndownlinks ? xcalloc(st->ndownlinks, sizeof(*st->downlinks)) : NULL;
    for (size_t i = 0; i < st->ndownlinks; i++)
        st->downlinks[i].name = cfg->downlinks[i].name;
    if (m2a_generation_new(cfg, NULL, st->routes, &start, err, sizeof(err)) != 0) {
        m2a_error("bridge", "routes: %s", err);
        rc = M2A_EXIT_CONFIG;
        goto out;
    }
    /* cfg belongs to the start generation now, which lives until the end. */
    log_start(cfg, m2a_generation_routes(start));

    if (m2a_notify_open_env(&lv.notify, err, sizeof(err)) != 0)
        m2a_warn("bridge", "systemd notification disabled: %s", err);

    lv.sigfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    lv.reload = m2a_reload_new(start, st->routes);
    if (lv.sigfd < 0 || !lv.reload) {
        m2a_error("bridge", "cannot create the main loop's descriptors: %s", strerror(errno));
        goto out;
    }

    struct m2a_spool_opts so = {.dir = cfg->spool.dir,
                                .max_bytes = cfg->spool.max_bytes,
                                .segment_bytes = cfg->spool.segment_bytes,
                                .fsync = cfg->spool.fsync,
                                .overflow = cfg->spool.overflow};
    struct m2a_spool_recovery rec = {0};
    if (m2a_spool_open(&so, &spool, &rec, err, sizeof(err)) != 0) {
        m2a_error("spool", "cannot open %s: %s", cfg->spool.dir, err);
        goto out;
    }
    log_recovery(&rec, cfg->spool.dir);
    /* Records from here on are this process's: their route ids are ours. */
    struct m2a_spool_stats opened;
    m2a_spool_get_stats(spool, &opened);

    struct m2a_amqp_out_opts ao_opts = {.conf = &cfg->amqp,
                                        .generation = start,
                                        .spool = spool,
                                        .stats = st,
                                        .trusted_from_seq = opened.next_seq,
                                        .on_generation = m2a_reload_answer,
                                        .on_generation_ud = lv.reload};
    if (m2a_amqp_out_start(&ao_opts, &ao, err, sizeof(err)) != 0) {
        m2a_error("amqp", "cannot start: %s", err);
        goto out;
    }
    struct m2a_mqtt_in_opts mi_opts = {.conf = &cfg->mqtt,
                                       .generation = start,
                                       .spool = spool,
                                       .spool_max_bytes = cfg->spool.max_bytes,
                                       .stats = st,
                                       .spool_overflow = cfg->spool.overflow};
    if (m2a_mqtt_in_start(&mi_opts, &mi, err, sizeof(err)) != 0) {
        m2a_error("mqtt", "cannot start: %s", err);
        goto out;
    }
    /* Downlinks run the start config: a reload does not change them. */
    if (cfg->ndownlinks && m2a_downlink_start(cfg, st, &down, err, sizeof(err)) != 0) {
        m2a_error("downlink", "cannot start: %s", err);
        goto out;
    }
    m2a_reload_attach(lv.reload, ao, mi);
    lv.spool = spool;
    atomic_store(&lv.heartbeat_ms, m2a_now_ms());
    if (cfg->metrics.enabled) {
        struct m2a_metrics_opts mo = {.listen = cfg->metrics.listen,
                                      .stats = st,
                                      .spool = spool,
                                      .spool_max_bytes = cfg->spool.max_bytes,
                                      .heartbeat_ms = &lv.heartbeat_ms,
                                      .mqtt_endpoints = cfg->mqtt.endpoints,
                                      .mqtt_nendpoints = cfg->mqtt.nendpoints,
                                      .amqp_nodes = cfg->amqp.endpoints,
                                      .namqp_nodes = cfg->amqp.nendpoints};
        if (m2a_metrics_start(&mo, &metrics, err, sizeof(err)) != 0) {
            m2a_error("metrics", "cannot start: %s", err);
            goto out;
        }
        m2a_info("metrics", "serving /metrics, /healthz and /readyz on http://%s",
                 cfg->metrics.listen);
    }

    /* Ready: the spool is open and recovered, both threads run and have
     * begun their first connection attempts (they do not wait for them to
     * succeed: a broker that is down at boot must not fail the unit) and
     * /metrics listens. Whether the brokers are connected: STATUS=. */
    notify_status(&lv, "READY=1\n");
    if (lv.notify)
        m2a_info("bridge", "systemd notified: ready%s",
                 m2a_notify_watchdog_period_ms(lv.notify) ? ", watchdog on" : "");

    int sig = wait_for_stop(&lv);
    int timeout_s = running_cfg(&lv)->shutdown_timeout;
    char stopping[128];
    snprintf(stopping, sizeof(stopping),
             "STOPPING=1\nSTATUS=stopping: waiting up to %d s for confirms", timeout_s);
    (void)m2a_notify_send(lv.notify, stopping);
    m2a_info("bridge", "%s received: stopping MQTT input, waiting up to %d s for confirms",
             sig == SIGTERM ? "SIGTERM" : "SIGINT", timeout_s);
    m2a_reload_attach(lv.reload, NULL, NULL);
    m2a_downlink_request_stop(down, timeout_s * 1000); /* drains beside the uplink */
    m2a_mqtt_in_stop(mi);
    mi = NULL;
    m2a_amqp_out_stop(ao, timeout_s * 1000);
    ao = NULL;
    m2a_downlink_stop(down, timeout_s * 1000);
    down = NULL;
    log_stats(st, spool, cfg);
    struct m2a_spool_stats ss;
    m2a_spool_get_stats(spool, &ss);
    m2a_info("bridge", "stopped; %" PRIu64 " unconfirmed messages kept in the spool for next start",
             ss.messages);
    rc = M2A_EXIT_OK;
out:
    if (lv.reload)
        m2a_reload_attach(lv.reload, NULL, NULL);
    m2a_mqtt_in_stop(mi);
    m2a_amqp_out_stop(ao, 0);
    m2a_downlink_stop(down, 0);
    m2a_metrics_stop(metrics);
    m2a_spool_close(spool);
    m2a_reload_free(lv.reload);
    m2a_generation_unref(start); /* frees the config: the threads are gone */
    if (lv.sigfd >= 0)
        close(lv.sigfd);
    m2a_route_stats_free(st->routes);
    free(st->downlinks);
    free(st);
    m2a_notify_free(lv.notify);
    return rc;
}
