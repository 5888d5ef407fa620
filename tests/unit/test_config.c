/* test_config.c - the configuration loader: defaults, value syntax, and one
 * test per kind of error, each asserting M2A_ERR_CONFIG and the exact
 * "t.yaml:LINE:COLUMN:" position.
 *
 * Tests named *_topic_* (bad filters) and *_template_* depend on the real
 * topic.c / routes.c validators; they fail against the stubs. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/log.h"
#include "check_main.h"
#include "config_check.h"

/* A self-signed certificate and its key (EC P-256, valid until 2126), for
 * the tls section: the loader loads them with OpenSSL. */
#define TEST_CERT                                                                                  \
    "-----BEGIN CERTIFICATE-----\n"                                                                \
    "MIIBizCCATGgAwIBAgIUMHthlxHRFzeFXjRKxfWf6eOKCdUwCgYIKoZIzj0EAwIw\n"                           \
    "GjEYMBYGA1UEAwwPbTJhIGNvbmZpZyB0ZXN0MCAXDTI2MTIwNDA1MzkzMVoYDzIx\n"                           \
    "MjYxMTEwMDUzOTMxWjAaMRgwFgYDVQQDDA9tMmEgY29uZmlnIHRlc3QwWTATBgcq\n"                           \
    "hkjOPQIBBggqhkjOPQMBBwNCAARohRzG2wMn4eAikp3MJjJD3TMR9BjPylsPUuDc\n"                           \
    "JKRdOmuHON+wbvZcnng5Y0qTyF2Xk2oerAKpauAyBtdWpcrYo1MwUTAdBgNVHQ4E\n"                           \
    "FgQUZJfbSkJzVh9UT00vdKIGEmTyDsUwHwYDVR0jBBgwFoAUZJfbSkJzVh9UT00v\n"                           \
    "dKIGEmTyDsUwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiA93qJt\n"                           \
    "GTkSzi4arW43pHmfXgrnT3rgr3VjDq5EzrxycQIhAKSY9jhTEvVWZ8FF8D4cITnq\n"                           \
    "jLXBpXcaL3MXkey9umv6\n"                                                                       \
    "-----END CERTIFICATE-----\n"
#define TEST_KEY                                                                                   \
    "-----BEGIN PRIVATE KEY-----\n"                                                                \
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgfpiobczkK192EQJR\n"                           \
    "uki1yNvJlzTolEEvt6Zqz7ei2mShRANCAARohRzG2wMn4eAikp3MJjJD3TMR9BjP\n"                           \
    "ylsPUuDcJKRdOmuHON+wbvZcnng5Y0qTyF2Xk2oerAKpauAyBtdWpcrY\n"                                   \
    "-----END PRIVATE KEY-----\n"

/* A key that belongs to no certificate here. */
#define TEST_OTHER_KEY                                                                             \
    "-----BEGIN PRIVATE KEY-----\n"                                                                \
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgqwrT/tAoJ6kj4du3\n"                           \
    "QqBNqD+k66p32/ByEOIkKlu23cWhRANCAASoy0r/e4LRnXj/VdORxhr38LFXVRbw\n"                           \
    "k6UJNLR759gsJ3o/y6BF9MrXgk9AZrwizirhFm1OECyOeKKPyJphfky/\n"                                   \
    "-----END PRIVATE KEY-----\n"

/* The one route every test needs: a config without routes is an error. */
#define ROUTE "routes:\n  - {name: r, topic: a/b, exchange: amq.topic}\n"

/* For the tests that call the loader themselves. */
static char err[1024];

/* load() and refuse() on "t.yaml": tests/support/config_check.h. */
#define load   th_config_load
#define refuse th_config_refuse

