/* test_puback_order.c - proves that mqtt_in lets a PUBACK leave only after the
 * message is in a spool segment, and never when the spool refused it.
 *
 * A fake MQTT 3.1.1 broker (a thread in this test, on an ephemeral loopback
 * port) does what a real broker won't let us observe: it notes the exact
 * moment each PUBACK arrives and, at that moment, reads the spool's segment
 * files looking for the message's payload. The bridge side is the real
 * mqtt_in with the real routes and spool. Every wait is bounded by a poll
 * timeout on the socket. */
#include <check.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/generation.h"
#include "mqtt2amqp/log.h"
#include "mqtt2amqp/mqtt_in.h"
#include "mqtt2amqp/routes.h"
#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/stats.h"
#include "mqtt2amqp/util.h"
#include "check_main.h"
#include "files.h"

#define MAX_MSGS       200
#define PAYLOAD_LEN    100
#define STEP_TIMEOUT   5000 /* ms for each broker step that must happen */
#define NO_ACK_WINDOW  2000 /* ms during which a refused message must not be acked */
#define PKT_CONNECT    1
#define PKT_SUBSCRIBE  8
#define PKT_PUBACK     4
#define PKT_PINGREQ    12
#define PKT_DISCONNECT 14

/* --- a tiny MQTT 3.1.1 broker ----------------------------------------------------- */

struct broker {
    int lfd;
    int port;
    const char *spool_dir;
    int nmsgs;
    bool sequential;        /* send each message after the previous one's PUBACK */
    size_t sizes[MAX_MSGS]; /* payload sizes (0: PAYLOAD_LEN) */
    bool no_ack[MAX_MSGS];  /* this message must never be acknowledged */
    bool dropped[MAX_MSGS]; /* acknowledged without being spooled */
    int suback_code;        /* granted QoS or failure (0x80) */
    char *payloads[MAX_MSGS];
    /* results, read by the test after joining */
    char fail[256];
    int connect_level;
    int connect_flags;
    char sub_filter[128];
    int sub_qos;
    bool acked[MAX_MSGS];
    int nacked;               /* PUBACKs received */
    int acked_before_spooled; /* PUBACKs whose payload was not yet in a segment */
    int acked_unexpected;     /* PUBACKs with an unknown id or for a no_ack message */
    bool closed_by_client;    /* EOF or reset from the client */
    bool disconnect_packet;   /* the client sent DISCONNECT */
};

/* 0 ok, -1 deadline passed, -2 EOF or error. */
static int read_full(int fd, void *buf, size_t n, uint64_t deadline)
{
    unsigned char *p = buf;
    while (n > 0) {
        uint64_t now = m2a_now_ms();
        if (now >= deadline)
            return -1;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        int r = poll(&pfd, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0)
            return -1;
        ssize_t got = read(fd, p, n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -2;
        p += got;
        n -= (size_t)got;
    }
    return 0;
}

/* Reads one packet: *type (high nibble), body into buf. Same returns as read_full. */
static int read_packet(int fd, int *type, unsigned char *buf, size_t cap, size_t *len,
                       uint64_t deadline)
{
    unsigned char b;
    int rc = read_full(fd, &b, 1, deadline);
    if (rc)
        return rc;
    *type = b >> 4;
    size_t rl = 0;
    for (int shift = 0; shift < 28; shift += 7) {
        unsigned char v;
        if ((rc = read_full(fd, &v, 1, deadline)))
            return rc;
        rl |= (size_t)(v & 127) << shift;
        if (!(v & 128))
            break;
    }
    if (rl > cap)
        return -2;
    *len = rl;
    return read_full(fd, buf, rl, deadline);
}

static void write_all(int fd, const void *p, size_t n)
{
    const unsigned char *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        c += w;
        n -= (size_t)w;
    }
}

/* Whether needle is in any *.seg file under dir, read right now. */
static bool in_segments(const char *dir, const char *needle)
{
    bool found = false;
    DIR *d = opendir(dir);
    if (!d)
        return false;
    struct dirent *e;
    while (!found && (e = readdir(d)) != NULL) {
        size_t nl = strlen(e->d_name);
        if (nl < 4 || strcmp(e->d_name + nl - 4, ".seg") != 0)
            continue;
        char *path = xasprintf("%s/%s", dir, e->d_name);
        size_t len = 0;
        char *text = th_read_file(path, &len);
        found = text && memmem(text, len, needle, strlen(needle)) != NULL;
        free(text);
        free(path);
    }
    closedir(d);
    return found;
}

