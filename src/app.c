/* app.c - process lifetime: start-up, the main thread's signal and stats
 * loop, and orderly shutdown.
 *
 * Threads: the main thread (this file) blocks every signal it handles before
 * any other thread exists, so libmosquitto's, rabbitmq-c's and our service
 * threads inherit the mask and signals are only ever taken here, with
 * sigtimedwait. The MQTT thread (mqtt_in.c) and the AMQP thread
 * (amqp_out.c) share only the spool and the counters. */
#include "mqtt2amqp/app.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mqtt2amqp/amqp_out.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/metrics.h"
#include "mqtt2amqp/mqtt_in.h"
#include "mqtt2amqp/reload.h"
#include "mqtt2amqp/route_stats.h"
#include "mqtt2amqp/routes.h"
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

static void log_start(const struct m2a_config *cfg, const struct m2a_routes *routes)
{
    const struct m2a_conf_mqtt *m = &cfg->mqtt;
    const struct m2a_conf_amqp *a = &cfg->amqp;
    m2a_info("bridge",
             "mqtt2amqp %s starting: config %s; mqtt %s:%d (%s%s, client_id %s, %s session); "
             "amqp %s:%d%s vhost %s as %s; %zu routes, %zu subscriptions; spool %s "
             "(max %" PRIu64 " bytes, fsync %s, overflow %s); dead letters: %s%s%s",
             M2A_VERSION, cfg->path ? cfg->path : "-", m->host, m->port,
             m->protocol == 5 ? "MQTT 5" : "MQTT 3.1.1", m->tls.enabled ? ", TLS" : "",
             m->client_id, m->clean_session ? "clean" : "persistent", a->host, a->port,
             a->tls.enabled ? " (TLS)" : "", a->vhost, a->username, m2a_routes_count(routes),
             m2a_routes_nsubscriptions(routes), cfg->spool.dir, cfg->spool.max_bytes,
             fsync_name(cfg->spool.fsync),
             cfg->spool.overflow == M2A_OVERFLOW_DROP_OLDEST ? "drop_oldest" : "block",
             cfg->dead_letter.enabled ? "exchange '" : "none (counted as dropped)",
             cfg->dead_letter.enabled ? cfg->dead_letter.exchange : "",
             cfg->dead_letter.enabled ? "'" : "");
}

