/* test_config_policies.c - the configuration keys of the delivery policies
 * (issue 3): dead_letter, routes[].unroutable, spool.overflow and
 * spool.max_age. Defaults, accepted values, and each error with its exact
 * "t.yaml:LINE:COLUMN:" position. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/err.h"
#include "check_main.h"
#include "config_check.h"

#define ROUTE "routes:\n  - {name: r, topic: a/b, exchange: amq.topic}\n"
#define DLX_TOPOLOGY                                                                               \
    "amqp:\n"                                                                                      \
    "  topology:\n"                                                                                \
    "    exchanges:\n"                                                                             \
    "      - {name: dlx, type: topic}\n"                                                           \
    "      - {name: hidden, internal: true}\n"

/* load() and refuse() on "t.yaml": tests/support/config_check.h. */
#define load   th_config_load
#define refuse th_config_refuse

START_TEST(policy_defaults)
{
    struct m2a_config *c = load(ROUTE);
    ck_assert(!c->dead_letter.enabled);
    ck_assert_str_eq(c->dead_letter.routing_key, "{route}");
    ck_assert_int_eq(c->dead_letter.max_retries, 10);
    ck_assert_int_eq(c->routes[0].unroutable, M2A_UNROUTABLE_DEAD_LETTER);
    ck_assert_int_eq(c->spool.overflow, M2A_OVERFLOW_BLOCK);
    ck_assert_uint_eq(c->spool.max_age_ms, 0);
    m2a_config_free(c);
}
END_TEST

START_TEST(dead_letter_section_is_read)
{
    struct m2a_config *c = load(DLX_TOPOLOGY "dead_letter:\n"
                                             "  exchange: dlx\n"
                                             "  routing_key: \"dead.{reason}.{route}\"\n"
                                             "  max_retries: 3\n" ROUTE);
    ck_assert(c->dead_letter.enabled);
    ck_assert_str_eq(c->dead_letter.exchange, "dlx");
    ck_assert_str_eq(c->dead_letter.routing_key, "dead.{reason}.{route}");
    ck_assert_int_eq(c->dead_letter.max_retries, 3);
    ck_assert_int_eq(c->dead_letter.mark.line, 7);
    m2a_config_free(c);
}
END_TEST

START_TEST(dead_letter_to_builtin_or_default_exchange)
{
    struct m2a_config *c = load("dead_letter: {exchange: amq.topic}\n" ROUTE);
    ck_assert_str_eq(c->dead_letter.exchange, "amq.topic");
    ck_assert_int_eq(c->dead_letter.max_retries, 10);
    m2a_config_free(c);
    c = load("dead_letter: {exchange: \"\", routing_key: dead, max_retries: 0}\n" ROUTE);
    ck_assert_str_eq(c->dead_letter.exchange, "");
    ck_assert_str_eq(c->dead_letter.routing_key, "dead");
    ck_assert_int_eq(c->dead_letter.max_retries, 0);
    m2a_config_free(c);
}
END_TEST

START_TEST(dead_letter_exchange_is_required)
{
    refuse("dead_letter: {max_retries: 2}\n" ROUTE,
           "t.yaml:1:14: ", "missing required key 'exchange'");
}
END_TEST

START_TEST(dead_letter_exchange_must_be_declared)
{
    refuse("dead_letter:\n  exchange: nowhere\n" ROUTE,
           "t.yaml:2:13: ", "exchange 'nowhere' is not declared");
}
END_TEST

START_TEST(dead_letter_exchange_must_not_be_internal)
{
    refuse(DLX_TOPOLOGY "dead_letter: {exchange: hidden}\n" ROUTE, "t.yaml:6:25: ", "is internal");
}
END_TEST

