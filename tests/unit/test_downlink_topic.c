/* test_downlink_topic.c - the downlinks' topic templates (downlink_topic.c):
 * what compiles, what each placeholder renders to, every way a message's
 * topic cannot be formed, and the x-mqtt-retain header's forms. */
#include <check.h>
#include <string.h>

#include "mqtt2amqp/downlink_topic.h"
#include "mqtt2amqp/err.h"
#include "check_main.h"

static char why[256];
static struct m2a_buf out;

/* Renders tmpl for key and headers h (may be NULL); returns the code. */
static int render(const char *tmpl, const char *key, const amqp_table_t *h)
{
    struct m2a_downlink_topic *t = NULL;
    why[0] = '\0';
    ck_assert_msg(m2a_downlink_topic_compile(tmpl, &t, why, sizeof(why)) == 0, "%s: %s", tmpl, why);
    int rc = m2a_downlink_topic_render(t, key, strlen(key), h, &out, why, sizeof(why));
    m2a_downlink_topic_free(t);
    return rc;
}

static const char *topic(void)
{
    return (const char *)out.data;
}

static int compile_err(const char *tmpl)
{
    struct m2a_downlink_topic *t = NULL;
    why[0] = '\0';
    int rc = m2a_downlink_topic_compile(tmpl, &t, why, sizeof(why));
    ck_assert_ptr_null(t);
    return rc;
}

static amqp_table_entry_t str_entry(const char *k, const char *v)
{
    amqp_table_entry_t e = {.key = amqp_cstring_bytes(k)};
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(v);
    return e;
}

START_TEST(words_are_levels)
{
    ck_assert_int_eq(render("devices/{1}/commands", "dev42.open", NULL), 0);
    ck_assert_str_eq(topic(), "devices/dev42/commands");
    ck_assert_int_eq(render("{3}/{2}/{1}", "a.b.c", NULL), 0);
    ck_assert_str_eq(topic(), "c/b/a");
    ck_assert_int_eq(render("x/{9}", "1.2.3.4.5.6.7.8.9", NULL), 0);
    ck_assert_str_eq(topic(), "x/9");
    /* a '/' inside a word cannot add a level: converted as the plugin does */
    ck_assert_int_eq(render("d/{1}/c", "a/b.x", NULL), 0);
    ck_assert_str_eq(topic(), "d/a.b/c");
}
END_TEST

START_TEST(routing_key_is_converted_back)
{
    ck_assert_int_eq(render("{routing_key}", "devices.dev1.reply", NULL), 0);
    ck_assert_str_eq(topic(), "devices/dev1/reply");
    ck_assert_int_eq(render("pre/{routing_key}", "a/b.c", NULL), 0);
    ck_assert_str_eq(topic(), "pre/a.b/c");
}
END_TEST

START_TEST(headers_and_braces)
{
    amqp_table_entry_t e[3] = {str_entry("device", "dev7"), str_entry("site", "north")};
    e[2].key = amqp_cstring_bytes("n");
    e[2].value.kind = AMQP_FIELD_KIND_I32;
    e[2].value.value.i32 = -12;
    amqp_table_t h = {3, e};
    ck_assert_int_eq(render("{header:site}/{header:device}/{header:n}/{1}", "k.x", &h), 0);
    ck_assert_str_eq(topic(), "north/dev7/-12/k");
    ck_assert_int_eq(render("a/{{lit}}/{1}", "w", NULL), 0);
    ck_assert_str_eq(topic(), "a/{lit}/w");
}
END_TEST

