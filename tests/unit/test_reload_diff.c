/* test_reload_diff.c - which changed keys a live reload reports as not applied,
 * and which topology it leaves behind in RabbitMQ. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/reload.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"
#include "config_check.h"

#define BASE                                                                                       \
    "mqtt: {host: 127.0.0.1, client_id: a%s}\n"                                                    \
    "amqp:\n"                                                                                      \
    "  vhost: /\n%s"                                                                               \
    "  topology:\n"                                                                                \
    "    exchanges: [{name: x1}%s]\n"                                                              \
    "    queues: [{name: q1, bindings: [{exchange: x1}]}%s]\n"                                     \
    "spool: {dir: /tmp/s%s}\n"                                                                     \
    "routes:\n"                                                                                    \
    "  - {name: r1, topic: \"a/#\", exchange: x1}\n%s"                                             \
    "log: {level: %s}\n%s"

static struct m2a_config *load(const char *mqtt_extra, const char *amqp_extra, const char *more_x,
                               const char *more_q, const char *spool_extra, const char *more_routes,
                               const char *level, const char *tail)
{
    char *text = xasprintf(BASE, mqtt_extra, amqp_extra, more_x, more_q, spool_extra, more_routes,
                           level, tail);
    struct m2a_config *cfg = th_config_load(text);
    free(text);
    return cfg;
}

struct keys {
    char list[1024];
};

static void collect(void *ud, const char *key)
{
    struct keys *k = ud;
    strcat(k->list, key);
    strcat(k->list, " ");
}

START_TEST(routes_topology_and_log_level_are_applied_silently)
{
    struct m2a_config *a = load("", "", "", "", "", "", "info", "");
    struct m2a_config *b =
        load("", "", ", {name: x2}", ", {name: q2, bindings: [{exchange: x2}]}", "",
             "  - {name: r2, topic: \"b/#\", exchange: x2}\n", "debug", "shutdown_timeout: 3\n");
    struct keys k = {""};
    ck_assert_uint_eq(m2a_reload_unapplied(a, b, collect, &k), 0);
    ck_assert_str_eq(k.list, "");
    ck_assert_uint_eq(m2a_reload_removed_topology(a, b, collect, &k), 0);
    m2a_config_free(a);
    m2a_config_free(b);
}
END_TEST

START_TEST(connection_spool_and_metrics_changes_are_named)
{
    struct m2a_config *a = load("", "", "", "", "", "", "info", "");
    struct m2a_config *b = load(", port: 1884, password: secret, username: u", "  heartbeat: 5\n",
                                "", "", "2", "", "info", "metrics: {listen: \"127.0.0.1:9999\"}\n");
    struct keys k = {""};
    ck_assert_uint_eq(m2a_reload_unapplied(a, b, collect, &k), 6);
    ck_assert_str_eq(k.list,
                     "mqtt.port mqtt.username mqtt.password amqp.heartbeat spool.dir metrics ");
    /* secrets: only the key name is passed on */
    ck_assert_ptr_null(strstr(k.list, "secret"));
    m2a_config_free(a);
    m2a_config_free(b);
}
END_TEST

START_TEST(a_changed_hosts_list_is_named_once)
{
    struct m2a_config *a =
        load("", "  hosts: [\"r1:5672\", \"r2:5672\"]\n", "", "", "", "", "info", "");
    struct m2a_config *b =
        load("", "  hosts: [\"r1:5672\", \"r3:5672\"]\n", "", "", "", "", "info", "");
    struct m2a_config *c = load("", "  hosts: [\"r1:5672\", \"r2\"]\n", "", "", "", "", "info", "");
    struct keys k = {""};
    ck_assert_uint_eq(m2a_reload_unapplied(a, b, collect, &k), 1);
    ck_assert_str_eq(k.list, "amqp.hosts ");
    /* the same brokers written another way: nothing changed */
    ck_assert_uint_eq(m2a_reload_unapplied(a, c, NULL, NULL), 0);
    m2a_config_free(a);
    m2a_config_free(b);
    m2a_config_free(c);
}
END_TEST

START_TEST(tls_changes_are_named_per_key)
{
    struct m2a_config *a = load(", tls: {verify_hostname: true}",
                                "  tls: {verify_hostname: true}\n", "", "", "", "", "info", "");
    struct m2a_config *b =
        load("", "  tls: {verify_hostname: false}\n", "", "", "", "", "info", "");
    struct keys k = {""};
    ck_assert_uint_eq(m2a_reload_unapplied(a, b, collect, &k), 2);
    ck_assert_str_eq(k.list, "mqtt.tls amqp.tls.verify_hostname ");
    m2a_config_free(a);
    m2a_config_free(b);
}
END_TEST

START_TEST(removed_exchanges_and_queues_are_listed)
{
    struct m2a_config *a = load("", "", ", {name: x2}", ", {name: q2, bindings: [{exchange: x2}]}",
                                "", "  - {name: r2, topic: \"b/#\", exchange: x2}\n", "info", "");
    struct m2a_config *b = load("", "", "", "", "", "", "info", "");
    struct keys k = {""};
    ck_assert_uint_eq(m2a_reload_removed_topology(a, b, collect, &k), 2);
    ck_assert_str_eq(k.list, "exchange x2 queue q2 ");
    m2a_config_free(a);
    m2a_config_free(b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("reload");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, routes_topology_and_log_level_are_applied_silently);
    tcase_add_test(tc, connection_spool_and_metrics_changes_are_named);
    tcase_add_test(tc, tls_changes_are_named_per_key);
    tcase_add_test(tc, a_changed_hosts_list_is_named_once);
    tcase_add_test(tc, removed_exchanges_and_queues_are_listed);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