static void log_stats(struct m2a_stats *st, struct m2a_spool *spool)
{
    struct m2a_spool_stats ss;
    m2a_spool_get_stats(spool, &ss);
    m2a_info(
        "stats",
        "received=%" PRIu64 " unmatched=%" PRIu64 " route_errors=%" PRIu64 " spooled=%" PRIu64
        " spooled_bytes=%" PRIu64 " published=%" PRIu64 " confirmed=%" PRIu64 " returned=%" PRIu64
        " nacked=%" PRIu64 " dead_lettered=%" PRIu64 " dropped=%" PRIu64 " expired=%" PRIu64
        " spool_messages=%" PRIu64 " spool_bytes=%" PRIu64 " mqtt=%s amqp=%s%s%s"
        " mqtt_reconnects=%" PRIu64 " amqp_reconnects=%" PRIu64,
        M2A_STAT_GET(st, received), M2A_STAT_GET(st, unmatched), M2A_STAT_GET(st, route_errors),
        M2A_STAT_GET(st, spooled), M2A_STAT_GET(st, spooled_bytes), M2A_STAT_GET(st, published),
        M2A_STAT_GET(st, confirmed), M2A_STAT_GET(st, returned), M2A_STAT_GET(st, nacked),
        M2A_STAT_GET(st, dead_lettered), M2A_STAT_GET(st, dropped), M2A_STAT_GET(st, expired),
        ss.messages, ss.bytes, M2A_STAT_GET(st, mqtt_connected) ? "up" : "down",
        M2A_STAT_GET(st, amqp_connected) ? "up" : "down",
        M2A_STAT_GET(st, amqp_blocked) ? " amqp_blocked=1" : "",
        M2A_STAT_GET(st, mqtt_paused) ? " mqtt_paused=1" : "", M2A_STAT_GET(st, mqtt_reconnects),
        M2A_STAT_GET(st, amqp_reconnects));
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

/* What the main loop and a reload work on (main thread only, except
 * heartbeat_ms, read by the metrics thread for /healthz). */
struct live {
    const struct m2a_config *boot; /* the start config: connections, spool, policies */
    const struct m2a_config *cur;  /* the last one applied: routes, topology, log */
    struct m2a_config **kept;      /* configs loaded by reloads; the threads borrow */
    size_t nkept;                  /* from them, so they are freed only at exit */
    struct m2a_stats *st;
    struct m2a_spool *spool;
    struct m2a_mqtt_in *mi;
    struct m2a_amqp_out *ao;
    _Atomic uint64_t heartbeat_ms;
};

#define RELOAD_AMQP_WAIT_MS 30000 /* for the AMQP thread to declare the new topology */

static void warn_unapplied(void *ud, const char *key)
{
    (void)ud;
    m2a_warn("bridge",
             "reload: %s changed, but connection, spool and policy settings are not "
             "applied until a restart; the running value stays",
             key);
}

static void note_removed(void *ud, const char *what)
{
    (void)ud;
    m2a_info("bridge",
             "reload: %s is no longer in the configuration; left in RabbitMQ (the "
             "bridge never deletes)",
             what);
}

static void register_routes(struct m2a_route_stats *rs, const struct m2a_config *cfg)
{
    for (size_t i = 0; i < cfg->nroutes; i++)
        if (m2a_route_stats_register(rs, cfg->routes[i].name) >= M2A_ROUTE_STATS_MAX)
            m2a_warn("bridge", "route %s: more than %d route names seen, it has no metric series",
                     cfg->routes[i].name, M2A_ROUTE_STATS_MAX);
}

/* Waits for the AMQP thread to take reload `ticket`: 0, M2A_ERR_AMQP (err
 * says why) or M2A_ERR_TIMEOUT. It takes it within a turn (~100 ms) unless
 * it is inside a connect (bounded by its connect and RPC timeouts). */
static int wait_amqp_reload(struct live *lv, uint64_t ticket, char *err, size_t errlen)
{
    uint64_t deadline = m2a_now_ms() + RELOAD_AMQP_WAIT_MS;
    for (;;) {
        int rc = m2a_amqp_out_reload_result(lv->ao, ticket, err, errlen);
        if (rc != M2A_ERR_AGAIN)
            return rc;
        if (m2a_now_ms() >= deadline)
            return M2A_ERR_TIMEOUT;
        atomic_store_explicit(&lv->heartbeat_ms, m2a_now_ms(), memory_order_relaxed);
        struct timespec ts = {0, 10 * 1000 * 1000}; /* polls a result, bounded above */
        nanosleep(&ts, NULL);
    }
}

/* SIGHUP: re-reads the config file. A file that does not load (its
 * file:line:column error is logged), or a topology RabbitMQ refuses, leaves
 * everything as it was. Otherwise the AMQP thread declares the new topology
 * first, then the MQTT thread takes the new routes between two read
 * batches: no message is dropped or read twice by the swap, and no record of
 * a new route reaches RabbitMQ before its exchange exists. */
static void reload(struct live *lv)
{
    char err[1024];
    struct m2a_config *next = NULL;
    struct m2a_routes *routes = NULL;
    const char *path = lv->boot->path;
    m2a_info("bridge", "SIGHUP received: reloading %s", path);
    if (m2a_config_load(path, &next, err, sizeof(err)) != 0) {
        m2a_error("bridge", "reload refused, the running configuration stays: %s", err);
        return;
    }
    if (m2a_routes_compile(next, &routes, err, sizeof(err)) != 0) {
        m2a_error("bridge", "reload refused, the running configuration stays: %s", err);
        m2a_config_free(next);
        return;
    }
    m2a_reload_unapplied(lv->boot, next, warn_unapplied, NULL);
    m2a_reload_removed_topology(lv->cur, next, note_removed, NULL);
    register_routes(lv->st->routes, next);
    /* From here the AMQP thread may borrow next: it lives until exit. */
    lv->kept = xrealloc(lv->kept, (lv->nkept + 1) * sizeof(*lv->kept));
    lv->kept[lv->nkept++] = next;

    uint64_t ticket = m2a_amqp_out_reload(lv->ao, &next->amqp, next->routes, next->nroutes);
    int rc = wait_amqp_reload(lv, ticket, err, sizeof(err));
    if (rc != 0) {
        if (rc == M2A_ERR_TIMEOUT)
            m2a_error("bridge",
                      "reload: the AMQP side did not take the new topology within %d s "
                      "(connecting?); routes unchanged, it will declare the topology when it "
                      "can; send SIGHUP again",
                      RELOAD_AMQP_WAIT_MS / 1000);
        else
            m2a_error("bridge",
                      "reload refused, the running configuration stays: RabbitMQ "
                      "refused the new topology: %s",
                      err);
        m2a_routes_free(routes);
        return;
    }
    size_t nroutes = m2a_routes_count(routes), nsubs = m2a_routes_nsubscriptions(routes);
    m2a_mqtt_in_set_routes(lv->mi, routes); /* now the MQTT thread's */
    m2a_log_set_level((enum m2a_log_level)next->log.level);
    m2a_log_set_format((enum m2a_log_format)next->log.format);
    lv->cur = next;
    m2a_info("bridge",
             "reload applied: %zu routes, %zu subscriptions, %zu exchanges and %zu "
             "queues declared",
             nroutes, nsubs, next->amqp.nexchanges, next->amqp.nqueues);
}

/* Waits for a signal until SIGTERM/SIGINT, logging stats on schedule and
 * reloading on SIGHUP. */
static int wait_for_stop(struct live *lv, const sigset_t *set)
{
    uint64_t next_stats = m2a_now_ms() + (uint64_t)lv->cur->log.stats_interval * 1000u;
    for (;;) {
        atomic_store_explicit(&lv->heartbeat_ms, m2a_now_ms(), memory_order_relaxed);
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 250 * 1000 * 1000};
        int sig = sigtimedwait(set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT)
            return sig;
        if (sig == SIGHUP) {
            int was = lv->cur->log.stats_interval;
            reload(lv);
            if (lv->cur->log.stats_interval != was)
                next_stats = m2a_now_ms() + (uint64_t)lv->cur->log.stats_interval * 1000u;
        }
        uint64_t interval_ms = (uint64_t)lv->cur->log.stats_interval * 1000u;
        if (interval_ms && m2a_now_ms() >= next_stats) {
            log_stats(lv->st, lv->spool);
            next_stats += interval_ms;
        }
    }
}

