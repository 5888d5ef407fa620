/* proxy.c - fault-injecting TCP proxy; see proxy.h.
 *
 * Threads: the proxy thread ("th-proxy") owns the listening socket, every
 * connection and their buffers. The test thread shares only `wanted`,
 * `gen`/`applied`, `stop` (under mu) and the counters (atomics); it wakes the
 * proxy thread through an eventfd so a mode change takes effect at once. */
#include "proxy.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

#define PROXY_BUF       (64 * 1024)
#define PROXY_POLL_MS   100  /* bounds how late a stop is noticed */
#define PROXY_APPLY_MS  5000 /* how long a control call waits for the thread */
#define PROXY_BIND_TRYS 10

enum proxy_mode { MODE_FORWARD, MODE_CUT, MODE_BLACKHOLE };

/* Bytes read from fd[dir] waiting to be written to fd[1 - dir]. */
struct half {
    unsigned char buf[PROXY_BUF];
    size_t off, len;
};

struct conn {
    int fd[2]; /* 0: the client's side, 1: the target's side; -1 when unused */
    struct half h[2];
};

struct th_proxy {
    int port, target_port;
    int listen_fd, wake_fd;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    enum proxy_mode wanted; /* under mu */
    unsigned gen, applied;  /* under mu */
    bool stop;              /* under mu */
    _Atomic long accepted, refused;
    _Atomic int open;
    struct conn *conns; /* TH_PROXY_MAX_CONNS, owned by the proxy thread */
};

/* Closes with RST: a cut link should look like one, not like a polite FIN. */
static void close_rst(int fd)
{
    if (fd < 0)
        return;
    struct linger l = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
    close(fd);
}

static void conn_close(struct th_proxy *p, struct conn *c, bool rst)
{
    for (int i = 0; i < 2; i++) {
        if (rst)
            close_rst(c->fd[i]);
        else if (c->fd[i] >= 0)
            close(c->fd[i]);
        c->fd[i] = -1;
        c->h[i].off = c->h[i].len = 0;
    }
    atomic_fetch_sub(&p->open, 1);
}

static int connect_target(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* Loopback connects complete or fail at once: no deadline needed. */
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

static struct conn *free_slot(struct th_proxy *p)
{
    for (int i = 0; i < TH_PROXY_MAX_CONNS; i++)
        if (p->conns[i].fd[0] < 0)
            return &p->conns[i];
    return NULL;
}

static void accept_one(struct th_proxy *p, enum proxy_mode mode)
{
    int cfd = accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (cfd < 0)
        return;
    struct conn *c = mode == MODE_CUT ? NULL : free_slot(p);
    int tfd = c ? connect_target(p->target_port) : -1;
    if (tfd < 0) {
        close_rst(cfd);
        atomic_fetch_add(&p->refused, 1);
        return;
    }
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* Non-blocking only once connected: the thread must never stall on a peer. */
    int fl0 = fcntl(cfd, F_GETFL), fl1 = fcntl(tfd, F_GETFL);
    fcntl(cfd, F_SETFL, fl0 | O_NONBLOCK);
    fcntl(tfd, F_SETFL, fl1 | O_NONBLOCK);
    c->fd[0] = cfd;
    c->fd[1] = tfd;
    c->h[0].off = c->h[0].len = c->h[1].off = c->h[1].len = 0;
    atomic_fetch_add(&p->open, 1);
    atomic_fetch_add(&p->accepted, 1);
}

/* Moves bytes for one direction; false when the connection must close
 * (*rst says how). */
static bool pump(struct conn *c, int dir, short rev_src, short rev_dst, bool *rst)
{
    struct half *h = &c->h[dir];
    int src = c->fd[dir], dst = c->fd[1 - dir];
    if (h->len > 0 && (rev_src & (POLLHUP | POLLERR)) && !(rev_dst & POLLOUT)) {
        /* src was reset while dst takes nothing: poll would report the
         * hangup again at once, forever. The pair is dead; say so. */
        *rst = true;
        return false;
    }
    if (h->len == 0 && (rev_src & (POLLIN | POLLHUP | POLLERR))) {
        ssize_t n = read(src, h->buf, sizeof(h->buf));
        if (n == 0) {
            *rst = false; /* the peer closed: pass the close on */
            return false;
        }
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            *rst = true;
            return false;
        }
        if (n > 0) {
            h->off = 0;
            h->len = (size_t)n;
            rev_dst |= POLLOUT; /* try at once; EAGAIN is harmless */
        }
    }
    if (h->len > 0 && (rev_dst & (POLLOUT | POLLERR | POLLHUP))) {
        ssize_t n = write(dst, h->buf + h->off, h->len);
        if (n < 0 && errno != EAGAIN && errno != EINTR) {
            *rst = true;
            return false;
        }
        if (n > 0) {
            h->off += (size_t)n;
            h->len -= (size_t)n;
        }
    }
    return true;
}

