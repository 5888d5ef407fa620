/* test_amqp_frames.c - basic.publish frames encoded by amqp_frames.c are
 * byte for byte what rabbitmq-c's amqp_basic_publish writes, and the buffer
 * writer survives a slow reader and gives up on a peer that reads nothing. */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_tcp_socket.h>

#include "mqtt2amqp/amqp_frames.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/loop.h"
#include "check_main.h"

#define FRAME_MAX 4096 /* for the encoder-only tests */

struct reader {
    int fd;
    struct m2a_buf got;
};

/* Reads until EOF into r->got. */
static void *read_all(void *arg)
{
    struct reader *r = arg;
    unsigned char buf[1000]; /* small reads: a writer meets a full socket often */
    ssize_t n;
    while ((n = read(r->fd, buf, sizeof(buf))) > 0)
        m2a_buf_append(&r->got, buf, (size_t)n);
    return NULL;
}

static void fill_props(amqp_basic_properties_t *p, amqp_table_entry_t *e, int nent)
{
    memset(p, 0, sizeof(*p));
    p->_flags = AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_TIMESTAMP_FLAG |
                AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_HEADERS_FLAG | AMQP_BASIC_CONTENT_TYPE_FLAG;
    p->delivery_mode = AMQP_DELIVERY_PERSISTENT;
    p->timestamp = 1764030000;
    p->message_id = amqp_cstring_bytes("0123456789abcdef-42");
    p->content_type = amqp_cstring_bytes("application/json");
    for (int i = 0; i < nent; i++) {
        e[i].key = amqp_cstring_bytes(i % 2 ? "x-mqtt-topic" : "x-custom");
        e[i].value.kind = AMQP_FIELD_KIND_UTF8;
        e[i].value.value.bytes = amqp_cstring_bytes("devices/7/temperature");
    }
    p->headers.num_entries = nent;
    p->headers.entries = e;
}

/* Body sizes around the frame boundaries of the library's frame_max: the
 * library writes every publish to a socket, we encode the same publishes
 * into one buffer, and the two byte streams must be equal. */
START_TEST(frames_equal_the_librarys)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    amqp_connection_state_t conn = amqp_new_connection();
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);
    ck_assert_ptr_nonnull(sock);
    amqp_tcp_socket_set_sockfd(sock, sv[0]);
    const size_t fmax = (size_t)amqp_get_frame_max(conn);
    ck_assert_uint_gt(fmax, 64);
    const size_t sizes[] = {0, 1, 100, fmax - 8 - 1, fmax - 8, fmax - 8 + 1, 3 * (fmax - 8) + 5};
    const size_t nsizes = sizeof(sizes) / sizeof(sizes[0]);

    struct reader r = {.fd = sv[1]};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, read_all, &r), 0);
    unsigned char *body = malloc(4 * fmax);
    for (size_t i = 0; i < 4 * fmax; i++)
        body[i] = (unsigned char)(i * 7 + 3);
    struct m2a_buf out = {0};
    m2a_buf_append(&out, "prefix", 6); /* the encoder appends after what is there */
    amqp_table_entry_t entries[4];
    for (size_t k = 0; k < nsizes; k++) {
        amqp_basic_properties_t p;
        fill_props(&p, entries, (int)(k % 5));
        amqp_bytes_t b = {sizes[k], body};
        amqp_bytes_t ex = amqp_cstring_bytes("telemetry"), rk = amqp_cstring_bytes("dev.7.temp");
        ck_assert_int_eq(amqp_basic_publish(conn, 3, ex, rk, 1, 0, &p, b), AMQP_STATUS_OK);
        amqp_basic_publish_t m = {.exchange = ex, .routing_key = rk, .mandatory = 1};
        ck_assert_int_eq(m2a_amqp_frames_publish(&out, 3, (uint32_t)fmax, &m, &p, b), 0);
    }
    amqp_destroy_connection(conn); /* closes sv[0]: the reader sees EOF */
    pthread_join(t, NULL);
    close(sv[1]);

    ck_assert_mem_eq(out.data, "prefix", 6);
    size_t n = out.len - 6, same = 0;
    while (same < n && same < r.got.len && out.data[6 + same] == r.got.data[same])
        same++;
    if (same != n || n != r.got.len)
        fprintf(stderr, "encoded %zu bytes, the library wrote %zu; first difference at %zu\n", n,
                r.got.len, same);
    ck_assert_uint_eq(n, r.got.len);
    ck_assert_uint_eq(same, n);
    m2a_buf_free(&r.got);
    m2a_buf_free(&out);
    free(body);
}
END_TEST

