/* test_notify.c - systemd's notification protocol (notify.c): the address
 * from NOTIFY_SOCKET (path and abstract '@' names), datagrams as sent, the
 * watchdog's period from WATCHDOG_USEC and WATCHDOG_PID, and the pacing of
 * the pings by the loop that calls m2a_notify_watchdog (no call: no ping). */
#include <check.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/notify.h"
#include "check_main.h"

/* A bound datagram socket for name (a path, or '@' for abstract). */
static int listener(const char *name)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t len = strlen(name);
    memcpy(a.sun_path, name, len);
    if (name[0] == '@')
        a.sun_path[0] = '\0';
    else
        len++;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(
        bind(fd, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len)),
        0);
    return fd;
}

/* The next datagram, or "" when none is waiting. */
static const char *next_msg(int fd)
{
    static char buf[1024];
    ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
    buf[n < 0 ? 0 : n] = '\0';
    return buf;
}

START_TEST(no_socket_no_handle)
{
    struct m2a_notify *n = (void *)1;
    char err[256];
    ck_assert_int_eq(m2a_notify_open(NULL, "1000000", NULL, 1, &n, err, sizeof(err)), 0);
    ck_assert_ptr_null(n);
    ck_assert_int_eq(m2a_notify_open("", NULL, NULL, 1, &n, err, sizeof(err)), 0);
    ck_assert_ptr_null(n);
    /* A NULL handle is "not under systemd": every call is a no-op. */
    ck_assert_int_eq(m2a_notify_send(NULL, "READY=1"), 0);
    ck_assert(!m2a_notify_watchdog(NULL, 1000));
    ck_assert_uint_eq(m2a_notify_wait_ms(NULL, 1000, 250), 250);
    m2a_notify_free(NULL);
}
END_TEST

START_TEST(bad_values_are_refused)
{
    struct m2a_notify *n = NULL;
    char err[256];
    ck_assert_int_eq(m2a_notify_open("relative/sock", NULL, NULL, 1, &n, err, sizeof(err)),
                     M2A_ERR_ARG);
    ck_assert_ptr_null(n);
    ck_assert_ptr_nonnull(strstr(err, "NOTIFY_SOCKET"));
    char longname[200];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[0] = '/';
    longname[sizeof(longname) - 1] = '\0';
    ck_assert_int_eq(m2a_notify_open(longname, NULL, NULL, 1, &n, err, sizeof(err)), M2A_ERR_ARG);
    ck_assert_int_eq(m2a_notify_open("@x", "12x", NULL, 1, &n, err, sizeof(err)), M2A_ERR_ARG);
    ck_assert_ptr_nonnull(strstr(err, "WATCHDOG_USEC"));
    ck_assert_int_eq(m2a_notify_open("@x", "0", NULL, 1, &n, err, sizeof(err)), M2A_ERR_ARG);
    ck_assert_ptr_null(n);
}
END_TEST

START_TEST(sends_to_a_path)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/m2a-notify-%d.sock", (int)getpid());
    unlink(path);
    int fd = listener(path);
    struct m2a_notify *n = NULL;
    char err[256] = "";
    ck_assert_int_eq(m2a_notify_open(path, NULL, NULL, getpid(), &n, err, sizeof(err)), 0);
    ck_assert_ptr_nonnull(n);
    ck_assert_uint_eq(m2a_notify_watchdog_period_ms(n), 0);
    ck_assert_int_eq(m2a_notify_send(n, "READY=1\nSTATUS=up"), 0);
    ck_assert_str_eq(next_msg(fd), "READY=1\nSTATUS=up");
    /* No watchdog requested: never a ping. */
    ck_assert(!m2a_notify_watchdog(n, 5000));
    ck_assert_str_eq(next_msg(fd), "");
    m2a_notify_free(n);
    close(fd);
    unlink(path);
}
END_TEST

START_TEST(sends_to_an_abstract_name)
{
    char name[64];
    snprintf(name, sizeof(name), "@m2a-notify-test-%d", (int)getpid());
    int fd = listener(name);
    struct m2a_notify *n = NULL;
    char err[256] = "";
    ck_assert_int_eq(m2a_notify_open(name, NULL, NULL, getpid(), &n, err, sizeof(err)), 0);
    ck_assert_int_eq(m2a_notify_send(n, "STOPPING=1"), 0);
    ck_assert_str_eq(next_msg(fd), "STOPPING=1");
    m2a_notify_free(n);
    close(fd);
}
END_TEST

