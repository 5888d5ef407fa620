/* confirm_window.h - the AMQP thread's bookkeeping of unconfirmed publishes
 * (internal to amqp_out, split out so it can be unit-tested without a broker).
 *
 * A ring of `capacity` slots, one per spool record read and not yet
 * committed, in spool order. Each slot keeps a copy of the encoded record
 * (so a nacked message can be re-published without re-reading the spool),
 * its current delivery tag and a retry count. Delivery tags are assigned in
 * publish order, so a FIFO of (tag, slot) sorted by tag maps basic.ack /
 * basic.nack (single or multiple) to slots; re-publishing a slot gives it a
 * new tag and leaves a stale FIFO entry behind, recognised because the
 * slot's current tag differs. m2a_confirm_window_pop_confirmed() hands back the
 * contiguous confirmed prefix, the position the spool may commit.
 *
 * Memory: the window is bounded in records (capacity) and in bytes
 * (max_bytes: it takes a new record only while the records it holds add up
 * to less, so it holds at most max_bytes plus one record). A slot's buffer
 * is kept for the next record if it is at most M2A_CONFIRM_WINDOW_KEEP_BYTES
 * and the buffers kept idle stay within max_bytes; a larger one goes to a
 * pool (only when max_bytes is set) that any slot takes from for its next
 * large record; a new large buffer is allocated only when none there fits,
 * after freeing pooled ones until all the window's buffers stay within
 * max_bytes + 2 x the new one; the pool is emptied by
 * m2a_confirm_window_trim once no large record came for
 * M2A_CONFIRM_WINDOW_IDLE_MS. Without max_bytes a large buffer is freed
 * when its slot is popped. A buffer prepared for a record that was not pushed stays
 * with the next slot (trimmed too). So what the window allocates is at
 * most about
 *   max_bytes + 2 x the largest record
 *   + min(max_bytes, capacity x KEEP_BYTES)
 * (m2a_confirm_window_usage says how much it is now).
 *
 * Not thread-safe: owned by the AMQP thread. Steady state allocates
 * nothing: slot buffers are reused and the FIFO only grows. */
#ifndef MQTT2AMQP_CONFIRM_WINDOW_H
#define MQTT2AMQP_CONFIRM_WINDOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/util.h"

enum m2a_confirm_window_state {
    M2A_CONFIRM_WINDOW_UNSENT,    /* read from the spool, not published on this channel yet */
    M2A_CONFIRM_WINDOW_INFLIGHT,  /* published, waiting for basic.ack / basic.nack */
    M2A_CONFIRM_WINDOW_RETRY,     /* nacked: publish again at retry_at_ms */
    M2A_CONFIRM_WINDOW_CONFIRMED, /* acked; waits for the slots before it to be confirmed */
};

/* A slot's buffer at most this large is kept for the next record. */
#define M2A_CONFIRM_WINDOW_KEEP_BYTES (64u * 1024u)
/* Idle large buffers are freed after this long without a large record. */
#define M2A_CONFIRM_WINDOW_IDLE_MS 1000u

struct m2a_confirm_window_slot {
    uint64_t seq;         /* spool sequence number */
    uint64_t tag;         /* current delivery tag while INFLIGHT, else 0 */
    uint64_t retry_at_ms; /* RETRY: monotonic time of the next attempt */
    uint32_t retries;     /* nacks so far */
    enum m2a_confirm_window_state state;
    /* The encoded record: read it here, change it with m2a_confirm_window_set_rec. */
    struct m2a_buf rec;
    /* The caller's, cleared by m2a_confirm_window_push: when the last publish left
     * (monotonic microseconds), a per-record pointer (route counters), the
     * record's route id and the basic.returns it met. */
    uint64_t sent_us;
    void *ud;
    uint32_t route;
    uint32_t returns;
};

struct m2a_confirm_window;

/* capacity: 1..65535 slots; max_bytes: the bound on the records held
 * (0: none). */
struct m2a_confirm_window *m2a_confirm_window_new(uint32_t capacity, uint64_t max_bytes);
void m2a_confirm_window_free(struct m2a_confirm_window *cw);

/* Slots in use (every state): what counts against the window. */
uint32_t m2a_confirm_window_count(const struct m2a_confirm_window *cw);
/* True when the window takes no new record: capacity slots in use, or
 * records of max_bytes or more held (never when empty). */
bool m2a_confirm_window_full(const struct m2a_confirm_window *cw);

/* What the window holds now. */
struct m2a_confirm_window_usage {
    uint32_t inflight; /* slots INFLIGHT */
    uint64_t bytes;    /* the records in use (what max_bytes bounds) */
    uint64_t held;     /* the buffers allocated: records in use and kept for reuse */
};
struct m2a_confirm_window_usage m2a_confirm_window_usage(const struct m2a_confirm_window *cw);

