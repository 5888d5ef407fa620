/* test_policy.c - the undeliverable-message policy: the rules (the
 * README's table), the dead-letter envelope (headers, routing key template,
 * what is kept and left out), the counting and the log lines; and the
 * confirm window operations the AMQP side dead-letters with (find a slot by
 * seq, re-send a returned publish while its stale ack is ignored). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "mqtt2amqp/confirm_window.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/generation.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/policy.h"
#include "mqtt2amqp/route_stats.h"
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

/* A generation with one route "temps" (unroutable as given) and the
 * dead_letter section dl (NULL: none), ids from rs (may be NULL). */
static struct m2a_generation *generation(const struct m2a_conf_dead_letter *dl,
                                         enum m2a_unroutable unroutable, struct m2a_route_stats *rs)
{
    struct m2a_config *cfg = xcalloc(1, sizeof(*cfg));
    cfg->nroutes = 1;
    cfg->routes = xcalloc(1, sizeof(*cfg->routes));
    cfg->routes[0] = (struct m2a_conf_route){.name = xstrdup("temps"),
                                             .topic = xstrdup("sensors/+/temp"),
                                             .exchange = xstrdup("telemetry"),
                                             .persistent = true,
                                             .unroutable = unroutable};
    if (dl) {
        cfg->dead_letter = *dl;
        cfg->dead_letter.exchange = xstrdup(dl->exchange);
        cfg->dead_letter.routing_key = dl->routing_key ? xstrdup(dl->routing_key) : NULL;
    }
    struct m2a_generation *g = NULL;
    char err[256];
    ck_assert_msg(m2a_generation_new(cfg, NULL, rs, &g, err, sizeof(err)) == 0, "%s", err);
    return g;
}

/* The dead letter of `in` for event, as the policy builds it. */
static void dead_letter_of(struct m2a_policy *p, const struct m2a_generation *g,
                           const struct m2a_envelope *in, enum m2a_policy_event event,
                           struct m2a_envelope *out)
{
    struct m2a_policy_case c = {.event = event, .env = in, .attempts = 1000};
    ck_assert_int_eq(m2a_policy_decide(p, g, &c, out), M2A_FATE_DEAD_LETTER);
}

static struct m2a_stats no_stats;

static struct m2a_policy *policy(struct m2a_stats *st)
{
    return m2a_policy_new(&(struct m2a_policy_opts){
        .stats = st ? st : &no_stats, .component = "test", .spool_id = "sp", .log_interval_ms = 0});
}

START_TEST(returned_message_keeps_everything_and_says_why)
{
    struct m2a_conf_dead_letter dl = {.enabled = true, .exchange = "dlx", .routing_key = NULL};
    struct m2a_generation *g = generation(&dl, M2A_UNROUTABLE_DEAD_LETTER, NULL);
    struct m2a_policy *s = policy(NULL);
    struct m2a_envelope in = original(), out;
    ck_assert(!in.dead_letter);
    dead_letter_of(s, g, &in, M2A_POLICY_RETURNED, &out);
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
    ck_assert(out.dead_letter);
    ck_assert_uint_eq(out.route_id, in.route_id);

    /* It survives the spool's encoding. */
    struct m2a_buf b = {0};
    m2a_envelope_encode(&out, &b);
    struct m2a_envelope back;
    struct m2a_header *h = NULL;
    size_t hc = 0;
    ck_assert_int_eq(m2a_envelope_decode(b.data, b.len, &back, &h, &hc), 0);
    ck_assert(back.dead_letter);
    ck_assert_str_eq(header(&back, "x-death-reason"), "returned");
    free(h);
    m2a_buf_free(&b);
    m2a_policy_free(s);
    m2a_generation_unref(g);
}
END_TEST

