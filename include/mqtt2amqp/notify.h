/* notify.h - systemd's service notification protocol (sd_notify(3)),
 * spoken directly: one datagram per state change to the AF_UNIX socket
 * named by $NOTIFY_SOCKET (a path, or an abstract name written with a
 * leading '@'), and the watchdog's pace from $WATCHDOG_USEC (honoured only
 * when $WATCHDOG_PID is unset or names this process).
 *
 * Why not libsystemd: the protocol is a documented, stable interface
 * ("sd_notify ... may be reimplemented", sd_notify(3)), it is a sendto(2)
 * of "KEY=VALUE\n" lines, and speaking it here keeps the bridge free of a
 * library whose only use would be this one call, and lets the send never
 * block (MSG_DONTWAIT): the main loop must not wait on systemd, and a ping
 * lost to a full socket is followed by the next one half an interval later.
 *
 * Threads: a handle is used by the main thread only. Low level: nothing
 * here logs; errors come back in err. */
#ifndef MQTT2AMQP_NOTIFY_H
#define MQTT2AMQP_NOTIFY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct m2a_notify;

/* Opens a handle from the values of NOTIFY_SOCKET, WATCHDOG_USEC and
 * WATCHDOG_PID (each may be NULL: unset) for process self. *out is NULL,
 * with 0 returned, when socket is NULL or empty (not run by systemd).
 * M2A_ERR_ARG (err filled, *out NULL) when sock is not an absolute path or
 * '@' name that fits, or WATCHDOG_USEC is not a positive number; M2A_ERR_IO
 * when no socket can be created. The strings are not kept. */
int m2a_notify_open(const char *sock, const char *watchdog_usec, const char *watchdog_pid,
                    pid_t self, struct m2a_notify **out, char *err, size_t errlen);
/* m2a_notify_open with this process's environment and pid. */
int m2a_notify_open_env(struct m2a_notify **out, char *err, size_t errlen);
/* NULL is a no-op. */
void m2a_notify_free(struct m2a_notify *n);

/* Sends state ("READY=1", "STATUS=...", several lines joined by '\n') as
 * one datagram, without blocking. 0, or M2A_ERR_IO with errno kept (the
 * caller decides whether it matters; nothing is retried). n NULL: 0. */
int m2a_notify_send(struct m2a_notify *n, const char *state);

/* The watchdog period: the interval between WATCHDOG=1 pings, half of
 * WATCHDOG_USEC as systemd advises, in ms (at least 1); 0 when there is no
 * watchdog (or n is NULL). */
uint64_t m2a_notify_watchdog_period_ms(const struct m2a_notify *n);

/* True when a ping is due at now_ms, the last one having gone at last_ms
 * (0: none yet, so the first is due at once). Pure; period_ms 0: never. */
bool m2a_notify_watchdog_due(uint64_t last_ms, uint64_t now_ms, uint64_t period_ms);

/* Sends WATCHDOG=1 if one is due at now_ms. Call it from the loop whose
 * progress the watchdog vouches for, and only from there: a loop that stops
 * turning stops the pings, and systemd kills and restarts the service
 * WatchdogSec later. Returns true if a ping was sent. */
bool m2a_notify_watchdog(struct m2a_notify *n, uint64_t now_ms);

/* How long (ms) the caller may wait at now_ms before the next ping is due,
 * capped at cap_ms (cap_ms when there is no watchdog). */
uint64_t m2a_notify_wait_ms(const struct m2a_notify *n, uint64_t now_ms, uint64_t cap_ms);

#endif