/* Appends a slot for seq in state UNSENT holding a copy of rec[0..len).
 * Returns NULL when full (m2a_confirm_window_full). The pointer stays valid until the
 * slot is popped. */
struct m2a_confirm_window_slot *m2a_confirm_window_push(struct m2a_confirm_window *cw, uint64_t seq,
                                                        const void *rec, size_t len);

/* The same without the copy, in two steps: prepare returns the buffer (len
 * bytes) the next slot will hold, for the caller to write the record into
 * (say, straight from a file: m2a_spool_read_to); push_prepared then
 * appends that slot for seq with the first len bytes (len at most what was
 * prepared) in state UNSENT. prepare returns NULL when full; it may be
 * called again before the push (the buffer's contents then are not kept).
 * A buffer prepared and never pushed stays for the next record. */
void *m2a_confirm_window_prepare(struct m2a_confirm_window *cw, size_t len);
struct m2a_confirm_window_slot *m2a_confirm_window_push_prepared(struct m2a_confirm_window *cw,
                                                                 uint64_t seq, size_t len);

/* Replaces the record a slot holds (rec must not point into it). */
void m2a_confirm_window_set_rec(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *slot,
                                const void *rec, size_t len);

/* slot was published with delivery tag `tag` (strictly greater than every
 * tag given before since the last requeue): state INFLIGHT. */
void m2a_confirm_window_sent(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *slot,
                             uint64_t tag);

/* Marks a slot confirmed without a publish (a record that can never be
 * published and is dropped). */
void m2a_confirm_window_drop(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *slot);

/* Called by m2a_confirm_window_ack for every slot it confirms (not for drops), before
 * the slot can be popped. NULL fn: none. */
typedef void (*m2a_confirm_window_confirm_fn)(void *ctx,
                                              const struct m2a_confirm_window_slot *slot);
void m2a_confirm_window_on_confirm(struct m2a_confirm_window *cw, m2a_confirm_window_confirm_fn fn,
                                   void *ctx);

/* basic.ack: confirms the in-flight slot with `tag`, or with multiple every
 * in-flight slot with a tag <= `tag`. Returns how many slots it confirmed
 * (0 for an unknown or repeated tag). */
size_t m2a_confirm_window_ack(struct m2a_confirm_window *cw, uint64_t tag, bool multiple);

/* basic.nack: like ack, but the slots go to RETRY with
 * retry_at_ms = now_ms + delay_ms(retries) and retries incremented.
 * delay_ms gets the slot's retry count before the increment. */
size_t m2a_confirm_window_nack(struct m2a_confirm_window *cw, uint64_t tag, bool multiple,
                               uint64_t now_ms, uint32_t (*delay_ms)(void *ctx, uint32_t retries),
                               void *ctx);

/* The next slot to publish now: the oldest RETRY slot with retry_at_ms <=
 * now_ms, else the oldest UNSENT one; NULL if none. *next_ms (if not NULL)
 * gets a lower bound of the earliest retry_at_ms (UINT64_MAX without RETRY
 * slots): when to look again. */
struct m2a_confirm_window_slot *m2a_confirm_window_next_to_send(struct m2a_confirm_window *cw,
                                                                uint64_t now_ms, uint64_t *next_ms);

/* Moves an INFLIGHT or RETRY slot to RETRY at retry_at_ms without counting
 * a nack: for a publish its owner wants to redo for reasons of its own (a
 * basic.return). Its old delivery tag goes stale, so the broker's ack for
 * that publish is ignored. */
void m2a_confirm_window_retry(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *slot,
                              uint64_t retry_at_ms);

/* The i-th slot in use (0: the oldest), i < m2a_confirm_window_count(); and the slot
 * holding seq, or NULL (slots are in ascending seq order). */
struct m2a_confirm_window_slot *m2a_confirm_window_at(struct m2a_confirm_window *cw, uint32_t i);
struct m2a_confirm_window_slot *m2a_confirm_window_find(struct m2a_confirm_window *cw,
                                                        uint64_t seq);

/* Pops the contiguous prefix of CONFIRMED slots. Returns true if it popped
 * any, with *seq the sequence number of the last one popped. */
bool m2a_confirm_window_pop_confirmed(struct m2a_confirm_window *cw, uint64_t *seq);

/* Call it every turn of the owner's loop (at least every 100 ms): once
 * no large record (over M2A_CONFIRM_WINDOW_KEEP_BYTES) has come for
 * M2A_CONFIRM_WINDOW_IDLE_MS, frees the large buffers kept idle for the
 * next one. */
void m2a_confirm_window_trim(struct m2a_confirm_window *cw, uint64_t now_ms);

/* After a connection loss: INFLIGHT and RETRY slots go back to UNSENT with
 * tag 0 (their copies and retry counts kept) and the tag FIFO is emptied,
 * since tags restart at 1 on a new channel. CONFIRMED slots stay confirmed. */
void m2a_confirm_window_requeue(struct m2a_confirm_window *cw);

#endif