START_TEST(dead_letter_routing_key_placeholders_are_checked)
{
    refuse("dead_letter: {exchange: amq.topic, routing_key: \"x.{topic}\"}\n" ROUTE,
           "t.yaml:1:49: ", "only {route} and {reason}");
    refuse("dead_letter: {exchange: amq.topic, routing_key: \"x.{route\"}\n" ROUTE,
           "t.yaml:1:49: ", "only {route} and {reason}");
    struct m2a_config *c =
        load("dead_letter: {exchange: amq.topic, routing_key: \"{{lit}}.{route}\"}\n" ROUTE);
    ck_assert_str_eq(c->dead_letter.routing_key, "{{lit}}.{route}");
    m2a_config_free(c);
}
END_TEST

START_TEST(dead_letter_max_retries_range)
{
    refuse("dead_letter: {exchange: amq.topic, max_retries: -1}\n" ROUTE,
           "t.yaml:1:49: ", "out of range 0..1000000");
    refuse("dead_letter: {exchange: amq.topic, unknown: 1}\n" ROUTE,
           "t.yaml:1:36: ", "unknown key 'unknown'");
}
END_TEST

START_TEST(unroutable_values)
{
    struct m2a_config *c = load("routes:\n"
                                "  - {name: a, topic: a, exchange: amq.topic, unroutable: drop}\n"
                                "  - {name: b, topic: b, exchange: amq.topic, unroutable: retry}\n"
                                "  - {name: c, topic: c, exchange: amq.topic}\n");
    ck_assert_int_eq(c->routes[0].unroutable, M2A_UNROUTABLE_DROP);
    ck_assert_int_eq(c->routes[1].unroutable, M2A_UNROUTABLE_RETRY);
    ck_assert_int_eq(c->routes[2].unroutable, M2A_UNROUTABLE_DEAD_LETTER);
    m2a_config_free(c);
    refuse("routes:\n  - {name: a, topic: a, exchange: amq.topic, unroutable: ignore}\n",
           "t.yaml:2:58: ", "'ignore' is not one of dead_letter, drop, retry");
}
END_TEST

/* Issue 11: routes[].retained and mqtt.retained_resend. */
START_TEST(retained_values)
{
    struct m2a_config *c = load("mqtt: {protocol: 311, retained_resend: forward}\n"
                                "routes:\n"
                                "  - {name: a, topic: a, exchange: amq.topic, retained: skip}\n"
                                "  - {name: b, topic: b, exchange: amq.topic, retained: forward}\n"
                                "  - {name: c, topic: c, exchange: amq.topic}\n");
    ck_assert_int_eq(c->mqtt.retained_resend, M2A_RETAINED_RESEND_FORWARD);
    ck_assert_int_eq(c->routes[0].retained, M2A_RETAINED_SKIP);
    ck_assert_int_eq(c->routes[1].retained, M2A_RETAINED_FORWARD);
    ck_assert_int_eq(c->routes[2].retained, M2A_RETAINED_FORWARD);
    m2a_config_free(c);
    c = load(ROUTE);
    ck_assert_int_eq(c->mqtt.retained_resend, M2A_RETAINED_RESEND_SKIP);
    m2a_config_free(c);
    refuse("routes:\n  - {name: a, topic: a, exchange: amq.topic, retained: drop}\n",
           "t.yaml:2:56: ", "'drop' is not one of forward, skip");
    refuse("mqtt: {retained_resend: never}\n" ROUTE,
           "t.yaml:1:25: ", "'never' is not one of skip, forward");
}
END_TEST

/* The default says dead_letter and means "dropped" without a section; asking
 * for it explicitly without one is a mistake worth an error. */
START_TEST(explicit_dead_letter_needs_the_section)
{
    refuse("routes:\n  - {name: a, topic: a, exchange: amq.topic, unroutable: dead_letter}\n",
           "t.yaml:2:58: ", "needs a top-level dead_letter section");
    struct m2a_config *c =
        load("dead_letter: {exchange: amq.topic}\n"
             "routes:\n  - {name: a, topic: a, exchange: amq.topic, unroutable: dead_letter}\n");
    ck_assert_int_eq(c->routes[0].unroutable, M2A_UNROUTABLE_DEAD_LETTER);
    m2a_config_free(c);
}
END_TEST

