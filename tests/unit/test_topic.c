/* test_topic.c - topic filter and name validation, matching with captures,
 * '$' topics, the filter algebra (overlap, cover, generalisation, reduction),
 * and the topic -> routing key conversion. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/topic.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

START_TEST(valid_filters_are_accepted)
{
    static const char *ok[] = {
        "a",
        "a/b/c",
        "+",
        "#",
        "a/+",
        "+/+",
        "a/#",
        "+/#",
        "/",
        "a//b",
        "/a",
        "a/",
        "//",
        "$SYS/#",
        "$share",
        "a/+/c/#",
        "sport/tennis/+",
        "caf\xc3\xa9/+",
        "+/+/+/+/+/+/+/+/#",
        "a b/c d",
        "a.b/c*d",
    };
    char err[256];
    for (size_t i = 0; i < sizeof(ok) / sizeof(*ok); i++) {
        err[0] = '\0';
        ck_assert_msg(m2a_topic_filter_validate(ok[i], err, sizeof(err)) == 0, "%s: %s", ok[i],
                      err);
    }
    ck_assert_int_eq(m2a_topic_filter_wildcards("+/+/+/+/+/+/+/+/#"), 9);
    ck_assert_int_eq(m2a_topic_filter_wildcards("a/b"), 0);
    ck_assert_int_eq(m2a_topic_filter_wildcards("a/+/#"), 2);
}
END_TEST

START_TEST(invalid_filters_are_rejected_with_a_sentence)
{
    static const char *bad[] = {
        "",
        "a+",
        "+a",
        "a/b+/c",
        "a#",
        "#/a",
        "a/#/b",
        "a/##",
        "++",
        "a/+#",
        "$share/g/a",
        "$share/g/#",
        "+/+/+/+/+/+/+/+/+/+",
        "caf\xc3",
        "\xc0\xaf",
        "a\x01",
        "\xed\xa0\x80",
        "\xf4\x90\x80\x80",
    };
    char err[256];
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        err[0] = '\0';
        ck_assert_msg(m2a_topic_filter_validate(bad[i], err, sizeof(err)) == M2A_ERR_TOPIC,
                      "accepted \"%s\"", bad[i]);
        ck_assert_msg(strlen(err) > 10, "no sentence for \"%s\"", bad[i]);
    }
    ck_assert_int_eq(m2a_topic_filter_validate(NULL, err, sizeof(err)), M2A_ERR_TOPIC);
    /* A NULL buffer is allowed. */
    ck_assert_int_eq(m2a_topic_filter_validate("a+", NULL, 0), M2A_ERR_TOPIC);
}
END_TEST

START_TEST(filter_length_limit_is_65535)
{
    char *f = malloc(65537);
    memset(f, 'a', 65536);
    f[65536] = '\0';
    char err[128];
    ck_assert_int_eq(m2a_topic_filter_validate(f, err, sizeof(err)), M2A_ERR_TOPIC);
    f[65535] = '\0';
    ck_assert_int_eq(m2a_topic_filter_validate(f, err, sizeof(err)), 0);
    free(f);
}
END_TEST

START_TEST(topic_names_are_validated)
{
    ck_assert_int_eq(m2a_topic_validate("a/b", 3), 0);
    ck_assert_int_eq(m2a_topic_validate("a//b", 4), 0);
    ck_assert_int_eq(m2a_topic_validate("/", 1), 0);
    ck_assert_int_eq(m2a_topic_validate("$SYS/x", 6), 0);
    ck_assert_int_eq(m2a_topic_validate("a", 0), M2A_ERR_TOPIC);
    ck_assert_int_eq(m2a_topic_validate("a/+", 3), M2A_ERR_TOPIC);
    ck_assert_int_eq(m2a_topic_validate("a/#", 3), M2A_ERR_TOPIC);
    ck_assert_int_eq(m2a_topic_validate("a\0b", 3), M2A_ERR_TOPIC);
    /* Only len bytes are looked at. */
    ck_assert_int_eq(m2a_topic_validate("ab+", 2), 0);
}
END_TEST

static bool m(const char *filter, const char *topic)
{
    return m2a_topic_match(filter, topic, strlen(topic), NULL);
}