static char *write_temp(const char *content)
{
    char *path = strdup("/tmp/test_config_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, content, strlen(content)), (ssize_t)strlen(content));
    close(fd);
    return path;
}

/* ---- defaults and values ------------------------------------------------ */

START_TEST(defaults_match_the_header)
{
    struct m2a_config *c = load(ROUTE);
    ck_assert_str_eq(c->path, "t.yaml");
    ck_assert_str_eq(c->mqtt.host, "127.0.0.1");
    ck_assert_int_eq(c->mqtt.port, 1883);
    ck_assert_str_eq(c->mqtt.client_id, "mqtt2amqp");
    ck_assert(!c->mqtt.clean_session);
    ck_assert_int_eq(c->mqtt.keepalive, 30);
    ck_assert_int_eq(c->mqtt.protocol, 5);
    ck_assert_ptr_null(c->mqtt.username);
    ck_assert_ptr_null(c->mqtt.password);
    ck_assert_int_eq(c->mqtt.receive_maximum, 65535);
    ck_assert_uint_eq(c->mqtt.session_expiry, 604800);
    ck_assert_ptr_null(c->mqtt.share_group);
    ck_assert_int_eq(c->mqtt.reconnect_min_ms, 100);
    ck_assert_int_eq(c->mqtt.reconnect_max_ms, 30000);
    ck_assert(!c->mqtt.tls.enabled);
    ck_assert(!c->amqp.tls.enabled);
    ck_assert(c->mqtt.tls.verify_hostname);
    ck_assert_str_eq(c->amqp.host, "127.0.0.1");
    ck_assert_int_eq(c->amqp.port, 5672);
    ck_assert_str_eq(c->amqp.vhost, "/");
    ck_assert_str_eq(c->amqp.username, "guest");
    ck_assert_str_eq(c->amqp.password, "guest");
    ck_assert_int_eq(c->amqp.heartbeat, 30);
    ck_assert_int_eq(c->amqp.confirm_window, 1000);
    ck_assert_int_eq(c->amqp.reconnect_min_ms, 100);
    ck_assert_int_eq(c->amqp.reconnect_max_ms, 30000);
    ck_assert_int_eq(c->amqp.mqtt_headers, M2A_MQTT_HEADERS_ALL);
    ck_assert_uint_eq(c->amqp.nexchanges, 0);
    ck_assert_uint_eq(c->amqp.nqueues, 0);
    ck_assert_str_eq(c->spool.dir, "/var/lib/mqtt2amqp");
    ck_assert_uint_eq(c->spool.max_bytes, 1ull << 30);
    ck_assert_uint_eq(c->spool.segment_bytes, 64ull << 20);
    ck_assert_int_eq(c->spool.fsync, M2A_FSYNC_BATCH);
    ck_assert_int_eq(c->log.level, M2A_LOG_INFO);
    ck_assert_int_eq(c->log.format, M2A_LOG_TEXT);
    ck_assert_int_eq(c->log.stats_interval, 30);
    ck_assert_int_eq(c->shutdown_timeout, 10);
    ck_assert_uint_eq(c->nroutes, 1);
    const struct m2a_conf_route *r = &c->routes[0];
    ck_assert_str_eq(r->name, "r");
    ck_assert_str_eq(r->topic, "a/b");
    ck_assert_str_eq(r->exchange, "amq.topic");
    ck_assert_ptr_null(r->routing_key);
    ck_assert(r->persistent);
    ck_assert_ptr_null(r->content_type);
    ck_assert_uint_eq(r->nheaders, 0);
    ck_assert(!r->cont);
    ck_assert_int_eq(r->mark.line, 2);
    ck_assert_int_eq(r->mark.column, 5);
    m2a_config_free(c);
}
END_TEST

START_TEST(every_key_is_read)
{
    struct m2a_config *c = load("mqtt:\n"
                                "  host: mqtt.example\n"
                                "  port: 8883\n"
                                "  client_id: b1\n"
                                "  clean_session: true\n"
                                "  keepalive: 60\n"
                                "  protocol: 311\n"
                                "  username: u\n"
                                "  password: p\n"
                                "  receive_maximum: 100\n"
                                "  session_expiry: 4294967295\n"
                                "  share_group: g\n"
                                "  reconnect_min_ms: 5\n"
                                "  reconnect_max_ms: 5\n"
                                "amqp:\n"
                                "  host: rabbit\n"
                                "  port: 5671\n"
                                "  vhost: prod\n"
                                "  username: bridge\n"
                                "  password: ''\n"
                                "  heartbeat: 0\n"
                                "  confirm_window: 65535\n"
                                "  reconnect_min_ms: 1\n"
                                "  reconnect_max_ms: 3600000\n"
                                "spool:\n"
                                "  dir: /tmp/s\n"
                                "  max_bytes: 64KiB\n"
                                "  segment_bytes: 64KiB\n"
                                "  fsync: never\n"
                                "log: {level: debug, format: json, stats_interval: 0}\n"
                                "shutdown_timeout: 0\n" ROUTE);
    ck_assert_str_eq(c->mqtt.host, "mqtt.example");
    ck_assert_int_eq(c->mqtt.port, 8883);
    ck_assert_str_eq(c->mqtt.client_id, "b1");
    ck_assert(c->mqtt.clean_session);
    ck_assert_int_eq(c->mqtt.keepalive, 60);
    ck_assert_int_eq(c->mqtt.protocol, 311);
    ck_assert_str_eq(c->mqtt.username, "u");
    ck_assert_str_eq(c->mqtt.password, "p");
    ck_assert_int_eq(c->mqtt.receive_maximum, 100);
    ck_assert_uint_eq(c->mqtt.session_expiry, 4294967295u);
    ck_assert_str_eq(c->mqtt.share_group, "g");
    ck_assert_int_eq(c->mqtt.reconnect_min_ms, 5);
    ck_assert_int_eq(c->mqtt.reconnect_max_ms, 5);
    ck_assert_str_eq(c->amqp.host, "rabbit");
    ck_assert_int_eq(c->amqp.port, 5671);
    ck_assert_str_eq(c->amqp.vhost, "prod");
    ck_assert_str_eq(c->amqp.username, "bridge");
    ck_assert_str_eq(c->amqp.password, "");
    ck_assert_int_eq(c->amqp.heartbeat, 0);
    ck_assert_int_eq(c->amqp.confirm_window, 65535);
    ck_assert_int_eq(c->amqp.reconnect_max_ms, 3600000);
    ck_assert_str_eq(c->spool.dir, "/tmp/s");
    ck_assert_uint_eq(c->spool.max_bytes, 65536);
    ck_assert_int_eq(c->spool.fsync, M2A_FSYNC_NEVER);
    ck_assert_int_eq(c->log.level, M2A_LOG_DEBUG);
    ck_assert_int_eq(c->log.format, M2A_LOG_JSON);
    ck_assert_int_eq(c->log.stats_interval, 0);
    ck_assert_int_eq(c->shutdown_timeout, 0);
    m2a_config_free(c);
}
END_TEST

START_TEST(enums_take_each_name)
{
    static const struct {
        const char *yaml;
        int want;
    } cases[] = {
        {"spool: {fsync: batch}\n" ROUTE, M2A_FSYNC_BATCH},
        {"spool: {fsync: interval}\n" ROUTE, M2A_FSYNC_INTERVAL},
        {"spool: {fsync: never}\n" ROUTE, M2A_FSYNC_NEVER},
        {"log: {level: error}\n" ROUTE, M2A_LOG_ERROR},
        {"log: {level: warn}\n" ROUTE, M2A_LOG_WARN},
        {"log: {level: info}\n" ROUTE, M2A_LOG_INFO},
        {"log: {level: debug}\n" ROUTE, M2A_LOG_DEBUG},
        {"mqtt: {protocol: 5}\n" ROUTE, 5},
        {"mqtt: {protocol: \"311\"}\n" ROUTE, 311},
        {"amqp: {mqtt_headers: all}\n" ROUTE, M2A_MQTT_HEADERS_ALL},
        {"amqp: {mqtt_headers: topic}\n" ROUTE, M2A_MQTT_HEADERS_TOPIC},
        {"amqp: {mqtt_headers: none}\n" ROUTE, M2A_MQTT_HEADERS_NONE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct m2a_config *c = load(cases[i].yaml);
        int got = cases[i].yaml[0] == 's'   ? (int)c->spool.fsync
                  : cases[i].yaml[0] == 'l' ? (int)c->log.level
                  : cases[i].yaml[0] == 'a' ? (int)c->amqp.mqtt_headers
                                            : (int)c->mqtt.protocol;
        ck_assert_int_eq(got, cases[i].want);
        m2a_config_free(c);
    }
}
END_TEST

START_TEST(size_suffixes_are_powers_of_1024)
{
    static const struct {
        const char *text;
        uint64_t want;
    } cases[] = {
        {"65536B", 65536},        {"65536", 65536},     {"64KiB", 64ull << 10},
        {"512MiB", 512ull << 20}, {"1GiB", 1ull << 30}, {"1 GiB", 1ull << 30},
        {"3TiB", 3ull << 40},
    };
    char yaml[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(yaml, sizeof(yaml), "spool:\n  max_bytes: %s\n  segment_bytes: 64KiB\n" ROUTE,
                 cases[i].text);
        struct m2a_config *c = load(yaml);
        ck_assert_uint_eq(c->spool.max_bytes, cases[i].want);
        m2a_config_free(c);
    }
    static const char *const bad[] = {"1GB",   "1KB",  "1.5GiB",         "GiB",
                                      "-1MiB", "1gib", "99999999999TiB", "18446744073709551616",
                                      "1  GiB"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(yaml, sizeof(yaml), "spool:\n  max_bytes: %s\n" ROUTE, bad[i]);
        refuse(yaml, "t.yaml:2:14: spool.max_bytes: ", "is not a size");
    }
    /* a valid size, refused only for its value */
    refuse("spool:\n  max_bytes: 100B\n" ROUTE,
           "t.yaml:2:14: spool.max_bytes: 100B is below the minimum 64KiB", NULL);
}
END_TEST

START_TEST(the_example_file_loads)
{
    unsetenv("MQTT_HOST");
    unsetenv("MQTT_PORT");
    unsetenv("AMQP_HOST");
    unsetenv("AMQP_PORT");
    unsetenv("AMQP_PASSWORD");
    unsetenv("SPOOL_DIR");
    setenv("AMQP_PORT", "15672", 1);
    struct m2a_config *c = NULL;
    int rc = m2a_config_load(M2A_SOURCE_DIR "/config/mqtt2amqp.yaml", &c, err, sizeof(err));
    ck_assert_msg(rc == 0, "%s", err);
    ck_assert_str_eq(c->path, M2A_SOURCE_DIR "/config/mqtt2amqp.yaml");
    ck_assert_str_eq(c->mqtt.host, "127.0.0.1");
    ck_assert_int_eq(c->mqtt.port, 1883);
    ck_assert_int_eq(c->mqtt.protocol, 5);
    ck_assert_int_eq(c->amqp.port, 15672);
    ck_assert_str_eq(c->amqp.password, "guest");
    ck_assert_str_eq(c->spool.dir, "/var/lib/mqtt2amqp");
    ck_assert_uint_eq(c->amqp.nexchanges, 1);
    ck_assert_str_eq(c->amqp.exchanges[0].name, "telemetry");
    ck_assert_str_eq(c->amqp.exchanges[0].type, "topic");
    ck_assert_uint_eq(c->amqp.nqueues, 1);
    ck_assert(c->amqp.queues[0].durable);
    ck_assert_uint_eq(c->amqp.queues[0].nargs, 1);
    ck_assert_str_eq(c->amqp.queues[0].args[0].str, "quorum");
    ck_assert_uint_eq(c->amqp.queues[0].nbindings, 1);
    ck_assert_str_eq(c->amqp.queues[0].bindings[0].exchange, "telemetry");
    ck_assert_uint_eq(c->nroutes, 2);
    ck_assert_str_eq(c->routes[0].topic, "sensors/+/temp");
    ck_assert_str_eq(c->routes[0].exchange, "telemetry");
    ck_assert_str_eq(c->routes[0].routing_key, "sensors.{1}.temperature");
    ck_assert_str_eq(c->routes[0].headers[0].key, "device");
    ck_assert_str_eq(c->routes[0].headers[0].value, "{1}");
    ck_assert_ptr_null(c->routes[1].routing_key);
    m2a_config_free(c);
    unsetenv("AMQP_PORT");
}
END_TEST

START_TEST(the_example_file_truncated_anywhere_never_crashes)
{
    FILE *f = fopen(M2A_SOURCE_DIR "/config/mqtt2amqp.yaml", "rb");
    ck_assert_ptr_nonnull(f);
    static char buf[65536];
    size_t len = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    int ok = 0;
    for (size_t n = 0; n <= len; n++) {
        struct m2a_config *c = NULL;
        /* not NUL-terminated at n: the loader must respect len */
        int rc = m2a_config_load_buffer("t.yaml", buf, n, &c, err, sizeof(err));
        ck_assert_msg(rc == 0 || rc == M2A_ERR_CONFIG, "rc %d at %zu", rc, n);
        ck_assert_msg(rc != 0 || c, "no config at %zu", n);
        ck_assert_msg(rc == 0 || !strncmp(err, "t.yaml:", 7), "bad message at %zu: %s", n, err);
        ok += rc == 0;
        m2a_config_free(c);
    }
    ck_assert_int_gt(ok, 0);
}
END_TEST

START_TEST(free_null_is_a_no_op)
{
    m2a_config_free(NULL);
}
END_TEST

START_TEST(a_missing_file_is_an_io_error)
{
    struct m2a_config *c = (struct m2a_config *)&c;
    int rc = m2a_config_load("/nonexistent/m2a.yaml", &c, err, sizeof(err));
    ck_assert_int_eq(rc, M2A_ERR_IO);
    ck_assert_ptr_null(c);
    ck_assert_str_eq(err, "/nonexistent/m2a.yaml: cannot open: No such file or directory");
}
END_TEST

START_TEST(errors_go_through_file_names_and_tiny_buffers)
{
    char *path = write_temp("mqtt:\n  port: 0\n" ROUTE);
    struct m2a_config *c = NULL;
    char expect[512];
    snprintf(expect, sizeof(expect), "%s:2:9: mqtt.port: 0 is out of range 1..65535", path);
    ck_assert_int_eq(m2a_config_load(path, &c, err, sizeof(err)), M2A_ERR_CONFIG);
    ck_assert_msg(!strncmp(err, expect, strlen(expect)), "%s", err);
    char small[8];
    ck_assert_int_eq(m2a_config_load(path, &c, small, sizeof(small)), M2A_ERR_CONFIG);
    ck_assert_uint_eq(strlen(small), 7);
    ck_assert_int_eq(m2a_config_load(path, &c, NULL, 0), M2A_ERR_CONFIG);
    unlink(path);
    free(path);
}
END_TEST

/* ---- ${VAR} expansion -------------------------------------------------- */

START_TEST(env_expansion_in_every_string)
{
    setenv("M2A_T_HOST", "broker.local", 1);
    setenv("M2A_T_PORT", "11883", 1);
    setenv("M2A_T_EMPTY", "", 1);
    unsetenv("M2A_T_UNSET");
    struct m2a_config *c =
        load("mqtt:\n"
             "  host: ${M2A_T_HOST}\n"
             "  port: ${M2A_T_PORT:-1883}\n"
             "  client_id: id-${M2A_T_UNSET:-x}-${M2A_T_EMPTY:-y}-${M2A_T_EMPTY}-$$-$a\n"
             "amqp:\n"
             "  port: ${M2A_T_UNSET:-5673}\n"
             "  vhost: \"${M2A_T_HOST}\"\n"
             "routes:\n"
             "  - name: r\n"
             "    topic: $SYS/broker/#\n"
             "    exchange: amq.topic\n"
             "    headers: {h: \"${M2A_T_HOST}/{1}\"}\n");
    ck_assert_str_eq(c->mqtt.host, "broker.local");
    ck_assert_int_eq(c->mqtt.port, 11883);
    ck_assert_str_eq(c->mqtt.client_id, "id-x-y--$-$a");
    ck_assert_int_eq(c->amqp.port, 5673);
    ck_assert_str_eq(c->amqp.vhost, "broker.local");
    ck_assert_str_eq(c->routes[0].topic, "$SYS/broker/#");
    ck_assert_str_eq(c->routes[0].headers[0].value, "broker.local/{1}");
    m2a_config_free(c);
    unsetenv("M2A_T_HOST");
    unsetenv("M2A_T_PORT");
    unsetenv("M2A_T_EMPTY");
}
END_TEST

START_TEST(unset_env_without_default_is_an_error_at_the_reference)
{
    unsetenv("M2A_T_UNSET");
    refuse("mqtt:\n  host: ${M2A_T_UNSET}\n" ROUTE,
           "t.yaml:2:9: mqtt.host: environment variable M2A_T_UNSET is not set", NULL);
    refuse("mqtt:\n  host: pre-${M2A_T_UNSET}\n" ROUTE, "t.yaml:2:13: mqtt.host: ", "M2A_T_UNSET");
    /* inside quotes the position is the value's */
    refuse("mqtt:\n  host: \"pre-${M2A_T_UNSET}\"\n" ROUTE,
           "t.yaml:2:9: mqtt.host: ", "M2A_T_UNSET");
}
END_TEST

START_TEST(bad_env_references_are_errors)
{
    static const char *const bad[] = {"${}", "${1X}", "${X", "${X:-abc", "${X-y}", "${X Y}"};
    char yaml[256];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(yaml, sizeof(yaml), "mqtt:\n  host: \"%s\"\n" ROUTE, bad[i]);
        refuse(yaml, "t.yaml:2:9: mqtt.host: bad variable reference", NULL);
    }
}
END_TEST

START_TEST(env_is_expanded_before_conversion)
{
    setenv("M2A_T_PORT", "http", 1);
    refuse("mqtt:\n  port: ${M2A_T_PORT}\n" ROUTE,
           "t.yaml:2:9: mqtt.port: 'http' is not an integer", NULL);
    unsetenv("M2A_T_PORT");
}
END_TEST

/* ---- password_file ----------------------------------------------------- */

START_TEST(password_file_strips_one_newline)
{
    static const struct {
        const char *content, *want;
    } cases[] = {{"s3cret\n", "s3cret"},
                 {"s3cret", "s3cret"},
                 {"s3cret\r\n", "s3cret"},
                 {"two\n\n", "two\n"},
                 {"with space \n", "with space "}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *path = write_temp(cases[i].content);
        char yaml[512];
        snprintf(yaml, sizeof(yaml),
                 "mqtt: {username: u, password_file: %s}\n"
                 "amqp: {password_file: '%s'}\n" ROUTE,
                 path, path);
        struct m2a_config *c = load(yaml);
        ck_assert_str_eq(c->mqtt.password, cases[i].want);
        ck_assert_str_eq(c->amqp.password, cases[i].want);
        m2a_config_free(c);
        unlink(path);
        free(path);
    }
}
END_TEST

START_TEST(unreadable_password_file_is_an_error)
{
    refuse("amqp:\n  password_file: /nonexistent/secret\n" ROUTE,
           "t.yaml:2:18: amqp.password_file: cannot read '/nonexistent/secret': No such file",
           NULL);
    char *path = write_temp("");
    char yaml[512];
    snprintf(yaml, sizeof(yaml), "amqp:\n  password_file: %s\n" ROUTE, path);
    refuse(yaml, "t.yaml:2:18: amqp.password_file: ", "is empty");
    unlink(path);
    free(path);
}
END_TEST

START_TEST(password_and_password_file_together_is_an_error)
{
    char *path = write_temp("fromfile\n");
    char yaml[512];
    snprintf(yaml, sizeof(yaml), "amqp:\n  password: hunter2\n  password_file: %s\n" ROUTE, path);
    const char *e =
        refuse(yaml, "t.yaml:3:18: amqp: password and password_file are mutually exclusive", NULL);
    ck_assert_ptr_null(strstr(e, "hunter2"));
    ck_assert_ptr_null(strstr(e, "fromfile"));
    snprintf(yaml, sizeof(yaml),
             "mqtt:\n  password_file: %s\n  username: u\n  password: hunter2\n" ROUTE, path);
    refuse(yaml, "t.yaml:2:18: mqtt: password and password_file", NULL);
    unlink(path);
    free(path);
}
END_TEST

START_TEST(mqtt5_takes_a_password_without_username)
{
    struct m2a_config *c = load("mqtt:\n  password: p\n" ROUTE);
    ck_assert_str_eq(c->mqtt.password, "p");
    ck_assert_ptr_null(c->mqtt.username);
    m2a_config_free(c);
}
END_TEST

START_TEST(secrets_never_appear_in_errors)
{
    unsetenv("M2A_T_UNSET");
    const char *e = refuse("amqp:\n  password: [hunter2]\n" ROUTE,
                           "t.yaml:2:13: amqp.password: expected a string", NULL);
    ck_assert_ptr_null(strstr(e, "hunter2"));
    e = refuse("amqp:\n  password: hunter2${M2A_T_UNSET}\n" ROUTE,
               "t.yaml:2:20: amqp.password: ", NULL);
    ck_assert_ptr_null(strstr(e, "hunter2"));
    e = refuse("mqtt:\n  protocol: 311\n  password: hunter2\n" ROUTE,
               "t.yaml:3:13: mqtt: with protocol 311 a password needs a username", NULL);
    ck_assert_ptr_null(strstr(e, "hunter2"));
}
END_TEST

/* ---- topology ------------------------------------------------------------ */

START_TEST(topology_is_parsed_with_defaults)
{
    struct m2a_config *c = load("amqp:\n"
                                "  topology:\n"
                                "    exchanges:\n"
                                "      - name: ev\n"
                                "      - name: dl\n"
                                "        type: fanout\n"
                                "        durable: false\n"
                                "        auto_delete: true\n"
                                "        internal: true\n"
                                "      - {name: delayed, type: x-delayed-message,\n"
                                "         arguments: {x-delayed-type: topic}}\n"
                                "    queues:\n"
                                "      - name: q1\n"
                                "        bindings:\n"
                                "          - exchange: ev\n"
                                "          - exchange: amq.headers\n"
                                "            routing_key: ''\n"
                                "            arguments: {x-match: all, kind: t}\n"
                                "      - name: q2\n"
                                "        durable: false\n"
                                "        exclusive: true\n"
                                "        auto_delete: true\n" ROUTE);
    ck_assert_uint_eq(c->amqp.nexchanges, 3);
    const struct m2a_conf_exchange *e = c->amqp.exchanges;
    ck_assert_str_eq(e[0].name, "ev");
    ck_assert_str_eq(e[0].type, "topic");
    ck_assert(e[0].durable && !e[0].auto_delete && !e[0].internal);
    ck_assert_uint_eq(e[0].nargs, 0);
    ck_assert_int_eq(e[0].mark.line, 4);
    ck_assert_int_eq(e[0].mark.column, 9);
    ck_assert_str_eq(e[1].type, "fanout");
    ck_assert(!e[1].durable && e[1].auto_delete && e[1].internal);
    ck_assert_str_eq(e[2].type, "x-delayed-message");
    ck_assert_uint_eq(e[2].nargs, 1);
    ck_assert_str_eq(e[2].args[0].key, "x-delayed-type");
    ck_assert_str_eq(e[2].args[0].str, "topic");
    ck_assert_uint_eq(c->amqp.nqueues, 2);
    const struct m2a_conf_queue *q = c->amqp.queues;
    ck_assert_str_eq(q[0].name, "q1");
    ck_assert(q[0].durable && !q[0].exclusive && !q[0].auto_delete);
    ck_assert_uint_eq(q[0].nbindings, 2);
    ck_assert_str_eq(q[0].bindings[0].exchange, "ev");
    ck_assert_str_eq(q[0].bindings[0].routing_key, "#");
    ck_assert_int_eq(q[0].bindings[0].mark.line, 15);
    ck_assert_int_eq(q[0].bindings[0].mark.column, 13);
    ck_assert_str_eq(q[0].bindings[1].routing_key, "");
    ck_assert_uint_eq(q[0].bindings[1].nargs, 2);
    ck_assert_str_eq(q[0].bindings[1].args[1].key, "kind");
    ck_assert(!q[1].durable && q[1].exclusive && q[1].auto_delete);
    ck_assert_uint_eq(q[1].nbindings, 0);
    m2a_config_free(c);
}
END_TEST

START_TEST(arguments_are_typed_by_their_scalar)
{
    setenv("M2A_T_TTL", "60000", 1);
    struct m2a_config *c = load("amqp:\n"
                                "  topology:\n"
                                "    queues:\n"
                                "      - name: q\n"
                                "        arguments:\n"
                                "          x-max-length: 1000\n"
                                "          x-queue-type: quorum\n"
                                "          x-single-active-consumer: true\n"
                                "          quoted-int: \"5\"\n"
                                "          quoted-bool: 'false'\n"
                                "          negative: -42\n"
                                "          float: 1.5\n"
                                "          word-yes: yes\n"
                                "          x-message-ttl: ${M2A_T_TTL}\n"
                                "          big: 9223372036854775807\n"
                                "          too-big: 9223372036854775808\n" ROUTE);
    static const struct {
        const char *key;
        enum m2a_arg_type type;
        const char *str;
        int64_t num;
        bool flag;
    } want[] = {
        {"x-max-length", M2A_ARG_INT, NULL, 1000, false},
        {"x-queue-type", M2A_ARG_STRING, "quorum", 0, false},
        {"x-single-active-consumer", M2A_ARG_BOOL, NULL, 0, true},
        {"quoted-int", M2A_ARG_STRING, "5", 0, false},
        {"quoted-bool", M2A_ARG_STRING, "false", 0, false},
        {"negative", M2A_ARG_INT, NULL, -42, false},
        {"float", M2A_ARG_STRING, "1.5", 0, false},
        {"word-yes", M2A_ARG_STRING, "yes", 0, false},
        {"x-message-ttl", M2A_ARG_INT, NULL, 60000, false},
        {"big", M2A_ARG_INT, NULL, INT64_MAX, false},
        {"too-big", M2A_ARG_STRING, "9223372036854775808", 0, false},
    };
    const struct m2a_conf_queue *q = &c->amqp.queues[0];
    ck_assert_uint_eq(q->nargs, sizeof(want) / sizeof(want[0]));
    for (size_t i = 0; i < q->nargs; i++) {
        ck_assert_str_eq(q->args[i].key, want[i].key);
        ck_assert_int_eq(q->args[i].type, want[i].type);
        if (want[i].type == M2A_ARG_STRING)
            ck_assert_str_eq(q->args[i].str, want[i].str);
        else if (want[i].type == M2A_ARG_INT)
            ck_assert(q->args[i].num == want[i].num);
        else
            ck_assert(q->args[i].flag == want[i].flag);
    }
    m2a_config_free(c);
    unsetenv("M2A_T_TTL");
}
END_TEST

START_TEST(headers_are_stored_raw_with_their_position)
{
    struct m2a_config *c = load("routes:\n"
                                "  - name: r\n"
                                "    topic: s/+/t\n"
                                "    exchange: ''\n"
                                "    routing_key: \"x.{1}\"\n"
                                "    content_type: text/plain\n"
                                "    persistent: false\n"
                                "    continue: true\n"
                                "    headers:\n"
                                "      device: \"{1}\"\n"
                                "      n: 5\n");
    const struct m2a_conf_route *r = &c->routes[0];
    ck_assert_str_eq(r->exchange, "");
    ck_assert_str_eq(r->routing_key, "x.{1}");
    ck_assert_str_eq(r->content_type, "text/plain");
    ck_assert(!r->persistent);
    ck_assert(r->cont);
    ck_assert_uint_eq(r->nheaders, 2);
    ck_assert_str_eq(r->headers[0].key, "device");
    ck_assert_str_eq(r->headers[0].value, "{1}");
    ck_assert_int_eq(r->headers[0].mark.line, 10);
    ck_assert_int_eq(r->headers[0].mark.column, 15);
    ck_assert_str_eq(r->headers[1].value, "5");
    m2a_config_free(c);
}
END_TEST

START_TEST(builtin_exchanges_need_no_declaration)
{
    static const char *const builtins[] = {
        "''",          "amq.direct", "amq.topic",         "amq.fanout",
        "amq.headers", "amq.match",  "amq.rabbitmq.trace"};
    char yaml[256];
    for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++) {
        snprintf(yaml, sizeof(yaml), "routes:\n  - {name: r, topic: a, exchange: %s}\n",
                 builtins[i]);
        m2a_config_free(load(yaml));
    }
}
END_TEST

