/* config.h - mqtt2amqp's configuration: the struct every module reads, and
 * the schema that fills it (config.c).
 *
 * m2a_config_load() reads a YAML file through the option tables of
 * config.c (bound by conf_bind.c) and returns an immutable struct
 * m2a_config. The schema is the only validator of the tree: what loads has
 * passed every check the bridge makes of its configuration at start (ranges,
 * names that must fit the AMQP and MQTT wire formats, routes against the
 * declared exchanges, TLS files that OpenSSL loads and a key that matches
 * its certificate), so the modules that read it only assert that pointers
 * are set. Every error (invalid YAML, unknown or duplicate key, wrong type,
 * value out of range, bad topic filter or template, a route naming an
 * undeclared exchange) is reported as "FILE:LINE:COLUMN: message" (1-based)
 * in the caller's buffer. String values expand ${VAR} and ${VAR:-default}
 * from the environment; "password_file" reads a secret from a file
 * (trailing newline stripped). Secrets are never part of an error message. */
#ifndef MQTT2AMQP_CONFIG_H
#define MQTT2AMQP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/conf_bind.h"
#include "mqtt2amqp/log.h"

/* The longest AMQP short string: exchange, queue, routing key, header and
 * argument names, content type, vhost. */
#define M2A_AMQP_SHORTSTR_MAX 255
/* The longest MQTT string: client id, user name, password, topic filter. */
#define M2A_MQTT_STRING_MAX 65535
/* The largest MQTT packet: a type byte, 4 length bytes, and the largest
 * remaining length (268,435,455). */
#define M2A_MQTT_PACKET_MAX 268435460u
/* What a PUBLISH may carry beyond its payload as far as the bridge allows:
 * the fixed header (5), the longest topic (2 + 65535), the packet id (2)
 * and up to 64 KiB of MQTT 5 properties. mqtt.max_message_bytes plus this
 * is the Maximum Packet Size the MQTT side announces. */
#define M2A_MQTT_PUBLISH_OVERHEAD (128u * 1024u)

struct m2a_conf_tls {
    bool enabled; /* true when the tls section is present */
    char *ca_file;
    char *cert_file;
    char *key_file;
    bool verify_hostname; /* default true */
};

/* The MQTT protocol version, named by the number users write. */
enum m2a_mqtt_protocol { M2A_MQTT_V311 = 311, M2A_MQTT_V5 = 5 };

/* One broker of a side: from "hosts" (each "HOST:PORT"), or the
 * one-host shorthand "host" + "port". */
struct m2a_conf_endpoint {
    char *host; /* a name or an address, brackets of IPv6 removed */
    int port;
};

/* MQTT 3.1.1: what a retained message resent by a SUBSCRIBE the session
 * already had becomes (MQTT 5 has the broker not send it at all). */
enum m2a_retained_resend { M2A_RETAINED_RESEND_SKIP, M2A_RETAINED_RESEND_FORWARD };

struct m2a_conf_mqtt {
    char *host;   /* shorthand, default "127.0.0.1"; use endpoints */
    int port;     /* shorthand, default 1883; use endpoints */
    char **hosts; /* "hosts" as written; not with host/port */
    size_t nhosts;
    struct m2a_conf_endpoint *endpoints; /* the brokers to try, >= 1: hosts, else host:port */
    size_t nendpoints;
    char *client_id;                 /* default "mqtt2amqp" */
    char *downlink_client_id;        /* the downlinks' session; NULL: client_id + "-down" */
    bool clean_session;              /* default false */
    int keepalive;                   /* seconds, default 30, 5..65535 */
    enum m2a_mqtt_protocol protocol; /* default 5 */
    char *username;                  /* NULL when not set */
    char *password;                  /* NULL when not set; secret */
    int receive_maximum;             /* MQTT 5 only, default 65535, 1..65535 */
    uint32_t session_expiry;         /* seconds, MQTT 5 only, default 604800 (7 days) */
    char *share_group;               /* NULL or a $share group name */
    int reconnect_min_ms;            /* default 100 */
    int reconnect_max_ms;            /* default 30000 */
    uint64_t connect_timeout_ms;     /* "connect_timeout": attempt to CONNACK, default 10 s */
    /* Largest payload bridged, default 16 MiB; larger ones are too_large.
     * MQTT 5: + M2A_MQTT_PUBLISH_OVERHEAD is the Maximum Packet Size. */
    uint64_t max_message_bytes;
    /* MQTT 3.1.1 only, default skip: retained messages the broker resends
     * for a subscription the session already had (README "Retained
     * messages"). */
    enum m2a_retained_resend retained_resend;
    struct m2a_conf_tls tls;
};