START_TEST(reasons_shape_the_dead_letter)
{
    struct m2a_conf_dead_letter dl = {
        .enabled = true, .exchange = "", .routing_key = "dead.{reason}.{route}.{{x}}"};
    struct m2a_generation *g = generation(&dl, M2A_UNROUTABLE_DEAD_LETTER, NULL);
    struct m2a_envelope in = original(), out;
    struct m2a_policy *s = policy(NULL);

    dead_letter_of(s, g, &in, M2A_POLICY_ROUTING_ERROR, &out);
    ck_assert(str_is(out.routing_key, "dead.routing_error.temps.{x}"));
    ck_assert(str_is(out.exchange, ""));
    ck_assert_ptr_null(header(&out, "x-original-routing-key")); /* there was none */
    ck_assert_str_eq(header(&out, "x-death-reason"), "routing_error");

    dead_letter_of(s, g, &in, M2A_POLICY_TOO_LARGE, &out);
    ck_assert_uint_eq(out.body.len, 0);
    ck_assert_str_eq(header(&out, "x-original-body-bytes"), "8");

    /* the MQTT 5 properties go with the headers where those made the message
     * unpublishable (they map to headers), and stay everywhere else */
    in.properties = (struct m2a_str){"\x01\x00\x01\x00", 4};
    dead_letter_of(s, g, &in, M2A_POLICY_UNPUBLISHABLE, &out);
    ck_assert_ptr_null(header(&out, "device"));
    ck_assert_str_eq(header(&out, "x-death-reason"), "unpublishable");
    ck_assert_uint_eq(out.properties.len, 0);
    dead_letter_of(s, g, &in, M2A_POLICY_RETURNED, &out);
    ck_assert_uint_eq(out.properties.len, 4);
    in.properties = (struct m2a_str){"", 0};

    dead_letter_of(s, g, &in, M2A_POLICY_NACKED, &out);
    ck_assert_str_eq(header(&out, "x-death-reason"), "max_retries");
    ck_assert_str_eq(header(&out, "device"), "dev7");

    static const char *const names[] = {"returned", "routing_error", "max_retries",
                                        "expired",  "too_large",     "unpublishable"};
    for (int r = M2A_POLICY_RETURNED; r <= M2A_POLICY_UNPUBLISHABLE; r++)
        ck_assert_str_eq(m2a_policy_reason((enum m2a_policy_event)r), names[r]);
    ck_assert_str_eq(m2a_policy_reason((enum m2a_policy_event)99), "unknown");
    m2a_policy_free(s);
    m2a_generation_unref(g);
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
    struct m2a_generation *g = generation(&dl, M2A_UNROUTABLE_DEAD_LETTER, NULL);
    struct m2a_envelope in = original(), out;
    in.route = (struct m2a_str){route, sizeof(route)};
    struct m2a_policy *s = policy(NULL);
    dead_letter_of(s, g, &in, M2A_POLICY_EXPIRED, &out);
    ck_assert_uint_eq(out.routing_key.len, 255);
    m2a_policy_free(s);
    m2a_generation_unref(g);
}
END_TEST

START_TEST(key_template_check)
{
    char err[200];
    ck_assert_int_eq(m2a_policy_key_check("{route}", err, sizeof(err)), 0);
    ck_assert_int_eq(m2a_policy_key_check("a.{reason}.{{b}}", err, sizeof(err)), 0);
    ck_assert_int_eq(m2a_policy_key_check("", err, sizeof(err)), 0);
    ck_assert_int_eq(m2a_policy_key_check("{1}", err, sizeof(err)), M2A_ERR_TEMPLATE);
    ck_assert_ptr_nonnull(strstr(err, "only {route} and {reason}"));
    ck_assert_int_eq(m2a_policy_key_check("a}", err, sizeof(err)), M2A_ERR_TEMPLATE);
    ck_assert_int_eq(m2a_policy_key_check("{route", err, sizeof(err)), M2A_ERR_TEMPLATE);
    ck_assert_int_eq(m2a_policy_key_check(NULL, err, sizeof(err)), M2A_ERR_TEMPLATE);
}
END_TEST

