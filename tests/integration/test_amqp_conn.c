/* test_amqp_conn.c - the rabbitmq-c adapter (amqp_conn.h) against a real
 * RabbitMQ, as both of its users will drive it: a consumer (the downlink
 * of issue 11: prefetch, deliveries whose bodies span several frames,
 * acks and rejects, deliveries held back while heartbeats go on) and a
 * publisher (confirms, a basic.return naming the message by its
 * message_id), through the frame state machine of m2a_amqp_conn_read and
 * a poll() on its socket. */
#include <check.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "mqtt2amqp/amqp_conn.h"
#include "mqtt2amqp/amqp_publish.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/loop.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define QUEUE "it.conn.q"
#define BIG   (300 * 1024) /* over the 128 KiB frame_max: three body frames */

struct seen {
    struct m2a_amqp_conn *c;
    int deliveries;
    size_t len[4];
    char head[4][16];
    bool redelivered[4];
    int acks, nacks, returns;
    uint64_t last_ack;
    char returned_id[64];
    uint16_t returned_code;
};

/* Settles each delivery as it comes: ack, reject (not requeued), ack. */
static void on_deliver(void *ud, const struct m2a_amqp_conn_delivery *d)
{
    struct seen *s = ud;
    int i = s->deliveries++;
    ck_assert_int_lt(i, 4);
    s->len[i] = d->body.len;
    snprintf(s->head[i], sizeof(s->head[i]), "%.*s", (int)(d->body.len < 15 ? d->body.len : 15),
             (const char *)d->body.bytes);
    s->redelivered[i] = d->redelivered;
    enum m2a_amqp_conn_settlement how = i == 1 ? M2A_AMQP_CONN_REJECT : M2A_AMQP_CONN_ACK;
    ck_assert_int_eq(m2a_amqp_conn_settle(s->c, d->delivery_tag, how), 0);
}

static void on_ack(void *ud, uint64_t tag, bool multiple)
{
    struct seen *s = ud;
    (void)multiple;
    s->acks++;
    s->last_ack = tag;
}

static void on_nack(void *ud, uint64_t tag, bool multiple)
{
    (void)tag, (void)multiple;
    ((struct seen *)ud)->nacks++;
}

static void on_returned(void *ud, const struct m2a_amqp_conn_return *r)
{
    struct seen *s = ud;
    s->returns++;
    s->returned_code = r->reply_code;
    if (r->props && (r->props->_flags & AMQP_BASIC_MESSAGE_ID_FLAG))
        snprintf(s->returned_id, sizeof(s->returned_id), "%.*s", (int)r->props->message_id.len,
                 (const char *)r->props->message_id.bytes);
}

static const struct m2a_amqp_conn_events events = {
    .ack = on_ack, .nack = on_nack, .returned = on_returned, .deliver = on_deliver};

/* Reads frames, waiting on the socket, until *counter >= want (10 s). */
static void read_until(struct seen *s, const int *counter, int want)
{
    uint64_t deadline = m2a_now_ms() + 10000;
    while (*counter < want && m2a_now_ms() < deadline) {
        ck_assert_int_eq(m2a_amqp_conn_read(s->c, &events, s), M2A_AMQP_CONN_OK);
        if (*counter >= want || m2a_amqp_conn_buffered(s->c))
            continue;
        struct pollfd p = {.fd = m2a_amqp_conn_params(s->c)->wire.fd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0) /* as the owners' loops do */
            m2a_amqp_conn_input_seen(s->c);
    }
    ck_assert_int_ge(*counter, want);
}

