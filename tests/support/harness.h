/* harness.h - the broker harness of the test-support library (tests/support,
 * linked by every test; a unit test that does not call into this part does
 * not link it): real brokers, the real bridge binary, an AMQP consumer, an
 * MQTT publisher and a delivery checker. The rest of the library:
 * files.h (temp dirs, whole files; included here), config_check.h
 * (configurations from text), flow.h (traffic under faults), brokers.h (the
 * other MQTT brokers: RabbitMQ's plugin, ejabberd, aedes), proxy.h (a
 * link that breaks), tls.h (certificates, TLS brokers), http.h.
 *
 * Processes: everything spawned here is recorded by pid, gets
 * PR_SET_PDEATHSIG(SIGKILL) (it dies with the test process even when check
 * or ctest SIGKILLs the test on a timeout) and is SIGKILLed by an atexit
 * handler of the process that spawned it. Nothing is ever killed by name.
 * Spawn from the test's main thread (the death signal follows the thread).
 *
 * Synchronisation: no sleeps. Every wait polls a condition against a
 * deadline (th_poll_until) and gives up with M2A_ERR_TIMEOUT.
 *
 * RabbitMQ: one node per ctest run, started by the "brokers" fixture
 * (scripts/test-rabbitmq.sh start M2A_TEST_STATE/rabbitmq); tests read its
 * port from M2A_TEST_STATE/rabbitmq/env and may stop/kill/restart it.
 * Mosquitto: each test starts its own from docker/mosquitto/mosquitto.conf
 * (the shipped file) or from stock settings, the config written by
 * scripts/lib.sh's m2a_mosquitto_conf, as for scripts/run.sh and the
 * benchmarks.
 *
 * Temp dirs live under M2A_TEST_STATE/tmp and are removed by the _free
 * functions unless M2A_TEST_KEEP=1 is set in the environment (for a look at
 * the logs of a failed run).
 *
 * Functions returning int give 0 or a negative enum m2a_err and print the
 * reason to stderr: a test only needs ck_assert_int_eq(rc, 0). Not thread-safe:
 * call from one thread (th_mqtt_publish may run in a thread of its own). */
#ifndef M2A_TEST_HARNESS_H
#define M2A_TEST_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "files.h" /* temp dirs, th_rmtree, th_read_file, th_dump_tail */

/* ---- generic helpers ---------------------------------------------------- */

/* Polls cond(arg) every ~2-20 ms until it returns true (0) or timeout_ms
 * passes (M2A_ERR_TIMEOUT). cond is evaluated at least once. */
int th_poll_until(bool (*cond)(void *arg), void *arg, int timeout_ms);
/* Sleeps ms (restarting after a signal). For pacing traffic or between the
 * checks of a condition; never as synchronisation: wait with th_poll_until. */
void th_sleep_ms(int ms);

/* A loopback TCP port nobody listens on, from 20000-31999 (below the
 * ephemeral range, so outgoing connections will not take it meanwhile); not
 * the same port twice per process. Aborts if none is found. */
int th_free_port(void);
/* True if something accepts TCP connections on 127.0.0.1:port. */
bool th_port_open(int port);

/* Replaces ${NAME} and ${NAME:-default} in text for each NAME in vars
 * (NULL-terminated array of "NAME=VALUE"); unknown names are left alone, so
 * the bridge's own ${...} expansion still sees them. Caller frees. */
char *th_subst(const char *text, const char *const *vars);

/* ---- processes ---------------------------------------------------------- */

struct th_proc {
    pid_t pid;      /* 0 when not running (never started, or reaped) */
    int status;     /* raw wait status once reaped */
    char *log_path; /* stdout+stderr go here (appended); owned */
    long log_start; /* size of the log when this run started */
    /* Starts the program with SIGTERM, SIGINT and SIGHUP blocked (the mask
     * survives exec): for the bridge, which takes them from a signalfd, so
     * that a stop sent while it is still loading its libraries waits for
     * it instead of killing it (status 143). Never for a program that
     * handles them with handlers (Mosquitto): it would not see them. */
    bool stop_signals_blocked;
};

