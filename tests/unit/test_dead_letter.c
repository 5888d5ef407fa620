/* test_dead_letter.c - the dead-letter envelope (headers, routing key
 * template, what is kept and left out) and the confirm window operations
 * the AMQP side dead-letters with (find a slot by seq, re-send a returned
 * publish while its stale ack is ignored). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mqtt2amqp/confirm_window.h"
#include "mqtt2amqp/dead_letter.h"
#include "mqtt2amqp/err.h"
#include "check_main.h"

static const struct m2a_header route_headers[] = {
    {{"device", 6}, {"dev7", 4}},
    {{"x-death-reason", 14}, {"forged", 6}}, /* a route may not forge ours */
};

static struct m2a_envelope original(void)
{
    return (struct m2a_envelope){.timestamp_ms = 1234,
                                 .route = {"temps", 5},
                                 .exchange = {"telemetry", 9},
                                 .routing_key = {"sensors.dev7.temp", 17},
                                 .content_type = {"application/json", 16},
                                 .topic = {"sensors/dev7/temp", 17},
                                 .qos = 1,
                                 .retain = true,
                                 .persistent = true,
                                 .nheaders = 2,
                                 .headers = route_headers,
                                 .body = {"{\"t\":21}", 8}};
}

static const char *header(const struct m2a_envelope *e, const char *key)
{
    static char v[512];
    const char *found = NULL;
    for (size_t i = 0; i < e->nheaders; i++) {
        if (e->headers[i].key.len != strlen(key) ||
            memcmp(e->headers[i].key.ptr, key, e->headers[i].key.len) != 0)
            continue;
        ck_assert_msg(!found, "header %s twice", key);
        snprintf(v, sizeof(v), "%.*s", (int)e->headers[i].value.len, e->headers[i].value.ptr);
        found = v;
    }
    return found;
}

static bool str_is(struct m2a_str s, const char *want)
{
    return s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0;
}

START_TEST(returned_message_keeps_everything_and_says_why)
{
    struct m2a_conf_dead_letter dl = {.enabled = true, .exchange = "dlx", .routing_key = NULL};
    struct m2a_envelope in = original(), out;
    struct m2a_dl_scratch *s = m2a_dl_scratch_new();
    ck_assert(!m2a_dl_is_dead_letter(&(struct m2a_envelope){0}));
    m2a_dl_build(&dl, &in, M2A_DL_RETURNED, true, s, &out);
    ck_assert(str_is(out.exchange, "dlx"));
    ck_assert(str_is(out.routing_key, "temps")); /* default "{route}" */
    ck_assert(str_is(out.topic, "sensors/dev7/temp"));
    ck_assert(str_is(out.body, "{\"t\":21}"));
    ck_assert(str_is(out.content_type, "application/json"));
    ck_assert(str_is(out.route, "temps"));
    ck_assert(out.retain && out.persistent && out.qos == 1 && out.timestamp_ms == 1234);
    ck_assert_str_eq(header(&out, "device"), "dev7");
    ck_assert_str_eq(header(&out, "x-death-reason"), "returned");
    ck_assert_str_eq(header(&out, "x-original-route"), "temps");
    ck_assert_str_eq(header(&out, "x-original-exchange"), "telemetry");
    ck_assert_str_eq(header(&out, "x-original-routing-key"), "sensors.dev7.temp");
    ck_assert_ptr_null(header(&out, "x-original-body-bytes"));
    ck_assert(m2a_dl_is_dead_letter(&out));

    /* It survives the spool's encoding. */
    struct m2a_buf b = {0};
    m2a_envelope_encode(&out, &b);
    struct m2a_envelope back;
    struct m2a_header *h = NULL;
    size_t hc = 0;
    ck_assert_int_eq(m2a_envelope_decode(b.data, b.len, &back, &h, &hc), 0);
    ck_assert(m2a_dl_is_dead_letter(&back));
    ck_assert_str_eq(header(&back, "x-death-reason"), "returned");
    free(h);
    m2a_buf_free(&b);
    m2a_dl_scratch_free(s);
}
END_TEST

START_TEST(reasons_shape_the_dead_letter)
{
    struct m2a_conf_dead_letter dl = {
        .enabled = true, .exchange = "", .routing_key = "dead.{reason}.{route}.{{x}}"};
    struct m2a_envelope in = original(), out;
    struct m2a_dl_scratch *s = m2a_dl_scratch_new();

    m2a_dl_build(&dl, &in, M2A_DL_ROUTING_ERROR, true, s, &out);
    ck_assert(str_is(out.routing_key, "dead.routing_error.temps.{x}"));
    ck_assert(str_is(out.exchange, ""));
    ck_assert_ptr_null(header(&out, "x-original-routing-key")); /* there was none */
    ck_assert_str_eq(header(&out, "x-death-reason"), "routing_error");

    m2a_dl_build(&dl, &in, M2A_DL_TOO_LARGE, true, s, &out);
    ck_assert_uint_eq(out.body.len, 0);
    ck_assert_str_eq(header(&out, "x-original-body-bytes"), "8");

    m2a_dl_build(&dl, &in, M2A_DL_UNPUBLISHABLE, false, s, &out);
    ck_assert_ptr_null(header(&out, "device"));
    ck_assert_str_eq(header(&out, "x-death-reason"), "unpublishable");

    static const char *const names[] = {"returned", "routing_error", "max_retries",
                                        "expired",  "too_large",     "unpublishable"};
    for (int r = M2A_DL_RETURNED; r <= M2A_DL_UNPUBLISHABLE; r++)
        ck_assert_str_eq(m2a_dl_reason_name((enum m2a_dl_reason)r), names[r]);
    ck_assert_str_eq(m2a_dl_reason_name((enum m2a_dl_reason)99), "unknown");
    m2a_dl_scratch_free(s);
}
END_TEST