START_TEST(properties_larger_than_a_frame_are_refused)
{
    static char big[FRAME_MAX];
    memset(big, 'h', sizeof(big) - 1);
    amqp_table_entry_t e = {.key = amqp_cstring_bytes("x-big")};
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_cstring_bytes(big);
    amqp_basic_properties_t p = {._flags = AMQP_BASIC_HEADERS_FLAG};
    p.headers.num_entries = 1;
    p.headers.entries = &e;
    amqp_basic_publish_t m = {.exchange = amqp_cstring_bytes("x"),
                              .routing_key = amqp_cstring_bytes("k")};
    struct m2a_buf out = {0};
    m2a_buf_append(&out, "keep", 4);
    ck_assert_int_eq(m2a_amqp_frames_publish(&out, 1, FRAME_MAX, &m, &p, amqp_empty_bytes),
                     M2A_ERR_ARG);
    ck_assert_uint_eq(out.len, 4); /* nothing half-appended */
    m2a_buf_free(&out);
}
END_TEST

START_TEST(send_waits_for_a_slow_reader)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    struct m2a_buf out = {0};
    for (size_t i = 0; i < 1 << 20; i++) {
        unsigned char c = (unsigned char)(i ^ (i >> 9));
        m2a_buf_append(&out, &c, 1);
    }
    struct m2a_buf copy = {0};
    m2a_buf_append(&copy, out.data, out.len);
    struct reader r = {.fd = sv[1]};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, read_all, &r), 0);
    struct m2a_amqp_frames_wire w = {sv[0], NULL};
    ck_assert_int_eq(m2a_amqp_frames_send(&w, &out, 10000, M2A_LOOP_NEVER), 0);
    ck_assert_uint_eq(out.len, 0);
    close(sv[0]);
    pthread_join(t, NULL);
    ck_assert_uint_eq(r.got.len, copy.len);
    ck_assert(memcmp(r.got.data, copy.data, copy.len) == 0);
    close(sv[1]);
    m2a_buf_free(&r.got);
    m2a_buf_free(&copy);
    m2a_buf_free(&out);
}
END_TEST

/* Issue 12: body frames borrowed from the message (written with sendmsg
 * from where the body is) put the same bytes on the wire as copied ones,
 * through a small socket buffer that takes them a piece at a time. */
START_TEST(borrowed_bodies_go_out_like_copied_ones)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    int small = 4096;
    setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    const size_t sizes[] = {0, 100, 5000, FRAME_MAX - 8, 3 * FRAME_MAX + 17, 200000};
    unsigned char *body = malloc(200000);
    for (size_t i = 0; i < 200000; i++)
        body[i] = (unsigned char)(i * 13 + 1);
    struct m2a_buf copied = {0}, out = {0};
    struct m2a_amqp_frames_borrow b = {0};
    amqp_table_entry_t entries[4];
    for (size_t k = 0; k < sizeof(sizes) / sizeof(*sizes); k++) {
        amqp_basic_properties_t p;
        fill_props(&p, entries, (int)(k % 5));
        amqp_bytes_t bb = {sizes[k], body};
        amqp_basic_publish_t m = {.exchange = amqp_cstring_bytes("x"),
                                  .routing_key = amqp_cstring_bytes("k")};
        ck_assert_int_eq(m2a_amqp_frames_publish(&copied, 2, FRAME_MAX, &m, &p, bb), 0);
        ck_assert_int_eq(m2a_amqp_frames_publish_borrow(&out, &b, 2, FRAME_MAX, &m, &p, bb, 1024),
                         0);
    }
    ck_assert_uint_gt(b.n, 0);
    ck_assert_uint_eq(out.len + b.bytes, copied.len);
    ck_assert_uint_lt(out.len, copied.len / 10); /* the bodies were not copied */
    struct reader r = {.fd = sv[1]};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, read_all, &r), 0);
    struct m2a_amqp_frames_wire w = {sv[0], NULL};
    ck_assert_int_eq(m2a_amqp_frames_sendv(&w, &out, &b, 10000, M2A_LOOP_NEVER), 0);
    ck_assert_uint_eq(out.len, 0);
    ck_assert_uint_eq(b.n, 0);
    close(sv[0]);
    pthread_join(t, NULL);
    ck_assert_uint_eq(r.got.len, copied.len);
    ck_assert(memcmp(r.got.data, copied.data, copied.len) == 0);
    close(sv[1]);
    m2a_buf_free(&r.got);
    m2a_buf_free(&copied);
    m2a_buf_free(&out);
    m2a_amqp_frames_borrow_free(&b);
    free(body);
}
END_TEST

