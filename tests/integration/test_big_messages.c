/* test_big_messages.c - issue 12: mqtt.max_message_bytes is the payload
 * limit, and the only one. A payload of exactly the limit (the default,
 * 16 MiB) goes through Mosquitto, the bridge and RabbitMQ unchanged; one
 * byte more is handled as too_large (not bridged); the next message
 * arrives. Before, the spool's record limit (16 MiB on the whole record)
 * refused the first as well ("can never fit in the spool"). Real Mosquitto
 * and RabbitMQ. */
#include <check.h>
#include <mosquitto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "flow.h"
#include "harness.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define WAIT_MS 60000

static void on_published(struct mosquitto *m, void *ud, int mid, int rc,
                         const mosquitto_property *props)
{
    (void)m;
    (void)mid;
    (void)props;
    *(int *)ud = rc == 0 ? 1 : -1;
}

/* Publishes at QoS 1 (MQTT 5) and waits for the PUBACK. */
static int publish_one(int port, const char *topic, const void *payload, size_t len)
{
    int acked = 0;
    struct mosquitto *m = mosquitto_new(NULL, true, &acked);
    mosquitto_int_option(m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_publish_v5_callback_set(m, on_published);
    if (mosquitto_connect(m, "127.0.0.1", port, 30) == MOSQ_ERR_SUCCESS &&
        mosquitto_publish(m, NULL, topic, (int)len, payload, 1, false) == MOSQ_ERR_SUCCESS) {
        uint64_t end = m2a_now_ms() + WAIT_MS;
        while (!acked && m2a_now_ms() < end && mosquitto_loop(m, 50, 1) == MOSQ_ERR_SUCCESS)
            ;
    }
    mosquitto_disconnect(m);
    mosquitto_loop(m, 50, 1);
    mosquitto_destroy(m);
    return acked == 1 ? 0 : -1;
}

START_TEST(a_payload_of_exactly_max_message_bytes_goes_through)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_STOCK);
    ck_assert_ptr_nonnull(mq);
    struct th_bridge *b = th_bridge_new(mq);
    ck_assert_int_eq(th_bridge_config(b, "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, "
                                         "client_id: it-big}\n"
                                         "amqp:\n"
                                         "  port: ${AMQP_PORT}\n"
                                         "  topology:\n"
                                         "    exchanges: [{name: it.big, type: topic}]\n"
                                         "    queues: [{name: it.big, bindings: [{exchange: "
                                         "it.big}]}]\n"
                                         "spool: {dir: ${SPOOL_DIR}}\n"
                                         "routes:\n"
                                         "  - {name: big, topic: \"big/#\", exchange: it.big}\n"
                                         "log: {stats_interval: 1}\n"),
                     0);
    struct th_amqp *c = th_amqp_consumer(th_rabbit_port(), "it.big", "it.big", "#");
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(th_bridge_start_ready(b, WAIT_MS), 0);

    size_t limit = 16u << 20; /* the default mqtt.max_message_bytes */
    char *payload = xmalloc(limit + 1);
    for (size_t i = 0; i < limit + 1; i++)
        payload[i] = (char)('a' + i % 23);
    memcpy(payload, "seq=0 ", 6);
    ck_assert_int_eq(publish_one(mq->port, "big/exact", payload, limit), 0);
    memcpy(payload, "seq=1 ", 6);
    ck_assert_int_eq(publish_one(mq->port, "big/over", payload, limit + 1), 0);
    const char *small = "seq=2 small";
    ck_assert_int_eq(publish_one(mq->port, "big/small", small, strlen(small)), 0);

    struct th_msgs got = {0};
    ck_assert_int_eq(th_amqp_collect(c, &got, 2, WAIT_MS), 0);
    th_amqp_drain(c, &got, 1000);
    ck_assert_uint_eq(got.n, 2);
    ck_assert_int_eq(got.v[0].seq, 0);
    ck_assert_uint_eq(got.v[0].body_len, limit);
    memcpy(payload, "seq=0 ", 6);
    ck_assert(memcmp(got.v[0].body, payload, limit) == 0);
    ck_assert_int_eq(got.v[1].seq, 2);
    th_msgs_free(&got);
    ck_assert_int_eq(th_bridge_stop(b, 10000), 0);
    /* The one byte over went the too_large way: counted, not bridged. */
    ck_assert_int_ge(th_bridge_stat(b, "dropped") + th_bridge_stat(b, "dead_lettered"), 1);
    free(payload);
    th_amqp_free(c);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("big_messages");
    TCase *tc = tcase_create("big_messages");
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, a_payload_of_exactly_max_message_bytes_goes_through);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    mosquitto_lib_init();
    return m2a_check_run(suite());
}
