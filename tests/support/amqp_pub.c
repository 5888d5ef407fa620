/* amqp_pub.c - the downlink tests' AMQP publisher; see amqp_pub.h. */
#include "amqp_pub.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#include "mqtt2amqp/util.h"

/* Reads one frame within ms; the number of messages it confirms (0 for
 * another frame or a timeout), -1 if the connection failed or a nack came. */
static long read_confirm(amqp_connection_state_t st, uint64_t last_tag, uint64_t *acked, int ms)
{
    amqp_frame_t f;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    int rc = amqp_simple_wait_frame_noblock(st, &f, &tv);
    if (rc == AMQP_STATUS_TIMEOUT)
        return 0;
    if (rc != AMQP_STATUS_OK)
        return -1;
    if (f.frame_type != AMQP_FRAME_METHOD)
        return 0;
    if (f.payload.method.id == AMQP_BASIC_NACK_METHOD)
        return -1;
    if (f.payload.method.id != AMQP_BASIC_ACK_METHOD)
        return 0;
    /* One channel to one queue: RabbitMQ confirms in order, so a tag
     * confirms everything up to it. */
    amqp_basic_ack_t *a = f.payload.method.decoded;
    uint64_t upto = a->delivery_tag < last_tag ? a->delivery_tag : last_tag;
    if (upto <= *acked)
        return 0;
    long n = (long)(upto - *acked);
    *acked = upto;
    return n;
}

long th_apub_run(const struct th_apub *p)
{
    amqp_connection_state_t st = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(st);
    struct timeval tv = {10, 0};
    if (!sock || amqp_socket_open_noblock(sock, "127.0.0.1", p->port, &tv) != AMQP_STATUS_OK ||
        amqp_login(st, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest").reply_type !=
            AMQP_RESPONSE_NORMAL) {
        fprintf(stderr, "th_apub: cannot connect to port %d\n", p->port);
        amqp_destroy_connection(st);
        return -1;
    }
    amqp_channel_open(st, 1);
    amqp_confirm_select(st, 1);
    if (amqp_get_rpc_reply(st).reply_type != AMQP_RESPONSE_NORMAL) {
        fprintf(stderr, "th_apub: channel or confirm.select failed\n");
        amqp_destroy_connection(st);
        return -1;
    }
    int window = p->window > 0 ? p->window : 500;
    uint64_t deadline = m2a_now_ms() + (uint64_t)p->timeout_ms;
    uint64_t sent = 0, acked = 0;
    long confirmed = 0;
    bool failed = false;
    char key[256], body[64];
    amqp_basic_properties_t props = {._flags = AMQP_BASIC_DELIVERY_MODE_FLAG, .delivery_mode = 2};
    while (!failed && (sent < (uint64_t)p->count || acked < sent) && m2a_now_ms() < deadline) {
        while (sent < (uint64_t)p->count && sent - acked < (uint64_t)window) {
            long seq = p->first + (long)sent;
            snprintf(key, sizeof(key), p->key_fmt, seq % p->ndev);
            snprintf(body, sizeof(body), "seq=%ld", seq);
            if (amqp_basic_publish(st, 1, amqp_cstring_bytes(p->exchange), amqp_cstring_bytes(key),
                                   0, 0, &props, amqp_cstring_bytes(body)) != AMQP_STATUS_OK) {
                failed = true;
                break;
            }
            sent++;
        }
        long n = read_confirm(st, sent, &acked, 100);
        if (n < 0)
            failed = true;
        else
            confirmed += n;
    }
    amqp_channel_close(st, 1, AMQP_REPLY_SUCCESS);
    amqp_connection_close(st, AMQP_REPLY_SUCCESS);
    amqp_destroy_connection(st);
    return confirmed;
}