START_TEST(matching_follows_mqtt)
{
    ck_assert(m("a/b", "a/b"));
    ck_assert(!m("a/b", "a/c"));
    ck_assert(!m("a/b", "a/b/c"));
    ck_assert(!m("a/b/c", "a/b"));
    ck_assert(!m("a/b", "a/bc"));
    ck_assert(!m("a/bc", "a/b"));
    ck_assert(m("a/+", "a/b"));
    ck_assert(!m("a/+", "a/b/c"));
    ck_assert(!m("a/+", "a"));
    ck_assert(m("a/+", "a/"));
    ck_assert(m("+/+", "/"));
    ck_assert(m("+", "a"));
    ck_assert(!m("+", "a/b"));
    ck_assert(m("#", "a/b/c"));
    ck_assert(m("a/#", "a"));
    ck_assert(m("a/#", "a/"));
    ck_assert(m("a/#", "a/b/c"));
    ck_assert(!m("a/#", "ab"));
    ck_assert(!m("a/#", "b/a"));
    ck_assert(m("a//b", "a//b"));
    ck_assert(m("a/+/b", "a//b"));
    ck_assert(!m("a//b", "a/b"));
    ck_assert(m("/a", "/a"));
    ck_assert(!m("/a", "a"));
    ck_assert(m("+/a", "/a"));
}
END_TEST

START_TEST(dollar_topics_need_a_literal_first_level)
{
    ck_assert(!m("#", "$SYS/broker/uptime"));
    ck_assert(!m("+/broker/uptime", "$SYS/broker/uptime"));
    ck_assert(!m("+", "$x"));
    ck_assert(m("$SYS/#", "$SYS/broker/uptime"));
    ck_assert(m("$SYS/+/uptime", "$SYS/broker/uptime"));
    ck_assert(m("a/#", "a/$b"));
    ck_assert(m("a/+", "a/$b"));
}
END_TEST

START_TEST(topic_is_not_assumed_nul_terminated)
{
    const char buf[] = "a/b/cXYZ";
    ck_assert(m2a_topic_match("a/b/c", buf, 5, NULL));
    ck_assert(!m2a_topic_match("a/b/cX", buf, 5, NULL));
    struct m2a_captures caps;
    ck_assert(m2a_topic_match("a/#", buf, 5, &caps));
    ck_assert_int_eq(caps.n, 1);
    ck_assert_uint_eq(caps.cap[0].len, 3);
}
END_TEST

static void assert_cap(const struct m2a_captures *c, int i, const char *want)
{
    ck_assert_int_gt(c->n, i);
    ck_assert_uint_eq(c->cap[i].len, strlen(want));
    ck_assert(memcmp(c->cap[i].ptr, want, strlen(want)) == 0);
}

START_TEST(captures_report_what_each_wildcard_matched)
{
    struct m2a_captures c;
    const char *t = "site/7/dev/42/temp/now";
    ck_assert(m2a_topic_match("site/+/dev/+/#", t, strlen(t), &c));
    ck_assert_int_eq(c.n, 3);
    assert_cap(&c, 0, "7");
    assert_cap(&c, 1, "42");
    assert_cap(&c, 2, "temp/now");
    ck_assert_ptr_eq(c.cap[0].ptr, t + 5); /* points into the topic, not copied */

    ck_assert(m2a_topic_match("a/#", "a", 1, &c));
    ck_assert_int_eq(c.n, 1);
    ck_assert_uint_eq(c.cap[0].len, 0);

    ck_assert(m2a_topic_match("a/+/b", "a//b", 4, &c));
    ck_assert_int_eq(c.n, 1);
    assert_cap(&c, 0, "");

    ck_assert(m2a_topic_match("#", "x.y/z", 5, &c));
    assert_cap(&c, 0, "x.y/z");

    ck_assert(m2a_topic_match("a/b", "a/b", 3, &c));
    ck_assert_int_eq(c.n, 0);

    /* A failed match reports no captures. */
    c.n = 5;
    ck_assert(!m2a_topic_match("+/x", "a/y", 3, &c));
    ck_assert_int_eq(c.n, 0);
}
END_TEST