/* Starts argv[0] (PATH searched) with stdin from /dev/null and stdout and
 * stderr appended to log_path (duplicated into p->log_path). env: extra
 * "NAME=VALUE" settings for the child, NULL-terminated, may be NULL.
 * p must be zeroed or previously reaped. */
int th_proc_spawn(struct th_proc *p, const char *const *argv, const char *const *env,
                  const char *log_path);
/* True while the process runs (reaps it if it exited). */
bool th_proc_alive(struct th_proc *p);
/* Waits until the log written since the last spawn contains needle. Fails
 * early with M2A_ERR_CLOSED if the process exits first (after one last
 * look at the log). On failure prints the log tail. */
int th_proc_wait_log(struct th_proc *p, const char *needle, int timeout_ms);
/* Counts occurrences of needle in the log since the last spawn. */
int th_proc_log_count(struct th_proc *p, const char *needle);
/* Sends sig. M2A_ERR_CLOSED if not running. */
int th_proc_signal(struct th_proc *p, int sig);
/* Waits for exit; 0 and *exit_code = exit status, or 128+signal if killed
 * (exit_code may be NULL). M2A_ERR_TIMEOUT if still running. */
int th_proc_wait_exit(struct th_proc *p, int timeout_ms, int *exit_code);
/* sig (e.g. SIGTERM), wait up to timeout_ms, then SIGKILL. Returns the
 * exit code as th_proc_wait_exit, or -1 if it had to be SIGKILLed. No-op
 * (0) if not running. */
int th_proc_stop(struct th_proc *p, int sig, int timeout_ms);
/* SIGKILL and reap (a crash). No-op if not running. */
void th_proc_kill(struct th_proc *p);
/* Kills if running and frees log_path. */
void th_proc_release(struct th_proc *p);

/* Runs argv to completion with stdin from /dev/null (or stdin_text if not
 * NULL), capturing stdout and stderr. */
struct th_run_result {
    int exit_code; /* exit status, 128+signal if killed, -1 on timeout */
    char *out;     /* captured stdout, NUL-terminated; owned */
    char *err;     /* captured stderr, NUL-terminated; owned */
};
int th_run(const char *const *argv, const char *stdin_text, int timeout_ms,
           struct th_run_result *r);
void th_run_result_free(struct th_run_result *r);

/* ---- Mosquitto ---------------------------------------------------------- */

enum th_mosq_conf {
    TH_MOSQ_SHIPPED, /* docker/mosquitto/mosquitto.conf, listener and persistence_location rewritten
                      */
    TH_MOSQ_STOCK    /* only "listener PORT 127.0.0.1" + "allow_anonymous true" */
};

struct th_mosq {
    int port;
    int extra_port;  /* another listener of the config that readiness waits for; 0: none */
    char *dir;       /* temp dir: mosquitto.conf, data/, mosquitto.log */
    char *conf_path; /* the generated config */
    struct th_proc proc;
};

/* Generates the config (scripts/lib.sh's m2a_mosquitto_conf, so the same
 * transformation of the shipped file as scripts/run.sh and bench/run.sh),
 * starts `mosquitto -c FILE` on a free loopback port and waits until it
 * accepts TCP connections (15 s). NULL on failure. */
struct th_mosq *th_mosq_start(enum th_mosq_conf kind);
/* The same with extra appended to the config (e.g. more listeners; NULL:
 * none), readiness also waiting for extra_port if > 0. */
struct th_mosq *th_mosq_start_with(enum th_mosq_conf kind, const char *extra, int extra_port);
/* SIGTERM (Mosquitto saves its persistence file), wait 15 s, SIGKILL. */
int th_mosq_stop(struct th_mosq *m);
/* SIGKILL: no persistence save, like a crash. */
void th_mosq_kill(struct th_mosq *m);
/* Starts again on the same port, config and data dir; waits for readiness.
 * Stops it first if running. */
