/* brokers.c - the MQTT brokers of the interop tests behind one handle; see
 * brokers.h for the contract. The settings and command lines come from
 * scripts/lib.sh (m2a_ejabberd_exec, m2a_aedes_install, m2a_aedes_exec,
 * test-rabbitmq.sh start DIR mqtt), called through `bash -c`: an _exec
 * function execs the broker, so the child the harness records is the
 * broker itself.
 *
 * Threads: the test's main thread only (process spawning, see harness.h). */
#include "brokers.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

#define LIB_SH        M2A_SOURCE_DIR "/scripts/lib.sh"
#define RABBIT_MQTT   M2A_TEST_STATE "/rabbitmq-mqtt"
#define AEDES_INSTALL M2A_TEST_STATE "/aedes-npm"
#define READY_MS      30000
#define STOP_MS       30000

/* In flight, as measured (a subscriber that does not acknowledge counts
 * what it gets): Mosquitto honours MQTT 5's receive maximum; RabbitMQ sends
 * mqtt.prefetch (1000 in lib.sh's settings, 10 by default); aedes sends all
 * it has; ejabberd 23.01 sends one and waits for its PUBACK. */
static const struct th_broker_traits traits[TH_BROKER_NKINDS] = {
    [TH_BROKER_MOSQUITTO] = {.name = "mosquitto",
                             .package = "mosquitto",
                             .protocol = 5,
                             .keeps_sessions = true},
    [TH_BROKER_RABBITMQ] = {.name = "rabbitmq-mqtt",
                            .package = "rabbitmq-server",
                            .protocol = 4,
                            .keeps_sessions = true},
    [TH_BROKER_EJABBERD] = {.name = "ejabberd",
                            .package = "ejabberd",
                            .protocol = 5,
                            .needs_username = true,
                            .keeps_sessions = false,
                            .max_inflight = 1},
    /* In memory: aedes-persistence-level keeps sessions across a restart but
     * loses messages under a burst (M2A_AEDES_PERSISTENCE=level shows it). */
    [TH_BROKER_AEDES] = {.name = "aedes", .package = "aedes", .protocol = 4},
};

const struct th_broker_traits *th_broker_traits(enum th_broker_kind kind)
{
    return &traits[kind];
}

