/* sink.c - a port where connects hang; see sink.h. */
#include "sink.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct th_sink *th_sink_new(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    struct th_sink *s = calloc(1, sizeof(*s));
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    s->filler = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    /* Backlog 0 leaves room for one connection in the accept queue (Linux
     * counts it as full only beyond the backlog): the filler takes it. */
    if (s->lfd < 0 || s->filler < 0 || bind(s->lfd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        listen(s->lfd, 0) != 0 || getsockname(s->lfd, (struct sockaddr *)&a, &al) != 0 ||
        connect(s->filler, (struct sockaddr *)&a, sizeof(a)) != 0) {
        fprintf(stderr, "sink: %s\n", strerror(errno));
        th_sink_free(s);
        return NULL;
    }
    s->port = ntohs(a.sin_port);
    return s;
}

void th_sink_free(struct th_sink *s)
{
    if (!s)
        return;
    if (s->filler >= 0)
        close(s->filler);
    if (s->lfd >= 0)
        close(s->lfd);
    free(s);
}