/* The README's "Undeliverable messages" table, row by row. */
START_TEST(the_rules_are_the_readme_table)
{
    struct m2a_conf_dead_letter dl = {.enabled = true, .exchange = "dlx", .max_retries = 2};
    const struct m2a_conf_dead_letter *with = &dl, *none = NULL;
    enum m2a_unroutable DL = M2A_UNROUTABLE_DEAD_LETTER, DROP = M2A_UNROUTABLE_DROP,
                        RETRY = M2A_UNROUTABLE_RETRY;
    struct {
        enum m2a_policy_event ev;
        bool dead;
        enum m2a_unroutable unroutable;
        const struct m2a_conf_dead_letter *dl;
        uint32_t attempts;
        enum m2a_fate want;
    } rows[] = {
        {M2A_POLICY_RETURNED, false, DL, with, 1, M2A_FATE_DEAD_LETTER},
        {M2A_POLICY_RETURNED, false, DL, none, 1, M2A_FATE_DROP},
        {M2A_POLICY_RETURNED, false, DROP, with, 1, M2A_FATE_DROP},
        {M2A_POLICY_RETURNED, false, DROP, none, 1, M2A_FATE_DROP},
        {M2A_POLICY_RETURNED, false, RETRY, with, 9, M2A_FATE_RETRY},
        {M2A_POLICY_RETURNED, false, RETRY, none, 9, M2A_FATE_RETRY},
        {M2A_POLICY_ROUTING_ERROR, false, DROP, with, 0, M2A_FATE_DEAD_LETTER},
        {M2A_POLICY_ROUTING_ERROR, false, DL, none, 0, M2A_FATE_DROP},
        {M2A_POLICY_NACKED, false, DL, with, 1, M2A_FATE_RETRY},
        {M2A_POLICY_NACKED, false, DL, with, 2, M2A_FATE_RETRY}, /* max_retries 2 */
        {M2A_POLICY_NACKED, false, DL, with, 3, M2A_FATE_DEAD_LETTER},
        {M2A_POLICY_NACKED, false, DL, none, 1000, M2A_FATE_RETRY}, /* for ever */
        {M2A_POLICY_EXPIRED, false, DL, with, 0, M2A_FATE_DEAD_LETTER},
        {M2A_POLICY_EXPIRED, false, DL, none, 0, M2A_FATE_DROP},
        {M2A_POLICY_TOO_LARGE, false, DL, with, 0, M2A_FATE_DEAD_LETTER},
        {M2A_POLICY_TOO_LARGE, false, DL, none, 0, M2A_FATE_DROP},
        {M2A_POLICY_UNPUBLISHABLE, false, DL, with, 0, M2A_FATE_DEAD_LETTER},
        {M2A_POLICY_UNPUBLISHABLE, false, DL, none, 0, M2A_FATE_DROP},
        /* a dead letter is retried with backoff, never dropped or
         * dead-lettered again, whatever its route says */
        {M2A_POLICY_RETURNED, true, DROP, with, 1, M2A_FATE_RETRY},
        {M2A_POLICY_RETURNED, true, DL, with, 1, M2A_FATE_RETRY},
        {M2A_POLICY_NACKED, true, DL, with, 1000, M2A_FATE_RETRY},
        {M2A_POLICY_UNPUBLISHABLE, true, DL, with, 0, M2A_FATE_DROP},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(*rows); i++)
        ck_assert_msg(m2a_policy_fate(rows[i].ev, rows[i].dead, rows[i].unroutable, rows[i].dl,
                                      rows[i].attempts) == rows[i].want,
                      "row %zu", i);
}
END_TEST

START_TEST(expiry_spares_dead_letters)
{
    struct m2a_config *cfg = xcalloc(1, sizeof(*cfg));
    cfg->spool.max_age_ms = 1000;
    struct m2a_generation *g = NULL;
    ck_assert_int_eq(m2a_generation_new(cfg, NULL, NULL, &g, NULL, 0), 0);
    struct m2a_envelope e = original();
    e.timestamp_ms = 10000;
    ck_assert(!m2a_policy_expired(g, &e, 11000)); /* exactly max_age: not older */
    ck_assert(m2a_policy_expired(g, &e, 11001));
    ck_assert(!m2a_policy_expired(g, &e, 9000)); /* a clock that went back */
    e.dead_letter = true;
    ck_assert(!m2a_policy_expired(g, &e, 99999));
    m2a_generation_unref(g);

    cfg = xcalloc(1, sizeof(*cfg)); /* max_age off */
    ck_assert_int_eq(m2a_generation_new(cfg, NULL, NULL, &g, NULL, 0), 0);
    e.dead_letter = false;
    ck_assert(!m2a_policy_expired(g, &e, 99999));
    m2a_generation_unref(g);
}
END_TEST

