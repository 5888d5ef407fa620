/* test_log.c - log lines: level filtering, text and JSON formats, escaping,
 * and the level check happening before the arguments are evaluated. */
#include <check.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mqtt2amqp/log.h"
#include "check_main.h"

static int pipefd[2];

static void setup(void)
{
    ck_assert_int_eq(pipe(pipefd), 0);
    m2a_log_set_fd(pipefd[1]);
    m2a_log_set_level(M2A_LOG_INFO);
    m2a_log_set_format(M2A_LOG_TEXT);
}

static void teardown(void)
{
    m2a_log_set_fd(2);
    close(pipefd[0]);
    close(pipefd[1]);
}

/* Everything written so far (the pipe is big enough for these tests). */
static char *drain(void)
{
    static char buf[16384];
    close(pipefd[1]);
    ssize_t n = read(pipefd[0], buf, sizeof(buf) - 1);
    buf[n < 0 ? 0 : n] = '\0';
    ck_assert_int_eq(pipe(pipefd) == 0 ? 0 : -1, 0);
    m2a_log_set_fd(pipefd[1]);
    return buf;
}

static int evaluated;
static int count_evaluation(void)
{
    return ++evaluated;
}

START_TEST(levels_filter_and_skip_argument_evaluation)
{
    m2a_info("t", "shown %d", 1);
    m2a_debug("t", "hidden %d", count_evaluation());
    ck_assert_int_eq(evaluated, 0);
    m2a_log_set_level(M2A_LOG_DEBUG);
    m2a_debug("t", "now shown %d", count_evaluation());
    ck_assert_int_eq(evaluated, 1);
    char *out = drain();
    ck_assert_ptr_nonnull(strstr(out, "info  t: shown 1\n"));
    ck_assert_ptr_null(strstr(out, "hidden"));
    ck_assert_ptr_nonnull(strstr(out, "debug t: now shown 1\n"));
}
END_TEST

START_TEST(json_lines_are_escaped_objects)
{
    m2a_log_set_format(M2A_LOG_JSON);
    m2a_warn("mqtt", "quote \" backslash \\ newline \n tab \t end");
    char *out = drain();
    ck_assert_msg(strncmp(out, "{\"ts\":\"", 7) == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "\"level\":\"warn\",\"component\":\"mqtt\","));
    ck_assert_ptr_nonnull(
        strstr(out, "\"msg\":\"quote \\\" backslash \\\\ newline \\n tab \\u0009 end\"}\n"));
    /* exactly one line */
    ck_assert_ptr_eq(strchr(out, '\n'), out + strlen(out) - 1);
}
END_TEST

START_TEST(parse_names)
{
    enum m2a_log_level l;
    enum m2a_log_format f;
    ck_assert_int_eq(m2a_log_level_parse("debug", &l), 0);
    ck_assert_int_eq(l, M2A_LOG_DEBUG);
    ck_assert_int_eq(m2a_log_level_parse("verbose", &l), -1);
    ck_assert_int_eq(m2a_log_format_parse("json", &f), 0);
    ck_assert_int_eq(f, M2A_LOG_JSON);
    ck_assert_int_eq(m2a_log_format_parse("xml", &f), -1);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("log");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, levels_filter_and_skip_argument_evaluation);
    tcase_add_test(tc, json_lines_are_escaped_objects);
    tcase_add_test(tc, parse_names);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