int th_mosq_restart(struct th_mosq *m);
/* Stops (SIGKILL) if running, removes the dir. NULL is a no-op. */
void th_mosq_free(struct th_mosq *m);

/* ---- RabbitMQ (the fixture's node) ------------------------------------- */

struct th_rabbit {
    char *dir; /* M2A_TEST_STATE/rabbitmq */
    int amqp_port;
    char *nodename;
    pid_t server_pid; /* beam.smp; 0 when stopped */
};

/* Reads M2A_TEST_STATE/rabbitmq/env (again on every call: verbs change the
 * pid). Returns a static struct, valid until the next call, or NULL if the
 * fixture did not run. */
const struct th_rabbit *th_rabbit(void);
/* Shorthand: the AMQP port of the fixture's node (aborts if none). */
int th_rabbit_port(void);
/* The value of KEY in DIR/env, the file scripts/test-rabbitmq.sh writes for
 * a node (unquoted; NULL if absent). Caller frees. */
char *th_rabbit_env_get(const char *dir, const char *key);
/* The value of KEY in a file of KEY=VALUE lines written with bash's
 * printf %q (DIR/env, a cluster's cluster.env), unquoted; NULL if absent.
 * Caller frees. */
char *th_kv_file_get(const char *path, const char *key);
/* Runs scripts/test-rabbitmq.sh VERB DIR [args] (NULL-terminated, may be
 * NULL) to completion (180 s), capturing its output in r. 0 if it exited 0.
 * For a node of a test's own; the fixture's: th_rabbit_do, th_rabbit_ctl. */
int th_rabbit_script(const char *verb, const char *dir, const char *const *args,
                     struct th_run_result *r);
/* Runs scripts/test-rabbitmq.sh VERB DIR: "stop", "restart", "kill",
 * "stop_app", "start_app" (start would wipe the node: use restart). Waits
 * up to 180 s; 0 if the script succeeded. */
int th_rabbit_do(const char *verb);
/* Runs rabbitmqctl against the node (args NULL-terminated), capturing its
 * output in r. 0 if it exited 0. */
int th_rabbit_ctl(const char *const *args, struct th_run_result *r);

/* rabbitmqctl set_vm_memory_high_watermark VALUE on the fixture's node: "0"
 * raises the memory alarm (publishers blocked), 0 or printed failure. */
int th_rabbit_set_watermark(const char *value);
/* Back to RabbitMQ's default (0.4). void(void), for atexit() and check's
 * unchecked fixtures: a failed test must not leave publishing blocked. */
void th_rabbit_restore_watermark(void);

/* ---- the bridge --------------------------------------------------------- */

struct th_bridge {
    char *dir;         /* temp dir */
    char *config_path; /* dir/mqtt2amqp.yaml */
    char *spool_dir;   /* dir/spool (not created: the bridge creates it) */
    struct th_proc proc;
    char **vars; /* "NAME=VALUE", NULL-terminated; owned */
};

/* New temp dir with variables preset for th_bridge_config and the child's
 * environment: DIR, SPOOL_DIR, MQTT_HOST=127.0.0.1, AMQP_HOST=127.0.0.1,
 * AMQP_PORT (the fixture's, if it runs); MQTT_PORT from mosq if not NULL. */