START_TEST(tls_section_presence_enables_tls)
{
    struct m2a_config *c = load("mqtt:\n  tls: {}\namqp:\n  tls:\n" ROUTE);
    ck_assert(c->mqtt.tls.enabled);
    ck_assert(c->amqp.tls.enabled);
    ck_assert(c->mqtt.tls.verify_hostname);
    ck_assert_ptr_null(c->mqtt.tls.ca_file);
    m2a_config_free(c);
    /* the files are loaded at load time: a certificate and its key in one file */
    char *path = write_temp(TEST_CERT TEST_KEY);
    char yaml[512];
    snprintf(yaml, sizeof(yaml),
             "amqp:\n  tls:\n    ca_file: %s\n    cert_file: %s\n    key_file: %s\n"
             "    verify_hostname: false\n" ROUTE,
             path, path, path);
    c = load(yaml);
    ck_assert(!c->mqtt.tls.enabled);
    ck_assert(c->amqp.tls.enabled);
    ck_assert_str_eq(c->amqp.tls.ca_file, path);
    ck_assert_str_eq(c->amqp.tls.key_file, path);
    ck_assert(!c->amqp.tls.verify_hostname);
    m2a_config_free(c);
    snprintf(yaml, sizeof(yaml), "amqp:\n  tls:\n    cert_file: %s\n" ROUTE, path);
    refuse(yaml, "t.yaml:3:5: amqp.tls: cert_file and key_file go together", NULL);
    unlink(path);
    free(path);
    refuse("mqtt:\n  tls:\n    ca_file: /nonexistent/ca.pem\n" ROUTE,
           "t.yaml:3:14: mqtt.tls.ca_file: cannot read '/nonexistent/ca.pem'", NULL);
}
END_TEST

