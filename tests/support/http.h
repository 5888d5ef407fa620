/* http.h - a tiny HTTP/1.0 client for the metrics tests: one request over a
 * loopback socket, and a reader of Prometheus text lines. Not a general
 * client: no chunked encoding, no redirects, no keep-alive. */
#ifndef M2A_TEST_HTTP_H
#define M2A_TEST_HTTP_H

#include <stdbool.h>

struct th_http_reply {
    int status;  /* e.g. 200; 0 if no status line came */
    char *body;  /* NUL-terminated; owned */
    char *ctype; /* Content-Type, or NULL; owned */
};

/* Sends "METHOD path HTTP/1.0" to 127.0.0.1:port and reads the reply until
 * the server closes. 0, or a negative m2a_err (printed) on a connect, send
 * or read failure or timeout. */
int th_http(int port, const char *method, const char *path, int timeout_ms,
            struct th_http_reply *r);
void th_http_reply_free(struct th_http_reply *r);

/* The value of the sample `series` (the exact text before the value, e.g.
 * "mqtt2amqp_route_confirmed_total{route=\"a\"}") in a Prometheus text
 * body, or -1 if absent. */
double th_metric(const char *body, const char *series);

#endif