struct th_bridge *th_bridge_new(const struct th_mosq *mosq);
/* Sets (or replaces) a variable. */
void th_bridge_set(struct th_bridge *b, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Writes yaml to config_path with the variables substituted (th_subst). */
int th_bridge_config(struct th_bridge *b, const char *yaml);
/* Spawns M2A_BINARY -c config_path [extra args], output to dir/bridge.log
 * (appended across restarts; waits only look at the current run), with the
 * variables in its environment. extra may be NULL. */
int th_bridge_start(struct th_bridge *b, const char *const *extra);
int th_bridge_wait_log(struct th_bridge *b, const char *needle, int timeout_ms);
int th_bridge_signal(struct th_bridge *b, int sig);
int th_bridge_wait_exit(struct th_bridge *b, int timeout_ms, int *exit_code);
void th_bridge_kill(struct th_bridge *b);
/* A graceful stop: SIGTERM, then waits up to timeout_ms for the exit. 0 if it
 * exited with status 0; M2A_ERR_CLOSED if it was not running,
 * M2A_ERR_TIMEOUT, or M2A_ERR_IO for another status (printed, log tail too). */
int th_bridge_stop(struct th_bridge *b, int timeout_ms);
/* Waits until this run's log holds needle at least n times (on timeout
 * prints how many and the log's tail). */
int th_bridge_wait_log_count(struct th_bridge *b, const char *needle, int n, int timeout_ms);
/* name=<value> in the last stats line ("stats: received=...") of this run's
 * log, or -1 if there is none yet. The bridge writes one at exit too. */
long th_bridge_stat(struct th_bridge *b, const char *name);
/* Waits until th_bridge_stat(b, name) >= at_least. */
int th_bridge_wait_stat(struct th_bridge *b, const char *name, long at_least, int timeout_ms);
/* Kills it if running, removes the dir. NULL is a no-op. */
void th_bridge_free(struct th_bridge *b);

/* ---- AMQP consumer (librabbitmq-c, channel 1) --------------------------- */

struct th_header {
    char *key;
    char *value; /* rendered as text: strings as is, numbers in decimal, true/false */
};

struct th_msg {
    long seq; /* from "seq=<n>" in the body, -1 if none */
    char *body;
    size_t body_len;
    char *exchange;
    char *routing_key;
    bool redelivered;
    /* properties; NULL / -1 when absent */
    char *content_type;
    char *content_encoding;
    char *message_id;
    char *correlation_id;
    char *type;
    char *app_id;
    char *expiration;
    int delivery_mode;
    int priority;
    int64_t timestamp;
    struct th_header *headers;
    size_t nheaders;
};

struct th_msgs {
    struct th_msg *v;
    size_t n, cap;
};

/* The value of header key in m, or NULL. */
const char *th_msg_header(const struct th_msg *m, const char *key);
void th_msgs_free(struct th_msgs *ms);

struct th_amqp;

/* Connects to 127.0.0.1:port as guest/guest and opens channel 1; NULL on
 * failure (printed unless quiet). */
struct th_amqp *th_amqp_connect(int port, int timeout_ms, bool quiet);
void th_amqp_free(struct th_amqp *c);
/* Declares queue (durable or not; exclusive queues vanish with the
 * connection). 0 on success. */
int th_amqp_declare(struct th_amqp *c, const char *queue, bool durable, bool exclusive);
/* Declares a durable quorum queue (x-queue-type: quorum; on a cluster, one
 * replica per member, the leader on the node c is connected to). */
int th_amqp_declare_quorum(struct th_amqp *c, const char *queue);
int th_amqp_bind(struct th_amqp *c, const char *queue, const char *exchange,
                 const char *binding_key);
/* Declares a durable or not topic exchange. */
int th_amqp_declare_exchange(struct th_amqp *c, const char *exchange, const char *type,
                             bool durable);
int th_amqp_purge(struct th_amqp *c, const char *queue);
int th_amqp_delete(struct th_amqp *c, const char *queue);
/* Message count of queue (passive declare); negative on error. */
long th_amqp_count(struct th_amqp *c, const char *queue);
/* Puts channel 1 in confirm mode: from then on th_amqp_publish returns only
 * after the broker's basic.ack (30 s bound). Do not consume on the same
 * connection while confirming. */
int th_amqp_confirm_select(struct th_amqp *c);
/* Publishes one message (for self-tests and seeding), content type
 * text/plain, delivery mode 2 if persistent. */
int th_amqp_publish(struct th_amqp *c, const char *exchange, const char *routing_key,
                    const char *body, bool persistent);
/* Starts a consumer on queue (manual acks, prefetch 2000): each message
 * is acknowledged once it is in the caller's th_msgs, so what a test did
 * not read is requeued, never lost. */
int th_amqp_consume(struct th_amqp *c, const char *queue);
/* A consumer on a connection of its own to 127.0.0.1:port: with exchange,
 * first declares it (topic, durable) and the durable queue, binds them with
 * binding_key (unless NULL) and purges the queue; then consumes queue (as
 * th_amqp_consume). NULL on failure (printed). */
struct th_amqp *th_amqp_consumer(int port, const char *queue, const char *exchange,
                                 const char *binding_key);
/* Appends consumed messages to out until it holds `distinct` distinct
 * seq >= 0 values (counting what it already held) or timeout_ms passes.
 * 0 when reached, M2A_ERR_TIMEOUT, or M2A_ERR_AMQP if the connection died
 * (out keeps what arrived). */
int th_amqp_collect(struct th_amqp *c, struct th_msgs *out, size_t distinct, int timeout_ms);
/* Like collect but stops after `quiet_ms` with no message (drains a queue
 * to check nothing else arrives). Returns the number of messages added. */
long th_amqp_drain(struct th_amqp *c, struct th_msgs *out, int quiet_ms);

/* ---- MQTT publisher (libmosquitto) -------------------------------------- */

struct th_pub {
    int port;
    const char *const *topics; /* seq s goes to topics[s % ntopics] */
    size_t ntopics;
    long first, count;   /* publishes seq first .. first+count-1 */
    size_t payload_size; /* payload padded with 'x' to at least this many bytes */
    int qos;             /* 0 or 1 (give 1 for the usual at-least-once tests) */
    int window;          /* max unacknowledged QoS1 messages; 0 = 100 */
    int protocol;        /* 0 or 4 = MQTT 3.1.1, 5 = MQTT 5 */
    bool retain;
    const char *client_id; /* NULL: generated */
    const char *username;  /* NULL: none (some brokers require one: brokers.h) */
    const char *password;  /* with username; NULL: none */
    int timeout_ms;        /* whole run, including connect */
    bool quiet;            /* do not print the summary line */
};
/* Publishes "seq=<n> topic=<t> xxx..." messages as fast as the broker acks
 * them. Returns how many were acknowledged (QoS1) or written (QoS0), which
 * is less than count if the deadline passed or the connection dropped;
 * negative if it never connected. Thread-safe (own mosquitto handle). */
long th_mqtt_publish(const struct th_pub *p);

/* ---- delivery checking -------------------------------------------------- */

struct th_delivery {
    long sent;       /* expected: seqs first .. first+sent-1 */
    long received;   /* messages looked at */
    long lost;       /* expected seqs never received */
    long duplicated; /* extra copies of expected seqs */
    long unexpected; /* seqs outside the expected range (or -1: no seq) */
};
/* Compares seqs[0..n) against [first, first+sent); prints
 * "delivery: sent=N received=R lost=L duplicated=D unexpected=U". */
struct th_delivery th_check_seqs(long first, long sent, const long *seqs, size_t n);
/* The same over collected messages. */
struct th_delivery th_check_msgs(long first, long sent, const struct th_msgs *ms);
/* How many distinct seq >= 0 ms holds. */
size_t th_msgs_distinct(const struct th_msgs *ms);
/* Asserts (check) that d saw every expected seq exactly once and nothing
 * else. A macro, so a failure names the test's line. */
#define TH_ASSERT_EXACT(d)                                                                         \
    do {                                                                                           \
        struct th_delivery th_d_ = (d);                                                            \
        ck_assert_int_eq(th_d_.lost, 0);                                                           \
        ck_assert_int_eq(th_d_.duplicated, 0);                                                     \
        ck_assert_int_eq(th_d_.unexpected, 0);                                                     \
    } while (0)

#endif