START_TEST(unformable_topics)
{
    ck_assert_int_eq(render("d/{3}", "a.b", NULL), M2A_ERR_TEMPLATE);
    ck_assert_ptr_nonnull(strstr(why, "has 2 word(s), the template uses {3}"));
    ck_assert_int_eq(render("d/{1}", "", NULL), M2A_ERR_TEMPLATE); /* empty word */
    ck_assert_int_eq(render("d/{2}", "a..b", NULL), M2A_ERR_TEMPLATE);
    ck_assert_int_eq(render("d/{header:device}", "a", NULL), M2A_ERR_TEMPLATE);
    ck_assert_ptr_nonnull(strstr(why, "no header 'device'"));
    amqp_table_entry_t e = str_entry("device", "");
    amqp_table_t h = {1, &e};
    ck_assert_int_eq(render("d/{header:device}", "a", &h), M2A_ERR_TEMPLATE);
    /* values that would make a filter, not a topic name */
    e = str_entry("device", "+");
    ck_assert_int_eq(render("d/{header:device}", "a", &h), M2A_ERR_TOPIC);
    ck_assert_int_eq(render("d/{1}", "#", NULL), M2A_ERR_TOPIC);
    ck_assert_int_eq(render("d/{routing_key}", "a.+", NULL), M2A_ERR_TOPIC);
    /* a NUL inside a header value */
    e.value.value.bytes = (amqp_bytes_t){3, "a\0b"};
    ck_assert_int_eq(render("d/{header:device}", "a", &h), M2A_ERR_TOPIC);
    /* a table is no text */
    e.value.kind = AMQP_FIELD_KIND_TABLE;
    e.value.value.table = (amqp_table_t){0, NULL};
    ck_assert_int_eq(render("d/{header:device}", "a", &h), M2A_ERR_TEMPLATE);
    ck_assert_ptr_nonnull(strstr(why, "not a string, a number or a boolean"));
    /* a float has text (amqp_value.h's rule, shared with User Properties);
     * void is empty, and an empty level is refused */
    e.value.kind = AMQP_FIELD_KIND_F64;
    e.value.value.f64 = 21.5;
    ck_assert_int_eq(render("d/{header:device}", "a", &h), 0);
    ck_assert_str_eq(topic(), "d/21.5");
    e.value.kind = AMQP_FIELD_KIND_VOID;
    ck_assert_int_eq(render("d/{header:device}", "a", &h), M2A_ERR_TEMPLATE);
    ck_assert_ptr_nonnull(strstr(why, "is empty"));
    /* a byte array is taken as its bytes */
    e.value.kind = AMQP_FIELD_KIND_BYTES;
    e.value.value.bytes = (amqp_bytes_t){4, "dev9"};
    ck_assert_int_eq(render("d/{header:device}", "a", &h), 0);
    ck_assert_str_eq(topic(), "d/dev9");
    /* longer than an MQTT string */
    static char big[70000];
    memset(big, 'k', sizeof(big) - 1);
    ck_assert_int_eq(render("d/{1}", big, NULL), M2A_ERR_TOPIC);
    ck_assert_ptr_nonnull(strstr(why, "more than the 65535"));
}
END_TEST

START_TEST(bad_templates_do_not_compile)
{
    ck_assert_int_eq(compile_err(""), M2A_ERR_TOPIC);
    ck_assert_int_eq(compile_err("devices/+/commands"), M2A_ERR_TOPIC);
    ck_assert_ptr_nonnull(strstr(why, "'+' is a wildcard"));
    ck_assert_int_eq(compile_err("devices/{1}/#"), M2A_ERR_TOPIC);
    ck_assert_int_eq(compile_err("d/{topic}"), M2A_ERR_TEMPLATE);
    ck_assert_ptr_nonnull(strstr(why, "unknown placeholder {topic}"));
    ck_assert_int_eq(compile_err("d/{0}"), M2A_ERR_TEMPLATE);
    ck_assert_int_eq(compile_err("d/{10}"), M2A_ERR_TEMPLATE);
    ck_assert_int_eq(compile_err("d/{header:}"), M2A_ERR_TEMPLATE);
    ck_assert_int_eq(compile_err("d/{1"), M2A_ERR_TEMPLATE);
    ck_assert_int_eq(compile_err("d/1}"), M2A_ERR_TEMPLATE);
    ck_assert_int_eq(compile_err("d/\x01x"), M2A_ERR_TOPIC);    /* a control character */
    ck_assert_int_eq(compile_err("d/\xff\xfe"), M2A_ERR_TOPIC); /* not UTF-8 */
}
END_TEST

START_TEST(retain_header_forms)
{
    ck_assert(!m2a_downlink_topic_retain_header(NULL, false));
    ck_assert(m2a_downlink_topic_retain_header(NULL, true));
    amqp_table_entry_t e = {.key = amqp_cstring_bytes("x-mqtt-retain")};
    amqp_table_t h = {1, &e};
    e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
    e.value.value.boolean = 1;
    ck_assert(m2a_downlink_topic_retain_header(&h, false));
    e.value.value.boolean = 0;
    ck_assert(!m2a_downlink_topic_retain_header(&h, true));
    e.value.kind = AMQP_FIELD_KIND_I64;
    e.value.value.i64 = 1;
    ck_assert(m2a_downlink_topic_retain_header(&h, false));
    e = str_entry("x-mqtt-retain", "true");
    ck_assert(m2a_downlink_topic_retain_header(&h, false));
    e = str_entry("x-mqtt-retain", "0");
    ck_assert(!m2a_downlink_topic_retain_header(&h, true));
    e = str_entry("x-mqtt-retain", "maybe");
    ck_assert(m2a_downlink_topic_retain_header(&h, true));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("downlink_topic");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, words_are_levels);
    tcase_add_test(tc, routing_key_is_converted_back);
    tcase_add_test(tc, headers_and_braces);
    tcase_add_test(tc, unformable_topics);
    tcase_add_test(tc, bad_templates_do_not_compile);
    tcase_add_test(tc, retain_header_forms);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
