/* loop.c - the per-thread event loop: poll() over a handful of descriptors,
 * a few one-shot timers, and an eventfd through which other threads wake
 * the owner with reasons that stay pending until it takes them.
 *
 * Threads: everything here runs on the owning thread except
 * m2a_loop_wake / m2a_loop_stop (atomics and a write to the eventfd) and the
 * stop readers. A service thread has at most a few descriptors and timers,
 * so both are small arrays scanned linearly: no allocation per turn. */
#include "mqtt2amqp/loop.h"

#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

struct watch {
    int fd; /* -1: free slot */
    unsigned events;
    m2a_loop_fd_fn fn;
    void *ud;
};

struct timer {
    uint64_t id; /* 0: free slot */
    uint64_t at_ms;
    m2a_loop_timer_fn fn;
    void *ud;
};

struct m2a_loop {
    int wake_fd;
    _Atomic unsigned pending;
    _Atomic uint64_t stop_deadline;
    struct watch w[M2A_LOOP_MAX_FDS];
    struct timer *t;
    size_t nt, tcap;
    uint64_t next_id;
};

struct m2a_loop *m2a_loop_new(void)
{
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0)
        return NULL;
    struct m2a_loop *l = xcalloc(1, sizeof(*l));
    l->wake_fd = fd;
    atomic_init(&l->pending, 0);
    atomic_init(&l->stop_deadline, M2A_LOOP_NEVER);
    for (int i = 0; i < M2A_LOOP_MAX_FDS; i++)
        l->w[i].fd = -1;
    return l;
}

void m2a_loop_free(struct m2a_loop *l)
{
    if (!l)
        return;
    close(l->wake_fd);
    free(l->t);
    free(l);
}

static struct watch *find_watch(struct m2a_loop *l, int fd)
{
    for (int i = 0; i < M2A_LOOP_MAX_FDS; i++)
        if (l->w[i].fd == fd)
            return &l->w[i];
    return NULL;
}

int m2a_loop_watch(struct m2a_loop *l, int fd, unsigned events, m2a_loop_fd_fn fn, void *ud)
{
    if (fd < 0 || !fn)
        return M2A_ERR_ARG;
    struct watch *w = find_watch(l, fd);
    if (!w)
        w = find_watch(l, -1);
    if (!w)
        return M2A_ERR_ARG;
    *w = (struct watch){fd, events, fn, ud};
    return 0;
}

void m2a_loop_set_events(struct m2a_loop *l, int fd, unsigned events)
{
    struct watch *w = fd >= 0 ? find_watch(l, fd) : NULL;
    if (w)
        w->events = events;
}

void m2a_loop_unwatch(struct m2a_loop *l, int fd)
{
    struct watch *w = fd >= 0 ? find_watch(l, fd) : NULL;
    if (w)
        w->fd = -1;
}

uint64_t m2a_loop_timer_add(struct m2a_loop *l, uint64_t at_ms, m2a_loop_timer_fn fn, void *ud)
{
    size_t i = 0;
    while (i < l->nt && l->t[i].id != 0)
        i++;
    if (i == l->nt) {
        if (l->nt == l->tcap) {
            l->tcap = l->tcap ? l->tcap * 2 : 8;
            l->t = xrealloc(l->t, l->tcap * sizeof(*l->t));
        }
        l->nt++;
    }
    l->t[i] = (struct timer){++l->next_id, at_ms, fn, ud};
    return l->t[i].id;
}

void m2a_loop_timer_del(struct m2a_loop *l, uint64_t id)
{
    for (size_t i = 0; id != 0 && i < l->nt; i++)
        if (l->t[i].id == id)
            l->t[i].id = 0;
}

uint64_t m2a_loop_next_timer(const struct m2a_loop *l)
{
    uint64_t next = M2A_LOOP_NEVER;
    for (size_t i = 0; i < l->nt; i++)
        if (l->t[i].id != 0 && l->t[i].at_ms < next)
            next = l->t[i].at_ms;
    return next;
}

/* Runs the timers due at now, earliest first; one pass, so a timer a
 * callback adds for "now" waits for the next turn instead of looping here. */
static int run_timers(struct m2a_loop *l, uint64_t now)
{
    int ran = 0;
    uint64_t last_id = l->next_id;
    for (;;) {
        size_t best = l->nt;
        for (size_t i = 0; i < l->nt; i++)
            if (l->t[i].id != 0 && l->t[i].id <= last_id && l->t[i].at_ms <= now &&
                (best == l->nt || l->t[i].at_ms < l->t[best].at_ms))
                best = i;
        if (best == l->nt)
            return ran;
        struct timer t = l->t[best];
        l->t[best].id = 0;
        t.fn(l, t.ud);
        ran++;
    }
}

uint64_t m2a_loop_deadline(const struct m2a_loop *l, uint64_t want_ms)
{
    uint64_t stop = atomic_load_explicit(&l->stop_deadline, memory_order_acquire);
    return want_ms < stop ? want_ms : stop;
}