START_TEST(a_consumer_and_a_publisher_through_the_frame_state_machine)
{
    struct m2a_conf_amqp conf = {.vhost = "/", .username = "guest", .password = "guest"};
    struct m2a_conf_endpoint node = {.host = "127.0.0.1", .port = th_rabbit_port()};
    struct m2a_conf_queue q = {.name = QUEUE, .durable = true};
    struct m2a_conf_amqp topo = {.nqueues = 1, .queues = &q};
    struct seen s = {0};
    s.c = m2a_amqp_conn_new(&(struct m2a_amqp_conn_opts){.conf = &conf, .name = "it-conn"});
    uint64_t deadline = m2a_now_ms() + 20000;
    ck_assert_msg(m2a_amqp_conn_open(s.c, &node, deadline) == 0, "%s", m2a_amqp_conn_why(s.c));
    ck_assert_msg(m2a_amqp_conn_declare(s.c, &topo, deadline) == 0, "%s", m2a_amqp_conn_why(s.c));
    ck_assert_uint_eq(m2a_amqp_conn_params(s.c)->frame_max, 131072);

    /* Three messages waiting: a small one, one over two frames, an empty one. */
    struct th_amqp *pub = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(pub);
    ck_assert_int_eq(th_amqp_purge(pub, QUEUE), 0);
    char *big = xmalloc(BIG + 1);
    memset(big, 'b', BIG);
    memcpy(big, "seq=1 ", 6);
    big[BIG] = '\0';
    ck_assert_int_eq(th_amqp_publish(pub, "", QUEUE, "seq=0 small", true), 0);
    ck_assert_int_eq(th_amqp_publish(pub, "", QUEUE, big, true), 0);
    ck_assert_int_eq(th_amqp_publish(pub, "", QUEUE, "", true), 0);

    /* Prefetch 1: each comes once the one before is settled. */
    char tag[64];
    ck_assert_msg(m2a_amqp_conn_consume(s.c, QUEUE, 1, tag, sizeof(tag), deadline) == 0, "%s",
                  m2a_amqp_conn_why(s.c));
    ck_assert_uint_gt(strlen(tag), 0);
    read_until(&s, &s.deliveries, 3);
    ck_assert_uint_eq(s.len[0], 11);
    ck_assert_str_eq(s.head[0], "seq=0 small");
    ck_assert_uint_eq(s.len[1], BIG);
    ck_assert_str_eq(s.head[1], "seq=1 bbbbbbbbb");
    ck_assert_uint_eq(s.len[2], 0);
    /* the rejected one is not requeued: nothing comes back, nothing stays */
    uint64_t quiet = m2a_now_ms() + 500;
    while (m2a_now_ms() < quiet)
        ck_assert_int_eq(m2a_amqp_conn_read(s.c, &events, &s), M2A_AMQP_CONN_OK);
    ck_assert_int_eq(s.deliveries, 3);
    ck_assert_int_eq(th_amqp_count(pub, QUEUE), 0);

    /* A publisher on the same channel: confirms, and a mandatory publish
     * nobody is bound for comes back naming its message id. */
    ck_assert_int_eq(m2a_amqp_conn_confirm_select(s.c, deadline), 0);
    struct m2a_amqp_publish *p = m2a_amqp_publish_new();
    struct m2a_envelope env = {.exchange = {"amq.direct", 10},
                               .routing_key = {"nobody-is-bound-here", 20},
                               .topic = {"t", 1},
                               .persistent = true,
                               .body = {"seq=9", 5}};
    ck_assert_int_eq(m2a_amqp_publish_add(p, s.c, &env, M2A_MQTT_HEADERS_ALL, "it-conn-9", 9), 0);
    env.routing_key = (struct m2a_str){QUEUE, strlen(QUEUE)};
    env.exchange = (struct m2a_str){"", 0};
    ck_assert_int_eq(m2a_amqp_publish_add(p, s.c, &env, M2A_MQTT_HEADERS_NONE, "it-conn-10", 10),
                     0);
    char why[256];
    ck_assert_int_eq(m2a_amqp_publish_flush(p, s.c, M2A_LOOP_NEVER, why, sizeof(why)), 0);
    ck_assert_uint_eq(m2a_amqp_publish_pending(p), 0);
    read_until(&s, &s.acks, 2);
    read_until(&s, &s.deliveries, 4); /* the second one, delivered to our consumer */
    ck_assert_int_eq(s.returns, 1);
    ck_assert_int_eq(s.returned_code, 312); /* NO_ROUTE */
    ck_assert_str_eq(s.returned_id, "it-conn-9");
    ck_assert_int_eq(s.nacks, 0);
    ck_assert_uint_eq(s.last_ack, 2);
    ck_assert_str_eq(s.head[3], "seq=9");

    m2a_amqp_conn_close(s.c, true, m2a_now_ms() + 5000);
    m2a_amqp_conn_free(s.c);
    m2a_amqp_publish_free(p);
    th_amqp_delete(pub, QUEUE);
    th_amqp_free(pub);
    free(big);
}
END_TEST