static void handle(struct m2a_policy *p, const struct m2a_generation *g, enum m2a_policy_event ev,
                   const struct m2a_envelope *e)
{
    struct m2a_envelope dle;
    struct m2a_policy_case c = {.event = ev, .env = e, .seq = 7, .attempts = 1, .detail = "d"};
    enum m2a_fate f = m2a_policy_decide(p, g, &c, &dle);
    m2a_policy_account(p, g, &c, f, f, 100);
}

#define STAT(st, f) M2A_STAT_GET(st, f)

/* Each case counts once, in the counters the README names for it. A
 * message too large for the spool is not a routing error (the README's
 * route_errors: routing key or template failures): dropped, and
 * dead-lettered without its body when there is a dead_letter section. */
START_TEST(counting_follows_the_readme)
{
    struct m2a_stats st = {0};
    st.routes = m2a_route_stats_new();
    struct m2a_conf_dead_letter dl = {.enabled = true, .exchange = "dlx", .max_retries = 0};
    struct m2a_generation *with = generation(&dl, M2A_UNROUTABLE_DROP, st.routes);
    struct m2a_generation *none = generation(NULL, M2A_UNROUTABLE_DEAD_LETTER, st.routes);
    struct m2a_policy *p = policy(&st);
    struct m2a_envelope e = original();
    e.route_id = m2a_routes_id(m2a_generation_routes(with), 0);
    struct m2a_route_counters *rc = m2a_route_stats_at(st.routes, e.route_id);
    ck_assert_ptr_nonnull(rc);

    handle(p, with, M2A_POLICY_TOO_LARGE, &e);
    ck_assert_uint_eq(STAT(&st, route_errors), 0);
    ck_assert_uint_eq(STAT(&st, dead_lettered), 1);
    ck_assert_uint_eq(STAT(&st, dropped), 1);
    handle(p, with, M2A_POLICY_ROUTING_ERROR, &e);
    ck_assert_uint_eq(STAT(&st, route_errors), 1);
    ck_assert_uint_eq(STAT(&st, dead_lettered), 2);
    handle(p, with, M2A_POLICY_RETURNED, &e); /* unroutable: drop */
    ck_assert_uint_eq(STAT(&st, dropped), 2);
    ck_assert_uint_eq(atomic_load(&rc->returned), 1);
    handle(p, none, M2A_POLICY_EXPIRED, &e); /* no dead_letter section */
    ck_assert_uint_eq(STAT(&st, expired), 1);
    ck_assert_uint_eq(STAT(&st, dropped), 3);
    handle(p, with, M2A_POLICY_NACKED, &e); /* max_retries 0: dead letter */
    ck_assert_uint_eq(STAT(&st, dead_lettered), 3);
    handle(p, none, M2A_POLICY_NACKED, &e); /* retried: nothing to count here */
    e.dead_letter = true;
    handle(p, with, M2A_POLICY_RETURNED, &e); /* a dead letter's return is not the route's */
    ck_assert_uint_eq(atomic_load(&rc->returned), 1);
    ck_assert_uint_eq(STAT(&st, dead_lettered), 3);
    ck_assert_uint_eq(STAT(&st, dropped), 3);
    ck_assert_uint_eq(atomic_load(&rc->dead_lettered), 3);
    ck_assert_uint_eq(atomic_load(&rc->dropped), 3);

    /* The dead letter could not be spooled: dropped after all. */
    e.dead_letter = false;
    struct m2a_policy_case c = {.event = M2A_POLICY_ROUTING_ERROR, .env = &e};
    m2a_policy_account(p, with, &c, M2A_FATE_DEAD_LETTER, M2A_FATE_DROP, 0);
    ck_assert_uint_eq(STAT(&st, dropped), 4);
    ck_assert_uint_eq(STAT(&st, dead_lettered), 3);

    m2a_policy_free(p);
    m2a_generation_unref(with);
    m2a_generation_unref(none);
    m2a_route_stats_free(st.routes);
}
END_TEST