struct m2a_conf_exchange {
    char *name;
    char *type;       /* direct | fanout | topic | headers, default topic */
    bool durable;     /* default true */
    bool auto_delete; /* default false */
    bool internal;    /* default false */
    size_t nargs;
    struct m2a_conf_arg *args;
    struct m2a_conf_mark mark;
};

struct m2a_conf_binding {
    char *exchange;
    char *routing_key; /* default "#" */
    size_t nargs;
    struct m2a_conf_arg *args;
    struct m2a_conf_mark mark;
};

struct m2a_conf_queue {
    char *name;
    bool durable;     /* default true */
    bool exclusive;   /* default false */
    bool auto_delete; /* default false */
    size_t nargs;
    struct m2a_conf_arg *args;
    size_t nbindings;
    struct m2a_conf_binding *bindings;
    struct m2a_conf_mark mark;
};

/* Which x-mqtt-* headers a published message carries: all three
 * (x-mqtt-topic, x-mqtt-qos, x-mqtt-retain), the topic alone, or none. */
enum m2a_mqtt_headers { M2A_MQTT_HEADERS_ALL, M2A_MQTT_HEADERS_TOPIC, M2A_MQTT_HEADERS_NONE };

struct m2a_conf_amqp {
    char *host;   /* shorthand, default "127.0.0.1"; use endpoints */
    int port;     /* shorthand, default 5672; use endpoints */
    char **hosts; /* "hosts" as written (cluster nodes); not with host/port */
    size_t nhosts;
    struct m2a_conf_endpoint *endpoints; /* the nodes to try, >= 1: hosts, else host:port */
    size_t nendpoints;
    char *vhost;                        /* default "/" */
    char *username;                     /* default "guest" */
    char *password;                     /* default "guest"; secret */
    int heartbeat;                      /* seconds, default 30, 0..3600 */
    int confirm_window;                 /* default 1000, 1..65535 */
    uint64_t max_inflight_bytes;        /* default 64 MiB: bytes of unconfirmed messages held */
    int reconnect_min_ms;               /* default 100 */
    int reconnect_max_ms;               /* default 30000 */
    enum m2a_mqtt_headers mqtt_headers; /* default all */
    struct m2a_conf_tls tls;
    size_t nexchanges;
    struct m2a_conf_exchange *exchanges;
    size_t nqueues;
    struct m2a_conf_queue *queues;
};

enum m2a_fsync_policy { M2A_FSYNC_BATCH, M2A_FSYNC_INTERVAL, M2A_FSYNC_NEVER };

/* What a full spool does: block stops reading MQTT (the broker's persistent
 * session keeps queueing); drop_oldest discards the oldest unconfirmed
 * records, whole segments at a time, counted. */
enum m2a_overflow { M2A_OVERFLOW_BLOCK, M2A_OVERFLOW_DROP_OLDEST };

struct m2a_conf_spool {
    char *dir;                   /* default "/var/lib/mqtt2amqp" */
    uint64_t max_bytes;          /* default 1 GiB; accepts B, KiB, MiB, GiB, TiB suffixes */
    uint64_t segment_bytes;      /* default 64 MiB, 64 KiB .. 1 GiB */
    enum m2a_fsync_policy fsync; /* default batch */
    enum m2a_overflow overflow;  /* default block */
    uint64_t max_age_ms;         /* "max_age": a duration; 0 (default): records never expire */
};