int m2a_loop_timeout_ms(uint64_t deadline_ms)
{
    if (deadline_ms == M2A_LOOP_NEVER)
        return -1;
    uint64_t now = m2a_now_ms();
    if (deadline_ms <= now)
        return 0;
    uint64_t d = deadline_ms - now;
    return d > INT32_MAX ? INT32_MAX : (int)d;
}

static void drain_wake(struct m2a_loop *l)
{
    uint64_t v;
    (void)!read(l->wake_fd, &v, sizeof(v));
}

static unsigned events_of(short revents)
{
    unsigned ev = 0;
    if (revents & POLLIN)
        ev |= M2A_LOOP_READ;
    if (revents & POLLOUT)
        ev |= M2A_LOOP_WRITE;
    if (revents & (POLLHUP | POLLRDHUP))
        ev |= M2A_LOOP_HUP;
    if (revents & (POLLERR | POLLNVAL))
        ev |= M2A_LOOP_ERR;
    return ev;
}

int m2a_loop_once(struct m2a_loop *l, uint64_t until_ms)
{
    struct pollfd p[M2A_LOOP_MAX_FDS + 1];
    int idx[M2A_LOOP_MAX_FDS + 1];
    nfds_t n = 0;
    p[n] = (struct pollfd){.fd = l->wake_fd, .events = POLLIN};
    idx[n++] = -1;
    for (int i = 0; i < M2A_LOOP_MAX_FDS; i++) {
        if (l->w[i].fd < 0)
            continue;
        short ev = (short)(((l->w[i].events & M2A_LOOP_READ) ? POLLIN : 0) |
                           ((l->w[i].events & M2A_LOOP_WRITE) ? POLLOUT : 0) |
                           ((l->w[i].events & M2A_LOOP_HUP) ? POLLRDHUP : 0));
        p[n] = (struct pollfd){.fd = l->w[i].fd, .events = ev};
        idx[n++] = i;
    }
    uint64_t deadline = until_ms, next = m2a_loop_next_timer(l);
    if (next < deadline)
        deadline = next;
    deadline = m2a_loop_deadline(l, deadline);
    int rc = poll(p, n, m2a_loop_timeout_ms(deadline));
    if (rc < 0 && errno != EINTR)
        return 0;
    int ran = run_timers(l, m2a_now_ms());
    if (rc <= 0)
        return ran;
    if (p[0].revents)
        drain_wake(l);
    for (nfds_t k = 1; k < n; k++) {
        struct watch *w = &l->w[idx[k]];
        /* A callback before this one may have unwatched or replaced it. */
        if (!p[k].revents || w->fd != p[k].fd)
            continue;
        w->fn(l, w->fd, events_of(p[k].revents), w->ud);
        ran++;
    }
    return ran;
}

unsigned m2a_loop_sleep(struct m2a_loop *l, uint64_t until_ms, unsigned mask)
{
    mask |= M2A_WAKE_STOP;
    for (;;) {
        unsigned got = m2a_loop_pending_wakes(l) & mask;
        uint64_t deadline = m2a_loop_deadline(l, until_ms);
        if (got || m2a_now_ms() >= deadline)
            return got;
        struct pollfd p = {.fd = l->wake_fd, .events = POLLIN};
        if (poll(&p, 1, m2a_loop_timeout_ms(deadline)) > 0)
            drain_wake(l);
    }
}

void m2a_loop_wake(struct m2a_loop *l, unsigned reasons)
{
    atomic_fetch_or_explicit(&l->pending, reasons, memory_order_release);
    uint64_t one = 1;
    /* Fails only if the counter would overflow: the owner is awake anyway. */
    (void)!write(l->wake_fd, &one, sizeof(one));
}

unsigned m2a_loop_take_wakes(struct m2a_loop *l, unsigned mask)
{
    return atomic_fetch_and_explicit(&l->pending, ~mask, memory_order_acq_rel) & mask;
}

unsigned m2a_loop_pending_wakes(const struct m2a_loop *l)
{
    return atomic_load_explicit(&l->pending, memory_order_acquire);
}

void m2a_loop_stop(struct m2a_loop *l, uint64_t deadline_ms)
{
    uint64_t cur = atomic_load_explicit(&l->stop_deadline, memory_order_acquire);
    while (deadline_ms < cur &&
           !atomic_compare_exchange_weak_explicit(&l->stop_deadline, &cur, deadline_ms,
                                                  memory_order_acq_rel, memory_order_acquire))
        ;
    m2a_loop_wake(l, M2A_WAKE_STOP);
}

bool m2a_loop_stopping(const struct m2a_loop *l)
{
    return atomic_load_explicit(&l->stop_deadline, memory_order_acquire) != M2A_LOOP_NEVER;
}

uint64_t m2a_loop_stop_deadline(const struct m2a_loop *l)
{
    return atomic_load_explicit(&l->stop_deadline, memory_order_acquire);
}