/* The log lines of p's cases, captured. */
static char *capture(void (*fn)(struct m2a_policy *p, const struct m2a_generation *g),
                     const struct m2a_generation *g)
{
    char path[] = "/tmp/m2a-policy-log-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    unlink(path);
    m2a_log_set_fd(fd);
    struct m2a_policy *p = policy(NULL);
    fn(p, g);
    m2a_policy_free(p);
    m2a_log_set_fd(2);
    static char log[8192];
    ssize_t n = pread(fd, log, sizeof(log) - 1, 0);
    close(fd);
    log[n > 0 ? n : 0] = '\0';
    return log;
}

static void nack_one_of_each(struct m2a_policy *p, const struct m2a_generation *g)
{
    struct m2a_envelope e = original();
    handle(p, g, M2A_POLICY_NACKED, &e);
    e.dead_letter = true;
    e.exchange = (struct m2a_str){"dlx", 3};
    e.routing_key = (struct m2a_str){"dead.temps", 10};
    handle(p, g, M2A_POLICY_NACKED, &e);
}

/* Issue 10: a nack while nothing of the route has been confirmed on the
 * connection (a quorum queue without a leader nacks every publish of a
 * channel that has not registered with it, RabbitMQ 3.10) is retried past
 * max_retries; once the route is confirmed on the connection, the next nack
 * over max_retries dead-letters; max_retries 0 dead-letters at the first
 * nack whatever. */
START_TEST(nacks_of_an_unready_destination_are_retried_past_max_retries)
{
    struct m2a_conf_dead_letter dl = {.enabled = true, .exchange = "dlx", .max_retries = 2};
    struct m2a_generation *g = generation(&dl, M2A_UNROUTABLE_DEAD_LETTER, NULL);
    struct m2a_policy *p = policy(NULL);
    struct m2a_envelope e = original(), out;
    struct m2a_policy_case c = {.event = M2A_POLICY_NACKED, .env = &e, .unready = true};
    for (c.attempts = 1; c.attempts <= 50; c.attempts++)
        ck_assert_int_eq(m2a_policy_decide(p, g, &c, &out), M2A_FATE_RETRY);
    c.unready = false;
    ck_assert_int_eq(m2a_policy_decide(p, g, &c, &out), M2A_FATE_DEAD_LETTER);
    c.attempts = 2;
    ck_assert_int_eq(m2a_policy_decide(p, g, &c, &out), M2A_FATE_RETRY);
    m2a_generation_unref(g);

    dl.max_retries = 0;
    g = generation(&dl, M2A_UNROUTABLE_DEAD_LETTER, NULL);
    c = (struct m2a_policy_case){
        .event = M2A_POLICY_NACKED, .env = &e, .attempts = 1, .unready = true};
    ck_assert_int_eq(m2a_policy_decide(p, g, &c, &out), M2A_FATE_DEAD_LETTER);
    m2a_generation_unref(g);
    m2a_policy_free(p);
}
END_TEST

/* The line of log holding needle (NUL-terminated copy), or NULL. */
static const char *line_with(const char *log, const char *needle)
{
    static char line[2048];
    const char *at = strstr(log, needle);
    if (!at)
        return NULL;
    const char *bol = at, *eol = strchr(at, '\n');
    while (bol > log && bol[-1] != '\n')
        bol--;
    size_t n = eol ? (size_t)(eol - bol) : strlen(bol);
    snprintf(line, sizeof(line), "%.*s", (int)n, bol);
    return line;
}

/* A nack names no queue, but the line names what the bridge knows: the
 * message, its route, the exchange and the routing key it was published
 * with. A nacked dead letter is an error (the README: a dead letter that is
 * returned or nacked is retried and logged as an error). */