/* A route's answer to basic.return (no queue bound for the routing key). */
enum m2a_unroutable {
    M2A_UNROUTABLE_DEAD_LETTER, /* default: to the dead_letter exchange (dropped without one) */
    M2A_UNROUTABLE_DROP,        /* counted and logged */
    M2A_UNROUTABLE_RETRY        /* re-published with backoff until a queue is bound */
};

/* The "dead_letter" section: where undeliverable messages go. */
struct m2a_conf_dead_letter {
    bool enabled;      /* true when the section is present */
    char *exchange;    /* required: declared in topology, built in (amq.*) or "" */
    char *routing_key; /* template of {route} and {reason}, default "{route}" */
    int max_retries;   /* re-publishes after basic.nack before dead-lettering, default 10 */
    struct m2a_conf_mark mark;
};

/* A route's answer to a message with the retain flag: forward it, or skip
 * it (counted, acknowledged; a retained-delete included). */
enum m2a_retained { M2A_RETAINED_FORWARD, M2A_RETAINED_SKIP };

struct m2a_conf_route {
    char *name;         /* required, unique */
    char *topic;        /* required: MQTT topic filter */
    char *exchange;     /* required: declared in topology or amq.* / "" (default) */
    char *routing_key;  /* NULL: topic converted as RabbitMQ's MQTT plugin does */
    bool persistent;    /* default true */
    char *content_type; /* NULL when not set */
    size_t nheaders;
    struct m2a_conf_kv *headers;    /* templated header values */
    bool cont;                      /* "continue", default false */
    enum m2a_unroutable unroutable; /* default dead_letter */
    enum m2a_retained retained;     /* default forward */
    struct m2a_conf_mark mark;
};

/* A downlink's retain flag: fixed, or the x-mqtt-retain header's (false
 * without one). */
enum m2a_downlink_retain {
    M2A_DOWNLINK_RETAIN_FALSE,
    M2A_DOWNLINK_RETAIN_TRUE,
    M2A_DOWNLINK_RETAIN_FROM_HEADER
};

/* A downlink (AMQP -> MQTT): a queue consumed, each message published to
 * the topic its template gives (downlink_topic.h). */
struct m2a_conf_downlink {
    char *name;                      /* required, unique */
    char *queue;                     /* required: declared in amqp.topology.queues */
    char *topic;                     /* required: topic template, checked at load */
    int qos;                         /* 0 or 1, default 1 */
    enum m2a_downlink_retain retain; /* default false */
    int prefetch;                    /* unacknowledged deliveries at most, default 100 */
    struct m2a_conf_mark mark;
};

/* The "metrics" section: Prometheus /metrics, /healthz and /readyz over
 * HTTP. Absent: no HTTP server. */
struct m2a_conf_metrics {
    bool enabled; /* true when the section is present */
    char *listen; /* "HOST:PORT", default "127.0.0.1:9464" */
};

struct m2a_conf_log {
    enum m2a_log_level level;   /* default info */
    enum m2a_log_format format; /* default text */
    int stats_interval;         /* seconds, default 30, 0 disables */
};

struct m2a_config {
    char *path; /* the file it was read from */
    struct m2a_conf_mqtt mqtt;
    struct m2a_conf_amqp amqp;
    struct m2a_conf_spool spool;
    struct m2a_conf_dead_letter dead_letter;
    size_t nroutes;
    struct m2a_conf_route *routes;
    size_t ndownlinks;
    struct m2a_conf_downlink *downlinks;
    struct m2a_conf_log log;
    struct m2a_conf_metrics metrics;
    int shutdown_timeout; /* seconds, default 10 */
};

/* Loads and validates path. On success *out owns a new config (free with
 * m2a_config_free) and 0 is returned. On failure returns M2A_ERR_CONFIG (or
 * M2A_ERR_IO if the file cannot be read) and writes
 * "path:line:column: message" into err (always NUL-terminated). */
int m2a_config_load(const char *path, struct m2a_config **out, char *err, size_t errlen);

/* Same, from a buffer; name is used in messages. For tests and fuzzing. */
int m2a_config_load_buffer(const char *name, const char *data, size_t len, struct m2a_config **out,
                           char *err, size_t errlen);

void m2a_config_free(struct m2a_config *cfg);

#endif
