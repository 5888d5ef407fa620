/* hostport.h - "HOST:PORT" as written in the configuration: a DNS name or
 * an IPv4 address, or an IPv6 address in brackets ("[::1]:5672"); the port
 * may be left out where the caller has a default. The one parser of the
 * tree: config (mqtt.hosts, amqp.hosts, metrics.listen) and the metrics
 * server use it. Pure functions, no allocation. */
#ifndef MQTT2AMQP_HOSTPORT_H
#define MQTT2AMQP_HOSTPORT_H

#include <stddef.h>

/* Longest host part accepted (a DNS name is at most 253 bytes). */
#define M2A_HOST_MAX 255

/* Splits s into host (brackets removed, NUL-terminated, hostlen >= 256)
 * and *port. Without ":PORT", *port = default_port, or the string is
 * refused when default_port is 0. Returns 0, or -1 with a sentence in msg
 * (an empty host, a bad or missing port, an IPv6 address without brackets,
 * a host over M2A_HOST_MAX bytes). */
int m2a_hostport_parse(const char *s, int default_port, char *host, size_t hostlen, int *port,
                       char *msg, size_t msglen);

/* The reverse, for log lines and labels: "HOST:PORT", an IPv6 address in
 * brackets. Writes into buf (cut to fit, M2A_HOSTPORT_LEN is enough) and
 * returns it. */
#define M2A_HOSTPORT_LEN (M2A_HOST_MAX + 9)
const char *m2a_hostport_format(char *buf, size_t len, const char *host, int port);

#endif