static void publish(struct broker *br, int fd, int mid)
{
    static const char topic[] = "dev/1/temp";
    const char *payload = br->payloads[mid - 1];
    size_t tl = sizeof(topic) - 1, pl = strlen(payload), rl = 2 + tl + 2 + pl;
    struct m2a_buf pkt = {0};
    m2a_buf_append_char(&pkt, 0x32); /* PUBLISH, QoS 1 */
    do {
        m2a_buf_append_char(&pkt, (char)((rl & 127) | (rl > 127 ? 128 : 0)));
        rl >>= 7;
    } while (rl > 0);
    m2a_buf_append_char(&pkt, 0);
    m2a_buf_append_char(&pkt, (char)tl);
    m2a_buf_append(&pkt, topic, tl);
    m2a_buf_append_char(&pkt, (char)(mid >> 8));
    m2a_buf_append_char(&pkt, (char)mid);
    m2a_buf_append(&pkt, payload, pl);
    write_all(fd, pkt.data, pkt.len);
    m2a_buf_free(&pkt);
}

/* CONNECT -> CONNACK, SUBSCRIBE -> SUBACK. Returns 0 or sets br->fail. */
static int handshake(struct broker *br, int fd)
{
    unsigned char buf[1024];
    size_t len;
    int type;
    if (read_packet(fd, &type, buf, sizeof(buf), &len, m2a_now_ms() + STEP_TIMEOUT) || type != 1 ||
        len < 10) {
        snprintf(br->fail, sizeof(br->fail), "no CONNECT");
        return -1;
    }
    br->connect_level = buf[6];
    br->connect_flags = buf[7];
    write_all(fd, "\x20\x02\x00\x00", 4);

    if (read_packet(fd, &type, buf, sizeof(buf), &len, m2a_now_ms() + STEP_TIMEOUT) ||
        type != PKT_SUBSCRIBE || len < 6) {
        snprintf(br->fail, sizeof(br->fail), "no SUBSCRIBE");
        return -1;
    }
    size_t fl = (size_t)buf[2] << 8 | buf[3];
    if (fl >= sizeof(br->sub_filter) || 4 + fl + 1 > len) {
        snprintf(br->fail, sizeof(br->fail), "malformed SUBSCRIBE");
        return -1;
    }
    memcpy(br->sub_filter, buf + 4, fl);
    br->sub_qos = buf[4 + fl];
    unsigned char suback[5] = {0x90, 3, buf[0], buf[1], (unsigned char)br->suback_code};
    write_all(fd, suback, sizeof(suback));
    return 0;
}

static bool all_acked(const struct broker *br, int upto)
{
    for (int i = 0; i < upto; i++)
        if (!br->no_ack[i] && !br->acked[i])
            return false;
    return true;
}

/* Collects PUBACKs until every message up to upto that should be acked is,
 * or, when one of them must not be, until the window closes. At the moment a
 * PUBACK arrives, looks for its payload in the spool's segment files. */
static void collect_acks(struct broker *br, int fd, int upto)
{
    unsigned char buf[1024];
    size_t len;
    int type;
    bool wait_window = false;
    for (int i = 0; i < upto; i++)
        wait_window |= br->no_ack[i];
    uint64_t deadline = m2a_now_ms() + (wait_window ? NO_ACK_WINDOW : STEP_TIMEOUT);
    while (wait_window || !all_acked(br, upto)) {
        int rc = read_packet(fd, &type, buf, sizeof(buf), &len, deadline);
        if (rc == -1)
            return;
        if (rc != 0) { /* -2, the only other code; written so the compiler sees it too */
            br->closed_by_client = true;
            return;
        }
        if (type == PKT_PUBACK && len >= 2) {
            int mid = buf[0] << 8 | buf[1];
            br->nacked++;
            if (mid < 1 || mid > br->nmsgs || br->no_ack[mid - 1]) {
                br->acked_unexpected++;
                continue;
            }
            br->acked[mid - 1] = true;
            if (!br->dropped[mid - 1] && !in_segments(br->spool_dir, br->payloads[mid - 1]))
                br->acked_before_spooled++;
        } else if (type == PKT_PINGREQ) {
            write_all(fd, "\xd0\x00", 2);
        } else if (type == PKT_DISCONNECT) {
            br->disconnect_packet = true;
        }
    }
}