/* ---- one test per kind of error ------------------------------------------ */

/* What the start would refuse (tls.c cannot build the context) fails the
 * load, at the tls section, so --check refuses it too (issue 9). */
START_TEST(tls_files_openssl_refuses_fail_the_load)
{
    char *cert = write_temp(TEST_CERT), *key = write_temp(TEST_KEY);
    char *other = write_temp(TEST_OTHER_KEY), *junk = write_temp("not PEM\n");
    char yaml[1024], want[512];

    snprintf(yaml, sizeof(yaml), "mqtt:\n  tls:\n    ca_file: %s\n" ROUTE, junk);
    snprintf(want, sizeof(want), "t.yaml:3:5: mqtt.tls: cannot load tls.ca_file %s: ", junk);
    refuse(yaml, want, NULL);
    snprintf(yaml, sizeof(yaml),
             "amqp:\n  tls:\n    ca_file: %s\n    cert_file: %s\n    key_file: %s\n" ROUTE, cert,
             cert, other);
    /* OpenSSL compares the key with the certificate as it loads it */
    snprintf(want, sizeof(want), "t.yaml:3:5: amqp.tls: cannot load tls.key_file %s: ", other);
    refuse(yaml, want, NULL);
    snprintf(yaml, sizeof(yaml),
             "amqp:\n  tls:\n    ca_file: %s\n    cert_file: %s\n    key_file: %s\n" ROUTE, cert,
             cert, junk);
    snprintf(want, sizeof(want), "t.yaml:3:5: amqp.tls: cannot load tls.key_file %s: ", junk);
    refuse(yaml, want, NULL);
    snprintf(yaml, sizeof(yaml),
             "mqtt:\n  tls:\n    cert_file: %s\n    key_file: %s\n    ca_file: %s\n" ROUTE, junk,
             key, cert);
    snprintf(want, sizeof(want), "t.yaml:3:5: mqtt.tls: cannot load tls.cert_file %s: ", junk);
    refuse(yaml, want, NULL);
    /* the same files, the right way round */
    snprintf(yaml, sizeof(yaml),
             "mqtt:\n  tls:\n    cert_file: %s\n    key_file: %s\n    ca_file: %s\n" ROUTE, cert,
             key, cert);
    m2a_config_free(load(yaml));
    char *files[] = {cert, key, other, junk};
    for (size_t i = 0; i < 4; i++) {
        unlink(files[i]);
        free(files[i]);
    }
}
END_TEST