START_TEST(overlap_between_filters)
{
    struct {
        const char *a, *b;
        bool overlap;
    } cases[] = {
        {"a/b", "a/b", true},     {"a/b", "a/c", false},     {"a/+", "a/b", true},
        {"a/+/c", "a/b/+", true}, {"a/+/c", "a/b/d", false}, {"a/#", "a", true},
        {"a/#", "a/b/c/d", true}, {"a/+", "a", false},       {"#", "x/y", true},
        {"#", "$SYS/x", false},   {"+/x", "$SYS/x", false},  {"$SYS/#", "$SYS/+", true},
        {"a/b/c", "a/b", false},  {"+/+", "+", false},       {"+/#", "+", true},
        {"a//b", "a/+/b", true},  {"a//b", "a/x/b", false},  {"a/+/#", "+/b", true},
        {"x/#", "y/#", false},    {"#", "#", true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        ck_assert_msg(m2a_topic_filters_overlap(cases[i].a, cases[i].b) == cases[i].overlap,
                      "%s vs %s", cases[i].a, cases[i].b);
        ck_assert_msg(m2a_topic_filters_overlap(cases[i].b, cases[i].a) == cases[i].overlap,
                      "%s vs %s", cases[i].b, cases[i].a);
    }
}
END_TEST

START_TEST(cover_between_filters)
{
    struct {
        const char *a, *b;
        bool covers;
    } cases[] = {
        {"a/b", "a/b", true},       {"a/+", "a/b", true},      {"a/b", "a/+", false},
        {"a/#", "a", true},         {"a/#", "a/b/c", true},    {"a/+", "a/#", false},
        {"#", "x/y", true},         {"#", "$SYS/x", false},    {"+/x", "$SYS/x", false},
        {"$SYS/#", "$SYS/+", true}, {"a/+/c", "a/b/+", false}, {"+/+", "+", false},
        {"+/#", "+", true},         {"a//b", "a/+/b", false},  {"a/+/b", "a//b", true},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++)
        ck_assert_msg(m2a_topic_filter_covers(cases[i].a, cases[i].b) == cases[i].covers,
                      "%s covers %s", cases[i].a, cases[i].b);
}
END_TEST

START_TEST(generalisation_covers_both_filters)
{
    struct {
        const char *a, *b, *want;
    } cases[] = {
        {"a/+/c", "a/b/+", "a/+/+"}, {"a/+/#", "+/b", "+/+/#"}, {"a/#", "+/b", "+/#"},
        {"a/b", "a/b/c", "a/b/#"},   {"x", "y", "+"},           {"#", "a", "#"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
        char *g = m2a_topic_filter_generalise(cases[i].a, cases[i].b);
        ck_assert_str_eq(g, cases[i].want);
        ck_assert(m2a_topic_filter_covers(g, cases[i].a));
        ck_assert(m2a_topic_filter_covers(g, cases[i].b));
        free(g);
    }
}
END_TEST

START_TEST(reduction_leaves_no_two_filters_overlapping)
{
    const char *in[] = {"a/b", "a/+/c", "x/y", "a/b/+", "$SYS/#", "x/y", "#"};
    size_t n = sizeof(in) / sizeof(*in);
    char *f[sizeof(in) / sizeof(*in)];
    for (size_t i = 0; i < n; i++)
        f[i] = xstrdup(in[i]);
    n = m2a_topic_filters_reduce(f, n);
    ck_assert_uint_eq(n, 2);
    ck_assert_str_eq(f[0], "#");
    ck_assert_str_eq(f[1], "$SYS/#");
    for (size_t i = 0; i < n; i++)
        free(f[i]);
    ck_assert_uint_eq(m2a_topic_filters_reduce(NULL, 0), 0);
}
END_TEST

START_TEST(routing_key_conversion_swaps_slash_and_dot)
{
    struct m2a_buf b = {0};
    m2a_buf_append_str(&b, "k:");
    m2a_topic_to_routing_key("a.b/c", 5, &b);
    ck_assert_str_eq(m2a_buf_cstr(&b), "k:a/b.c");
    m2a_buf_reset(&b);
    m2a_topic_to_routing_key("/x//y.", 6, &b);
    ck_assert_str_eq(m2a_buf_cstr(&b), ".x..y/");
    m2a_buf_reset(&b);
    m2a_topic_to_routing_key("", 0, &b);
    ck_assert_uint_eq(b.len, 0);
    m2a_buf_free(&b);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("topic");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, valid_filters_are_accepted);
    tcase_add_test(tc, invalid_filters_are_rejected_with_a_sentence);
    tcase_add_test(tc, filter_length_limit_is_65535);
    tcase_add_test(tc, topic_names_are_validated);
    tcase_add_test(tc, matching_follows_mqtt);
    tcase_add_test(tc, dollar_topics_need_a_literal_first_level);
    tcase_add_test(tc, topic_is_not_assumed_nul_terminated);
    tcase_add_test(tc, captures_report_what_each_wildcard_matched);
    tcase_add_test(tc, overlap_between_filters);
    tcase_add_test(tc, cover_between_filters);
    tcase_add_test(tc, generalisation_covers_both_filters);
    tcase_add_test(tc, reduction_leaves_no_two_filters_overlapping);
    tcase_add_test(tc, routing_key_conversion_swaps_slash_and_dot);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
