/* notify.c - systemd's notification protocol (see notify.h for why it is
 * spoken here rather than through libsystemd): a datagram socket, the
 * address from $NOTIFY_SOCKET, and the watchdog's pace.
 *
 * Threads: each handle belongs to the thread that opened it (the main
 * thread). Nothing here logs. */
#include "mqtt2amqp/notify.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

struct m2a_notify {
    int fd;
    struct sockaddr_un addr;
    socklen_t addrlen;
    uint64_t period_ms; /* 0: no watchdog */
    uint64_t last_ping_ms;
};

/* A decimal number that is all digits and does not overflow. */
static bool parse_u64(const char *s, uint64_t *v)
{
    if (!s || !*s)
        return false;
    uint64_t x = 0;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || x > (UINT64_MAX - 9) / 10)
            return false;
        x = x * 10 + (uint64_t)(*s - '0');
    }
    *v = x;
    return true;
}

/* The watchdog is ours when WATCHDOG_PID is unset or names self; a value
 * for another process (inherited from a parent) is not a request to us. */
static bool watchdog_is_ours(const char *watchdog_pid, pid_t self)
{
    uint64_t pid;
    if (!watchdog_pid || !*watchdog_pid)
        return true;
    return parse_u64(watchdog_pid, &pid) && pid == (uint64_t)self;
}

static int set_address(struct m2a_notify *n, const char *sock, char *err, size_t errlen)
{
    size_t len = strlen(sock);
    n->addr.sun_family = AF_UNIX;
    if ((sock[0] != '/' && sock[0] != '@') || len < 2 || len >= sizeof(n->addr.sun_path)) {
        snprintf(err, errlen, "NOTIFY_SOCKET '%s' is not an absolute path or '@' name that fits",
                 sock);
        return M2A_ERR_ARG;
    }
    memcpy(n->addr.sun_path, sock, len);
    if (sock[0] == '@') /* abstract: no terminating NUL counted */
        n->addr.sun_path[0] = '\0';
    else
        len++;
    n->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    return 0;
}

int m2a_notify_open(const char *sock, const char *watchdog_usec, const char *watchdog_pid,
                    pid_t self, struct m2a_notify **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!sock || !*sock)
        return 0;
    struct m2a_notify *n = xcalloc(1, sizeof(*n));
    n->fd = -1;
    int rc = set_address(n, sock, err, errlen);
    if (rc != 0)
        goto out;
    uint64_t usec = 0;
    if (watchdog_usec && *watchdog_usec && watchdog_is_ours(watchdog_pid, self)) {
        if (!parse_u64(watchdog_usec, &usec) || usec == 0) {
            snprintf(err, errlen, "WATCHDOG_USEC '%s' is not a positive number", watchdog_usec);
            rc = M2A_ERR_ARG;
            goto out;
        }
        n->period_ms = usec / 2000 ? usec / 2000 : 1;
    }
    n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (n->fd < 0) {
        snprintf(err, errlen, "cannot create the notification socket: %s", strerror(errno));
        rc = M2A_ERR_IO;
        goto out;
    }
    *out = n;
    n = NULL;
out:
    m2a_notify_free(n);
    return rc;
}

int m2a_notify_open_env(struct m2a_notify **out, char *err, size_t errlen)
{
    return m2a_notify_open(getenv("NOTIFY_SOCKET"), getenv("WATCHDOG_USEC"), getenv("WATCHDOG_PID"),
                           getpid(), out, err, errlen);
}

void m2a_notify_free(struct m2a_notify *n)
{
    if (!n)
        return;
    if (n->fd >= 0)
        close(n->fd);
    free(n);
}

int m2a_notify_send(struct m2a_notify *n, const char *state)
{
    if (!n)
        return 0;
    ssize_t w;
    do
        w = sendto(n->fd, state, strlen(state), MSG_DONTWAIT | MSG_NOSIGNAL,
                   (const struct sockaddr *)&n->addr, n->addrlen);
    while (w < 0 && errno == EINTR);
    return w < 0 ? M2A_ERR_IO : 0;
}

uint64_t m2a_notify_watchdog_period_ms(const struct m2a_notify *n)
{
    return n ? n->period_ms : 0;
}

bool m2a_notify_watchdog_due(uint64_t last_ms, uint64_t now_ms, uint64_t period_ms)
{
    return period_ms && (last_ms == 0 || now_ms < last_ms || now_ms - last_ms >= period_ms);
}

bool m2a_notify_watchdog(struct m2a_notify *n, uint64_t now_ms)
{
    if (!n || !m2a_notify_watchdog_due(n->last_ping_ms, now_ms, n->period_ms))
        return false;
    /* Counted as sent even when the socket was full: the next is due a
     * period later, still half an interval before systemd gives up. */
    n->last_ping_ms = now_ms ? now_ms : 1;
    (void)m2a_notify_send(n, "WATCHDOG=1");
    return true;
}

uint64_t m2a_notify_wait_ms(const struct m2a_notify *n, uint64_t now_ms, uint64_t cap_ms)
{
    if (!n || !n->period_ms)
        return cap_ms;
    if (m2a_notify_watchdog_due(n->last_ping_ms, now_ms, n->period_ms))
        return 0;
    uint64_t left = n->last_ping_ms + n->period_ms - now_ms;
    return left < cap_ms ? left : cap_ms;
}