START_TEST(a_socket_nobody_listens_on_fails_without_blocking)
{
    struct m2a_notify *n = NULL;
    char err[256] = "";
    ck_assert_int_eq(
        m2a_notify_open("@m2a-nobody-listens-here", NULL, NULL, 1, &n, err, sizeof(err)), 0);
    ck_assert_int_eq(m2a_notify_send(n, "READY=1"), M2A_ERR_IO);
    m2a_notify_free(n);
}
END_TEST

START_TEST(watchdog_period_is_half_the_interval_and_ours_only)
{
    struct m2a_notify *n = NULL;
    char err[256] = "";
    ck_assert_int_eq(m2a_notify_open("@x", "3000000", NULL, 42, &n, err, sizeof(err)), 0);
    ck_assert_uint_eq(m2a_notify_watchdog_period_ms(n), 1500);
    m2a_notify_free(n);
    ck_assert_int_eq(m2a_notify_open("@x", "3000000", "42", 42, &n, err, sizeof(err)), 0);
    ck_assert_uint_eq(m2a_notify_watchdog_period_ms(n), 1500);
    m2a_notify_free(n);
    /* WATCHDOG_PID of another process (inherited from a parent): not ours. */
    ck_assert_int_eq(m2a_notify_open("@x", "3000000", "43", 42, &n, err, sizeof(err)), 0);
    ck_assert_uint_eq(m2a_notify_watchdog_period_ms(n), 0);
    m2a_notify_free(n);
    /* Sub-millisecond intervals still ping (every ms). */
    ck_assert_int_eq(m2a_notify_open("@x", "1", NULL, 42, &n, err, sizeof(err)), 0);
    ck_assert_uint_eq(m2a_notify_watchdog_period_ms(n), 1);
    m2a_notify_free(n);
}
END_TEST

START_TEST(due_decision)
{
    ck_assert(m2a_notify_watchdog_due(0, 10, 500)); /* first: at once */
    ck_assert(!m2a_notify_watchdog_due(1000, 1499, 500));
    ck_assert(m2a_notify_watchdog_due(1000, 1500, 500));
    ck_assert(m2a_notify_watchdog_due(1000, 9000, 500));
    ck_assert(m2a_notify_watchdog_due(1000, 900, 500)); /* clock went back: ping */
    ck_assert(!m2a_notify_watchdog_due(0, 10, 0));      /* no watchdog */
}
END_TEST

/* The loop that calls m2a_notify_watchdog is what the pings vouch for:
 * pings at the period while it turns, none while it does not, one as soon
 * as it turns again; and the loop's wait is cut to the next ping. */
START_TEST(pings_follow_the_calling_loop)
{
    char name[64];
    snprintf(name, sizeof(name), "@m2a-notify-wd-%d", (int)getpid());
    int fd = listener(name);
    struct m2a_notify *n = NULL;
    char err[256] = "";
    ck_assert_int_eq(m2a_notify_open(name, "1000000", NULL, getpid(), &n, err, sizeof(err)), 0);
    int pings = 0;
    /* Turning every 100 ms for 2 s: a ping at 1000, then every 500 ms. */
    for (uint64_t t = 1000; t < 3000; t += 100) {
        ck_assert_uint_le(m2a_notify_wait_ms(n, t, 250), 500);
        if (m2a_notify_watchdog(n, t)) {
            ck_assert_str_eq(next_msg(fd), "WATCHDOG=1");
            pings++;
        }
    }
    ck_assert_int_eq(pings, 4); /* 1000, 1500, 2000, 2500 */
    ck_assert_str_eq(next_msg(fd), "");
    ck_assert_uint_eq(m2a_notify_wait_ms(n, 2900, 250), 100);
    ck_assert_uint_eq(m2a_notify_wait_ms(n, 2600, 250), 250);
    /* Stalled from 2900 to 10000: no call, so nothing was sent. */
    ck_assert_str_eq(next_msg(fd), "");
    ck_assert(m2a_notify_watchdog(n, 10000));
    ck_assert_str_eq(next_msg(fd), "WATCHDOG=1");
    ck_assert_uint_eq(m2a_notify_wait_ms(n, 10000, 250), 250);
    m2a_notify_free(n);
    close(fd);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("notify");
    TCase *tc = tcase_create("notify");
    tcase_add_test(tc, no_socket_no_handle);
    tcase_add_test(tc, bad_values_are_refused);
    tcase_add_test(tc, sends_to_a_path);
    tcase_add_test(tc, sends_to_an_abstract_name);
    tcase_add_test(tc, a_socket_nobody_listens_on_fails_without_blocking);
    tcase_add_test(tc, watchdog_period_is_half_the_interval_and_ours_only);
    tcase_add_test(tc, due_decision);
    tcase_add_test(tc, pings_follow_the_calling_loop);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return m2a_check_run(suite());
}
