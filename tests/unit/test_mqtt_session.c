/* test_mqtt_session.c - the MQTT session against fake brokers that do what
 * a real one will not do on demand: show the CONNECT bytes, never answer,
 * refuse a subscription once, close every session right after its CONNACK,
 * hold every PUBACK back.
 *
 * The session runs on a loop in the test's thread; the fake broker is a
 * thread of its own on an ephemeral loopback port. Every wait is bounded:
 * the loop runs until a condition holds or a deadline passes. The
 * take-over, refused-subscription and never-answering cases are also
 * tested with real Mosquitto and the real binary (tests/integration/
 * test_mqtt_side.c). */
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/loop.h"
#include "mqtt2amqp/mqtt_session.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"
#include "files.h"

#define STEP_MS 5000

/* --- a scripted fake broker -------------------------------------------------------- */

enum mode {
    SILENT,    /* accept, read, never answer */
    KICK,      /* CONNACK, then close at once: what a take-over looks like */
    SUBREFUSE, /* CONNACK; refuse the first SUBSCRIBE (0x87), grant the others */
    PUBACK,    /* CONNACK; PUBACK every QoS 1 PUBLISH */
    HOLD,      /* CONNACK (MQTT 5: with Receive Maximum HOLD_RECEIVE_MAX); count
                  QoS 1 PUBLISHes, PUBACK none */
};
#define HOLD_RECEIVE_MAX 30

struct broker {
    int lfd, port;
    enum mode mode;
    atomic_bool stop;
    pthread_t thread;
    /* results */
    unsigned char connect[512]; /* the first CONNECT's body */
    size_t connect_len;
    atomic_int connections;
    atomic_int subscribes;
    atomic_int pubacks;
    atomic_int held; /* QoS 1 PUBLISHes not PUBACKed (HOLD) */
};

