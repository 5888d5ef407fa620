/* loop.h - one event loop per service thread, in the manner of redis' ae.c:
 * the descriptors the thread waits on, its timers (absolute monotonic
 * deadlines), and a wake-up that other threads use to hand it work.
 *
 * Threads: a loop belongs to the thread that runs it (m2a_loop_once and
 * every watch/timer call). Only m2a_loop_wake, m2a_loop_stop and the
 * read-only m2a_loop_stopping / m2a_loop_stop_deadline may be called from
 * other threads.
 *
 * Wake-ups carry reasons: bits that stay set until the owner takes them
 * (m2a_loop_take_wakes), however many turns or nested waits pass in
 * between. So a wake-up can never be "consumed" by one wait and lost to the
 * code that needed it; the eventfd only interrupts the current wait.
 *
 * Stopping is one absolute deadline for the whole thread: m2a_loop_stop()
 * sets it (and wakes the thread), and every blocking call the thread makes
 * bounds itself with m2a_loop_deadline(), so nothing blocks past it. */
#ifndef MQTT2AMQP_LOOP_H
#define MQTT2AMQP_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#define M2A_LOOP_READ  1u
#define M2A_LOOP_WRITE 2u
/* The peer hung up (or half-closed: ask for M2A_LOOP_HUP to learn of it
 * without asking to read), or an error is pending; both are delivered
 * even when not asked for. */
#define M2A_LOOP_HUP 4u
#define M2A_LOOP_ERR 8u

/* Wake-up reasons. M2A_WAKE_STOP is set by m2a_loop_stop; the others are
 * the owner's to define (reload, spool news, ...). */
#define M2A_WAKE_STOP   (1u << 0)
#define M2A_WAKE_USER_0 (1u << 1)

#define M2A_LOOP_NEVER UINT64_MAX /* a deadline that never comes */

struct m2a_loop;

/* Called from m2a_loop_once on the owning thread with the events that
 * fired (M2A_LOOP_READ / WRITE / HUP / ERR). May watch, unwatch, add and
 * delete timers, including its own. */
typedef void (*m2a_loop_fd_fn)(struct m2a_loop *loop, int fd, unsigned events, void *ud);
/* Called once when the timer's deadline has passed; the timer is gone. */
typedef void (*m2a_loop_timer_fn)(struct m2a_loop *loop, void *ud);

/* NULL with errno set if the eventfd cannot be created. */
struct m2a_loop *m2a_loop_new(void);
/* NULL is a no-op. Closes the wake-up eventfd, not the watched fds. */
void m2a_loop_free(struct m2a_loop *loop);

/* Watches fd for events (M2A_LOOP_READ | M2A_LOOP_WRITE; 0 keeps the fd
 * registered but asks for nothing, HUP and ERR are still delivered). A
 * second call for the same fd replaces its events, fn and ud. At most
 * M2A_LOOP_MAX_FDS descriptors: returns 0 or M2A_ERR_ARG. */
#define M2A_LOOP_MAX_FDS 16
int m2a_loop_watch(struct m2a_loop *loop, int fd, unsigned events, m2a_loop_fd_fn fn, void *ud);
/* Changes the events of a watched fd; no-op for an unknown fd. */
void m2a_loop_set_events(struct m2a_loop *loop, int fd, unsigned events);
/* Forgets fd (no-op if not watched); safe from inside a callback. */
void m2a_loop_unwatch(struct m2a_loop *loop, int fd);

/* A timer that fires once at monotonic at_ms (m2a_now_ms). Returns its id
 * (never 0), for m2a_loop_timer_del. */
uint64_t m2a_loop_timer_add(struct m2a_loop *loop, uint64_t at_ms, m2a_loop_timer_fn fn, void *ud);
/* Deletes a pending timer; no-op for 0, a fired or an unknown id. */
void m2a_loop_timer_del(struct m2a_loop *loop, uint64_t id);
/* The earliest pending timer's deadline, or M2A_LOOP_NEVER. */
uint64_t m2a_loop_next_timer(const struct m2a_loop *loop);

/* One turn: waits until a watched fd is ready, a timer is due, a wake-up
 * arrives or until_ms passes (but never past the stop deadline), then runs
 * the due timers and the ready fds' callbacks. Returns the number of
 * callbacks run (0 on a timeout or a bare wake-up). */
int m2a_loop_once(struct m2a_loop *loop, uint64_t until_ms);

/* Waits like m2a_loop_once but runs no callback and watches only the
 * wake-up: for a pause (a backoff delay). Returns early, at once if one is
 * already pending, when a reason in mask or M2A_WAKE_STOP is pending; other
 * reasons do not end it (and cannot make it spin). Returns the pending
 * reasons in mask | M2A_WAKE_STOP, not taken. */
unsigned m2a_loop_sleep(struct m2a_loop *loop, uint64_t until_ms, unsigned mask);

/* Any thread: sets reasons (bits) and interrupts the owner's wait. */
void m2a_loop_wake(struct m2a_loop *loop, unsigned reasons);
/* Owner: returns the pending reasons in mask and clears them. */
unsigned m2a_loop_take_wakes(struct m2a_loop *loop, unsigned mask);
/* Owner: the pending reasons, left pending. */
unsigned m2a_loop_pending_wakes(const struct m2a_loop *loop);

/* Any thread: asks the owner to stop by deadline_ms (monotonic; an earlier
 * deadline set before wins), sets M2A_WAKE_STOP and wakes it. */
void m2a_loop_stop(struct m2a_loop *loop, uint64_t deadline_ms);
bool m2a_loop_stopping(const struct m2a_loop *loop);
/* The stop deadline, M2A_LOOP_NEVER until m2a_loop_stop. */
uint64_t m2a_loop_stop_deadline(const struct m2a_loop *loop);

/* The deadline a blocking call should use: min(want_ms, stop deadline). */
uint64_t m2a_loop_deadline(const struct m2a_loop *loop, uint64_t want_ms);
/* Milliseconds from now until deadline_ms, clamped to 0..INT32_MAX: the
 * timeout argument of poll() and friends. */
int m2a_loop_timeout_ms(uint64_t deadline_ms);

#endif
