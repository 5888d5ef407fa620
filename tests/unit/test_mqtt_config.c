/* test_mqtt_config.c - the MQTT side's configuration keys of issues 9 and
 * 10: mqtt.max_message_bytes and mqtt.connect_timeout (defaults, bounds),
 * and ${HOSTNAME} in client_id when the environment has no HOSTNAME (a
 * systemd service), which falls back to the kernel's host name. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mqtt2amqp/config.h"
#include "check_main.h"
#include "config_check.h"

#define ROUTES "routes:\n  - {name: r, topic: a/#, exchange: amq.topic}\n"

START_TEST(defaults_of_the_new_keys)
{
    struct m2a_config *c = th_config_load(ROUTES);
    ck_assert_uint_eq(c->mqtt.max_message_bytes, 16u << 20);
    ck_assert_uint_eq(c->mqtt.connect_timeout_ms, 10000);
    m2a_config_free(c);
    c = th_config_load("mqtt: {max_message_bytes: 256KiB, connect_timeout: 2500ms}\n" ROUTES);
    ck_assert_uint_eq(c->mqtt.max_message_bytes, 256u << 10);
    ck_assert_uint_eq(c->mqtt.connect_timeout_ms, 2500);
    m2a_config_free(c);
}
END_TEST

START_TEST(max_message_bytes_leaves_room_for_topic_and_properties)
{
    /* 256 MiB is the MQTT packet limit: the payload limit must leave room
     * for the rest of a PUBLISH. */
    th_config_refuse("mqtt: {max_message_bytes: 256MiB}\n" ROUTES,
                     "t.yaml:1:27: mqtt.max_message_bytes:", "out of range");
    th_config_refuse("mqtt: {max_message_bytes: 0}\n" ROUTES,
                     "t.yaml:1:27: mqtt.max_message_bytes:", NULL);
    th_config_refuse("mqtt: {connect_timeout: 10ms}\n" ROUTES,
                     "t.yaml:1:25: mqtt.connect_timeout:", NULL);
}
END_TEST

START_TEST(hostname_falls_back_to_the_kernel_host_name)
{
    char host[256] = "";
    ck_assert_int_eq(gethostname(host, sizeof(host)), 0);
    ck_assert_int_eq(unsetenv("HOSTNAME"), 0);
    struct m2a_config *c = th_config_load("mqtt: {client_id: \"bridge-${HOSTNAME}\"}\n" ROUTES);
    char want[300];
    snprintf(want, sizeof(want), "bridge-%s", host);
    ck_assert_str_eq(c->mqtt.client_id, want);
    m2a_config_free(c);
    /* The environment wins when it has one. */
    ck_assert_int_eq(setenv("HOSTNAME", "pod-7", 1), 0);
    c = th_config_load("mqtt: {client_id: \"bridge-${HOSTNAME}\"}\n" ROUTES);
    ck_assert_str_eq(c->mqtt.client_id, "bridge-pod-7");
    m2a_config_free(c);
    /* Any other variable still has to be set. */
    unsetenv("M2A_TEST_NOT_SET");
    th_config_refuse("mqtt: {client_id: \"${M2A_TEST_NOT_SET}\"}\n" ROUTES,
                     "t.yaml:1:", "M2A_TEST_NOT_SET is not set");
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("mqtt_config");
    TCase *tc = tcase_create("keys");
    tcase_add_test(tc, defaults_of_the_new_keys);
    tcase_add_test(tc, max_message_bytes_leaves_room_for_topic_and_properties);
    tcase_add_test(tc, hostname_falls_back_to_the_kernel_host_name);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return m2a_check_run(suite());
}
