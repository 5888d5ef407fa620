/* test_config_limits.c - strings the configuration hands to a wire format
 * with a length limit are refused at load, at their own file:line:column:
 * AMQP short strings (255 bytes: exchange, queue and route names, exchange
 * types, binding and routing keys, header and argument names, content
 * type, vhost, the dead-letter exchange) and MQTT strings (65535 bytes,
 * and UTF-8 as libmosquitto wants it: client id, user name, password,
 * share group). Each limit is tested at the limit (loads) and one past it
 * (refused), the position computed from where the value stands in the
 * test's own YAML.
 *
 * Regression (issue 9): a 300-byte exchange declared in the topology and
 * used as the dead-letter exchange passed --check, then aborted the bridge
 * at the first dead letter (the envelope holds 255 bytes), before the
 * message was PUBACKed: a crash loop. */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/generation.h"
#include "mqtt2amqp/policy.h"
#include "check_main.h"

#define ROUTE "routes:\n  - {name: r, topic: a/b, exchange: amq.topic}\n"

static char err[1024];

/* n copies of c, NUL-terminated; the caller frees. */
static char *fill(char c, size_t n)
{
    char *s = malloc(n + 1);
    ck_assert_ptr_nonnull(s);
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

/* tmpl with each "@" replaced by v, and the 1-based line and column of the
 * first "@" in the result. */
static char *put(const char *tmpl, const char *v, int *line, int *col)
{
    size_t n = 0, vlen = strlen(v);
    for (const char *p = tmpl; *p; p++)
        n += *p == '@' ? vlen : 1;
    char *out = malloc(n + 1), *o = out;
    ck_assert_ptr_nonnull(out);
    *line = 1;
    *col = 1;
    bool seen = false;
    for (const char *p = tmpl; *p; p++) {
        seen = seen || *p == '@';
        if (!seen && *p == '\n') {
            ++*line;
            *col = 1;
        } else if (!seen) {
            ++*col;
        }
        if (*p == '@') {
            memcpy(o, v, vlen);
            o += vlen;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

static int load_str(const char *yaml, struct m2a_config **c)
{
    *c = NULL;
    return m2a_config_load_buffer("t.yaml", yaml, strlen(yaml), c, err, sizeof(err));
}

/* tmpl with v loads. */
static void accept(const char *tmpl, const char *v)
{
    int line, col;
    char *yaml = put(tmpl, v, &line, &col);
    struct m2a_config *c;
    ck_assert_msg(load_str(yaml, &c) == 0, "unexpected error: %s", err);
    m2a_config_free(c);
    free(yaml);
}

/* tmpl with v is refused at the first '@': "t.yaml:L:C: path: " then a
 * message holding fragment. */
static void refuse_at(const char *tmpl, const char *v, const char *path, const char *fragment)
{
    int line, col;
    char *yaml = put(tmpl, v, &line, &col);
    struct m2a_config *c = (struct m2a_config *)&c;
    char prefix[256];
    snprintf(prefix, sizeof(prefix), "t.yaml:%d:%d: %s: ", line, col, path);
    ck_assert_int_eq(load_str(yaml, &c), M2A_ERR_CONFIG);
    ck_assert_ptr_null(c);
    ck_assert_msg(!strncmp(err, prefix, strlen(prefix)), "got '%s', want prefix '%s'", err, prefix);
    ck_assert_msg(strstr(err, fragment), "got '%s', want '%s' in it", err, fragment);
    free(yaml);
}

/* ---- the regression ---------------------------------------------------------- */

START_TEST(long_dead_letter_exchange_is_refused_at_load)
{
    char *x = fill('x', 300);
    int line, col;
    char *yaml = put("amqp:\n"
                     "  topology:\n"
                     "    exchanges:\n"
                     "      - name: @\n"
                     "dead_letter:\n"
                     "  exchange: @\n" ROUTE,
                     x, &line, &col);
    struct m2a_config *c = (struct m2a_config *)&c;
    ck_assert_int_eq(load_str(yaml, &c), M2A_ERR_CONFIG);
    ck_assert_ptr_null(c);
    ck_assert_str_eq(err, "t.yaml:4:15: amqp.topology.exchanges[0].name: "
                          "'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...' is 300 bytes long, more "
                          "than the 255 allowed (exchange name, an AMQP short string)");
    free(yaml);
    /* the dead-letter exchange alone is refused at its own position */
    refuse_at("dead_letter:\n  exchange: @\n" ROUTE, x, "dead_letter.exchange",
              "is 300 bytes long, more than the 255 allowed");
    free(x);
}
END_TEST

/* What loads can be dead-lettered: at the limit, the dead letter of a
 * message encodes (the envelope's one-byte lengths hold it). */
START_TEST(longest_dead_letter_exchange_encodes)
{
    char *x = fill('x', 255);
    int line, col;
    char *yaml = put("amqp:\n  topology:\n    exchanges: [{name: @}]\n"
                     "dead_letter:\n  exchange: @\n"
                     "routes:\n  - {name: r, topic: a/b, exchange: @}\n",
                     x, &line, &col);
    struct m2a_config *c;
    ck_assert_msg(load_str(yaml, &c) == 0, "%s", err);
    struct m2a_envelope orig = {.route = {c->routes[0].name, strlen(c->routes[0].name)},
                                .exchange = {x, 255},
                                .routing_key = {"a.b", 3},
                                .topic = {"a/b", 3},
                                .qos = 1,
                                .body = {"hi", 2}};
    struct m2a_generation *g = NULL;
    ck_assert_int_eq(m2a_generation_new(c, NULL, NULL, &g, err, sizeof(err)), 0); /* takes c */
    struct m2a_stats st = {0};
    struct m2a_policy *p = m2a_policy_new(
        &(struct m2a_policy_opts){.stats = &st, .component = "test", .log_interval_ms = 1000});
    struct m2a_policy_case pc = {.event = M2A_POLICY_ROUTING_ERROR, .env = &orig};
    struct m2a_envelope dl;
    ck_assert_int_eq(m2a_policy_decide(p, g, &pc, &dl), M2A_FATE_DEAD_LETTER);
    ck_assert_uint_eq(dl.exchange.len, 255);
    struct m2a_buf buf = {0};
    m2a_envelope_encode(&dl, &buf);
    ck_assert_uint_eq(buf.len, m2a_envelope_encoded_size(&dl));
    m2a_buf_free(&buf);
    m2a_policy_free(p);
    m2a_generation_unref(g);
    free(yaml);
    free(x);
}
END_TEST

/* ---- AMQP short strings -------------------------------------------------------- */

static const struct {
    const char *tmpl, *path, *prefix;
} shortstr[] = {
    {"amqp:\n  vhost: @\n" ROUTE, "amqp.vhost"},
    {"amqp:\n  topology:\n    exchanges:\n      - name: @\n" ROUTE,
     "amqp.topology.exchanges[0].name"},
    {"amqp:\n  topology:\n    exchanges:\n      - {name: e, type: @}\n" ROUTE,
     "amqp.topology.exchanges[0].type", "x-"},
    {"amqp:\n  topology:\n    exchanges:\n      - name: e\n        arguments: {@: 1}\n" ROUTE,
     "amqp.topology.exchanges[0].arguments"},
    {"amqp:\n  topology:\n    queues:\n      - name: @\n" ROUTE, "amqp.topology.queues[0].name"},
    {"amqp:\n  topology:\n    queues:\n      - {name: q, arguments: {@: a}}\n" ROUTE,
     "amqp.topology.queues[0].arguments"},
    {"amqp:\n  topology:\n    queues:\n      - name: q\n        bindings:\n"
     "          - {exchange: amq.topic, routing_key: @}\n" ROUTE,
     "amqp.topology.queues[0].bindings[0].routing_key"},
    {"amqp:\n  topology:\n    queues:\n      - name: q\n        bindings:\n"
     "          - exchange: amq.match\n            arguments:\n              @: true\n" ROUTE,
     "amqp.topology.queues[0].bindings[0].arguments"},
    {"routes:\n  - {name: @, topic: a, exchange: amq.topic}\n", "routes[0].name"},
    {"routes:\n  - {name: r, topic: a, exchange: amq.topic, content_type: @}\n",
     "routes[0].content_type"},
    {"routes:\n  - name: r\n    topic: a\n    exchange: amq.topic\n    headers: {@: v}\n",
     "routes[0].headers"},
};

START_TEST(amqp_short_strings_are_refused_past_255_bytes)
{
    int i = _i;
    const char *prefix = shortstr[i].prefix ? shortstr[i].prefix : "";
    char *at_limit = fill('s', 255), *past = fill('s', 256);
    memcpy(at_limit, prefix, strlen(prefix));
    memcpy(past, prefix, strlen(prefix));
    accept(shortstr[i].tmpl, at_limit);
    refuse_at(shortstr[i].tmpl, past, shortstr[i].path, "is 256 bytes long, more than the 255");
    free(at_limit);
    free(past);
}
END_TEST

/* Names that must also be declared: too long is said before "not declared". */
START_TEST(exchange_names_in_use_are_short_strings)
{
    char *past = fill('e', 256);
    refuse_at("routes:\n  - {name: r, topic: a, exchange: @}\n", past, "routes[0].exchange",
              "is 256 bytes long");
    refuse_at("amqp:\n  topology:\n    queues:\n      - name: q\n        bindings:\n"
              "          - exchange: @\n" ROUTE,
              past, "amqp.topology.queues[0].bindings[0].exchange", "is 256 bytes long");
    free(past);
    char *at_limit = fill('e', 255);
    accept("amqp:\n  topology:\n    exchanges: [{name: @}]\n    queues:\n      - name: q\n"
           "        bindings: [{exchange: @}]\n"
           "routes:\n  - {name: r, topic: a, exchange: @}\n",
           at_limit);
    free(at_limit);
}
END_TEST

/* A routing key template whose fixed text alone is too long would make
 * every message a routing error. */
START_TEST(routing_key_template_with_too_much_fixed_text_is_refused)
{
    char *v = fill('k', 256);
    refuse_at("routes:\n  - {name: r, topic: a/+, exchange: amq.topic, routing_key: @}\n", v,
              "routes[0].routing_key", "its fixed text alone is 256 bytes, more than the 255");
    free(v);
    /* placeholders do not count; "{{" is one byte */
    v = fill('k', 250);
    accept("routes:\n  - {name: r, topic: a/+, exchange: amq.topic, routing_key: '@{topic}{1}'}\n",
           v);
    free(v);
    /* the position of a quoted value is its opening quote */
    char *k = fill('k', 253);
    char quoted[300];
    snprintf(quoted, sizeof(quoted), "'{{%s}}'", k);
    accept("routes:\n  - {name: r, topic: a, exchange: amq.topic, routing_key: @}\n", quoted);
    snprintf(quoted, sizeof(quoted), "'{{%s}}x'", k);
    refuse_at("routes:\n  - {name: r, topic: a, exchange: amq.topic, routing_key: @}\n", quoted,
              "routes[0].routing_key", "its fixed text alone is 256 bytes");
    free(k);
}
END_TEST

/* ---- MQTT strings -------------------------------------------------------------- */

START_TEST(mqtt_strings_are_refused_past_65535_bytes)
{
    static const struct {
        const char *tmpl, *path;
    } cases[] = {
        {"mqtt:\n  client_id: @\n" ROUTE, "mqtt.client_id"},
        {"mqtt:\n  username: @\n" ROUTE, "mqtt.username"},
        {"mqtt:\n  password: @\n" ROUTE, "mqtt.password"},
    };
    char *at_limit = fill('m', 65535), *past = fill('m', 65536);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        accept(cases[i].tmpl, at_limit);
        refuse_at(cases[i].tmpl, past, cases[i].path, "65536 bytes long, more than the 65535");
    }
    /* a secret is never quoted */
    ck_assert_ptr_null(strstr(err, "mmmm"));
    free(at_limit);
    free(past);
}
END_TEST

START_TEST(password_file_past_65535_bytes_is_refused_for_mqtt)
{
    char path[] = "/tmp/test_config_limits_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    char *secret = fill('p', 65536);
    ck_assert_int_eq(write(fd, secret, 65536), 65536);
    close(fd);
    int line, col;
    char *yaml = put("amqp: {password_file: @}\n" ROUTE, path, &line, &col);
    struct m2a_config *c;
    ck_assert_msg(load_str(yaml, &c) == 0, "%s", err); /* AMQP has no such limit */
    ck_assert_uint_eq(strlen(c->amqp.password), 65536);
    m2a_config_free(c);
    free(yaml);
    refuse_at("mqtt:\n  password_file: @\n" ROUTE, path, "mqtt.password_file",
              "holds 65536 bytes, more than the 65535 allowed");
    ck_assert_ptr_null(strstr(err, "pppp"));
    unlink(path);
    free(secret);
}
END_TEST

/* What mosquitto_new and mosquitto_username_pw_set refuse. */
START_TEST(mqtt_strings_must_be_utf8_without_control_characters)
{
    static const char *const bad[] = {"\"a\\x01b\"", "\"a\\x7f\"", "\"\\uFFFF\"", "\"a\\tb\""};
    static const char *const where[] = {"mqtt:\n  client_id: @\n" ROUTE,
                                        "mqtt:\n  username: @\n" ROUTE,
                                        "mqtt:\n  share_group: @\n" ROUTE};
    static const char *const paths[] = {"mqtt.client_id", "mqtt.username", "mqtt.share_group"};
    for (size_t w = 0; w < 3; w++) {
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
            refuse_at(where[w], bad[i], paths[w], "is not an MQTT string");
        accept(where[w], "\"gr\\u00FCn-\\u6771\"");
    }
}
END_TEST

/* "$share/GROUP/" + the filter is one MQTT string. */
START_TEST(share_group_and_topic_fit_one_mqtt_string)
{
    /* "$share/g/" is 9 bytes */
    char *topic = fill('t', 65535 - 9);
    accept("mqtt: {share_group: g}\nroutes:\n  - {name: r, exchange: amq.topic, topic: @}\n",
           topic);
    free(topic);
    topic = fill('t', 65535 - 8);
    refuse_at("mqtt: {share_group: g}\nroutes:\n  - {name: r, exchange: amq.topic, topic: @}\n",
              topic, "routes[0].topic",
              "with mqtt.share_group the subscription is 65536 bytes, more than the 65535");
    accept("routes:\n  - {name: r, exchange: amq.topic, topic: @}\n", topic);
    free(topic);
}
END_TEST

/* ---- metrics.listen: what the metrics server can hold ---------------------------- */

START_TEST(listen_host_is_at_most_255_bytes)
{
    char *host = fill('h', 255);
    accept("metrics:\n  listen: @:9464\n" ROUTE, host);
    free(host);
    host = fill('h', 256);
    refuse_at("metrics:\n  listen: @:9464\n" ROUTE, host, "metrics.listen", "is not HOST:PORT");
    free(host);
    refuse_at("metrics:\n  listen: @\n" ROUTE, "'[]:9464'", "metrics.listen", "is not HOST:PORT");
    accept("metrics:\n  listen: @\n" ROUTE, "'[::1]:9464'");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("config_limits");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, long_dead_letter_exchange_is_refused_at_load);
    tcase_add_test(tc, longest_dead_letter_exchange_encodes);
    tcase_add_loop_test(tc, amqp_short_strings_are_refused_past_255_bytes, 0,
                        (int)(sizeof(shortstr) / sizeof(shortstr[0])));
    tcase_add_test(tc, exchange_names_in_use_are_short_strings);
    tcase_add_test(tc, routing_key_template_with_too_much_fixed_text_is_refused);
    tcase_add_test(tc, mqtt_strings_are_refused_past_65535_bytes);
    tcase_add_test(tc, password_file_past_65535_bytes_is_refused_for_mqtt);
    tcase_add_test(tc, mqtt_strings_must_be_utf8_without_control_characters);
    tcase_add_test(tc, share_group_and_topic_fit_one_mqtt_string);
    tcase_add_test(tc, listen_host_is_at_most_255_bytes);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
