/* test_cli.c - the command line as a user meets it: --help lists every
 * option, --check accepts the shipped config and refuses each kind of bad
 * config with exit code 2 and a file:line:column message, --explain shows
 * where a topic goes. Runs the real binary; needs no broker. */
#include <check.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define SHIPPED_CONFIG M2A_SOURCE_DIR "/config/mqtt2amqp.yaml"

static struct th_run_result run_m2a(const char *a1, const char *a2, const char *a3, const char *a4)
{
    const char *argv[] = {M2A_BINARY, a1, a2, a3, a4, NULL};
    struct th_run_result r = {0};
    ck_assert_int_eq(th_run(argv, NULL, 30000, &r), 0);
    return r;
}

START_TEST(help_lists_every_option)
{
    struct th_run_result r = run_m2a("--help", NULL, NULL, NULL);
    ck_assert_int_eq(r.exit_code, 0);
    const char *options[] = {"--config", "-c", "--check", "--explain", "--help", "--version"};
    for (size_t i = 0; i < sizeof(options) / sizeof(options[0]); i++)
        ck_assert_msg(strstr(r.out, options[i]), "--help does not mention %s", options[i]);
    th_run_result_free(&r);
}
END_TEST

START_TEST(unknown_option_is_a_usage_error)
{
    struct th_run_result r = run_m2a("--no-such-option", NULL, NULL, NULL);
    ck_assert_int_eq(r.exit_code, 2);
    th_run_result_free(&r);
}
END_TEST

START_TEST(check_accepts_the_shipped_config)
{
    struct th_run_result r = run_m2a("--check", "-c", SHIPPED_CONFIG, NULL);
    ck_assert_msg(r.exit_code == 0, "exit %d: %s", r.exit_code, r.err);
    ck_assert_ptr_nonnull(strstr(r.out, "OK"));
    th_run_result_free(&r);
}
END_TEST

START_TEST(check_refuses_a_missing_file)
{
    struct th_run_result r = run_m2a("--check", "-c", "/nonexistent/m2a.yaml", NULL);
    ck_assert_int_eq(r.exit_code, 2);
    ck_assert_ptr_nonnull(strstr(r.err, "/nonexistent/m2a.yaml"));
    th_run_result_free(&r);
}
END_TEST

/* A minimal valid config; each bad case below changes one thing. */
#define GOOD_MQTT "mqtt: {host: 127.0.0.1, port: 1883}\n"
#define GOOD_AMQP                                                                                  \
    "amqp:\n"                                                                                      \
    "  topology:\n"                                                                                \
    "    exchanges:\n"                                                                             \
    "      - {name: telemetry, type: topic}\n"
#define GOOD_ROUTES                                                                                \
    "routes:\n"                                                                                    \
    "  - {name: r, topic: a/+/c, exchange: telemetry}\n"

struct bad_case {
    const char *what;
    const char *yaml;
    int line, column; /* where the error must point */
    const char *says; /* a word the message must contain */
};

static const struct bad_case bad_cases[] = {
    {"invalid YAML", GOOD_MQTT GOOD_AMQP GOOD_ROUTES "log: {level: [info\n", 9, 1, ""},
    {"unknown key", "mqtt: {host: 127.0.0.1, prot: 1883}\n" GOOD_AMQP GOOD_ROUTES, 1, 25, "prot"},
    {"duplicate key", "mqtt:\n  host: a\n  host: b\n" GOOD_AMQP GOOD_ROUTES, 3, 3, "host"},
    {"wrong type", "mqtt: {port: eighty}\n" GOOD_AMQP GOOD_ROUTES, 1, 14, "port"},
    {"wrong type (mapping for a scalar)", "mqtt: {host: {a: b}}\n" GOOD_AMQP GOOD_ROUTES, 1, 14,
     "host"},
    {"out of range", "mqtt: {port: 70000}\n" GOOD_AMQP GOOD_ROUTES, 1, 14, "port"},
    {"out of range (confirm_window 0)",
     GOOD_MQTT "amqp:\n  confirm_window: 0\n  topology:\n    exchanges:\n"
               "      - {name: telemetry, type: topic}\n" GOOD_ROUTES,
     3, 19, "confirm_window"},
    {"bad topic filter",
     GOOD_MQTT GOOD_AMQP "routes:\n  - {name: r, topic: a/#/c, exchange: telemetry}\n", 7, 22,
     "topic"},
    {"bad topic filter (wildcard inside a level)",
     GOOD_MQTT GOOD_AMQP "routes:\n  - {name: r, topic: a+/b, exchange: telemetry}\n", 7, 22,
     "topic"},
    {"undeclared exchange",
     GOOD_MQTT GOOD_AMQP "routes:\n  - {name: r, topic: a/b, exchange: nope}\n", 7, 37, "nope"},
    {"bad template",
     GOOD_MQTT GOOD_AMQP
     "routes:\n  - {name: r, topic: a/+, exchange: telemetry, routing_key: \"x.{2}\"}\n",
     7, 61, "{2}"},
    {"bad fsync policy", GOOD_MQTT GOOD_AMQP GOOD_ROUTES "spool: {fsync: sometimes}\n", 8, 16,
     "fsync"},
};