/* OpenSSL reads the files at load: a FIFO would block it, a directory is
 * no certificate. */
START_TEST(tls_files_must_be_regular_files)
{
    char dir[] = "/tmp/test_config_XXXXXX", fifo[64], yaml[512], want[256];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
    ck_assert_int_eq(mkfifo(fifo, 0600), 0);
    const char *paths[] = {dir, fifo};
    for (size_t i = 0; i < 2; i++) {
        snprintf(yaml, sizeof(yaml), "mqtt:\n  tls:\n    ca_file: %s\n" ROUTE, paths[i]);
        snprintf(want, sizeof(want), "t.yaml:3:14: mqtt.tls.ca_file: '%s' is not a regular file",
                 paths[i]);
        refuse(yaml, want, NULL);
    }
    unlink(fifo);
    rmdir(dir);
}
END_TEST

START_TEST(invalid_yaml_is_refused_at_the_problem)
{
    refuse("mqtt:\n  host: a\n port: 1\n" ROUTE, "t.yaml:3:2: invalid YAML: ", NULL);
    refuse("mqtt: [1, 2\n", "t.yaml:2:1: invalid YAML: ", NULL);
    refuse("mqtt:\n  host: \"abc\n", "t.yaml:3:1: invalid YAML: ", "quoted scalar");
    refuse("a: *nope\n", "t.yaml:1:4: invalid YAML: ", "undefined alias");
    refuse("mqtt:\n\t host: a\n", "t.yaml:2:1: invalid YAML: ", NULL);
    /* invalid UTF-8: the reader reports an offset, turned into line and column */
    refuse("mqtt:\n  host: \xff\n", "t.yaml:2:9: invalid YAML: ", NULL);
}
END_TEST

START_TEST(only_one_document)
{
    refuse(ROUTE "---\n" ROUTE, "t.yaml:3:1: only one YAML document is allowed", NULL);
    refuse(ROUTE "---\nfoo: [\n", "t.yaml:5:1: invalid YAML", NULL);
}
END_TEST

START_TEST(the_top_level_must_be_a_mapping)
{
    refuse("- a\n- b\n", "t.yaml:1:1: top level: expected a mapping, found a sequence", NULL);
    refuse("just text\n", "t.yaml:1:1: top level: expected a mapping, found a scalar", NULL);
    refuse("", "t.yaml:1:1: the document is empty", NULL);
    refuse("# only a comment\n", "t.yaml:1:1: the document is empty", NULL);
}
END_TEST

START_TEST(unknown_keys_are_refused_with_a_suggestion)
{
    refuse("mqtt:\n  prot: 1883\n" ROUTE,
           "t.yaml:2:3: mqtt: unknown key 'prot' (did you mean 'port'?)", NULL);
    refuse("mtqq:\n  port: 1883\n" ROUTE, "t.yaml:1:1: top level: unknown key 'mtqq'",
           "did you mean 'mqtt'?");
    refuse("ampq: {}\n" ROUTE, "t.yaml:1:1: top level: unknown key 'ampq' (did you mean 'amqp'?)",
           NULL);
    refuse(ROUTE "zzz: 1\n", "t.yaml:3:1: top level: unknown key 'zzz' (expected one of: mqtt, ",
           NULL);
    refuse("routes:\n  - {name: r, topic: a, exchange: amq.topic, exhange: x}\n",
           "t.yaml:2:46: routes[0]: unknown key 'exhange' (did you mean 'exchange'?)", NULL);
    refuse("amqp:\n  topology:\n    queues:\n      - name: q\n        bindings:\n"
           "          - {exchange: amq.topic, key: a}\n" ROUTE,
           "t.yaml:6:35: amqp.topology.queues[0].bindings[0]: unknown key 'key'", NULL);
    refuse("mqtt:\n  tls:\n    cafile: x\n" ROUTE,
           "t.yaml:3:5: mqtt.tls: unknown key 'cafile' (did you mean 'ca_file'?)", NULL);
    refuse("base: &b {port: 1}\nmqtt:\n  <<: *b\n" ROUTE,
           "t.yaml:1:1: top level: unknown key 'base'", NULL);
    refuse("mqtt:\n  <<: {port: 1}\n" ROUTE, "t.yaml:2:3: mqtt: merge keys (<<) are not supported",
           NULL);
}
END_TEST