/* A consumer that holds deliveries back (may_deliver, as the downlink does
 * while libmosquitto has a window's worth): the read stops between whole
 * messages and the rest wait; m2a_amqp_conn_keepalive alone keeps a
 * connection with 1 s heartbeats open through 4 s without a read
 * (RabbitMQ closes it after two missed heartbeats otherwise); then the
 * rest arrive, in order, not redelivered. */
struct held {
    struct m2a_amqp_conn *c;
    int allow, deliveries, out_of_order, redelivered;
};

static void held_deliver(void *ud, const struct m2a_amqp_conn_delivery *d)
{
    struct held *h = ud;
    char want[32];
    int n = snprintf(want, sizeof(want), "seq=%d", h->deliveries++);
    if (d->body.len != (size_t)n || memcmp(d->body.bytes, want, (size_t)n) != 0)
        h->out_of_order++;
    if (d->redelivered)
        h->redelivered++;
    ck_assert_int_eq(m2a_amqp_conn_settle(h->c, d->delivery_tag, M2A_AMQP_CONN_ACK), 0);
}

static bool held_may_deliver(void *ud)
{
    const struct held *h = ud;
    return h->deliveries < h->allow;
}

static const struct m2a_amqp_conn_events held_events = {.deliver = held_deliver,
                                                        .may_deliver = held_may_deliver};

static void held_read(struct held *h)
{
    uint64_t deadline = m2a_now_ms() + 10000;
    while (h->deliveries < h->allow && m2a_now_ms() < deadline) {
        ck_assert_int_eq(m2a_amqp_conn_read(h->c, &held_events, h), M2A_AMQP_CONN_OK);
        if (h->deliveries >= h->allow || m2a_amqp_conn_buffered(h->c))
            continue;
        struct pollfd p = {.fd = m2a_amqp_conn_params(h->c)->wire.fd, .events = POLLIN};
        if (poll(&p, 1, 100) > 0)
            m2a_amqp_conn_input_seen(h->c);
    }
    ck_assert_int_eq(h->deliveries, h->allow);
}