static bool matches(const char *text, const char *pattern)
{
    regex_t re;
    ck_assert_int_eq(regcomp(&re, pattern, REG_EXTENDED | REG_NOSUB), 0);
    bool ok = regexec(&re, text, 0, NULL, 0) == 0;
    regfree(&re);
    return ok;
}

START_TEST(check_refuses_each_kind_of_bad_config)
{
    const struct bad_case *bc = &bad_cases[_i];
    char *dir = th_tmpdir_new("cli");
    char *path = xasprintf("%s/bad.yaml", dir);
    ck_assert_int_eq(th_write_file(path, bc->yaml), 0);

    struct th_run_result r = run_m2a("--check", "-c", path, NULL);
    ck_assert_msg(r.exit_code == 2, "%s: exit %d, stderr: %s", bc->what, r.exit_code, r.err);
    char *want = xasprintf("^%s:%d:%d: ", path, bc->line, bc->column);
    ck_assert_msg(matches(r.err, want), "%s: expected \"%s\" at the start of: %s", bc->what, want,
                  r.err);
    ck_assert_msg(strstr(r.err, bc->says), "%s: message does not name \"%s\": %s", bc->what,
                  bc->says, r.err);

    /* Running (not only --check) refuses it the same way, before touching anything. */
    struct th_run_result r2 = run_m2a("-c", path, NULL, NULL);
    ck_assert_int_eq(r2.exit_code, 2);
    ck_assert(matches(r2.err, want));

    th_run_result_free(&r2);
    th_run_result_free(&r);
    free(want);
    free(path);
    th_rmtree(dir);
    free(dir);
}
END_TEST

START_TEST(explain_shows_each_matching_route)
{
    struct th_run_result r = run_m2a("--explain", "sensors/dev.7/temp", "-c", SHIPPED_CONFIG);
    ck_assert_msg(r.exit_code == 0, "exit %d: %s", r.exit_code, r.err);
    /* The shipped "temperature" route: captures convert '.' to '/' so the
     * device id stays one routing-key word. */
    ck_assert_ptr_nonnull(strstr(r.out, "route temperature"));
    ck_assert_ptr_nonnull(strstr(r.out, "sensors.dev/7.temperature"));
    ck_assert_ptr_nonnull(strstr(r.out, "device=dev/7"));
    ck_assert_ptr_nonnull(strstr(r.out, "x-mqtt-topic=sensors/dev.7/temp"));
    /* first match wins: the catch-all route after it is not listed */
    ck_assert_ptr_null(strstr(r.out, "route other-sensors"));
    th_run_result_free(&r);

    r = run_m2a("--explain", "sensors/a/b", "-c", SHIPPED_CONFIG);
    ck_assert_int_eq(r.exit_code, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "route other-sensors"));
    ck_assert_ptr_nonnull(strstr(r.out, "routing key:  sensors.a.b"));
    th_run_result_free(&r);

    r = run_m2a("--explain", "weather/x", "-c", SHIPPED_CONFIG);
    ck_assert_int_eq(r.exit_code, 0);
    ck_assert_ptr_nonnull(strstr(r.out, "no route matches"));
    th_run_result_free(&r);

    r = run_m2a("--explain", "a/+/b", "-c", SHIPPED_CONFIG);
    ck_assert_int_eq(r.exit_code, 2);
    th_run_result_free(&r);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("cli");
    TCase *tc = tcase_create("cli");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, help_lists_every_option);
    tcase_add_test(tc, unknown_option_is_a_usage_error);
    tcase_add_test(tc, check_accepts_the_shipped_config);
    tcase_add_test(tc, check_refuses_a_missing_file);
    tcase_add_loop_test(tc, check_refuses_each_kind_of_bad_config, 0,
                        (int)(sizeof(bad_cases) / sizeof(bad_cases[0])));
    tcase_add_test(tc, explain_shows_each_matching_route);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