START_TEST(duplicate_keys_point_at_the_second)
{
    refuse("mqtt:\n  port: 1\n  host: h\n  port: 2\n" ROUTE,
           "t.yaml:4:3: mqtt: duplicate key 'port' (first at line 2)", NULL);
    refuse("mqtt: {}\n" ROUTE "mqtt: {}\n", "t.yaml:4:1: top level: duplicate key 'mqtt'", NULL);
    refuse("routes:\n  - {name: r, topic: a, exchange: amq.topic, name: s}\n",
           "t.yaml:2:46: routes[0]: duplicate key 'name'", NULL);
    refuse("routes:\n  - name: r\n    topic: a\n    exchange: amq.topic\n    headers:\n"
           "      a: 1\n      a: 2\n",
           "t.yaml:7:7: routes[0].headers: duplicate key 'a'", NULL);
    refuse(
        "amqp:\n  topology:\n    queues:\n      - name: q\n        arguments: {a: 1, a: 2}\n" ROUTE,
        "t.yaml:5:27: amqp.topology.queues[0].arguments: duplicate key 'a'", NULL);
}
END_TEST

START_TEST(keys_must_be_scalars)
{
    refuse("? [a]\n: b\n" ROUTE, "t.yaml:1:3: top level: keys must be scalars, found a sequence",
           NULL);
}
END_TEST

START_TEST(wrong_types_are_refused)
{
    refuse("mqtt:\n  host: {a: b}\n" ROUTE,
           "t.yaml:2:9: mqtt.host: expected a string, found a mapping", NULL);
    refuse("mqtt:\n  port: abc\n" ROUTE, "t.yaml:2:9: mqtt.port: 'abc' is not an integer", NULL);
    refuse("mqtt:\n  port: 1883.0\n" ROUTE, "t.yaml:2:9: mqtt.port: '1883.0' is not an integer",
           NULL);
    refuse("mqtt:\n  port: 0x10\n" ROUTE, "t.yaml:2:9: mqtt.port: ", "not an integer");
    refuse("mqtt:\n  port: [1]\n" ROUTE,
           "t.yaml:2:9: mqtt.port: expected an integer, found a sequence", NULL);
    refuse("mqtt:\n  port:\n" ROUTE, "t.yaml:2:8: mqtt.port: missing value", NULL);
    refuse("mqtt:\n  clean_session: yes\n" ROUTE,
           "t.yaml:2:18: mqtt.clean_session: 'yes' is not a boolean", NULL);
    refuse("mqtt:\n  clean_session: True\n" ROUTE,
           "t.yaml:2:18: mqtt.clean_session: ", "not a boolean");
    refuse("mqtt: 5\n" ROUTE, "t.yaml:1:7: mqtt: expected a mapping, found a scalar", NULL);
    refuse("mqtt: [1]\n" ROUTE, "t.yaml:1:7: mqtt: expected a mapping, found a sequence", NULL);
    refuse("routes: {a: 1}\n", "t.yaml:1:9: routes: expected a sequence, found a mapping", NULL);
    refuse("routes:\n  - 5\n", "t.yaml:2:5: routes[0]: expected a mapping, found a scalar", NULL);
    refuse("routes:\n  - {name: r, topic: a, exchange: amq.topic, headers: [a]}\n",
           "t.yaml:2:55: routes[0].headers: expected a mapping, found a sequence", NULL);
    refuse("routes:\n  - {name: r, topic: a, exchange: amq.topic, headers: {a: [1]}}\n",
           "t.yaml:2:59: routes[0].headers.a: expected a scalar, found a sequence", NULL);
    refuse("log:\n  level: verbose\n" ROUTE,
           "t.yaml:2:10: log.level: 'verbose' is not one of error, warn, info, debug", NULL);
    refuse("log:\n  format: xml\n" ROUTE, "t.yaml:2:11: log.format: 'xml' is not one of text, json",
           NULL);
    refuse("spool:\n  fsync: always\n" ROUTE,
           "t.yaml:2:10: spool.fsync: 'always' is not one of batch, interval, never", NULL);
    refuse("amqp:\n  mqtt_headers: some\n" ROUTE,
           "t.yaml:2:17: amqp.mqtt_headers: 'some' is not one of all, topic, none", NULL);
    refuse("mqtt:\n  protocol: 4\n" ROUTE, "t.yaml:2:13: mqtt.protocol: '4' is not one of 311, 5",
           NULL);
    refuse("mqtt:\n  host: \"\"\n" ROUTE, "t.yaml:2:9: mqtt.host: must not be empty", NULL);
    refuse("mqtt:\n  host: \"a\\0b\"\n" ROUTE, "t.yaml:2:9: mqtt.host: value contains a NUL byte",
           NULL);
    refuse("amqp:\n  topology:\n    exchanges:\n      - {name: e, type: match}\n" ROUTE,
           "t.yaml:4:25: amqp.topology.exchanges[0].type: 'match' is not direct", NULL);
    refuse("mqtt:\n  share_group: a/b\n" ROUTE, "t.yaml:2:16: mqtt.share_group: ", "'/'");
}
END_TEST

START_TEST(out_of_range_values_are_refused)
{
    static const struct {
        const char *yaml, *prefix;
    } cases[] = {
        {"mqtt:\n  port: 0\n", "t.yaml:2:9: mqtt.port: 0 is out of range 1..65535"},
        {"mqtt:\n  port: 70000\n", "t.yaml:2:9: mqtt.port: 70000 is out of range 1..65535"},
        {"mqtt:\n  port: -1\n", "t.yaml:2:9: mqtt.port: -1 is out of range"},
        {"mqtt:\n  port: 99999999999999999999\n", "t.yaml:2:9: mqtt.port: '9999"},
        {"mqtt:\n  keepalive: 4\n", "t.yaml:2:14: mqtt.keepalive: 4 is out of range 5..65535"},
        {"mqtt:\n  receive_maximum: 0\n", "t.yaml:2:20: mqtt.receive_maximum: 0 is out of range"},
        {"mqtt:\n  session_expiry: 4294967296\n", "t.yaml:2:19: mqtt.session_expiry: "},
        {"mqtt:\n  session_expiry: -1\n", "t.yaml:2:19: mqtt.session_expiry: "},
        {"mqtt:\n  reconnect_min_ms: 0\n", "t.yaml:2:21: mqtt.reconnect_min_ms: "},
        {"amqp:\n  port: 65536\n", "t.yaml:2:9: amqp.port: 65536 is out of range"},
        {"amqp:\n  heartbeat: 3601\n", "t.yaml:2:14: amqp.heartbeat: 3601 is out of range 0..3600"},
        {"amqp:\n  heartbeat: -1\n", "t.yaml:2:14: amqp.heartbeat: "},
        {"amqp:\n  confirm_window: 0\n", "t.yaml:2:19: amqp.confirm_window: 0 is out of range"},
        {"amqp:\n  confirm_window: 65536\n", "t.yaml:2:19: amqp.confirm_window: "},
        {"spool:\n  max_bytes: 0\n", "t.yaml:2:14: spool.max_bytes: 0 is below the minimum 64KiB"},
        {"spool:\n  segment_bytes: 2GiB\n",
         "t.yaml:2:18: spool.segment_bytes: 2GiB is out of range 64KiB..1GiB"},
        {"spool:\n  segment_bytes: 1KiB\n", "t.yaml:2:18: spool.segment_bytes: "},
        {"log:\n  stats_interval: -1\n", "t.yaml:2:19: log.stats_interval: "},
        {"shutdown_timeout: 3601\n", "t.yaml:1:19: shutdown_timeout: 3601 is out of range"},
    };
    char yaml[512];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(yaml, sizeof(yaml), "%s" ROUTE, cases[i].yaml);
        refuse(yaml, cases[i].prefix, NULL);
    }
}
END_TEST