START_TEST(overflow_values)
{
    struct m2a_config *c =
        load("spool: {overflow: drop_oldest, max_bytes: 128KiB, segment_bytes: 64KiB}\n" ROUTE);
    ck_assert_int_eq(c->spool.overflow, M2A_OVERFLOW_DROP_OLDEST);
    m2a_config_free(c);
    c = load("spool: {overflow: block}\n" ROUTE);
    ck_assert_int_eq(c->spool.overflow, M2A_OVERFLOW_BLOCK);
    m2a_config_free(c);
    refuse("spool: {overflow: drop_newest}\n" ROUTE,
           "t.yaml:1:19: ", "'drop_newest' is not one of block, drop_oldest");
}
END_TEST

START_TEST(drop_oldest_needs_two_segments)
{
    refuse("spool:\n  max_bytes: 100KiB\n  segment_bytes: 64KiB\n  overflow: drop_oldest\n" ROUTE,
           "t.yaml:4:13: ", "at least twice segment_bytes (64KiB)");
    /* block does not care */
    struct m2a_config *c = load("spool: {max_bytes: 100KiB, segment_bytes: 64KiB}\n" ROUTE);
    m2a_config_free(c);
}
END_TEST

START_TEST(max_age_durations)
{
    static const struct {
        const char *text;
        uint64_t ms;
    } ok[] = {{"1h", 3600000}, {"90s", 90000},
              {"15m", 900000}, {"2d", 172800000},
              {"500ms", 500},  {"30", 30000},
              {"0", 0},        {"1 h", 3600000},
              {"0s", 0},       {"3650d", 3650ull * 86400 * 1000}};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char yaml[256];
        snprintf(yaml, sizeof(yaml), "spool: {max_age: \"%s\"}\n" ROUTE, ok[i].text);
        struct m2a_config *c = load(yaml);
        ck_assert_msg(c->spool.max_age_ms == ok[i].ms, "%s gave %llu", ok[i].text,
                      (unsigned long long)c->spool.max_age_ms);
        m2a_config_free(c);
    }
}
END_TEST

START_TEST(max_age_errors)
{
    refuse("spool: {max_age: 1y}\n" ROUTE, "t.yaml:1:18: ", "'1y' is not a duration");
    refuse("spool: {max_age: h}\n" ROUTE, "t.yaml:1:18: ", "is not a duration");
    refuse("spool: {max_age: -5s}\n" ROUTE, "t.yaml:1:18: ", "is not a duration");
    refuse("spool: {max_age: 3651d}\n" ROUTE, "t.yaml:1:18: ", "out of range");
    refuse("spool: {max_age: 99999999999999999999d}\n" ROUTE, "t.yaml:1:18: ", "is not a duration");
    refuse("spool: {max_age: [1h]}\n" ROUTE, "t.yaml:1:18: ", "expected a duration");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config_policies");
    TCase *tc = tcase_create("policies");
    tcase_add_test(tc, policy_defaults);
    tcase_add_test(tc, retained_values);
    tcase_add_test(tc, dead_letter_section_is_read);
    tcase_add_test(tc, dead_letter_to_builtin_or_default_exchange);
    tcase_add_test(tc, dead_letter_exchange_is_required);
    tcase_add_test(tc, dead_letter_exchange_must_be_declared);
    tcase_add_test(tc, dead_letter_exchange_must_not_be_internal);
    tcase_add_test(tc, dead_letter_routing_key_placeholders_are_checked);
    tcase_add_test(tc, dead_letter_max_retries_range);
    tcase_add_test(tc, unroutable_values);
    tcase_add_test(tc, explicit_dead_letter_needs_the_section);
    tcase_add_test(tc, overflow_values);
    tcase_add_test(tc, drop_oldest_needs_two_segments);
    tcase_add_test(tc, max_age_durations);
    tcase_add_test(tc, max_age_errors);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
