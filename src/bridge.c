/* bridge.c - process lifetime: start-up, the main thread's signal and stats
 * loop, and orderly shutdown.
 *
 * Threads: the main thread (this file) blocks every signal it handles before
 * any other thread exists, so libmosquitto's, rabbitmq-c's and our service
 * threads inherit the mask and signals are only ever taken here, with
 * sigtimedwait. The MQTT thread (mqtt_in.c) and the AMQP thread
 * (amqp_out.c) share only the spool and the counters. */
#include "mqtt2amqp/bridge.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mqtt2amqp/amqp_out.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/mqtt_in.h"
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
             "(max %" PRIu64 " bytes, fsync %s)",
             M2A_VERSION, cfg->path ? cfg->path : "-", m->host, m->port,
             m->protocol == 5 ? "MQTT 5" : "MQTT 3.1.1", m->tls.enabled ? ", TLS" : "",
             m->client_id, m->clean_session ? "clean" : "persistent", a->host, a->port,
             a->tls.enabled ? " (TLS)" : "", a->vhost, a->username, m2a_routes_count(routes),
             m2a_routes_nsubscriptions(routes), cfg->spool.dir, cfg->spool.max_bytes,
             fsync_name(cfg->spool.fsync));
}

static void log_stats(struct m2a_stats *st, struct m2a_spool *spool)
{
    struct m2a_spool_stats ss;
    m2a_spool_get_stats(spool, &ss);
    m2a_info(
        "stats",
        "received=%" PRIu64 " unmatched=%" PRIu64 " route_errors=%" PRIu64 " spooled=%" PRIu64
        " spooled_bytes=%" PRIu64 " published=%" PRIu64 " confirmed=%" PRIu64 " returned=%" PRIu64
        " nacked=%" PRIu64 " spool_messages=%" PRIu64 " spool_bytes=%" PRIu64 " mqtt=%s amqp=%s%s%s"
        " mqtt_reconnects=%" PRIu64 " amqp_reconnects=%" PRIu64,
        M2A_STAT_GET(st, received), M2A_STAT_GET(st, unmatched), M2A_STAT_GET(st, route_errors),
        M2A_STAT_GET(st, spooled), M2A_STAT_GET(st, spooled_bytes), M2A_STAT_GET(st, published),
        M2A_STAT_GET(st, confirmed), M2A_STAT_GET(st, returned), M2A_STAT_GET(st, nacked),
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

/* Waits for a signal until SIGTERM/SIGINT, logging stats on schedule. */
static int wait_for_stop(const struct m2a_config *cfg, struct m2a_stats *st,
                         struct m2a_spool *spool, const sigset_t *set)
{
    uint64_t interval_ms = (uint64_t)cfg->log.stats_interval * 1000u;
    uint64_t next_stats = m2a_now_ms() + interval_ms;
    for (;;) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 250 * 1000 * 1000};
        int sig = sigtimedwait(set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT)
            return sig;
        if (sig == SIGHUP)
            m2a_warn("bridge", "SIGHUP received: live reload is not implemented yet, ignored");
        if (interval_ms && m2a_now_ms() >= next_stats) {
            log_stats(st, spool);
            next_stats += interval_ms;
        }
    }
}

int m2a_bridge_run(const struct m2a_config *cfg)
{
    int rc = M2A_EXIT_RUNTIME;
    char err[512] = "";
    struct m2a_routes *routes = NULL;
    struct m2a_spool *spool = NULL;
    struct m2a_mqtt_in *mi = NULL;
    struct m2a_amqp_out *ao = NULL;
    struct m2a_stats *st = xcalloc(1, sizeof(*st));
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

    struct m2a_spool_opts so = {.dir = cfg->spool.dir,
                                .max_bytes = cfg->spool.max_bytes,
                                .segment_bytes = cfg->spool.segment_bytes,
                                .fsync = cfg->spool.fsync};
    struct m2a_spool_recovery rec = {0};
    if (m2a_spool_open(&so, &spool, &rec, err, sizeof(err)) != 0) {
        m2a_error("spool", "cannot open %s: %s", cfg->spool.dir, err);
        goto out;
    }
    log_recovery(&rec, cfg->spool.dir);

    struct m2a_amqp_out_opts ao_opts = {.conf = &cfg->amqp, .spool = spool, .stats = st};
    if (m2a_amqp_out_start(&ao_opts, &ao, err, sizeof(err)) != 0) {
        m2a_error("amqp", "cannot start: %s", err);
        goto out;
    }
    struct m2a_mqtt_in_opts mi_opts = {.conf = &cfg->mqtt,
                                       .routes = routes,
                                       .spool = spool,
                                       .spool_max_bytes = cfg->spool.max_bytes,
                                       .stats = st};
    if (m2a_mqtt_in_start(&mi_opts, &mi, err, sizeof(err)) != 0) {
        m2a_error("mqtt", "cannot start: %s", err);
        goto out;
    }

    int sig = wait_for_stop(cfg, st, spool, &set);
    m2a_info("bridge", "%s received: stopping MQTT input, waiting up to %d s for confirms",
             sig == SIGTERM ? "SIGTERM" : "SIGINT", cfg->shutdown_timeout);
    m2a_mqtt_in_stop(mi);
    mi = NULL;
    m2a_amqp_out_stop(ao, cfg->shutdown_timeout * 1000);
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
    m2a_spool_close(spool);
    m2a_routes_free(routes);
    free(st);
    return rc;
}