START_TEST(inconsistent_values_are_refused)
{
    refuse("mqtt:\n  reconnect_min_ms: 5000\n  reconnect_max_ms: 1000\n" ROUTE,
           "t.yaml:3:21: mqtt: reconnect_max_ms (1000) is below reconnect_min_ms (5000)", NULL);
    refuse("amqp:\n  reconnect_min_ms: 40000\n" ROUTE, "t.yaml:2:21: amqp: reconnect_max_ms", NULL);
    refuse("spool:\n  max_bytes: 1MiB\n" ROUTE,
           "t.yaml:2:14: spool: max_bytes (1MiB) is below segment_bytes (64MiB)", NULL);
    refuse("amqp:\n  topology:\n    queues:\n      - name: q\n        durable: false\n"
           "        arguments: {x-queue-type: quorum}\n" ROUTE,
           "t.yaml:5:18: amqp.topology.queues[0].durable: a quorum queue must be durable", NULL);
}
END_TEST

START_TEST(route_to_an_undeclared_exchange_is_refused)
{
    refuse("routes:\n  - name: r\n    topic: a\n    exchange: telemetry\n",
           "t.yaml:4:15: routes[0].exchange: exchange 'telemetry' is not declared", NULL);
    refuse("routes:\n  - {name: r, topic: a, exchange: amq.nope}\n",
           "t.yaml:2:35: routes[0].exchange: exchange 'amq.nope' is not declared", NULL);
    /* declared later in the file is fine */
    m2a_config_free(load("routes:\n  - {name: r, topic: a, exchange: telemetry}\n"
                         "amqp:\n  topology:\n    exchanges: [{name: telemetry}]\n"));
    refuse("amqp:\n  topology:\n    exchanges: [{name: i, internal: true}]\n"
           "routes:\n  - {name: r, topic: a, exchange: i}\n",
           "t.yaml:5:35: routes[0].exchange: exchange 'i' is internal", NULL);
}
END_TEST

START_TEST(binding_to_an_undeclared_exchange_is_refused)
{
    refuse("amqp:\n  topology:\n    queues:\n      - name: q\n        bindings:\n"
           "          - exchange: nope\n" ROUTE,
           "t.yaml:6:23: amqp.topology.queues[0].bindings[0].exchange: exchange 'nope' is not "
           "declared",
           NULL);
    refuse("amqp:\n  topology:\n    queues:\n      - name: q\n        bindings:\n"
           "          - exchange: ''\n" ROUTE,
           "t.yaml:6:23: amqp.topology.queues[0].bindings[0].exchange: a queue cannot be bound "
           "to the default exchange",
           NULL);
}
END_TEST

START_TEST(duplicate_names_are_refused)
{
    refuse("routes:\n  - {name: r, topic: a, exchange: amq.topic}\n"
           "  - {name: s, topic: b, exchange: amq.topic}\n"
           "  - {name: r, topic: c, exchange: amq.topic}\n",
           "t.yaml:4:12: routes[2].name: route name 'r' is already used at line 2", NULL);
    refuse("amqp:\n  topology:\n    exchanges: [{name: e}, {name: e}]\n" ROUTE,
           "t.yaml:3:35: amqp.topology.exchanges[1].name: exchange 'e' is already declared", NULL);
    refuse("amqp:\n  topology:\n    queues: [{name: q}, {name: q}]\n" ROUTE,
           "t.yaml:3:32: amqp.topology.queues[1].name: queue 'q' is already declared", NULL);
    /* an alias repeats the node: still a duplicate */
    refuse("routes:\n  - &r {name: r, topic: a, exchange: amq.topic}\n  - *r\n",
           "t.yaml:2:15: routes[1].name: route name 'r' is already used", NULL);
}
END_TEST

START_TEST(reserved_names_are_refused)
{
    refuse("amqp:\n  topology:\n    exchanges: [{name: amq.mine}]\n" ROUTE,
           "t.yaml:3:24: amqp.topology.exchanges[0].name: 'amq.mine': names starting with 'amq.'",
           NULL);
    refuse("amqp:\n  topology:\n    queues: [{name: amq.q}]\n" ROUTE,
           "t.yaml:3:21: amqp.topology.queues[0].name: ", "reserved");
}
END_TEST

START_TEST(missing_required_keys_point_at_the_mapping)
{
    refuse("routes:\n  - name: r\n    exchange: amq.topic\n",
           "t.yaml:2:5: routes[0]: missing required key 'topic'", NULL);
    refuse("routes:\n  - {topic: a, exchange: amq.topic}\n",
           "t.yaml:2:5: routes[0]: missing required key 'name'", NULL);
    refuse("routes:\n  - name: r\n    topic: a\n",
           "t.yaml:2:5: routes[0]: missing required key 'exchange'", NULL);
    refuse("routes:\n  -\n", "t.yaml:2:4: routes[0]: missing required key 'name'", NULL);
    refuse("routes:\n  - {name: r, topic: a, exchange: }\n",
           "t.yaml:2:35: routes[0].exchange: missing value", NULL);
    refuse("amqp:\n  topology:\n    queues:\n      - durable: true\n" ROUTE,
           "t.yaml:4:9: amqp.topology.queues[0]: missing required key 'name'", NULL);
    refuse("amqp:\n  topology:\n    exchanges:\n      - type: topic\n" ROUTE,
           "t.yaml:4:9: amqp.topology.exchanges[0]: missing required key 'name'", NULL);
    refuse("amqp:\n  topology:\n    queues:\n      - name: q\n        bindings:\n"
           "          - routing_key: a\n" ROUTE,
           "t.yaml:6:13: amqp.topology.queues[0].bindings[0]: missing required key 'exchange'",
           NULL);
}
END_TEST

START_TEST(no_routes_is_refused)
{
    refuse("mqtt:\n  port: 1883\n", "t.yaml:1:1: no routes: nothing to bridge", NULL);
    refuse("mqtt:\n  port: 1883\nroutes: []\n", "t.yaml:3:9: no routes: nothing to bridge", NULL);
    refuse("mqtt:\n  port: 1883\nroutes:\n", "t.yaml:3:8: no routes: nothing to bridge", NULL);
}
END_TEST

/* The next two depend on the real m2a_topic_filter_validate (topic.c),
 * except the empty filter, which the config refuses itself. */
START_TEST(bad_topic_filter_empty_is_refused)
{
    refuse("routes:\n  - {name: r, topic: '', exchange: amq.topic}\n",
           "t.yaml:2:22: routes[0].topic: must not be empty", NULL);
}
END_TEST

START_TEST(bad_topic_filters_are_refused_needs_topic_c)
{
    static const char *const bad[] = {"a/#/b", "a+/b", "a/b#", "$share/g/a"};
    char yaml[256];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(yaml, sizeof(yaml), "routes:\n  - {name: r, topic: '%s', exchange: amq.topic}\n",
                 bad[i]);
        refuse(yaml, "t.yaml:2:22: routes[0].topic: ", NULL);
    }
}
END_TEST

/* Depends on the real m2a_routes_template_check (routes.c). */
START_TEST(bad_templates_are_refused_needs_routes_c)
{
    refuse("routes:\n  - name: r\n    topic: a/+\n    exchange: amq.topic\n"
           "    routing_key: 'x.{2}'\n",
           "t.yaml:5:18: routes[0].routing_key: ", NULL);
    refuse("routes:\n  - name: r\n    topic: a/b\n    exchange: amq.topic\n"
           "    routing_key: 'x.{1}'\n",
           "t.yaml:5:18: routes[0].routing_key: ", NULL);
    refuse("routes:\n  - name: r\n    topic: a/+\n    exchange: amq.topic\n"
           "    routing_key: 'x.{nope}'\n",
           "t.yaml:5:18: routes[0].routing_key: ", NULL);
    refuse("routes:\n  - name: r\n    topic: a/+\n    exchange: amq.topic\n"
           "    headers:\n      ok: '{1}'\n      dev: '{1'\n",
           "t.yaml:7:12: routes[0].headers.dev: ", NULL);
}
END_TEST

