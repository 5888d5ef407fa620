/* test_systemd_notify.c - the bridge under systemd's notification protocol (issue
 * 14, item 2), against real Mosquitto and RabbitMQ: the test binds the
 * datagram socket systemd would ($NOTIFY_SOCKET, an abstract name), asks
 * for a watchdog ($WATCHDOG_USEC) and reads what the bridge sends.
 *
 *  - order: READY=1 comes first (with a STATUS=), and only once the log
 *    says the spool is open; then WATCHDOG=1 pings, never further apart than
 *    the watchdog interval, about half of it; STATUS= saying both sides are
 *    up once they are; STOPPING=1 at SIGTERM, then the exit (0).
 *  - a stall: the bridge's stderr is a small pipe the test stops reading,
 *    so the main loop blocks in its next log write (as under a wedged
 *    journald): the pings stop while the process lives on, and resume once
 *    the pipe is read again. That is the stall systemd's watchdog is for,
 *    produced without a test hook in the bridge. */
#include <check.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"

#define WATCHDOG_USEC 1000000 /* 1 s: pings every 500 ms */

static const char *const yaml = "mqtt: {host: 127.0.0.1, port: ${MQTT_PORT}, "
                                "client_id: it-notify, reconnect_max_ms: 500}\n"
                                "amqp: {port: ${AMQP_PORT}}\n"
                                "spool: {dir: ${SPOOL_DIR}}\n"
                                "routes:\n"
                                "  - {name: r, topic: \"notify/#\", exchange: \"\"}\n"
                                "log: {stats_interval: 1}\n";

static int notify_listener(char *name, size_t len)
{
    static int n;
    snprintf(name, len, "@m2a-it-notify-%d-%d", (int)getpid(), n++);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    size_t l = strlen(name);
    memcpy(a.sun_path, name, l);
    a.sun_path[0] = '\0';
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(
        bind(fd, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) + l)),
        0);
    return fd;
}

/* The next datagram within timeout_ms into buf (NUL-terminated), its
 * arrival in *at_ms; false on timeout. */
static bool recv_msg(int fd, char *buf, size_t len, int timeout_ms, uint64_t *at_ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, timeout_ms) <= 0)
        return false;
    ssize_t n = recv(fd, buf, len - 1, MSG_DONTWAIT);
    if (n < 0)
        return false;
    buf[n] = '\0';
    *at_ms = m2a_now_ms();
    return true;
}

/* A bridge configured to notify the socket *fd (bound here) with a 1 s
 * watchdog; not started. */
static struct th_bridge *bridge_with_notify(const struct th_mosq *mq, int *fd)
{
    struct th_bridge *b = th_bridge_new(mq);
    char name[64];
    *fd = notify_listener(name, sizeof(name));
    th_bridge_set(b, "NOTIFY_SOCKET", "%s", name);
    th_bridge_set(b, "WATCHDOG_USEC", "%d", WATCHDOG_USEC);
    ck_assert_int_eq(th_bridge_config(b, yaml), 0);
    return b;
}

START_TEST(ready_status_watchdog_stopping_in_order)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    int fd = -1;
    struct th_bridge *b = bridge_with_notify(mq, &fd);
    ck_assert_int_eq(th_bridge_start(b, NULL), 0);

    char msg[1024];
    uint64_t at = 0, prev_ping = 0, max_gap = 0;
    /* READY=1 first, with a STATUS=, after the spool is open. */
    ck_assert(recv_msg(fd, msg, sizeof(msg), 20000, &at));
    ck_assert_msg(strncmp(msg, "READY=1\nSTATUS=mqtt ", 20) == 0, "first message: '%s'", msg);
    ck_assert_int_ge(th_proc_log_count(&b->proc, "spool: opened"), 1);

    /* For 4 s and until a STATUS= says both sides are up: pings, no gap
     * wider than the interval, and none much faster than half of it. */
    int pings = 0;
    bool both_up = false;
    uint64_t until = m2a_now_ms() + 4000, hard = m2a_now_ms() + 30000;
    while ((m2a_now_ms() < until || !both_up) && m2a_now_ms() < hard) {
        if (!recv_msg(fd, msg, sizeof(msg), 1500, &at))
            ck_abort_msg("no message for 1.5 s (watchdog interval 1 s)");
        ck_assert_msg(strstr(msg, "READY=1") == NULL, "READY=1 twice");
        ck_assert_msg(strstr(msg, "STOPPING=1") == NULL, "STOPPING=1 before SIGTERM");
        if (strcmp(msg, "WATCHDOG=1") == 0) {
            if (prev_ping) {
                uint64_t gap = at - prev_ping;
                max_gap = gap > max_gap ? gap : max_gap;
                ck_assert_msg(gap >= 300, "pings %llu ms apart: faster than half the interval",
                              (unsigned long long)gap);
            }
            prev_ping = at;
            pings++;
        } else {
            ck_assert_msg(strncmp(msg, "STATUS=mqtt ", 12) == 0, "unexpected: '%s'", msg);
            if (strstr(msg, "mqtt up, amqp up; received=") && strstr(msg, "; spool "))
                both_up = true;
        }
    }
    ck_assert(both_up);
    ck_assert_int_ge(pings, 6);
    ck_assert_msg(max_gap < 1000, "pings up to %llu ms apart: the watchdog (1 s) would fire",
                  (unsigned long long)max_gap);

    /* SIGTERM: STOPPING=1 (after at most one more ping or status), then exit 0. */
    ck_assert_int_eq(th_bridge_signal(b, SIGTERM), 0);
    bool stopping = false;
    while (!stopping && recv_msg(fd, msg, sizeof(msg), 5000, &at)) {
        if (strncmp(msg, "STOPPING=1\nSTATUS=stopping", 26) == 0)
            stopping = true;
        else
            ck_assert_msg(strcmp(msg, "WATCHDOG=1") == 0 || strncmp(msg, "STATUS=", 7) == 0,
                          "unexpected: '%s'", msg);
    }
    ck_assert(stopping);
    int code = -1;
    ck_assert_int_eq(th_bridge_wait_exit(b, 20000, &code), 0);
    ck_assert_int_eq(code, 0);
    /* Nothing after STOPPING=1. */
    ck_assert(!recv_msg(fd, msg, sizeof(msg), 0, &at));
    close(fd);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