START_TEST(a_consumer_holds_deliveries_back_and_keeps_the_connection_alive)
{
    enum { N = 20, FIRST = 5, HOLD_MS = 4000 };
    struct m2a_conf_amqp conf = {
        .vhost = "/", .username = "guest", .password = "guest", .heartbeat = 1};
    struct m2a_conf_endpoint node = {.host = "127.0.0.1", .port = th_rabbit_port()};
    struct m2a_conf_queue q = {.name = QUEUE ".held", .durable = true};
    struct m2a_conf_amqp topo = {.nqueues = 1, .queues = &q};
    struct held h = {.allow = FIRST};
    h.c = m2a_amqp_conn_new(&(struct m2a_amqp_conn_opts){.conf = &conf, .name = "it-held"});
    uint64_t deadline = m2a_now_ms() + 20000;
    ck_assert_msg(m2a_amqp_conn_open(h.c, &node, deadline) == 0, "%s", m2a_amqp_conn_why(h.c));
    ck_assert_int_eq(m2a_amqp_conn_params(h.c)->heartbeat_s, 1);
    ck_assert_msg(m2a_amqp_conn_declare(h.c, &topo, deadline) == 0, "%s", m2a_amqp_conn_why(h.c));

    struct th_amqp *pub = th_amqp_connect(th_rabbit_port(), 10000, false);
    ck_assert_ptr_nonnull(pub);
    ck_assert_int_eq(th_amqp_purge(pub, q.name), 0);
    for (int i = 0; i < N; i++) {
        char body[32];
        snprintf(body, sizeof(body), "seq=%d", i);
        ck_assert_int_eq(th_amqp_publish(pub, "", q.name, body, true), 0);
    }
    char tag[64];
    ck_assert_msg(m2a_amqp_conn_consume(h.c, q.name, N, tag, sizeof(tag), deadline) == 0, "%s",
                  m2a_amqp_conn_why(h.c));
    held_read(&h);
    /* Nothing more while may_deliver says no, however often it is read. */
    for (int i = 0; i < 50; i++) {
        m2a_amqp_conn_input_seen(h.c);
        ck_assert_int_eq(m2a_amqp_conn_read(h.c, &held_events, &h), M2A_AMQP_CONN_OK);
    }
    ck_assert_int_eq(h.deliveries, FIRST);

    /* No reads for 4 heartbeat intervals: only keepalives. */
    uint64_t until = m2a_now_ms() + HOLD_MS;
    while (m2a_now_ms() < until) {
        ck_assert_msg(m2a_amqp_conn_keepalive(h.c) == 0, "%s", m2a_amqp_conn_why(h.c));
        (void)poll(NULL, 0, 50);
    }
    h.allow = N;
    held_read(&h);
    ck_assert_int_eq(h.out_of_order, 0);
    ck_assert_int_eq(h.redelivered, 0);

    m2a_amqp_conn_close(h.c, true, m2a_now_ms() + 5000);
    m2a_amqp_conn_free(h.c);
    th_amqp_delete(pub, q.name);
    th_amqp_free(pub);
}
END_TEST

/* A node nobody listens on: the open fails at once, says why, and is not
 * a refusal; a deadline already passed fails before any connect. */
START_TEST(open_fails_with_a_reason_and_honours_the_deadline)
{
    struct m2a_conf_amqp conf = {.vhost = "/", .username = "guest", .password = "guest"};
    struct m2a_conf_endpoint node = {.host = "127.0.0.1", .port = th_free_port()};
    struct m2a_amqp_conn *c =
        m2a_amqp_conn_new(&(struct m2a_amqp_conn_opts){.conf = &conf, .name = "it-conn"});
    ck_assert_int_eq(m2a_amqp_conn_open(c, &node, m2a_now_ms() + 5000), M2A_ERR_IO);
    ck_assert_ptr_nonnull(strstr(m2a_amqp_conn_why(c), "cannot connect"));
    ck_assert(!m2a_amqp_conn_refused(c));
    m2a_amqp_conn_free(c);

    node.port = th_rabbit_port();
    c = m2a_amqp_conn_new(&(struct m2a_amqp_conn_opts){.conf = &conf, .name = "it-conn"});
    ck_assert_int_eq(m2a_amqp_conn_open(c, &node, m2a_now_ms()), M2A_ERR_TIMEOUT);
    ck_assert_ptr_nonnull(strstr(m2a_amqp_conn_why(c), "stop deadline"));
    m2a_amqp_conn_free(c);

    /* Wrong credentials: refused (needs an operator). */
    conf.password = "not-the-password";
    c = m2a_amqp_conn_new(&(struct m2a_amqp_conn_opts){.conf = &conf, .name = "it-conn"});
    ck_assert_int_ne(m2a_amqp_conn_open(c, &node, m2a_now_ms() + 10000), 0);
    ck_assert_msg(m2a_amqp_conn_refused(c), "%s", m2a_amqp_conn_why(c));
    m2a_amqp_conn_free(c);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("amqp_conn");
    TCase *tc = tcase_create("conn");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, a_consumer_and_a_publisher_through_the_frame_state_machine);
    tcase_add_test(tc, open_fails_with_a_reason_and_honours_the_deadline);
    tcase_add_test(tc, a_consumer_holds_deliveries_back_and_keeps_the_connection_alive);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