static void *broker_run(void *arg)
{
    struct broker *br = arg;
    struct pollfd p = {.fd = br->lfd, .events = POLLIN};
    if (poll(&p, 1, STEP_TIMEOUT) != 1) {
        snprintf(br->fail, sizeof(br->fail), "the bridge did not connect");
        return NULL;
    }
    int fd = accept(br->lfd, NULL, NULL);
    if (fd < 0) {
        snprintf(br->fail, sizeof(br->fail), "accept: %s", strerror(errno));
        return NULL;
    }
    if (handshake(br, fd) == 0) {
        for (int mid = 1; mid <= br->nmsgs; mid++) {
            publish(br, fd, mid);
            if (br->sequential || mid == br->nmsgs)
                collect_acks(br, fd, mid);
            if (br->closed_by_client)
                break;
        }
    }
    close(fd);
    return NULL;
}

static void broker_listen(struct broker *br)
{
    br->lfd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(br->lfd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(br->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(br->lfd, 4), 0);
    socklen_t al = sizeof(a);
    ck_assert_int_eq(getsockname(br->lfd, (struct sockaddr *)&a, &al), 0);
    br->port = ntohs(a.sin_port);
}

/* --- the bridge side -------------------------------------------------------------- */

struct rig {
    char *dir;
    struct m2a_conf_endpoint endpoint;
    uint64_t spool_max;
    struct broker br;
    struct m2a_config cfg;
    struct m2a_generation *gen;
    struct m2a_spool *spool;
    struct m2a_stats stats;
    struct m2a_mqtt_in *mi;
    pthread_t broker_thread;
};

/* Starts mqtt_in from a SCHED_IDLE thread: its thread inherits the policy,
 * the test's own threads keep theirs. */
struct starter {
    struct m2a_mqtt_in_opts mo;
    struct m2a_mqtt_in *mi;
    int sched_rc;
    int rc;
    char err[512];
};

static void *start_idle(void *arg)
{
    struct starter *st = arg;
    struct sched_param sp = {.sched_priority = 0};
    st->sched_rc = pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
    st->rc = m2a_mqtt_in_start(&st->mo, &st->mi, st->err, sizeof(st->err));
    return NULL;
}

/* Defaults: nmsgs messages of PAYLOAD_LEN bytes, all acknowledged, sent in
 * one burst. The test adjusts r->br before rig_start. */
static void rig_init(struct rig *r, int nmsgs, uint64_t spool_max)
{
    memset(r, 0, sizeof(*r));
    r->spool_max = spool_max;
    r->br.nmsgs = nmsgs;
    r->br.suback_code = 1;
    r->dir = th_tmpdir_new("puback");
    r->br.spool_dir = r->dir;
    broker_listen(&r->br);
}

static void rig_start(struct rig *r)
{
    char err[512] = "";
    for (int i = 0; i < r->br.nmsgs; i++) {
        size_t n = r->br.sizes[i] ? r->br.sizes[i] : PAYLOAD_LEN;
        char *p = xmalloc(n + 1);
        int head = snprintf(p, n + 1, "payload-%d-%d-", (int)getpid(), i);
        memset(p + head, 'a' + i % 26, n - (size_t)head);
        p[n] = '\0';
        r->br.payloads[i] = p;
    }

    r->endpoint = (struct m2a_conf_endpoint){.host = "127.0.0.1", .port = r->br.port};
    r->cfg.mqtt = (struct m2a_conf_mqtt){.host = "127.0.0.1",
                                         .port = r->br.port,
                                         .endpoints = &r->endpoint,
                                         .nendpoints = 1,
                                         .connect_timeout_ms = 10000,
                                         .max_message_bytes = 16u << 20,
                                         .client_id = "puback-order",
                                         .clean_session = false,
                                         .keepalive = 60,
                                         .protocol = 311,
                                         .receive_maximum = 65535,
                                         .session_expiry = 3600,
                                         /* no reconnect inside the test window */
                                         .reconnect_min_ms = 10000,
                                         .reconnect_max_ms = 10000};
    /* One route; the generation owns (and frees) the config it is built from. */
    struct m2a_config *rcfg = xcalloc(1, sizeof(*rcfg));
    rcfg->nroutes = 1;
    rcfg->routes = xcalloc(1, sizeof(*rcfg->routes));
    rcfg->routes[0] = (struct m2a_conf_route){.name = xstrdup("all"),
                                              .topic = xstrdup("dev/#"),
                                              .exchange = xstrdup("amq.topic"),
                                              .persistent = true};
    ck_assert_msg(m2a_generation_new(rcfg, NULL, NULL, &r->gen, err, sizeof(err)) == 0, "%s", err);

    struct m2a_spool_opts so = {.dir = r->dir,
                                .max_bytes = r->spool_max,
                                .segment_bytes = 64u << 20,
                                .fsync = M2A_FSYNC_BATCH};
    ck_assert_msg(m2a_spool_open(&so, &r->spool, NULL, err, sizeof(err)) == 0, "%s", err);

    /* Make a wrong order visible every time, not just when a race goes our
     * way: on one CPU, with the bridge's thread at SCHED_IDLE, the broker
     * thread preempts the bridge as soon as a PUBACK reaches its socket and
     * inspects the segments before the bridge can run on to a late flush. */
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(sched_getcpu() >= 0 ? sched_getcpu() : 0, &one);
    ck_assert_int_eq(sched_setaffinity(0, sizeof(one), &one), 0);
    ck_assert_int_eq(pthread_create(&r->broker_thread, NULL, broker_run, &r->br), 0);
    /* The pause threshold is a separate behaviour: keep it out of reach here,
     * so that a small spool fails at append instead of pausing reads. */
    struct starter st = {.mo = {.conf = &r->cfg.mqtt,
                                .generation = r->gen,
                                .spool = r->spool,
                                .spool_max_bytes = 1ull << 40,
                                .stats = &r->stats}};
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, start_idle, &st), 0);
    pthread_join(t, NULL);
    ck_assert_int_eq(st.sched_rc, 0);
    ck_assert_msg(st.rc == 0, "%s", st.err);
    r->mi = st.mi;
}