static void *proxy_main(void *arg)
{
    struct th_proxy *p = arg;
    enum proxy_mode mode = MODE_FORWARD;
    struct pollfd pf[2 + 2 * TH_PROXY_MAX_CONNS];
    int idx[TH_PROXY_MAX_CONNS]; /* pf index of conns[i].fd[0], or -1 */
    for (;;) {
        pthread_mutex_lock(&p->mu);
        bool stop = p->stop;
        enum proxy_mode want = p->wanted;
        unsigned gen = p->gen;
        pthread_mutex_unlock(&p->mu);
        if (stop)
            break;
        if (want == MODE_CUT && mode != MODE_CUT)
            for (int i = 0; i < TH_PROXY_MAX_CONNS; i++)
                if (p->conns[i].fd[0] >= 0)
                    conn_close(p, &p->conns[i], true);
        mode = want;
        pthread_mutex_lock(&p->mu);
        p->applied = gen;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);

        nfds_t n = 0;
        pf[n++] = (struct pollfd){.fd = p->wake_fd, .events = POLLIN};
        pf[n++] = (struct pollfd){.fd = p->listen_fd, .events = POLLIN};
        for (int i = 0; i < TH_PROXY_MAX_CONNS; i++) {
            struct conn *c = &p->conns[i];
            idx[i] = -1;
            /* Blackholed connections are not polled at all: their bytes stay
             * in the kernel buffers and the peers' windows fill, as on a
             * link that silently lost its way. */
            if (c->fd[0] < 0 || mode != MODE_FORWARD)
                continue;
            idx[i] = (int)n;
            for (int d = 0; d < 2; d++) {
                short ev = 0;
                if (c->h[d].len == 0)
                    ev |= POLLIN;
                if (c->h[1 - d].len > 0)
                    ev |= POLLOUT;
                pf[n++] = (struct pollfd){.fd = c->fd[d], .events = ev};
            }
        }
        if (poll(pf, n, PROXY_POLL_MS) <= 0)
            continue;
        if (pf[0].revents & POLLIN) {
            uint64_t v;
            (void)!read(p->wake_fd, &v, sizeof(v));
        }
        if (pf[1].revents & POLLIN)
            accept_one(p, mode);
        for (int i = 0; i < TH_PROXY_MAX_CONNS; i++) {
            struct conn *c = &p->conns[i];
            if (idx[i] < 0 || c->fd[0] < 0)
                continue;
            short r0 = pf[idx[i]].revents, r1 = pf[idx[i] + 1].revents;
            bool rst = false;
            if (!pump(c, 0, r0, r1, &rst) || !pump(c, 1, r1, r0, &rst))
                conn_close(p, c, rst);
        }
    }
    for (int i = 0; i < TH_PROXY_MAX_CONNS; i++)
        if (p->conns[i].fd[0] >= 0)
            conn_close(p, &p->conns[i], true);
    return NULL;
}

static int listen_on_free_port(int *port_out)
{
    for (int t = 0; t < PROXY_BIND_TRYS; t++) {
        int port = th_free_port();
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            return -1;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 && listen(fd, 64) == 0) {
            *port_out = port;
            return fd;
        }
        close(fd);
    }
    return -1;
}

struct th_proxy *th_proxy_new(int target_port)
{
    struct th_proxy *p = xcalloc(1, sizeof(*p));
    p->target_port = target_port;
    p->conns = xcalloc(TH_PROXY_MAX_CONNS, sizeof(*p->conns));
    for (int i = 0; i < TH_PROXY_MAX_CONNS; i++)
        p->conns[i].fd[0] = p->conns[i].fd[1] = -1;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    p->listen_fd = listen_on_free_port(&p->port);
    if (p->wake_fd < 0 || p->listen_fd < 0) {
        fprintf(stderr, "proxy: cannot listen on a loopback port: %s\n", strerror(errno));
        goto fail;
    }
    if (pthread_create(&p->thread, NULL, proxy_main, p) != 0) {
        fprintf(stderr, "proxy: cannot start its thread\n");
        goto fail;
    }
    fprintf(stderr, "proxy: 127.0.0.1:%d -> 127.0.0.1:%d\n", p->port, target_port);
    return p;
fail:
    if (p->listen_fd >= 0)
        close(p->listen_fd);
    if (p->wake_fd >= 0)
        close(p->wake_fd);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->conns);
    free(p);
    return NULL;
}

static void wake(struct th_proxy *p)
{
    uint64_t one = 1;
    (void)!write(p->wake_fd, &one, sizeof(one));
}

void th_proxy_free(struct th_proxy *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_mutex_unlock(&p->mu);
    wake(p);
    pthread_join(p->thread, NULL);
    close(p->listen_fd);
    close(p->wake_fd);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->conns);
    free(p);
}

int th_proxy_port(const struct th_proxy *p)
{
    return p->port;
}

static int set_mode(struct th_proxy *p, enum proxy_mode m, const char *what)
{
    int rc = 0;
    pthread_mutex_lock(&p->mu);
    p->wanted = m;
    unsigned gen = ++p->gen;
    wake(p);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += PROXY_APPLY_MS / 1000;
    while ((int)(p->applied - gen) < 0 && rc == 0)
        if (pthread_cond_timedwait(&p->cv, &p->mu, &until) == ETIMEDOUT)
            rc = M2A_ERR_TIMEOUT;
    pthread_mutex_unlock(&p->mu);
    fprintf(stderr, "proxy %d -> %d: %s%s (%d open, %ld accepted, %ld refused so far)\n", p->port,
            p->target_port, what, rc ? " NOT APPLIED" : "", th_proxy_open_conns(p),
            th_proxy_accepted(p), th_proxy_refused(p));
    return rc;
}

int th_proxy_cut(struct th_proxy *p)
{
    return set_mode(p, MODE_CUT, "cut");
}

int th_proxy_restore(struct th_proxy *p)
{
    return set_mode(p, MODE_FORWARD, "restored");
}

int th_proxy_blackhole(struct th_proxy *p)
{
    return set_mode(p, MODE_BLACKHOLE, "blackholed (half-open)");
}

int th_proxy_resume(struct th_proxy *p)
{
    return set_mode(p, MODE_FORWARD, "resumed");
}

long th_proxy_accepted(const struct th_proxy *p)
{
    return atomic_load(&((struct th_proxy *)p)->accepted);
}

long th_proxy_refused(const struct th_proxy *p)
{
    return atomic_load(&((struct th_proxy *)p)->refused);
}

int th_proxy_open_conns(const struct th_proxy *p)
{
    return atomic_load(&((struct th_proxy *)p)->open);
}
