/* mqtt_sub.h - an MQTT subscriber for the downlink tests (issue 11): a
 * libmosquitto client on a thread of its own (mosquitto_loop_start) that
 * records every message's "seq=<n>" (from the payload), its topic and its
 * retain flag, and reconnects (same client id, persistent session) when its
 * broker goes away and comes back.
 *
 * Threads: libmosquitto's thread appends under a mutex; the test's thread
 * reads through the functions below. */
#ifndef M2A_TEST_MQTT_SUB_H
#define M2A_TEST_MQTT_SUB_H

#include <stdbool.h>
#include <stddef.h>

struct th_sub;

/* Connects to 127.0.0.1:port as client_id (QoS 1 persistent session, MQTT
 * 5), subscribes to filter with QoS qos and waits for the SUBACK (10 s).
 * NULL on failure (printed). */
struct th_sub *th_sub_new(int port, const char *client_id, const char *filter, int qos);
/* Disconnects (DISCONNECT sent: the broker keeps the session) and stops
 * the thread; what was received stays readable. NULL is a no-op. */
void th_sub_disconnect(struct th_sub *s);
/* Disconnects, stops the thread, frees. NULL is a no-op. */
void th_sub_free(struct th_sub *s);

/* Messages received so far (all, seq or not). */
size_t th_sub_count(struct th_sub *s);
/* Distinct seq >= 0 values received so far. */
size_t th_sub_distinct(struct th_sub *s);
/* Waits until distinct seqs >= n (0) or timeout_ms (M2A_ERR_TIMEOUT). */
int th_sub_wait_distinct(struct th_sub *s, size_t n, int timeout_ms);
/* A copy of the seqs received (-1 for none), in arrival order; *n gets the
 * count. Caller frees. */
long *th_sub_seqs(struct th_sub *s, size_t *n);
/* The topic of the i-th message received (copied into buf), or false. */
bool th_sub_topic(struct th_sub *s, size_t i, char *buf, size_t len);
/* Messages whose topic was not want(seq) for their seq: seq's topic is
 * "PREFIX/dev<seq % ndev>/SUFFIX" with the given prefix and suffix. */
size_t th_sub_wrong_topics(struct th_sub *s, const char *prefix, size_t ndev, const char *suffix);

#endif