/* Joins the broker (its waits are bounded), then stops the bridge. */
static void rig_finish(struct rig *r)
{
    pthread_join(r->broker_thread, NULL);
    m2a_mqtt_in_stop(r->mi);
    close(r->br.lfd);
    m2a_spool_close(r->spool);
    m2a_generation_unref(r->gen);
    ck_assert_msg(r->br.fail[0] == '\0', "fake broker: %s", r->br.fail);
}

static void rig_cleanup(struct rig *r)
{
    th_rmtree(r->dir);
    free(r->dir);
    for (int i = 0; i < r->br.nmsgs; i++)
        free(r->br.payloads[i]);
}

START_TEST(test_puback_leaves_after_spool_flush)
{
    static struct rig r;
    rig_init(&r, 1, 64u << 20);
    rig_start(&r);
    rig_finish(&r);
    ck_assert_int_eq(r.br.connect_level, 4);        /* MQTT 3.1.1 */
    ck_assert_int_eq(r.br.connect_flags & 0x02, 0); /* persistent session */
    ck_assert_str_eq(r.br.sub_filter, "dev/#");
    ck_assert_int_eq(r.br.sub_qos, 1);
    ck_assert_int_eq(r.br.nacked, 1);
    ck_assert_int_eq(r.br.acked_unexpected, 0);
    ck_assert_msg(r.br.acked_before_spooled == 0,
                  "PUBACK arrived before the record was in a spool segment");
    ck_assert_uint_eq(M2A_STAT_GET(&r.stats, received), 1);
    ck_assert_uint_eq(M2A_STAT_GET(&r.stats, spooled), 1);
    ck_assert_uint_eq(M2A_STAT_GET(&r.stats, spool_errors), 0);
    rig_cleanup(&r);
}
END_TEST

/* Many messages in one TCP burst: libmosquitto queues their PUBACKs as it
 * parses them; none may leave before the read batch is flushed. */
START_TEST(test_puback_batch_leaves_after_spool_flush)
{
    static struct rig r;
    rig_init(&r, MAX_MSGS, 64u << 20);
    rig_start(&r);
    rig_finish(&r);
    ck_assert_int_eq(r.br.nacked, MAX_MSGS);
    ck_assert_int_eq(r.br.acked_unexpected, 0);
    ck_assert_msg(r.br.acked_before_spooled == 0,
                  "%d PUBACKs arrived before their record was in a spool segment",
                  r.br.acked_before_spooled);
    ck_assert_uint_eq(M2A_STAT_GET(&r.stats, spooled), MAX_MSGS);
    rig_cleanup(&r);
}
END_TEST

