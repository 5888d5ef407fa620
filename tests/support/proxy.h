/* proxy.h - a fault-injecting TCP proxy for the fault tests: it listens on a
 * free loopback port and forwards every connection to 127.0.0.1:target, and
 * the test can break the link the ways a network breaks:
 *
 *   cut        close every connection (RST) and refuse new ones: the peers
 *              see the link go down at once
 *   restore    accept and forward again
 *   blackhole  stop moving bytes in both directions but keep every socket
 *              open (new connections are accepted and held the same way):
 *              a half-open link that only keepalive / heartbeats can detect
 *   resume     move bytes again (what was held is delivered late, as TCP
 *              would after a partition heals)
 *
 * Threads: each proxy has one thread of its own that owns the listening
 * socket and every connection; the control functions only hand it the new
 * mode and return once it has been applied (bounded wait). Bounded: at most
 * TH_PROXY_MAX_CONNS connections and 64 KiB buffered per direction each;
 * th_proxy_free() stops the thread and closes everything. Loopback only. */
#ifndef M2A_TEST_PROXY_H
#define M2A_TEST_PROXY_H

#define TH_PROXY_MAX_CONNS 32

struct th_proxy;

/* Starts a proxy on a free loopback port forwarding to 127.0.0.1:target_port
 * (which need not be up yet: a connection that cannot reach it is reset).
 * NULL on failure (printed). */
struct th_proxy *th_proxy_new(int target_port);
/* Stops the thread, closes every socket. NULL is a no-op. */
void th_proxy_free(struct th_proxy *p);

/* The port clients should connect to. */
int th_proxy_port(const struct th_proxy *p);

/* Mode changes; each returns 0 once the proxy thread applied it, or
 * M2A_ERR_TIMEOUT (5 s). */
int th_proxy_cut(struct th_proxy *p);
int th_proxy_restore(struct th_proxy *p);
int th_proxy_blackhole(struct th_proxy *p);
int th_proxy_resume(struct th_proxy *p);

/* Counters since th_proxy_new: connections accepted and forwarded,
 * connections refused (cut, full, or the target unreachable), and the number
 * open now. */
long th_proxy_accepted(const struct th_proxy *p);
long th_proxy_refused(const struct th_proxy *p);
int th_proxy_open_conns(const struct th_proxy *p);

#endif