int m2a_app_run(const struct m2a_config *cfg)
{
    int rc = M2A_EXIT_RUNTIME;
    char err[512] = "";
    struct m2a_routes *routes = NULL;
    struct m2a_spool *spool = NULL;
    struct m2a_mqtt_in *mi = NULL;
    struct m2a_amqp_out *ao = NULL;
    struct m2a_metrics *metrics = NULL;
    struct m2a_stats *st = xcalloc(1, sizeof(*st));
    struct live lv = {.boot = cfg, .cur = cfg, .st = st};
    sigset_t set;

    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    m2a_log_set_level((enum m2a_log_level)cfg->log.level);
    m2a_log_set_format((enum m2a_log_format)cfg->log.format);

    if (m2a_routes_compile(cfg, &routes, err, sizeof(err)) != 0) {
        m2a_error("bridge", "routes: %s", err);
        rc = M2A_EXIT_CONFIG;
        goto out;
    }
    log_start(cfg, routes);
    st->routes = m2a_route_stats_new();
    register_routes(st->routes, cfg);

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

    struct m2a_amqp_out_opts ao_opts = {.conf = &cfg->amqp,
                                        .spool = spool,
                                        .stats = st,
                                        .dead_letter = &cfg->dead_letter,
                                        .routes = cfg->routes,
                                        .nroutes = cfg->nroutes,
                                        .max_age_ms = cfg->spool.max_age_ms};
    if (m2a_amqp_out_start(&ao_opts, &ao, err, sizeof(err)) != 0) {
        m2a_error("amqp", "cannot start: %s", err);
        goto out;
    }
    struct m2a_mqtt_in_opts mi_opts = {.conf = &cfg->mqtt,
                                       .routes = routes,
                                       .spool = spool,
                                       .spool_max_bytes = cfg->spool.max_bytes,
                                       .stats = st,
                                       .dead_letter = &cfg->dead_letter,
                                       .spool_overflow = cfg->spool.overflow};
    if (m2a_mqtt_in_start(&mi_opts, &mi, err, sizeof(err)) != 0) {
        m2a_error("mqtt", "cannot start: %s", err);
        goto out;
    }
    lv.spool = spool;
    lv.mi = mi;
    lv.ao = ao;
    atomic_store(&lv.heartbeat_ms, m2a_now_ms());
    if (cfg->metrics.enabled) {
        struct m2a_metrics_opts mo = {.listen = cfg->metrics.listen,
                                      .stats = st,
                                      .spool = spool,
                                      .spool_max_bytes = cfg->spool.max_bytes,
                                      .heartbeat_ms = &lv.heartbeat_ms};
        if (m2a_metrics_start(&mo, &metrics, err, sizeof(err)) != 0) {
            m2a_error("metrics", "cannot start: %s", err);
            goto out;
        }
        m2a_info("metrics", "serving /metrics, /healthz and /readyz on http://%s",
                 cfg->metrics.listen);
    }

    int sig = wait_for_stop(&lv, &set);
    m2a_info("bridge", "%s received: stopping MQTT input, waiting up to %d s for confirms",
             sig == SIGTERM ? "SIGTERM" : "SIGINT", lv.cur->shutdown_timeout);
    m2a_mqtt_in_stop(mi);
    mi = NULL;
    m2a_amqp_out_stop(ao, lv.cur->shutdown_timeout * 1000);
    ao = NULL;
    log_stats(st, spool);
    struct m2a_spool_stats ss;
    m2a_spool_get_stats(spool, &ss);
    m2a_info("bridge", "stopped; %" PRIu64 " unconfirmed messages kept in the spool for next start",
             ss.messages);
    rc = M2A_EXIT_OK;
out:
    m2a_mqtt_in_stop(mi);
    m2a_amqp_out_stop(ao, 0);
    m2a_metrics_stop(metrics);
    m2a_spool_close(spool);
    m2a_routes_free(routes);
    m2a_route_stats_free(st->routes);
    for (size_t i = 0; i < lv.nkept; i++)
        m2a_config_free(lv.kept[i]);
    free(lv.kept);
    free(st);
    return rc;
}