/* The first message fills the spool; the second does not fit (M2A_ERR_FULL
 * at append). Its PUBACK must never leave, and the bridge must drop the
 * connection (no DISCONNECT) so that the broker redelivers. */
START_TEST(test_no_puback_when_spool_full)
{
    static struct rig r;
    rig_init(&r, 2, 1600);
    r.br.sequential = true;
    r.br.sizes[0] = r.br.sizes[1] = 1000;
    r.br.no_ack[1] = true;
    rig_start(&r);
    rig_finish(&r);
    ck_assert_msg(r.br.acked[0], "the message that fits was not acknowledged");
    ck_assert_int_eq(r.br.acked_before_spooled, 0);
    ck_assert_msg(r.br.acked_unexpected == 0, "the message the spool refused was acknowledged");
    ck_assert_msg(r.br.closed_by_client, "the bridge kept the connection open");
    ck_assert_msg(!r.br.disconnect_packet, "the bridge sent DISCONNECT instead of dropping");
    ck_assert_msg(!in_segments(r.dir, r.br.payloads[1]), "the refused record is in a segment");
    ck_assert_uint_eq(M2A_STAT_GET(&r.stats, received), 2);
    ck_assert_uint_eq(M2A_STAT_GET(&r.stats, spooled), 1);
    ck_assert_uint_eq(M2A_STAT_GET(&r.stats, spool_errors), 1);
    rig_cleanup(&r);
}
END_TEST

/* A message larger than the whole spool can never be spooled (M2A_ERR_ARG):
 * retrying would wedge the session behind it forever, so it is dropped,
 * counted, acknowledged, and the next message flows normally. Counted as
 * dropped, not as a routing error: the README's route_errors are routing
 * key and template failures (it used to count this too). */
START_TEST(test_oversized_message_dropped_not_redelivered_forever)
{
    static struct rig r;
    rig_init(&r, 2, 1600);
    r.br.sequential = true;
    r.br.sizes[0] = 2000;
    r.br.dropped[0] = true;
    rig_start(&r);
    rig_finish(&r);
    ck_assert_int_eq(r.br.nacked, 2);
    ck_assert_int_eq(r.br.acked_before_spooled, 0);
    ck_assert_msg(!r.br.closed_by_client, "the bridge dropped the connection");
    ck_assert_msg(!in_segments(r.dir, r.br.payloads[0]), "the oversized record is in a segment");
    ck_assert_msg(in_segments(r.dir, r.br.payloads[1]), "the next record is not in a segment");
    ck_assert_uint_eq(M2A_STAT_GET(&r.stats, route_errors), 0);
    ck_assert_uint_eq(M2A_STAT_GET(&r.stats, dropped), 1);
    ck_assert_uint_eq(M2A_STAT_GET(&r.stats, spooled), 1);
    ck_assert_uint_eq(M2A_STAT_GET(&r.stats, spool_errors), 0);
    rig_cleanup(&r);
}
END_TEST

/* A refused subscription is an operator's problem (ACL, bad filter): it must
 * be logged as an error naming the filter. */
START_TEST(test_suback_failure_is_logged)
{
    static struct rig r;
    char path[] = "/tmp/m2a-puback-log-XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    unlink(path);
    m2a_log_set_fd(fd);
    rig_init(&r, 1, 64u << 20);
    r.br.suback_code = 0x80;
    rig_start(&r);
    rig_finish(&r);
    m2a_log_set_fd(2);
    char log[8192] = "";
    ssize_t n = pread(fd, log, sizeof(log) - 1, 0);
    close(fd);
    ck_assert_int_gt(n, 0);
    const char *line = strstr(log, "the broker refused the subscription to dev/#");
    ck_assert_msg(line != NULL, "log was: %s", log);
    const char *bol = line;
    while (bol > log && bol[-1] != '\n')
        bol--;
    ck_assert_msg(memmem(bol, (size_t)(line - bol), "error", 5) != NULL, "not at error level: %s",
                  log);
    rig_cleanup(&r);
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("puback_order");
    TCase *tc = tcase_create("ordering");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_puback_leaves_after_spool_flush);
    tcase_add_test(tc, test_puback_batch_leaves_after_spool_flush);
    tcase_add_test(tc, test_no_puback_when_spool_full);
    tcase_add_test(tc, test_oversized_message_dropped_not_redelivered_forever);
    tcase_add_test(tc, test_suback_failure_is_logged);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    m2a_log_set_level(M2A_LOG_WARN);
    return m2a_check_run(suite());
}
