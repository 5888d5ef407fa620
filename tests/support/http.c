/* http.c - the metrics tests' HTTP client; see http.h. Runs on the test's
 * thread, blocking, every step bounded by the caller's timeout. */
#include "http.h"

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

static int wait_fd(int fd, short ev, uint64_t deadline)
{
    uint64_t now = m2a_now_ms();
    if (now >= deadline)
        return M2A_ERR_TIMEOUT;
    struct pollfd p = {.fd = fd, .events = ev};
    int n = poll(&p, 1, (int)(deadline - now));
    return n > 0 ? 0 : n == 0 ? M2A_ERR_TIMEOUT : M2A_ERR_IO;
}

static void parse(const struct m2a_buf *raw, struct th_http_reply *r)
{
    const char *s = (const char *)raw->data;
    if (strncmp(s, "HTTP/1.", 7) == 0)
        r->status = atoi(s + 9);
    const char *end = strstr(s, "\r\n\r\n");
    const char *body = end ? end + 4 : s + raw->len;
    for (const char *l = strstr(s, "\r\n"); l && l < body; l = strstr(l + 2, "\r\n")) {
        if (strncasecmp(l + 2, "Content-Type:", 13) == 0) {
            const char *v = l + 15;
            r->ctype = xstrndup(v, strcspn(v, "\r\n"));
        }
    }
    r->body = xstrdup(body);
}

int th_http(int port, const char *method, const char *path, int timeout_ms, struct th_http_reply *r)
{
    memset(r, 0, sizeof(*r));
    uint64_t deadline = m2a_now_ms() + (uint64_t)timeout_ms;
    int rc = M2A_ERR_IO;
    struct m2a_buf raw = {0};
    /* Non-blocking connect: a server whose listen backlog is full drops the
     * SYN, and a blocking connect would wait out the kernel's retries. */
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0 && errno != EINPROGRESS)) {
        fprintf(stderr, "http: connect 127.0.0.1:%d: %s\n", port, strerror(errno));
        goto out;
    }
    int soerr = 0;
    socklen_t sl = sizeof(soerr);
    if ((rc = wait_fd(fd, POLLOUT, deadline)) != 0 ||
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 || soerr != 0) {
        fprintf(stderr, "http: connect 127.0.0.1:%d: %s\n", port,
                rc ? "no connection within the timeout" : strerror(soerr));
        rc = rc ? rc : M2A_ERR_IO;
        goto out;
    }
    char req[512];
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n\r\n", method, path,
                     port);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        fprintf(stderr, "http: send: %s\n", strerror(errno));
        goto out;
    }
    for (;;) {
        if ((rc = wait_fd(fd, POLLIN, deadline)) != 0) {
            fprintf(stderr, "http: %s %s: no complete reply in %d ms\n", method, path, timeout_ms);
            goto out;
        }
        char buf[4096];
        ssize_t got = recv(fd, buf, sizeof(buf), 0);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got < 0) {
            fprintf(stderr, "http: recv: %s\n", strerror(errno));
            rc = M2A_ERR_IO;
            goto out;
        }
        if (got == 0)
            break;
        m2a_buf_append(&raw, buf, (size_t)got);
    }
    m2a_buf_cstr(&raw);
    parse(&raw, r);
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    m2a_buf_free(&raw);
    return rc;
}

void th_http_reply_free(struct th_http_reply *r)
{
    free(r->body);
    free(r->ctype);
    memset(r, 0, sizeof(*r));
}

double th_metric(const char *body, const char *series)
{
    size_t n = strlen(series);
    for (const char *l = body; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
        if (strncmp(l, series, n) == 0 && l[n] == ' ')
            return strtod(l + n + 1, NULL);
    }
    return -1;
}