static int read_full(int fd, void *buf, size_t n, struct broker *br)
{
    unsigned char *p = buf;
    while (n > 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = poll(&pfd, 1, 50);
        if (atomic_load(&br->stop))
            return -1;
        if (r <= 0)
            continue;
        ssize_t got = read(fd, p, n);
        if (got <= 0)
            return -1;
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

/* One packet: its first byte and body. -1 on EOF, error or stop. */
static int read_packet(int fd, unsigned char *type, unsigned char *buf, size_t cap, size_t *len,
                       struct broker *br)
{
    if (read_full(fd, type, 1, br))
        return -1;
    size_t rl = 0;
    for (int shift = 0; shift < 28; shift += 7) {
        unsigned char v;
        if (read_full(fd, &v, 1, br))
            return -1;
        rl |= (size_t)(v & 127) << shift;
        if (!(v & 128))
            break;
    }
    if (rl > cap)
        return -1;
    *len = rl;
    return read_full(fd, buf, rl, br);
}

static void send_bytes(int fd, const void *p, size_t n)
{
    (void)!write(fd, p, n);
}

/* Serves one connection as the mode says; returns when it ends. */
static void serve(struct broker *br, int fd)
{
    unsigned char type, buf[4096];
    size_t len;
    int first = atomic_fetch_add(&br->connections, 1) == 0;
    if (read_packet(fd, &type, buf, sizeof(buf), &len, br) || (type >> 4) != 1)
        return;
    if (first) {
        memcpy(br->connect, buf, len < sizeof(br->connect) ? len : sizeof(br->connect));
        br->connect_len = len;
    }
    if (br->mode == SILENT) {
        while (read_packet(fd, &type, buf, sizeof(buf), &len, br) == 0)
            ;
        return;
    }
    bool v5 = len > 6 && buf[6] == 5;
    if (v5 && br->mode == HOLD) /* properties: Receive Maximum (0x21) */
        send_bytes(fd, "\x20\x06\x00\x00\x03\x21\x00\x1e", 8);
    else if (v5)
        send_bytes(fd, "\x20\x03\x00\x00\x00", 5);
    else
        send_bytes(fd, "\x20\x02\x00\x00", 4);
    if (br->mode == KICK)
        return;
    while (read_packet(fd, &type, buf, sizeof(buf), &len, br) == 0) {
        if ((type >> 4) == 8 && len >= 2) { /* SUBSCRIBE */
            int n = atomic_fetch_add(&br->subscribes, 1);
            unsigned char code = br->mode == SUBREFUSE && n == 0 ? 0x87 : 1;
            unsigned char v5ack[6] = {0x90, 4, buf[0], buf[1], 0, code};
            unsigned char ack[5] = {0x90, 3, buf[0], buf[1], code};
            if (v5)
                send_bytes(fd, v5ack, sizeof(v5ack));
            else
                send_bytes(fd, ack, sizeof(ack));
        } else if ((type >> 4) == 3 && ((type >> 1) & 3) == 1 && br->mode == HOLD) {
            atomic_fetch_add(&br->held, 1);
        } else if ((type >> 4) == 3 && ((type >> 1) & 3) == 1) { /* PUBLISH QoS 1 */
            size_t tl = (size_t)buf[0] << 8 | buf[1];
            if (2 + tl + 2 > len)
                return;
            unsigned char ack[4] = {0x40, 2, buf[2 + tl], buf[3 + tl]};
            send_bytes(fd, ack, sizeof(ack));
            atomic_fetch_add(&br->pubacks, 1);
        } else if ((type >> 4) == 12) {
            send_bytes(fd, "\xd0\x00", 2);
        }
    }
}

static void *broker_run(void *arg)
{
    struct broker *br = arg;
    while (!atomic_load(&br->stop)) {
        struct pollfd p = {.fd = br->lfd, .events = POLLIN};
        if (poll(&p, 1, 50) != 1)
            continue;
        int fd = accept(br->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        serve(br, fd);
        close(fd);
    }
    return NULL;
}

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(fd, 8), 0);
    socklen_t al = sizeof(a);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    *port = ntohs(a.sin_port);
    return fd;
}

static void broker_start(struct broker *br, enum mode mode)
{
    memset(br, 0, sizeof(*br));
    br->mode = mode;
    br->lfd = listen_any(&br->port);
    ck_assert_int_eq(pthread_create(&br->thread, NULL, broker_run, br), 0);
}

static void broker_stop(struct broker *br)
{
    atomic_store(&br->stop, true);
    pthread_join(br->thread, NULL);
    close(br->lfd);
}

/* A loopback port nobody listens on: bound, never listened to. */
static int dead_port(int *holder)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t al = sizeof(a);
    ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&a, &al), 0);
    *holder = fd;
    return ntohs(a.sin_port);
}

/* --- the session side --------------------------------------------------------------- */

struct rig {
    struct m2a_conf_endpoint ep[2];
    struct m2a_conf_mqtt conf;
    struct m2a_loop *loop;
    struct m2a_mqtt_session *s;
    char *logpath;
    int logfd;
    /* hook counters */
    int ups, downs, takeovers, refusals, grants, published;
    size_t up_endpoint;
};

static void h_up(void *ud, size_t ep, bool present)
{
    (void)present;
    struct rig *r = ud;
    r->ups++;
    r->up_endpoint = ep;
}

static void h_down(void *ud)
{
    ((struct rig *)ud)->downs++;
}

static void h_takeover(void *ud, unsigned n)
{
    (void)n;
    ((struct rig *)ud)->takeovers++;
}

static void h_suback(void *ud, const char *filter, int code)
{
    (void)filter;
    struct rig *r = ud;
    if (code >= 0x80)
        r->refusals++;
    else
        r->grants++;
}

static void h_published(void *ud, int mid, int rc)
{
    (void)mid;
    if (rc < 0x80)
        ((struct rig *)ud)->published++;
}