START_TEST(good_templates_are_accepted)
{
    m2a_config_free(load("routes:\n  - name: r\n    topic: a/+/+/#\n    exchange: amq.topic\n"
                         "    routing_key: 'x.{1}.{2}.{3}.{topic}'\n"
                         "    headers: {h: '{{literal}} {3}'}\n"));
}
END_TEST

START_TEST(recursive_aliases_terminate)
{
    refuse("mqtt: &m\n  tls: *m\n" ROUTE, "t.yaml:", NULL);
    refuse("routes: &r\n  - *r\n", "t.yaml:", NULL);
}
END_TEST

/* ---- brokers: hosts lists and the host/port shorthand --------------------- */

START_TEST(endpoints_come_from_the_shorthand_or_its_defaults)
{
    struct m2a_config *c = load(ROUTE);
    ck_assert_uint_eq(c->mqtt.nendpoints, 1);
    ck_assert_str_eq(c->mqtt.endpoints[0].host, "127.0.0.1");
    ck_assert_int_eq(c->mqtt.endpoints[0].port, 1883);
    ck_assert_uint_eq(c->amqp.nendpoints, 1);
    ck_assert_str_eq(c->amqp.endpoints[0].host, "127.0.0.1");
    ck_assert_int_eq(c->amqp.endpoints[0].port, 5672);
    m2a_config_free(c);
    c = load("mqtt: {host: m.example, port: 8883}\namqp: {port: 5671}\n" ROUTE);
    ck_assert_str_eq(c->mqtt.endpoints[0].host, "m.example");
    ck_assert_int_eq(c->mqtt.endpoints[0].port, 8883);
    ck_assert_int_eq(c->amqp.endpoints[0].port, 5671);
    m2a_config_free(c);
}
END_TEST

START_TEST(hosts_lists_keep_their_order_and_default_ports)
{
    struct m2a_config *c = load("amqp:\n  hosts: [\"r1:5673\", \"[::1]:5674\", r3]\n"
                                "mqtt:\n  hosts: [\"emqx-0:1884\", emqx-1]\n" ROUTE);
    ck_assert_uint_eq(c->amqp.nendpoints, 3);
    ck_assert_str_eq(c->amqp.endpoints[0].host, "r1");
    ck_assert_int_eq(c->amqp.endpoints[0].port, 5673);
    ck_assert_str_eq(c->amqp.endpoints[1].host, "::1");
    ck_assert_int_eq(c->amqp.endpoints[1].port, 5674);
    ck_assert_str_eq(c->amqp.endpoints[2].host, "r3");
    ck_assert_int_eq(c->amqp.endpoints[2].port, 5672);
    ck_assert_uint_eq(c->mqtt.nendpoints, 2);
    ck_assert_int_eq(c->mqtt.endpoints[0].port, 1884);
    ck_assert_str_eq(c->mqtt.endpoints[1].host, "emqx-1");
    ck_assert_int_eq(c->mqtt.endpoints[1].port, 1883);
    m2a_config_free(c);
}
END_TEST

START_TEST(bad_hosts_lists_are_refused_where_they_are)
{
    refuse("amqp:\n  host: a\n  hosts: [\"b:1\"]\n" ROUTE,
           "t.yaml:3:10: amqp: hosts and host/port are two ways to say the same", NULL);
    refuse("mqtt:\n  hosts: [\"b:1\"]\n  port: 2\n" ROUTE,
           "t.yaml:2:10: mqtt: hosts and host/port are two ways to say the same", NULL);
    refuse("amqp:\n  hosts: []\n" ROUTE, "t.yaml:2:10: amqp.hosts: the list is empty", NULL);
    refuse("amqp:\n  hosts: [a, \"::1:5672\"]\n" ROUTE,
           "t.yaml:2:14: amqp.hosts[1]: ", "IPv6 address in brackets");
    refuse("amqp:\n  hosts: [\"a:70000\"]\n" ROUTE,
           "t.yaml:2:11: amqp.hosts[0]: ", "from 1 to 65535");
    refuse("mqtt:\n  hosts: [\"[::1\"]\n" ROUTE, "t.yaml:2:11: mqtt.hosts[0]: ", "no ']'");
    refuse("mqtt:\n  hosts: [\":1883\"]\n" ROUTE,
           "t.yaml:2:11: mqtt.hosts[0]: ", "the host is empty");
    refuse("mqtt:\n  hosts: [b, \"b:1883\"]\n" ROUTE,
           "t.yaml:2:10: mqtt.hosts: b:1883 is listed twice", NULL);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    /* loading every prefix of the example takes seconds under ASan on a busy machine */
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, defaults_match_the_header);
    tcase_add_test(tc, every_key_is_read);
    tcase_add_test(tc, enums_take_each_name);
    tcase_add_test(tc, size_suffixes_are_powers_of_1024);
    tcase_add_test(tc, the_example_file_loads);
    tcase_add_test(tc, the_example_file_truncated_anywhere_never_crashes);
    tcase_add_test(tc, free_null_is_a_no_op);
    tcase_add_test(tc, a_missing_file_is_an_io_error);
    tcase_add_test(tc, errors_go_through_file_names_and_tiny_buffers);
    tcase_add_test(tc, env_expansion_in_every_string);
    tcase_add_test(tc, unset_env_without_default_is_an_error_at_the_reference);
    tcase_add_test(tc, bad_env_references_are_errors);
    tcase_add_test(tc, env_is_expanded_before_conversion);
    tcase_add_test(tc, password_file_strips_one_newline);
    tcase_add_test(tc, unreadable_password_file_is_an_error);
    tcase_add_test(tc, password_and_password_file_together_is_an_error);
    tcase_add_test(tc, mqtt5_takes_a_password_without_username);
    tcase_add_test(tc, secrets_never_appear_in_errors);
    tcase_add_test(tc, topology_is_parsed_with_defaults);
    tcase_add_test(tc, arguments_are_typed_by_their_scalar);
    tcase_add_test(tc, headers_are_stored_raw_with_their_position);
    tcase_add_test(tc, builtin_exchanges_need_no_declaration);
    tcase_add_test(tc, tls_section_presence_enables_tls);
    tcase_add_test(tc, tls_files_openssl_refuses_fail_the_load);
    tcase_add_test(tc, tls_files_must_be_regular_files);
    tcase_add_test(tc, invalid_yaml_is_refused_at_the_problem);
    tcase_add_test(tc, only_one_document);
    tcase_add_test(tc, the_top_level_must_be_a_mapping);
    tcase_add_test(tc, unknown_keys_are_refused_with_a_suggestion);
    tcase_add_test(tc, duplicate_keys_point_at_the_second);
    tcase_add_test(tc, keys_must_be_scalars);
    tcase_add_test(tc, wrong_types_are_refused);
    tcase_add_test(tc, out_of_range_values_are_refused);
    tcase_add_test(tc, inconsistent_values_are_refused);
    tcase_add_test(tc, route_to_an_undeclared_exchange_is_refused);
    tcase_add_test(tc, binding_to_an_undeclared_exchange_is_refused);
    tcase_add_test(tc, duplicate_names_are_refused);
    tcase_add_test(tc, reserved_names_are_refused);
    tcase_add_test(tc, missing_required_keys_point_at_the_mapping);
    tcase_add_test(tc, no_routes_is_refused);
    tcase_add_test(tc, bad_topic_filter_empty_is_refused);
    tcase_add_test(tc, bad_topic_filters_are_refused_needs_topic_c);
    tcase_add_test(tc, bad_templates_are_refused_needs_routes_c);
    tcase_add_test(tc, good_templates_are_accepted);
    tcase_add_test(tc, recursive_aliases_terminate);
    tcase_add_test(tc, endpoints_come_from_the_shorthand_or_its_defaults);
    tcase_add_test(tc, hosts_lists_keep_their_order_and_default_ports);
    tcase_add_test(tc, bad_hosts_lists_are_refused_where_they_are);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
