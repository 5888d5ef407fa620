/* sink.h - a loopback TCP port where connects never complete: a listening
 * socket whose accept queue is kept full, so the kernel drops every further
 * SYN and a client's connect() waits as it would for a host that drops its
 * packets (until the client gives up, or the kernel after ~2 minutes). For
 * tests of connect timeouts and of stopping during a connect. Main-thread
 * use; loopback only. */
#ifndef M2A_TEST_SINK_H
#define M2A_TEST_SINK_H

struct th_sink {
    int port;
    int lfd;    /* listening, backlog 0, never accepts */
    int filler; /* the one connection the accept queue holds */
};

/* NULL on failure (printed). */
struct th_sink *th_sink_new(void);
/* Closes both sockets. NULL is a no-op. */
void th_sink_free(struct th_sink *s);

#endif