static void rig_start_sending(struct rig *r, const int *ports, size_t n, int protocol,
                              uint64_t timeout_ms, int send_maximum)
{
    memset(r, 0, sizeof(*r));
    for (size_t i = 0; i < n; i++)
        r->ep[i] = (struct m2a_conf_endpoint){.host = "127.0.0.1", .port = ports[i]};
    r->conf = (struct m2a_conf_mqtt){.endpoints = r->ep,
                                     .nendpoints = n,
                                     .client_id = "session-test",
                                     .keepalive = 60,
                                     .protocol = protocol,
                                     .receive_maximum = 1234,
                                     .session_expiry = 4321,
                                     .reconnect_min_ms = 20,
                                     .reconnect_max_ms = 40,
                                     .connect_timeout_ms = timeout_ms,
                                     .max_message_bytes = 1000000};
    r->logpath = xasprintf("/tmp/m2a-session-log-%d", (int)getpid());
    r->logfd = open(r->logpath, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ck_assert_int_ge(r->logfd, 0);
    m2a_log_set_fd(r->logfd);
    r->loop = m2a_loop_new();
    struct m2a_mqtt_session_opts o = {.conf = &r->conf,
                                      .log_name = "mqtt",
                                      .loop = r->loop,
                                      .max_packet_bytes = 1000000 + M2A_MQTT_PUBLISH_OVERHEAD,
                                      .send_maximum = send_maximum,
                                      .hooks = {.ud = r,
                                                .on_up = h_up,
                                                .on_down = h_down,
                                                .on_takeover = h_takeover,
                                                .on_suback = h_suback,
                                                .on_published = h_published}};
    char err[256];
    ck_assert_msg(m2a_mqtt_session_new(&o, &r->s, err, sizeof(err)) == 0, "%s", err);
    char *filters[] = {"dev/#"};
    m2a_mqtt_session_subscribe(r->s, filters, 1, NULL, NULL);
    m2a_mqtt_session_start(r->s);
}

static void rig_start(struct rig *r, const int *ports, size_t n, int protocol, uint64_t timeout_ms)
{
    rig_start_sending(r, ports, n, protocol, timeout_ms, 0);
}

/* Runs the loop until cond(r) or ms pass. */
static bool run_until(struct rig *r, bool (*cond)(struct rig *), int ms)
{
    uint64_t end = m2a_now_ms() + (uint64_t)ms;
    while (!(cond && cond(r)) && m2a_now_ms() < end) {
        m2a_mqtt_session_arm(r->s);
        m2a_loop_once(r->loop, m2a_now_ms() + 20 < end ? m2a_now_ms() + 20 : end);
    }
    return cond && cond(r);
}

static char *rig_log(struct rig *r)
{
    size_t len;
    return th_read_file(r->logpath, &len);
}

static void rig_free(struct rig *r)
{
    m2a_mqtt_session_close(r->s, m2a_now_ms() + 1000, true);
    m2a_mqtt_session_free(r->s);
    m2a_loop_free(r->loop);
    m2a_log_set_fd(2);
    close(r->logfd);
    unlink(r->logpath);
    free(r->logpath);
}

static bool is_up(struct rig *r)
{
    return r->ups > 0;
}

/* The property `id` in a v5 CONNECT body: its 4-byte (or 2-byte) value. */
static long connect_prop(const unsigned char *b, size_t len, int id)
{
    size_t pos = 10; /* "\0\4MQTT", level, flags, keepalive */
    size_t plen = 0;
    for (int shift = 0; pos < len; shift += 7) {
        plen |= (size_t)(b[pos] & 127) << shift;
        if (!(b[pos++] & 128))
            break;
    }
    size_t end = pos + plen;
    while (pos < end && end <= len) {
        int pid = b[pos++];
        if (pid == 0x11 || pid == 0x27) { /* four-byte integers */
            long v = (long)b[pos] << 24 | b[pos + 1] << 16 | b[pos + 2] << 8 | b[pos + 3];
            if (pid == id)
                return v;
            pos += 4;
        } else if (pid == 0x21) { /* receive maximum: two bytes */
            long v = b[pos] << 8 | b[pos + 1];
            if (pid == id)
                return v;
            pos += 2;
        } else {
            return -2; /* a property this test does not expect */
        }
    }
    return -1;
}

/* The CONNECT the non-blocking connect sends carries the MQTT 5 properties
 * stored beforehand: if a libmosquitto ever stops sending them, the session
 * would silently lose its expiry (and the broker its queue). */
START_TEST(connect_carries_session_expiry_and_maximum_packet_size)
{
    struct broker br;
    struct rig r;
    broker_start(&br, PUBACK);
    rig_start(&r, &br.port, 1, M2A_MQTT_V5, STEP_MS);
    ck_assert(run_until(&r, is_up, STEP_MS));
    ck_assert_int_ge(br.connect_len, 10);
    ck_assert_int_eq(br.connect[6], 5);        /* MQTT 5 */
    ck_assert_int_eq(br.connect[7] & 0x02, 0); /* clean start off */
    ck_assert_int_eq(connect_prop(br.connect, br.connect_len, 0x11), 4321);
    ck_assert_int_eq(connect_prop(br.connect, br.connect_len, 0x27),
                     1000000 + M2A_MQTT_PUBLISH_OVERHEAD);
    ck_assert_int_eq(connect_prop(br.connect, br.connect_len, 0x21), 1234);
    rig_free(&r);
    broker_stop(&br);
}
END_TEST

static bool failed_once(struct rig *r)
{
    char *log = rig_log(r);
    bool found = log && strstr(log, "no CONNACK within") != NULL;
    free(log);
    return found;
}

/* A broker that accepts the TCP connection and never answers: the log says
 * so, not "keepalive timeout (no PINGRESP read)", and says it within the
 * connect timeout. */
START_TEST(no_connack_is_reported_as_such_within_the_timeout)
{
    struct broker br;
    struct rig r;
    broker_start(&br, SILENT);
    uint64_t t0 = m2a_now_ms();
    rig_start(&r, &br.port, 1, M2A_MQTT_V5, 300);
    ck_assert(run_until(&r, failed_once, STEP_MS));
    ck_assert_uint_lt(m2a_now_ms() - t0, 2000);
    char *log = rig_log(&r);
    ck_assert_msg(strstr(log, "connection failed before CONNACK from 127.0.0.1:") &&
                      strstr(log, "no CONNACK within 0.3 s (TCP connected, CONNECT sent, no "
                                  "CONNACK)"),
                  "log: %s", log);
    ck_assert_msg(!strstr(log, "keepalive"), "log: %s", log);
    free(log);
    rig_free(&r);
    broker_stop(&br);
}
END_TEST

static bool refused_logged(struct rig *r)
{
    char *log = rig_log(r);
    bool found = log && strstr(log, "Connection refused") != NULL;
    free(log);
    return found;
}

START_TEST(connection_refused_is_reported_as_such)
{
    struct rig r;
    int holder, port = dead_port(&holder);
    rig_start(&r, &port, 1, M2A_MQTT_V5, STEP_MS);
    ck_assert(run_until(&r, refused_logged, STEP_MS));
    char *log = rig_log(&r);
    char want[128];
    snprintf(want, sizeof(want), "cannot connect to 127.0.0.1:%d: Connection refused", port);
    ck_assert_msg(strstr(log, want), "log: %s", log);
    free(log);
    rig_free(&r);
    close(holder);
}
END_TEST

/* Two brokers, the first refusing connections: whichever the shuffled
 * order tries first, the session ends up on the live one and the log says
 * where it went next. */
START_TEST(a_dead_broker_is_left_for_the_next_one)
{
    struct broker br;
    struct rig r;
    int holder;
    broker_start(&br, PUBACK);
    int ports[2] = {dead_port(&holder), br.port};
    rig_start(&r, ports, 2, M2A_MQTT_V311, STEP_MS);
    ck_assert(run_until(&r, is_up, STEP_MS));
    ck_assert_uint_eq(r.up_endpoint, 1);
    char *log = rig_log(&r);
    char want[160];
    snprintf(want, sizeof(want),
             "connected to 127.0.0.1:%d (MQTT 3.1.1, session present: no, "
             "broker 2 of 2)",
             br.port);
    ck_assert_msg(strstr(log, want), "log: %s", log);
    if (strstr(log, "Connection refused")) { /* the dead one came first */
        snprintf(want, sizeof(want), "next: 127.0.0.1:%d in", br.port);
        ck_assert_msg(strstr(log, want), "log: %s", log);
    }
    free(log);
    rig_free(&r);
    broker_stop(&br);
    close(holder);
}
END_TEST

static bool takeover_seen(struct rig *r)
{
    return r->takeovers > 0;
}

/* Sessions the broker closes right after CONNACK, over and over, while
 * connecting works: the third in a row is taken for a take-over fight, the
 * log says what is probably happening, and the session backs off (at least
 * a second) instead of reconnecting at once. Before, the backoff reset on
 * every CONNACK: two bridges reconnected 84 times in 12 s. */
START_TEST(repeated_kicks_after_connack_back_off_and_say_why)
{
    struct broker br;
    struct rig r;
    broker_start(&br, KICK);
    rig_start(&r, &br.port, 1, M2A_MQTT_V5, STEP_MS);
    ck_assert(run_until(&r, takeover_seen, STEP_MS));
    ck_assert_int_eq(r.ups, M2A_MQTT_TAKEOVER_STREAK);
    int at = atomic_load(&br.connections);
    run_until(&r, NULL, 400); /* the take-over backoff is at least 500 ms (1 s, jittered) */
    ck_assert_int_eq(atomic_load(&br.connections), at);
    char *log = rig_log(&r);
    ck_assert_msg(strstr(log, "another client with client_id session-test is probably connected") &&
                      strstr(log, "each bridge needs its own client_id"),
                  "log: %s", log);
    free(log);
    rig_free(&r);
    broker_stop(&br);
}
END_TEST

static bool refused_once(struct rig *r)
{
    return r->refusals == 1;
}

static bool granted_after_refusal(struct rig *r)
{
    return r->refusals == 1 && r->grants == 1;
}

/* A refused subscription is named by m2a_mqtt_session_refused (what
 * /readyz shows) and retried without a reconnect until granted. */
START_TEST(refused_subscription_is_retried_until_granted)
{
    struct broker br;
    struct rig r;
    char text[512];
    broker_start(&br, SUBREFUSE);
    rig_start(&r, &br.port, 1, M2A_MQTT_V5, STEP_MS);
    ck_assert(run_until(&r, is_up, STEP_MS));
    ck_assert(run_until(&r, refused_once, STEP_MS));
    ck_assert_uint_eq(m2a_mqtt_session_refused(r.s, "mqtt: ", text, sizeof(text)), 1);
    ck_assert_str_eq(text, "mqtt: subscription to dev/# refused by the broker: Not authorized (1 "
                           "refusals, retrying)\n");
    ck_assert(run_until(&r, granted_after_refusal, STEP_MS));
    ck_assert_uint_eq(m2a_mqtt_session_refused(r.s, "", text, sizeof(text)), 0);
    ck_assert_str_eq(text, "");
    ck_assert_int_eq(r.ups, 1); /* retried on the same connection */
    ck_assert_int_eq(atomic_load(&br.connections), 1);
    rig_free(&r);
    broker_stop(&br);
}
END_TEST

static bool all_published(struct rig *r)
{
    return r->published == 10;
}

/* The same session publishes: QoS 1 messages go out with the next write
 * and their PUBACKs come back through on_published (the downlink's use). */
START_TEST(published_messages_are_acknowledged_through_the_hook)
{
    struct broker br;
    struct rig r;
    broker_start(&br, PUBACK);
    rig_start(&r, &br.port, 1, M2A_MQTT_V5, STEP_MS);
    ck_assert_int_eq(m2a_mqtt_session_publish(r.s, NULL, "down/1", "x", 1, 1, false, NULL),
                     M2A_ERR_CLOSED);
    ck_assert(run_until(&r, is_up, STEP_MS));
    ck_assert(m2a_mqtt_session_up(r.s));
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(m2a_mqtt_session_publish(r.s, NULL, "down/1", "x", 1, 1, false, NULL), 0);
    ck_assert(run_until(&r, all_published, STEP_MS));
    ck_assert_int_eq(atomic_load(&br.pubacks), 10);
    rig_free(&r);
    broker_stop(&br);
}
END_TEST

static struct broker *held_br;
static int held_want;

static bool more_held_than_wanted(struct rig *r)
{
    (void)r;
    return atomic_load(&held_br->held) > held_want;
}

static bool held_as_wanted(struct rig *r)
{
    (void)r;
    return atomic_load(&held_br->held) >= held_want;
}

/* Publishes 100 QoS 1 messages to a broker that PUBACKs none with this
 * send_maximum; returns how many reached it: all it takes within a step, then
 * 300 ms more to see that no more come. */
static int unacked_reaching(int protocol, int send_maximum, int want)
{
    struct broker br;
    struct rig r;
    broker_start(&br, HOLD);
    rig_start_sending(&r, &br.port, 1, protocol, STEP_MS, send_maximum);
    ck_assert(run_until(&r, is_up, STEP_MS));
    for (int i = 0; i < 100; i++)
        ck_assert_int_eq(m2a_mqtt_session_publish(r.s, NULL, "down/1", "x", 1, 1, false, NULL), 0);
    held_br = &br;
    held_want = want;
    ck_assert_msg(run_until(&r, held_as_wanted, STEP_MS), "%d of %d PUBLISHes arrived",
                  atomic_load(&br.held), want);
    run_until(&r, more_held_than_wanted, 300);
    int n = atomic_load(&br.held);
    rig_free(&r);
    broker_stop(&br);
    return n;
}

/* libmosquitto sends 20 unacknowledged QoS 1 PUBLISHes at most unless told
 * otherwise: send_maximum lifts that (the downlinks ask for their prefetch),
 * and under MQTT 5 the broker's Receive Maximum still rules. */
START_TEST(send_maximum_bounds_unacknowledged_publishes)
{
    ck_assert_int_eq(unacked_reaching(M2A_MQTT_V311, 0, 20), 20);
    ck_assert_int_eq(unacked_reaching(M2A_MQTT_V311, 64, 64), 64);
    ck_assert_int_eq(unacked_reaching(M2A_MQTT_V5, 64, HOLD_RECEIVE_MAX), HOLD_RECEIVE_MAX);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("mqtt_session");
    TCase *tc = tcase_create("session");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, connect_carries_session_expiry_and_maximum_packet_size);
    tcase_add_test(tc, no_connack_is_reported_as_such_within_the_timeout);
    tcase_add_test(tc, connection_refused_is_reported_as_such);
    tcase_add_test(tc, a_dead_broker_is_left_for_the_next_one);
    tcase_add_test(tc, repeated_kicks_after_connack_back_off_and_say_why);
    tcase_add_test(tc, refused_subscription_is_retried_until_granted);
    tcase_add_test(tc, published_messages_are_acknowledged_through_the_hook);
    tcase_add_test(tc, send_maximum_bounds_unacknowledged_publishes);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    m2a_log_set_level(M2A_LOG_DEBUG);
    return m2a_check_run(suite());
}
