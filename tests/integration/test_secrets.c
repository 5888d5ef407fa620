/* test_secrets.c - passwords never appear in logs or error messages: the
 * bridge runs at debug level with an MQTT password and a wrong AMQP password
 * (read from password_file), so the refusal is logged; and a config error
 * next to a password does not echo it. */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow.h"
#include "harness.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define MQTT_SECRET "mqtt-S3CRET-5d1e"
#define AMQP_SECRET "amqp-S3CRET-77aa"

START_TEST(secrets_stay_out_of_logs)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    struct th_bridge *b = th_bridge_new(mq);
    char *pwfile = xasprintf("%s/amqp.pw", b->dir);
    ck_assert_int_eq(th_write_file(pwfile, AMQP_SECRET "\n"), 0);
    th_bridge_set(b, "PWFILE", "%s", pwfile);
    ck_assert_int_eq(
        th_bridge_config(b,
                         "mqtt: {port: ${MQTT_PORT}, client_id: it-secrets, username: dev,\n"
                         "       password: " MQTT_SECRET "}\n"
                         "amqp: {port: ${AMQP_PORT}, username: guest, password_file: ${PWFILE}}\n"
                         "spool: {dir: ${SPOOL_DIR}}\n"
                         "routes: [{name: r, topic: s/#, exchange: amq.topic}]\n"
                         "log: {level: debug, stats_interval: 1}\n"),
        0);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "mqtt: subscribed to", 30000), 0);
    /* RabbitMQ refuses guest with the wrong password: that refusal is logged */
    ck_assert_int_eq(th_bridge_wait_log(b, "ACCESS_REFUSED", 30000), 0);
    ck_assert_int_eq(th_bridge_wait_log(b, "stats:", 30000), 0);
    ck_assert_int_eq(th_bridge_signal(b, SIGTERM), 0);
    int code = -1;
    ck_assert_int_eq(th_bridge_wait_exit(b, 30000, &code), 0);
    ck_assert_int_eq(code, 0);

    char *logpath = xasprintf("%s/bridge.log", b->dir);
    char *log = th_read_file(logpath, NULL);
    ck_assert_ptr_nonnull(log);
    ck_assert_msg(!strstr(log, MQTT_SECRET), "MQTT password in the log");
    ck_assert_msg(!strstr(log, AMQP_SECRET), "AMQP password in the log");
    free(log);
    free(logpath);

    /* --check with an error on the password line must not echo it */
    char *bad = xasprintf("%s/bad.yaml", b->dir);
    ck_assert_int_eq(th_write_file(bad, "mqtt: {password: " MQTT_SECRET ", password_file: /x}\n"
                                        "amqp: {password: [" AMQP_SECRET "]}\n"
                                        "routes: [{name: r, topic: s/#, exchange: amq.topic}]\n"),
                     0);
    const char *argv[] = {M2A_BINARY, "--check", "-c", bad, NULL};
    struct th_run_result r = {0};
    ck_assert_int_eq(th_run(argv, NULL, 30000, &r), 0);
    ck_assert_int_eq(r.exit_code, 2);
    ck_assert(!strstr(r.err, MQTT_SECRET) && !strstr(r.err, AMQP_SECRET));
    th_run_result_free(&r);
    free(bad);
    free(pwfile);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("secrets");
    TCase *tc = tcase_create("secrets");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, secrets_stay_out_of_logs);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
