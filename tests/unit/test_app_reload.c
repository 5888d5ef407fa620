/* test_app_reload.c - the bridge's main thread across live reloads, in
 * process and without brokers: both sides fail to connect and back off,
 * which the reload handoff does not need (disconnected, the AMQP side takes
 * a generation for its next connect and hands it on at once).
 *
 * Regression (issue 9): every configuration a reload loaded was kept until
 * exit (200 SIGHUPs grew RSS by 390-520 KiB). Now a generation, which owns
 * its configuration, is freed as soon as no thread runs it: after 50
 * reloads as many are alive as after one (the start generation, whose
 * settings a reload does not change, and the running one), and none is
 * left once the bridge has stopped. Counted, not measured: RSS would be a
 * flaky witness. */
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "mqtt2amqp/app.h"
#include "mqtt2amqp/config.h"
#include "mqtt2amqp/generation.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define RELOADS 50
#define STEP_MS 5000 /* for one reload to be applied by both threads */

/* A loopback port nothing listens on (bound, then released). */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

struct rig {
    char dir[64];
    char path[128];
    int mqtt_port, amqp_port;
};

/* The config with nroutes routes (each reload changes the routes). */
static void write_config(const struct rig *r, int nroutes)
{
    FILE *f = fopen(r->path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f,
            "mqtt: {host: 127.0.0.1, port: %d, reconnect_min_ms: 1000, reconnect_max_ms: 1000}\n"
            "amqp: {host: 127.0.0.1, port: %d, reconnect_min_ms: 1000, reconnect_max_ms: 1000}\n"
            "spool: {dir: %s/spool}\n"
            "log: {level: error, stats_interval: 0}\n"
            "shutdown_timeout: 1\n"
            "routes:\n",
            r->mqtt_port, r->amqp_port, r->dir);
    for (int i = 0; i < nroutes; i++)
        fprintf(f, "  - {name: r%d, topic: \"t/%d/#\", exchange: amq.topic}\n", i, i);
    ck_assert_int_eq(fclose(f), 0);
}

static void *run_app(void *arg)
{
    struct m2a_config *cfg = arg;
    return (void *)(intptr_t)m2a_app_run(cfg);
}

/* Waits until `built` generations were built and `alive` are referenced. */
static bool wait_counts(uint64_t built, uint64_t alive, int timeout_ms)
{
    uint64_t deadline = m2a_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        uint64_t b, a;
        m2a_generation_counts(&b, &a);
        if (b == built && a == alive)
            return true;
        if (m2a_now_ms() >= deadline) {
            fprintf(stderr, "generations: %llu built (want %llu), %llu alive (want %llu)\n",
                    (unsigned long long)b, (unsigned long long)built, (unsigned long long)a,
                    (unsigned long long)alive);
            return false;
        }
        struct timespec ts = {0, 2 * 1000 * 1000};
        nanosleep(&ts, NULL); /* polls a condition, bounded by the deadline */
    }
}

static void remove_tree(const char *dir)
{
    char *cmd = xasprintf("rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
    free(cmd);
}

START_TEST(reloads_free_the_generations_no_thread_runs)
{
    struct rig r;
    snprintf(r.dir, sizeof(r.dir), "/tmp/m2a-app-reload-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(r.dir));
    snprintf(r.path, sizeof(r.path), "%s/bridge.yaml", r.dir);
    r.mqtt_port = closed_port();
    r.amqp_port = closed_port();
    write_config(&r, 1);

    /* The signals go to the bridge's signalfd: blocked in every thread. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGPIPE);
    ck_assert_int_eq(pthread_sigmask(SIG_BLOCK, &set, NULL), 0);

    char err[1024];
    struct m2a_config *cfg = NULL;
    ck_assert_msg(m2a_config_load(r.path, &cfg, err, sizeof(err)) == 0, "%s", err);
    pthread_t app;
    ck_assert_int_eq(pthread_create(&app, NULL, run_app, cfg), 0);
    ck_assert(wait_counts(1, 1, STEP_MS));

    for (int i = 1; i <= RELOADS; i++) {
        write_config(&r, 1 + i % 4);
        ck_assert_int_eq(kill(getpid(), SIGHUP), 0);
        /* built by the main thread, run by the AMQP thread, then by the
         * MQTT thread, which drops the one before: start + running. */
        ck_assert_msg(wait_counts(1 + (uint64_t)i, 2, STEP_MS), "reload %d", i);
    }
    ck_assert_int_eq(kill(getpid(), SIGTERM), 0);
    void *rc;
    ck_assert_int_eq(pthread_join(app, &rc), 0);
    ck_assert_int_eq((int)(intptr_t)rc, 0);
    uint64_t built, alive;
    m2a_generation_counts(&built, &alive);
    ck_assert_uint_eq(built, 1 + RELOADS);
    ck_assert_uint_eq(alive, 0);
    remove_tree(r.dir);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("app_reload");
    TCase *tc = tcase_create("reload");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, reloads_free_the_generations_no_thread_runs);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