/* A peer that stops reading: what was not written stays, copied into out,
 * so nothing borrowed is referred to after the failure. */
START_TEST(a_failed_send_keeps_the_rest_without_borrowing)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    size_t n = 4u << 20;
    unsigned char *body = malloc(n);
    memset(body, 'q', n);
    struct m2a_buf out = {0};
    struct m2a_amqp_frames_borrow b = {0};
    amqp_basic_properties_t p = {0};
    amqp_basic_publish_t m = {.exchange = amqp_cstring_bytes("x"),
                              .routing_key = amqp_cstring_bytes("k")};
    ck_assert_int_eq(m2a_amqp_frames_publish_borrow(&out, &b, 1, FRAME_MAX, &m, &p,
                                                    (amqp_bytes_t){n, body}, 4096),
                     0);
    size_t total = out.len + b.bytes;
    struct m2a_amqp_frames_wire w = {sv[0], NULL};
    ck_assert_int_eq(m2a_amqp_frames_sendv(&w, &out, &b, 100, M2A_LOOP_NEVER), M2A_ERR_TIMEOUT);
    ck_assert_uint_eq(b.n, 0);
    ck_assert_uint_gt(out.len, 0);
    ck_assert_uint_lt(out.len, total);
    memset(body, 'Z', n); /* the caller's bytes may change now */
    ck_assert(memchr(out.data, 'Z', out.len) == NULL);
    close(sv[1]);
    close(sv[0]);
    m2a_buf_free(&out);
    m2a_amqp_frames_borrow_free(&b);
    free(body);
}
END_TEST

START_TEST(send_gives_up_on_a_peer_that_reads_nothing)
{
    int sv[2];
    ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    struct m2a_buf out = {0};
    m2a_buf_reserve(&out, 16u << 20);
    memset(out.data, 'z', 16u << 20);
    out.len = 16u << 20; /* far more than a socket buffer */
    struct m2a_amqp_frames_wire w = {sv[0], NULL};
    ck_assert_int_eq(m2a_amqp_frames_send(&w, &out, 100, M2A_LOOP_NEVER), M2A_ERR_TIMEOUT);
    ck_assert_uint_gt(out.len, 0);
    ck_assert_uint_lt(out.len, 16u << 20); /* what was written is gone from the buffer */
    close(sv[1]);
    ck_assert_int_eq(m2a_amqp_frames_send(&w, &out, 100, M2A_LOOP_NEVER), M2A_ERR_IO);
    ck_assert_int_eq(errno, EPIPE);
    close(sv[0]);
    m2a_buf_free(&out);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("amqp_frames");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, frames_equal_the_librarys);
    tcase_add_test(tc, properties_larger_than_a_frame_are_refused);
    tcase_add_test(tc, send_waits_for_a_slow_reader);
    tcase_add_test(tc, send_gives_up_on_a_peer_that_reads_nothing);
    tcase_add_test(tc, borrowed_bodies_go_out_like_copied_ones);
    tcase_add_test(tc, a_failed_send_keeps_the_rest_without_borrowing);
    suite_add_tcase(s, tc);
    return m2a_check_run(s);
}
