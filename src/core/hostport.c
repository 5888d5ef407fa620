/* hostport.c - parses "HOST:PORT", "[V6]:PORT" and, with a default port,
 * "HOST" and "[V6]". */
#include "mqtt2amqp/hostport.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int refuse(const char *s, char *msg, size_t msglen, const char *why)
{
    snprintf(msg, msglen, "'%.80s' is not HOST:PORT: %s", s, why);
    return -1;
}

int m2a_hostport_parse(const char *s, int default_port, char *host, size_t hostlen, int *port,
                       char *msg, size_t msglen)
{
    const char *h = s, *rest;
    size_t hlen;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close)
            return refuse(s, msg, msglen, "no ']' after the IPv6 address");
        h = s + 1;
        hlen = (size_t)(close - h);
        rest = close + 1;
        if (*rest && *rest != ':')
            return refuse(s, msg, msglen, "only ':PORT' may follow ']'");
    } else {
        rest = strchr(s, ':');
        if (rest && strchr(rest + 1, ':'))
            return refuse(s, msg, msglen, "write an IPv6 address in brackets, e.g. [::1]:5672");
        hlen = rest ? (size_t)(rest - s) : strlen(s);
        if (!rest)
            rest = s + hlen;
    }
    if (hlen == 0)
        return refuse(s, msg, msglen, "the host is empty");
    if (hlen > M2A_HOST_MAX || hlen >= hostlen)
        return refuse(s, msg, msglen, "the host is longer than 255 bytes");
    long p = default_port;
    if (*rest == ':') {
        char *end = NULL;
        p = rest[1] >= '0' && rest[1] <= '9' ? strtol(rest + 1, &end, 10) : -1;
        if (p < 1 || p > 65535 || *end)
            return refuse(s, msg, msglen, "the port must be a number from 1 to 65535");
    } else if (default_port == 0) {
        return refuse(s, msg, msglen, "the port is missing");
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)p;
    return 0;
}

const char *m2a_hostport_format(char *buf, size_t len, const char *host, int port)
{
    snprintf(buf, len, strchr(host, ':') ? "[%s]:%d" : "%s:%d", host, port);
    return buf;
}
