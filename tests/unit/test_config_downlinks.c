/* test_config_downlinks.c - the downlinks section of the configuration
 * (issue 11): defaults, and each refusal with its exact file:line:column. */
#include <check.h>
#include <string.h>

#include "mqtt2amqp/config.h"
#include "check_main.h"
#include "config_check.h"

#define TOPO                                                                                       \
    "amqp:\n"                                                                                      \
    "  topology:\n"                                                                                \
    "    queues:\n"                                                                                \
    "      - name: cmds\n"

START_TEST(defaults_and_values)
{
    struct m2a_config *c = th_config_load(TOPO "downlinks:\n"
                                               "  - name: commands\n"
                                               "    queue: cmds\n"
                                               "    topic: \"devices/{1}/commands\"\n"
                                               "  - name: replies\n"
                                               "    queue: cmds\n"
                                               "    topic: \"{routing_key}\"\n"
                                               "    qos: 0\n"
                                               "    retain: from_header\n"
                                               "    prefetch: 7\n");
    ck_assert_uint_eq(c->nroutes, 0); /* downlinks alone are something to bridge */
    ck_assert_uint_eq(c->ndownlinks, 2);
    ck_assert_str_eq(c->downlinks[0].name, "commands");
    ck_assert_str_eq(c->downlinks[0].queue, "cmds");
    ck_assert_str_eq(c->downlinks[0].topic, "devices/{1}/commands");
    ck_assert_int_eq(c->downlinks[0].qos, 1);
    ck_assert_int_eq(c->downlinks[0].retain, M2A_DOWNLINK_RETAIN_FALSE);
    ck_assert_int_eq(c->downlinks[0].prefetch, 100);
    ck_assert_int_eq(c->downlinks[1].qos, 0);
    ck_assert_int_eq(c->downlinks[1].retain, M2A_DOWNLINK_RETAIN_FROM_HEADER);
    ck_assert_int_eq(c->downlinks[1].prefetch, 7);
    ck_assert_ptr_null(c->mqtt.downlink_client_id);
    m2a_config_free(c);
}
END_TEST

START_TEST(undeclared_queue_is_refused)
{
    th_config_refuse(TOPO "downlinks:\n"
                          "  - name: c\n"
                          "    queue: other\n"
                          "    topic: d/{1}\n",
                     "t.yaml:7:12: ", "queue 'other' is not declared in amqp.topology.queues");
}
END_TEST

START_TEST(bad_topic_templates_are_refused)
{
    th_config_refuse(TOPO "downlinks:\n"
                          "  - name: c\n"
                          "    queue: cmds\n"
                          "    topic: devices/+/cmd\n",
                     "t.yaml:8:12: ", "'+' is a wildcard");
    th_config_refuse(TOPO "downlinks:\n"
                          "  - name: c\n"
                          "    queue: cmds\n"
                          "    topic: \"devices/{1}/#\"\n",
                     "t.yaml:8:12: ", "'#' is a wildcard");
    th_config_refuse(TOPO "downlinks:\n"
                          "  - name: c\n"
                          "    queue: cmds\n"
                          "    topic: \"d/{device}\"\n",
                     "t.yaml:8:12: ", "unknown placeholder {device}");
    th_config_refuse(TOPO "downlinks:\n"
                          "  - name: c\n"
                          "    queue: cmds\n"
                          "    topic: \"\"\n",
                     "t.yaml:8:12: ", NULL);
}
END_TEST

START_TEST(keys_out_of_range_are_refused)
{
    th_config_refuse(TOPO "downlinks:\n"
                          "  - {name: c, queue: cmds, topic: a, qos: 2}\n",
                     "t.yaml:6:43: ", NULL);
    th_config_refuse(TOPO "downlinks:\n"
                          "  - {name: c, queue: cmds, topic: a, retain: sometimes}\n",
                     "t.yaml:6:46: ", NULL);
    th_config_refuse(TOPO "downlinks:\n"
                          "  - {name: c, queue: cmds, topic: a, prefetch: 0}\n",
                     "t.yaml:6:48: ", NULL);
    th_config_refuse(TOPO "downlinks:\n"
                          "  - {name: c, queue: cmds}\n",
                     "t.yaml:6:5: ", "topic");
    th_config_refuse(TOPO "downlinks:\n"
                          "  - {name: c, queue: cmds, topic: a, colour: red}\n",
                     "t.yaml:6:38: ", "colour");
}
END_TEST

START_TEST(duplicate_names_are_refused)
{
    th_config_refuse(TOPO "downlinks:\n"
                          "  - {name: c, queue: cmds, topic: a}\n"
                          "  - {name: c, queue: cmds, topic: b}\n",
                     "t.yaml:7:12: ", "already");
}
END_TEST

START_TEST(downlink_client_id_must_differ)
{
    th_config_refuse("mqtt:\n  client_id: br\n  downlink_client_id: br\n" TOPO
                     "downlinks:\n  - {name: c, queue: cmds, topic: a}\n",
                     "t.yaml:3:23: ", "session of their own");
    struct m2a_config *c =
        th_config_load("mqtt:\n  client_id: br\n  downlink_client_id: br-cmd\n" TOPO
                       "downlinks:\n  - {name: c, queue: cmds, topic: a}\n");
    ck_assert_str_eq(c->mqtt.downlink_client_id, "br-cmd");
    m2a_config_free(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config_downlinks");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, defaults_and_values);
    tcase_add_test(tc, undeclared_queue_is_refused);
    tcase_add_test(tc, bad_topic_templates_are_refused);
    tcase_add_test(tc, keys_out_of_range_are_refused);
    tcase_add_test(tc, duplicate_names_are_refused);
    tcase_add_test(tc, downlink_client_id_must_differ);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