/* The bridge with stdout and stderr into a pipe of one page (the child of
 * this test, killed at the end and by its death signal). */
static pid_t spawn_piped(struct th_bridge *b, int *rd)
{
    int p[2];
    ck_assert_int_eq(pipe2(p, O_CLOEXEC), 0);
    ck_assert_int_ge(fcntl(p[1], F_SETPIPE_SZ, 4096), 4096);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(p[1], 1);
        dup2(p[1], 2);
        for (char **v = b->vars; *v; v++)
            putenv(*v);
        execl(M2A_BINARY, M2A_BINARY, "-c", b->config_path, (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    *rd = p[0];
    return pid;
}

/* Reads what the pipe holds (keeps the bridge's log writes flowing). */
static void drain(int rd)
{
    char buf[4096];
    while (read(rd, buf, sizeof(buf)) > 0)
        ;
}

/* Pings seen in window_ms, the pipe drained (or not) meanwhile. */
static int pings_within(int fd, int rd, bool draining, int window_ms)
{
    char msg[1024];
    uint64_t at, end = m2a_now_ms() + (uint64_t)window_ms;
    int pings = 0;
    while (m2a_now_ms() < end) {
        if (draining)
            drain(rd);
        if (recv_msg(fd, msg, sizeof(msg), 50, &at) && strcmp(msg, "WATCHDOG=1") == 0)
            pings++;
    }
    return pings;
}

START_TEST(a_stalled_main_loop_stops_the_pings)
{
    struct th_mosq *mq = th_mosq_start(TH_MOSQ_SHIPPED);
    ck_assert_ptr_nonnull(mq);
    int fd = -1;
    struct th_bridge *b = bridge_with_notify(mq, &fd);
    int rd = -1;
    pid_t pid = spawn_piped(b, &rd);
    ck_assert_int_eq(fcntl(rd, F_SETFL, O_NONBLOCK), 0);

    /* Running: pings while the log is read. */
    ck_assert_int_ge(pings_within(fd, rd, true, 3000), 4);

    /* The log is no longer read: once the page is full (a stats line a
     * second), the main loop blocks in its write and the pings stop. */
    uint64_t deadline = m2a_now_ms() + 60000;
    bool stalled = false;
    while (!stalled && m2a_now_ms() < deadline)
        stalled = pings_within(fd, rd, false, 2500) == 0;
    ck_assert_msg(stalled, "pings went on for 60 s with the log pipe full");
    ck_assert_int_eq(kill(pid, 0), 0); /* alive: stalled, not dead */
    ck_assert_int_eq(waitpid(pid, NULL, WNOHANG), 0);
    /* Still none 2.5 s later (over twice the interval: systemd would have
     * killed it by now). */
    ck_assert_int_eq(pings_within(fd, rd, false, 2500), 0);

    /* The log is read again: the loop turns and pings again. */
    ck_assert_int_ge(pings_within(fd, rd, true, 3000), 3);

    kill(pid, SIGTERM);
    int status = 0;
    uint64_t end = m2a_now_ms() + 20000;
    pid_t w = 0;
    while ((w = waitpid(pid, &status, WNOHANG)) == 0 && m2a_now_ms() < end)
        drain(rd), th_sleep_ms(20);
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
    }
    ck_assert(w == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    close(rd);
    close(fd);
    th_bridge_free(b);
    th_mosq_free(mq);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("notify");
    TCase *tc = tcase_create("notify");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, ready_status_watchdog_stopping_in_order);
    tcase_add_test(tc, a_stalled_main_loop_stops_the_pings);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return m2a_check_run(suite());
}