START_TEST(nacks_are_logged_by_route_and_a_nacked_dead_letter_as_an_error)
{
    struct m2a_conf_dead_letter dl = {.enabled = true, .exchange = "dlx", .max_retries = 5};
    struct m2a_generation *g = generation(&dl, M2A_UNROUTABLE_DEAD_LETTER, NULL);
    const char *log = capture(nack_one_of_each, g);
    const char *l = line_with(log, "message sp-7 of route temps nacked by the broker");
    ck_assert_msg(l, "log was: %s", log);
    ck_assert_ptr_nonnull(strstr(l, "warn"));
    ck_assert_ptr_nonnull(strstr(l, "exchange 'telemetry', routing key 'sensors.dev7.temp'"));
    ck_assert_ptr_nonnull(strstr(l, "retrying in 100 ms"));
    l = line_with(log, "dead letter sp-7 of route temps nacked by the broker");
    ck_assert_msg(l, "log was: %s", log);
    ck_assert_ptr_nonnull(strstr(l, "error"));
    ck_assert_ptr_nonnull(strstr(l, "exchange 'dlx', routing key 'dead.temps'"));
    m2a_generation_unref(g);
}
END_TEST

/* The window side of a basic.return: the slot is found by seq, moved to
 * RETRY without counting a nack, the broker's ack of the returned publish
 * is ignored, and it is confirmed only by the ack of its re-publish. */
START_TEST(window_resend_after_return_ignores_the_stale_ack)
{
    struct m2a_confirm_window *cw = m2a_confirm_window_new(8, 0);
    for (uint64_t seq = 10; seq < 14; seq++)
        m2a_confirm_window_sent(cw, m2a_confirm_window_push(cw, seq, "r", 1),
                                seq - 9); /* tags 1..4 */
    ck_assert_ptr_null(m2a_confirm_window_find(cw, 9));
    ck_assert_ptr_null(m2a_confirm_window_find(cw, 14));
    struct m2a_confirm_window_slot *ret = m2a_confirm_window_find(cw, 12);
    ck_assert_ptr_nonnull(ret);
    ck_assert_ptr_eq(m2a_confirm_window_at(cw, 2), ret);
    ck_assert_ptr_null(m2a_confirm_window_at(cw, 4));

    m2a_confirm_window_retry(cw, ret, 1000);
    ck_assert_uint_eq(ret->retries, 0);
    ck_assert_uint_eq(m2a_confirm_window_usage(cw).inflight, 3);
    uint64_t next = 0;
    ck_assert_ptr_null(m2a_confirm_window_next_to_send(cw, 999, &next));
    ck_assert_uint_eq(next, 1000);

    /* The broker acks everything, the returned publish included. */
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 4, true), 3);
    uint64_t seq = 0;
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(seq, 11); /* stops before the returned one */

    ck_assert_ptr_eq(m2a_confirm_window_next_to_send(cw, 1000, NULL), ret);
    m2a_confirm_window_sent(cw, ret, 5);
    ck_assert_uint_eq(m2a_confirm_window_ack(cw, 5, false), 1);
    ck_assert(m2a_confirm_window_pop_confirmed(cw, &seq));
    ck_assert_uint_eq(seq, 13);
    ck_assert_uint_eq(m2a_confirm_window_count(cw), 0);
    m2a_confirm_window_free(cw);
}
END_TEST

int main(void)
{
    m2a_log_set_level(M2A_LOG_DEBUG);
    Suite *s = suite_create("policy");
    TCase *tc = tcase_create("policy");
    tcase_add_test(tc, the_rules_are_the_readme_table);
    tcase_add_test(tc, expiry_spares_dead_letters);
    tcase_add_test(tc, counting_follows_the_readme);
    tcase_add_test(tc, nacks_of_an_unready_destination_are_retried_past_max_retries);
    tcase_add_test(tc, nacks_are_logged_by_route_and_a_nacked_dead_letter_as_an_error);
    tcase_add_test(tc, returned_message_keeps_everything_and_says_why);
    tcase_add_test(tc, reasons_shape_the_dead_letter);
    tcase_add_test(tc, routing_key_is_cut_at_255);
    tcase_add_test(tc, key_template_check);
    tcase_add_test(tc, window_resend_after_return_ignores_the_stale_ack);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