/* A dead letter must always be publishable: a long route name in the key
 * is cut at AMQP's 255 bytes. */
START_TEST(routing_key_is_cut_at_255)
{
    char route[250];
    memset(route, 'r', sizeof(route));
    struct m2a_conf_dead_letter dl = {
        .enabled = true, .exchange = "dlx", .routing_key = "{route}.{route}"};
    struct m2a_envelope in = original(), out;
    in.route = (struct m2a_str){route, sizeof(route)};
    struct m2a_dl_scratch *s = m2a_dl_scratch_new();
    m2a_dl_build(&dl, &in, M2A_DL_EXPIRED, true, s, &out);
    ck_assert_uint_eq(out.routing_key.len, 255);
    m2a_dl_scratch_free(s);
}
END_TEST

START_TEST(key_template_check)
{
    char err[200];
    ck_assert_int_eq(m2a_dl_key_check("{route}", err, sizeof(err)), 0);
    ck_assert_int_eq(m2a_dl_key_check("a.{reason}.{{b}}", err, sizeof(err)), 0);
    ck_assert_int_eq(m2a_dl_key_check("", err, sizeof(err)), 0);
    ck_assert_int_eq(m2a_dl_key_check("{1}", err, sizeof(err)), M2A_ERR_TEMPLATE);
    ck_assert_ptr_nonnull(strstr(err, "only {route} and {reason}"));
    ck_assert_int_eq(m2a_dl_key_check("a}", err, sizeof(err)), M2A_ERR_TEMPLATE);
    ck_assert_int_eq(m2a_dl_key_check("{route", err, sizeof(err)), M2A_ERR_TEMPLATE);
    ck_assert_int_eq(m2a_dl_key_check(NULL, err, sizeof(err)), M2A_ERR_TEMPLATE);
}
END_TEST

/* The window side of a basic.return: the slot is found by seq, moved to
 * RETRY without counting a nack, the broker's ack of the returned publish
 * is ignored, and it is confirmed only by the ack of its re-publish. */
START_TEST(window_resend_after_return_ignores_the_stale_ack)
{
    struct m2a_cwin *cw = m2a_cwin_new(8);
    for (uint64_t seq = 10; seq < 14; seq++)
        m2a_cwin_sent(cw, m2a_cwin_push(cw, seq), seq - 9); /* tags 1..4 */
    ck_assert_ptr_null(m2a_cwin_find(cw, 9));
    ck_assert_ptr_null(m2a_cwin_find(cw, 14));
    struct m2a_cw_slot *ret = m2a_cwin_find(cw, 12);
    ck_assert_ptr_nonnull(ret);
    ck_assert_ptr_eq(m2a_cwin_at(cw, 2), ret);
    ck_assert_ptr_null(m2a_cwin_at(cw, 4));

    m2a_cwin_retry(cw, ret, 1000);
    ck_assert_uint_eq(ret->retries, 0);
    ck_assert_uint_eq(m2a_cwin_inflight(cw), 3);
    uint64_t next = 0;
    ck_assert_ptr_null(m2a_cwin_next_to_send(cw, 999, &next));
    ck_assert_uint_eq(next, 1000);

    /* The broker acks everything, the returned publish included. */
    ck_assert_uint_eq(m2a_cwin_ack(cw, 4, true), 3);
    uint64_t seq = 0;
    ck_assert(m2a_cwin_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(seq, 11); /* stops before the returned one */

    ck_assert_ptr_eq(m2a_cwin_next_to_send(cw, 1000, NULL), ret);
    m2a_cwin_sent(cw, ret, 5);
    ck_assert_uint_eq(m2a_cwin_ack(cw, 5, false), 1);
    ck_assert(m2a_cwin_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(seq, 13);
    ck_assert_uint_eq(m2a_cwin_count(cw), 0);
    m2a_cwin_free(cw);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dead_letter");
    TCase *tc = tcase_create("dead_letter");
    tcase_add_test(tc, returned_message_keeps_everything_and_says_why);
    tcase_add_test(tc, reasons_shape_the_dead_letter);
    tcase_add_test(tc, routing_key_is_cut_at_255);
    tcase_add_test(tc, key_template_check);
    tcase_add_test(tc, window_resend_after_return_ignores_the_stale_ack);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