/* Runs a lib.sh function to completion: bash -c '. lib.sh && FN "$@"' args. */
static int lib_run(const char *fn, const char *const *args, int timeout_ms)
{
    char *script = xasprintf(". \"$0\" && %s \"$@\"", fn);
    const char *argv[16] = {"bash", "-c", script, LIB_SH};
    size_t n = 4;
    for (size_t i = 0; args && args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    struct th_run_result r;
    int rc = th_run(argv, NULL, timeout_ms, &r);
    if (rc == 0 && r.exit_code != 0) {
        fprintf(stderr, "brokers: %s exited %d:\n%s%s", fn, r.exit_code, r.out, r.err);
        rc = M2A_ERR_IO;
    }
    th_run_result_free(&r);
    free(script);
    return rc;
}

/* ---- the RabbitMQ node with the MQTT plugin ------------------------------- */

static int rabbit_verb(const char *verb, const char *const *args)
{
    struct th_run_result r;
    uint64_t t0 = m2a_now_ms();
    int rc = th_rabbit_script(verb, RABBIT_MQTT, args, &r);
    fprintf(stderr, "brokers: rabbitmq-mqtt %s: exit %d in %.1f s\n%s", verb, r.exit_code,
            (double)(m2a_now_ms() - t0) / 1000.0, r.err);
    th_run_result_free(&r);
    return rc;
}

int th_broker_rabbit_node_start(void)
{
    const char *args[] = {"mqtt", NULL};
    return rabbit_verb("start", args);
}

void th_broker_rabbit_node_stop(void)
{
    rabbit_verb("stop", NULL);
}

static bool rabbit_running(void)
{
    struct th_run_result r;
    int rc = th_rabbit_script("status", RABBIT_MQTT, NULL, &r);
    th_run_result_free(&r);
    return rc == 0;
}

/* ---- starting and stopping -------------------------------------------------- */

static bool ready(void *arg)
{
    struct th_broker *b = arg;
    if (b->kind != TH_BROKER_RABBITMQ && !th_proc_alive(&b->proc))
        return true; /* exited: the caller looks */
    return th_port_open(b->port);
}

/* Spawns the broker (ejabberd, aedes) through its lib.sh _exec function. */
static int spawn(struct th_broker *b)
{
    char port[16];
    snprintf(port, sizeof(port), "%d", b->port);
    const char *argv[10] = {"bash", "-c", NULL, LIB_SH};
    if (b->kind == TH_BROKER_EJABBERD) {
        argv[2] = ". \"$0\" && m2a_ejabberd_exec \"$@\"";
        argv[4] = b->dir;
        argv[5] = port;
        argv[6] = NULL;
    } else {
        argv[2] = ". \"$0\" && m2a_aedes_exec \"$@\"";
        argv[4] = AEDES_INSTALL;
        argv[5] = b->dir;
        argv[6] = port;
        argv[7] = b->t->keeps_sessions ? "level" : "memory";
        argv[8] = NULL;
    }
    int rc = th_proc_spawn(&b->proc, argv, NULL, b->log_path);
    if (rc == 0)
        rc = th_poll_until(ready, b, READY_MS);
    if (rc == 0 && !th_proc_alive(&b->proc))
        rc = M2A_ERR_CLOSED;
    if (rc != 0) {
        fprintf(stderr, "brokers: %s on port %d did not start (%s)\n", b->t->name, b->port,
                m2a_strerror(rc));
        th_dump_tail(b->t->name, b->log_path, 30);
        th_proc_kill(&b->proc);
    }
    return rc;
}

static int launch(struct th_broker *b)
{
    switch (b->kind) {
    case TH_BROKER_MOSQUITTO:
        return th_mosq_restart(b->mosq);
    case TH_BROKER_RABBITMQ:
        return rabbit_verb("restart", NULL);
    default:
        return spawn(b);
    }
}

struct th_broker *th_broker_start(enum th_broker_kind kind)
{
    struct th_broker *b = xcalloc(1, sizeof(*b));
    b->kind = kind;
    b->traits = traits[kind];
    const char *ap = getenv("M2A_AEDES_PERSISTENCE");
    if (kind == TH_BROKER_AEDES && ap && strcmp(ap, "level") == 0)
        b->traits.keeps_sessions = true;
    b->t = &b->traits;
    if (b->t->needs_username) {
        b->username = "m2a-test"; /* anonymous login: any name and password */
        b->password = "m2a-test";
    }
    int rc = 0;
    switch (kind) {
    case TH_BROKER_MOSQUITTO:
        b->mosq = th_mosq_start(TH_MOSQ_SHIPPED);
        if (!b->mosq) {
            rc = M2A_ERR_IO;
            break;
        }
        b->port = b->mosq->port;
        b->dir = xstrdup(b->mosq->dir);
        b->log_path = xstrdup(b->mosq->proc.log_path);
        break;
    case TH_BROKER_RABBITMQ:
        b->dir = xstrdup(RABBIT_MQTT);
        b->log_path = xasprintf("%s/log/server.stdout", b->dir);
        if (!rabbit_running())
            rc = th_broker_rabbit_node_start();
        if (rc == 0) {
            char *port = th_rabbit_env_get(RABBIT_MQTT, "MQTT_PORT");
            b->port = port ? atoi(port) : 0;
            free(port);
            if (b->port <= 0 || !th_port_open(b->port)) {
                fprintf(stderr, "brokers: no MQTT listener recorded in %s/env\n", RABBIT_MQTT);
                rc = M2A_ERR_IO;
            }
        }
        break;
    case TH_BROKER_AEDES: {
        const char *args[] = {AEDES_INSTALL, NULL};
        rc = lib_run("m2a_aedes_install", args, 300000);
    } /* fall through */
    case TH_BROKER_EJABBERD:
        if (rc != 0)
            break;
        b->dir = th_tmpdir_new(b->t->name);
        b->log_path = xasprintf("%s/broker.log", b->dir);
        b->port = th_free_port();
        rc = spawn(b);
        break;
    default:
        rc = M2A_ERR_ARG;
    }
    if (rc != 0) {
        fprintf(stderr, "brokers: %s: start failed\n", b->t->name);
        th_broker_free(b);
        return NULL;
    }
    fprintf(stderr, "brokers: %s on 127.0.0.1:%d\n", b->t->name, b->port);
    return b;
}

int th_broker_stop(struct th_broker *b)
{
    switch (b->kind) {
    case TH_BROKER_MOSQUITTO:
        return th_mosq_stop(b->mosq);
    case TH_BROKER_RABBITMQ:
        return rabbit_verb("stop", NULL);
    default: {
        int code = th_proc_stop(&b->proc, SIGTERM, STOP_MS);
        if (code != 0)
            fprintf(stderr, "brokers: %s stopped with status %d\n", b->t->name, code);
        return code == 0 ? 0 : M2A_ERR_IO;
    }
    }
}

void th_broker_kill(struct th_broker *b)
{
    switch (b->kind) {
    case TH_BROKER_MOSQUITTO:
        th_mosq_kill(b->mosq);
        break;
    case TH_BROKER_RABBITMQ:
        rabbit_verb("kill", NULL);
        break;
    default:
        th_proc_kill(&b->proc);
    }
}

int th_broker_restart(struct th_broker *b)
{
    uint64_t t0 = m2a_now_ms();
    if (b->kind == TH_BROKER_EJABBERD || b->kind == TH_BROKER_AEDES) {
        if (th_proc_alive(&b->proc) && th_broker_stop(b) != 0)
            return M2A_ERR_IO;
    } else if (b->kind == TH_BROKER_MOSQUITTO && th_proc_alive(&b->mosq->proc)) {
        if (th_mosq_stop(b->mosq) != 0)
            return M2A_ERR_IO;
    }
    int rc = launch(b); /* RabbitMQ's restart verb stops first itself */
    fprintf(stderr, "brokers: %s restarted in %.1f s\n", b->t->name,
            (double)(m2a_now_ms() - t0) / 1000.0);
    return rc;
}

char *th_broker_version(const struct th_broker *b)
{
    const char *dpkg[] = {"dpkg-query", "-W", "-f", "${Version}", b->t->package, NULL};
    const char *npm[] = {"node", "-p", "require(process.argv[1]).version",
                         AEDES_INSTALL "/node_modules/aedes/package.json", NULL};
    struct th_run_result r;
    int rc = th_run(b->kind == TH_BROKER_AEDES ? npm : dpkg, NULL, 10000, &r);
    char *v = xstrdup(rc == 0 && r.exit_code == 0 ? r.out : "?");
    th_run_result_free(&r);
    v[strcspn(v, "\n")] = 0;
    return v;
}

void th_broker_free(struct th_broker *b)
{
    if (!b)
        return;
    switch (b->kind) {
    case TH_BROKER_MOSQUITTO:
        th_mosq_free(b->mosq);
        break;
    case TH_BROKER_RABBITMQ:
        break; /* shared by the tests of the program: th_broker_rabbit_node_stop */
    default:
        th_proc_release(&b->proc);
        if (b->dir)
            th_tmpdir_remove(b->t->name, b->dir);
    }
    free(b->dir);
    free(b->log_path);
    free(b);
}
