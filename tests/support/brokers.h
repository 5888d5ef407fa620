/* brokers.h - the MQTT brokers the bridge is tested against, behind one
 * handle: Mosquitto (the reference: harness.h's th_mosq from the shipped
 * config), RabbitMQ's MQTT plugin, ejabberd's mod_mqtt and aedes. Each is a
 * private instance on a free loopback port with its own data dir, started
 * from the settings scripts/lib.sh writes (the ones the README's "Brokers"
 * section recommends), and each keeps its data across th_broker_restart.
 *
 * Processes: Mosquitto, ejabberd and aedes are children of the test process
 * (harness.h's th_proc: killed with it). RabbitMQ's MQTT plugin runs on a
 * node of its own, not the fixture's (M2A_TEST_STATE/rabbitmq-mqtt, through
 * scripts/test-rabbitmq.sh `start DIR mqtt`): started once per test program
 * by th_broker_rabbit_node_start in main(), before check forks the tests,
 * stopped by th_broker_rabbit_node_stop (and by the fixture's cleanup if a
 * test program died). Its pids live in its env file, so a test (a forked
 * child) may restart it and the next test still finds it.
 *
 * What differs between the brokers and matters to a client is in
 * th_broker_traits, as the tests found it; test_brokers.c asserts it. */
#ifndef M2A_TEST_BROKERS_H
#define M2A_TEST_BROKERS_H

#include <stdbool.h>

#include "harness.h"

enum th_broker_kind {
    TH_BROKER_MOSQUITTO,
    TH_BROKER_RABBITMQ,
    TH_BROKER_EJABBERD,
    TH_BROKER_AEDES,
    TH_BROKER_NKINDS
};

struct th_broker_traits {
    const char *name;    /* "mosquitto", "rabbitmq-mqtt", "ejabberd", "aedes" */
    const char *package; /* the Debian or npm package it comes from */
    int protocol;        /* the newest MQTT it speaks: 5, or 4 (3.1.1) */
    bool needs_username; /* refuses a CONNECT without a user name */
    bool keeps_sessions; /* a persistent session survives the broker's restart */
    int max_inflight;    /* QoS 1 messages it sends a subscriber before a PUBACK:
                          * 0 = the client's receive maximum or the broker's
                          * setting (see brokers.c), 1 = one at a time */
};

/* The traits of kind (static storage). */
const struct th_broker_traits *th_broker_traits(enum th_broker_kind kind);

struct th_broker {
    enum th_broker_kind kind;
    const struct th_broker_traits *t; /* &traits */
    struct th_broker_traits traits;   /* th_broker_traits(kind), or as the environment says:
                                       * M2A_AEDES_PERSISTENCE=level keeps aedes's sessions
                                       * in LevelDB */
    int port;                         /* MQTT, 127.0.0.1 */
    const char *username; /* what clients send (any name works where needed); NULL: none */
    const char *password;
    char *dir;            /* data and logs (RabbitMQ: the node's dir) */
    char *log_path;       /* the broker's main log, for th_dump_tail */
    struct th_mosq *mosq; /* TH_BROKER_MOSQUITTO */
    struct th_proc proc;  /* TH_BROKER_EJABBERD, TH_BROKER_AEDES */
};

/* Starts a broker of that kind and waits until it accepts MQTT connections
 * (RabbitMQ: attaches to the node th_broker_rabbit_node_start started, or
 * starts it if none runs). NULL on failure (printed, with the log's tail). */
struct th_broker *th_broker_start(enum th_broker_kind kind);
/* Graceful stop (SIGTERM; RabbitMQ: rabbitmqctl stop): the broker saves
 * what it keeps. 0, or the error (printed). */
int th_broker_stop(struct th_broker *b);
/* SIGKILL: no chance to save anything, like a crash. */
void th_broker_kill(struct th_broker *b);
/* Stops it if running (gracefully), starts it again on the same port and
 * data, waits until it accepts connections. */
int th_broker_restart(struct th_broker *b);
/* The broker's version as its package reports it; caller frees. */
char *th_broker_version(const struct th_broker *b);
/* Stops (kills) the broker unless it is the shared RabbitMQ node, removes
 * its dir. NULL is a no-op. */
void th_broker_free(struct th_broker *b);

/* The RabbitMQ node with the MQTT plugin, for main(): a fresh node
 * (whatever the dir recorded is stopped first), or 0 on success. */
int th_broker_rabbit_node_start(void);
/* Stops it; void(void), so atexit() can take it. */
void th_broker_rabbit_node_stop(void);

#endif
