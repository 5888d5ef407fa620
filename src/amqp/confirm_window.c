/* confirm_window.c - the AMQP thread's window of unconfirmed publishes: which
 * spool record each delivery tag carries, which ones must be (re)published
 * and how far the spool may commit. Owned by the AMQP thread; see
 * confirm_window.h for the model. */
#include "mqtt2amqp/confirm_window.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

/* One publish: delivery tag and the slot index it carried. */
struct tag_ent {
    uint64_t tag;
    uint32_t slot;
};

/* Buffers up to KEEP_BYTES grow in steps of this, so that records of about
 * the same size reuse a buffer without a reallocation each. */
#define SMALL_STEP 256u

/* Larger buffers a popped slot leaves behind wait in a pool for the next
 * large record of any slot (popping moves a buffer from a slot to the pool:
 * what the window holds does not grow). A new buffer is allocated only when
 * none in the pool fits, and pooled ones are freed first until everything
 * the window holds stays within max_bytes + 2 x the new buffer (what the
 * records in use may take anyway: max_bytes, one record past it and one
 * prepared). So a stream of large messages reuses the window's buffers,
 * even when confirms come in bursts, instead of allocating, mapping and
 * faulting in a fresh one per message (the kernel faulted each page in
 * during the spool's pread: a third of the AMQP thread's time at 256 KiB).
 * The pool is emptied once no large record came for
 * M2A_CONFIRM_WINDOW_IDLE_MS (m2a_confirm_window_trim). */

struct m2a_confirm_window {
    struct m2a_confirm_window_slot *slots;
    uint32_t cap;
    uint64_t max_bytes; /* bound on `bytes` before a push; 0: none */
    uint64_t bytes;     /* sum of rec.len of the slots in use */
    uint64_t held;      /* sum of rec.cap of every slot */
    uint64_t spare;     /* sum of rec.cap of the slots not in use */
    uint32_t head;      /* index of the oldest slot */
    uint32_t count;     /* slots in use, from head */
    uint32_t inflight;
    uint32_t nretry;
    uint32_t unsent_from; /* logical offset: no UNSENT slot before it */
    uint64_t retry_min;   /* lower bound of every RETRY slot's retry_at_ms */
    size_t prepared;      /* bytes the next slot's buffer was prepared for */
    uint64_t large_sized; /* large records given a buffer (size_buf), ever */
    uint64_t trim_seen;   /* large_sized at trim_ms */
    uint64_t trim_ms;     /* since when no large record came (m2a_confirm_window_trim) */
    bool trim_armed;

    /* Publishes in tag order (a ring, power-of-two size). Entries whose slot
     * has moved on (acked, nacked, popped, re-published) are stale and are
     * skipped; they leave from the front. */
    struct tag_ent *fifo;
    size_t fcap, fhead, flen;

    struct m2a_buf *pool; /* idle buffers over KEEP_BYTES, counted in spare */
    uint32_t npool, pool_cap;

    m2a_confirm_window_confirm_fn on_confirm; /* metrics: per-route confirms, latency */
    void *on_confirm_ctx;
};

static struct m2a_confirm_window_slot *slot_at(const struct m2a_confirm_window *cw,
                                               uint32_t logical)
{
    return &cw->slots[(cw->head + logical) % cw->cap];
}

static struct tag_ent *fifo_at(const struct m2a_confirm_window *cw, size_t logical)
{
    return &cw->fifo[(cw->fhead + logical) & (cw->fcap - 1)];
}

struct m2a_confirm_window *m2a_confirm_window_new(uint32_t capacity, uint64_t max_bytes)
{
    if (capacity == 0)
        capacity = 1;
    struct m2a_confirm_window *cw = xcalloc(1, sizeof(*cw));
    cw->slots = xcalloc(capacity, sizeof(*cw->slots));
    cw->cap = capacity;
    cw->max_bytes = max_bytes;
    cw->fcap = 16;
    while (cw->fcap < 2 * (size_t)capacity)
        cw->fcap *= 2;
    cw->fifo = xmalloc(cw->fcap * sizeof(*cw->fifo));
    cw->retry_min = UINT64_MAX;
    return cw;
}

void m2a_confirm_window_free(struct m2a_confirm_window *cw)
{
    if (!cw)
        return;
    for (uint32_t i = 0; i < cw->cap; i++)
        m2a_buf_free(&cw->slots[i].rec);
    for (uint32_t i = 0; i < cw->npool; i++)
        m2a_buf_free(&cw->pool[i]);
    free(cw->pool);
    free(cw->slots);
    free(cw->fifo);
    free(cw);
}

uint32_t m2a_confirm_window_count(const struct m2a_confirm_window *cw)
{
    return cw->count;
}

bool m2a_confirm_window_full(const struct m2a_confirm_window *cw)
{
    return cw->count == cw->cap || (cw->count > 0 && cw->max_bytes && cw->bytes >= cw->max_bytes);
}

struct m2a_confirm_window_usage m2a_confirm_window_usage(const struct m2a_confirm_window *cw)
{
    struct m2a_confirm_window_usage u = {cw->inflight, cw->bytes, cw->held};
    return u;
}

/* Gives the slot's buffer room for len bytes (and a NUL), sized to fit
 * (small ones in steps of SMALL_STEP, large ones exactly, from the pool
 * when one fits), keeping held right; its contents are not kept. The
 * slot's buffer must not be counted in spare. */
static void size_buf(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *s, size_t len)
{
    if (len + 1 > M2A_CONFIRM_WINDOW_KEEP_BYTES)
        cw->large_sized++;
    if (s->rec.cap < len + 1 && len + 1 > M2A_CONFIRM_WINDOW_KEEP_BYTES) {
        /* The smallest pooled buffer that fits, in place of the slot's. */
        uint32_t best = cw->npool;
        for (uint32_t i = 0; i < cw->npool; i++)
            if (cw->pool[i].cap >= len + 1 &&
                (best == cw->npool || cw->pool[i].cap < cw->pool[best].cap))
                best = i;
        if (best < cw->npool) {
            cw->held -= s->rec.cap;
            free(s->rec.data);
            s->rec = cw->pool[best];
            cw->spare -= s->rec.cap;
            cw->pool[best] = cw->pool[--cw->npool];
        }
    }
    if (s->rec.cap < len + 1) {
        size_t cap = len + 1;
        if (cap <= M2A_CONFIRM_WINDOW_KEEP_BYTES)
            cap = (cap + SMALL_STEP - 1) / SMALL_STEP * SMALL_STEP;
        cw->held -= s->rec.cap;
        free(s->rec.data);
        s->rec = (struct m2a_buf){0};
        /* None in the pool fits: make room for this one first. */
        while (cw->npool > 0 && cw->held + cap > cw->max_bytes + 2 * (uint64_t)cap) {
            struct m2a_buf *b = &cw->pool[--cw->npool];
            cw->held -= b->cap;
            cw->spare -= b->cap;
            m2a_buf_free(b);
        }
        s->rec.data = xmalloc(cap);
        s->rec.cap = cap;
        cw->held += cap;
    }
}

/* Copies rec into the slot's buffer, keeping held and bytes right. */
static void fill(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *s, const void *rec,
                 size_t len)
{
    cw->bytes -= s->rec.len;
    s->rec.len = 0;
    size_buf(cw, s, len);
    if (len)
        memcpy(s->rec.data, rec, len);
    s->rec.len = len;
    cw->bytes += len;
}

void *m2a_confirm_window_prepare(struct m2a_confirm_window *cw, size_t len)
{
    if (m2a_confirm_window_full(cw))
        return NULL;
    /* The next slot is not in use: its buffer counts in spare. */
    struct m2a_confirm_window_slot *s = slot_at(cw, cw->count);
    cw->spare -= s->rec.cap;
    s->rec.len = 0;
    size_buf(cw, s, len);
    cw->spare += s->rec.cap;
    cw->prepared = len;
    return s->rec.data;
}

struct m2a_confirm_window_slot *m2a_confirm_window_push_prepared(struct m2a_confirm_window *cw,
                                                                 uint64_t seq, size_t len)
{
    assert(len <= cw->prepared);
    if (m2a_confirm_window_full(cw) || len > cw->prepared)
        return NULL;
    cw->prepared = 0;
    struct m2a_confirm_window_slot *s = slot_at(cw, cw->count++);
    cw->spare -= s->rec.cap;
    struct m2a_buf keep = s->rec;
    keep.len = len;
    *s = (struct m2a_confirm_window_slot){
        .seq = seq, .state = M2A_CONFIRM_WINDOW_UNSENT, .rec = keep};
    cw->bytes += len;
    return s;
}

struct m2a_confirm_window_slot *m2a_confirm_window_push(struct m2a_confirm_window *cw, uint64_t seq,
                                                        const void *rec, size_t len)
{
    void *d = m2a_confirm_window_prepare(cw, len);
    if (!d)
        return NULL;
    if (len)
        memcpy(d, rec, len);
    return m2a_confirm_window_push_prepared(cw, seq, len);
}

void m2a_confirm_window_set_rec(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *slot,
                                const void *rec, size_t len)
{
    fill(cw, slot, rec, len);
}

/* A popped slot: its buffer is kept for the next record if small and if
 * the spare buffers stay within max_bytes; a large one goes to the pool
 * within the bound above; else freed, so that a burst of large messages
 * leaves nothing behind once confirmed (and trimmed). */
static void retire(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *s)
{
    cw->bytes -= s->rec.len;
    s->rec.len = 0;
    uint64_t room = cw->max_bytes ? cw->max_bytes : UINT64_MAX;
    if (s->rec.cap <= M2A_CONFIRM_WINDOW_KEEP_BYTES && cw->spare + s->rec.cap <= room) {
        cw->spare += s->rec.cap;
        return;
    }
    if (s->rec.cap > M2A_CONFIRM_WINDOW_KEEP_BYTES && cw->max_bytes) {
        if (cw->npool == cw->pool_cap) {
            cw->pool_cap = cw->pool_cap ? cw->pool_cap * 2 : 8;
            cw->pool = xrealloc(cw->pool, cw->pool_cap * sizeof(*cw->pool));
        }
        cw->spare += s->rec.cap;
        cw->pool[cw->npool++] = s->rec;
        s->rec = (struct m2a_buf){0};
        return;
    }
    cw->held -= s->rec.cap;
    m2a_buf_free(&s->rec);
}

static void advance_unsent(struct m2a_confirm_window *cw)
{
    while (cw->unsent_from < cw->count &&
           slot_at(cw, cw->unsent_from)->state != M2A_CONFIRM_WINDOW_UNSENT)
        cw->unsent_from++;
}

static void fifo_push(struct m2a_confirm_window *cw, uint64_t tag, uint32_t slot)
{
    if (cw->flen == cw->fcap) {
        /* Only stale entries behind a long-unconfirmed front get us here. */
        size_t ncap = cw->fcap * 2;
        struct tag_ent *n = xmalloc(ncap * sizeof(*n));
        for (size_t i = 0; i < cw->flen; i++)
            n[i] = *fifo_at(cw, i);
        free(cw->fifo);
        cw->fifo = n;
        cw->fcap = ncap;
        cw->fhead = 0;
    }
    struct tag_ent *e = fifo_at(cw, cw->flen++);
    e->tag = tag;
    e->slot = slot;
}

static bool ent_live(const struct m2a_confirm_window *cw, const struct tag_ent *e)
{
    const struct m2a_confirm_window_slot *s = &cw->slots[e->slot];
    return s->state == M2A_CONFIRM_WINDOW_INFLIGHT && s->tag == e->tag;
}

static void fifo_pop_stale(struct m2a_confirm_window *cw)
{
    while (cw->flen && !ent_live(cw, fifo_at(cw, 0))) {
        cw->fhead = (cw->fhead + 1) & (cw->fcap - 1);
        cw->flen--;
    }
}

/* Moves a slot to state (its tag cleared), keeping the counters right; a
 * slot entering RETRY is due at retry_at_ms. */
static void enter(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *s,
                  enum m2a_confirm_window_state state, uint64_t retry_at_ms)
{
    cw->inflight -= s->state == M2A_CONFIRM_WINDOW_INFLIGHT;
    cw->nretry -= s->state == M2A_CONFIRM_WINDOW_RETRY;
    s->tag = 0;
    s->state = state;
    cw->inflight += state == M2A_CONFIRM_WINDOW_INFLIGHT;
    if (state != M2A_CONFIRM_WINDOW_RETRY)
        return;
    cw->nretry++;
    s->retry_at_ms = retry_at_ms;
    if (retry_at_ms < cw->retry_min)
        cw->retry_min = retry_at_ms;
}

void m2a_confirm_window_sent(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *slot,
                             uint64_t tag)
{
    assert(slot->state == M2A_CONFIRM_WINDOW_UNSENT || slot->state == M2A_CONFIRM_WINDOW_RETRY);
    enter(cw, slot, M2A_CONFIRM_WINDOW_INFLIGHT, 0);
    slot->tag = tag;
    fifo_push(cw, tag, (uint32_t)(slot - cw->slots));
    advance_unsent(cw);
}

void m2a_confirm_window_drop(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *slot)
{
    if (slot->state == M2A_CONFIRM_WINDOW_CONFIRMED)
        return;
    enter(cw, slot, M2A_CONFIRM_WINDOW_CONFIRMED, 0);
    advance_unsent(cw);
    fifo_pop_stale(cw);
}

/* Index of the FIFO entry with tag, or -1. */
static long fifo_find(const struct m2a_confirm_window *cw, uint64_t tag)
{
    size_t lo = 0, hi = cw->flen;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint64_t t = fifo_at(cw, mid)->tag;
        if (t == tag)
            return (long)mid;
        if (t < tag)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

struct settle {
    bool ack;
    uint64_t now_ms;
    uint32_t (*delay_ms)(void *ctx, uint32_t retries);
    void *ctx;
};

static void settle_one(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *s,
                       const struct settle *how)
{
    if (how->ack) {
        enter(cw, s, M2A_CONFIRM_WINDOW_CONFIRMED, 0);
        if (cw->on_confirm)
            cw->on_confirm(cw->on_confirm_ctx, s);
        return;
    }
    uint32_t d = how->delay_ms ? how->delay_ms(how->ctx, s->retries) : 0;
    enter(cw, s, M2A_CONFIRM_WINDOW_RETRY, how->now_ms + d);
    s->retries++;
}

static size_t settle(struct m2a_confirm_window *cw, uint64_t tag, bool multiple,
                     const struct settle *how)
{
    size_t n = 0;
    if (multiple) {
        while (cw->flen && fifo_at(cw, 0)->tag <= tag) {
            struct tag_ent e = *fifo_at(cw, 0);
            cw->fhead = (cw->fhead + 1) & (cw->fcap - 1);
            cw->flen--;
            if (ent_live(cw, &e)) {
                settle_one(cw, &cw->slots[e.slot], how);
                n++;
            }
        }
    } else {
        long i = fifo_find(cw, tag);
        if (i >= 0 && ent_live(cw, fifo_at(cw, (size_t)i))) {
            settle_one(cw, &cw->slots[fifo_at(cw, (size_t)i)->slot], how);
            n++;
        }
    }
    fifo_pop_stale(cw);
    return n;
}

void m2a_confirm_window_on_confirm(struct m2a_confirm_window *cw, m2a_confirm_window_confirm_fn fn,
                                   void *ctx)
{
    cw->on_confirm = fn;
    cw->on_confirm_ctx = ctx;
}

size_t m2a_confirm_window_ack(struct m2a_confirm_window *cw, uint64_t tag, bool multiple)
{
    struct settle how = {.ack = true};
    return settle(cw, tag, multiple, &how);
}

size_t m2a_confirm_window_nack(struct m2a_confirm_window *cw, uint64_t tag, bool multiple,
                               uint64_t now_ms, uint32_t (*delay_ms)(void *ctx, uint32_t retries),
                               void *ctx)
{
    struct settle how = {.ack = false, .now_ms = now_ms, .delay_ms = delay_ms, .ctx = ctx};
    return settle(cw, tag, multiple, &how);
}

/* The first RETRY slot due at now_ms; recomputes retry_min on the way. */
static struct m2a_confirm_window_slot *due_retry(struct m2a_confirm_window *cw, uint64_t now_ms)
{
    if (cw->nretry == 0 || now_ms < cw->retry_min)
        return NULL;
    struct m2a_confirm_window_slot *due = NULL;
    uint64_t min = UINT64_MAX;
    for (uint32_t i = 0; i < cw->count; i++) {
        struct m2a_confirm_window_slot *s = slot_at(cw, i);
        if (s->state != M2A_CONFIRM_WINDOW_RETRY)
            continue;
        if (!due && s->retry_at_ms <= now_ms)
            due = s;
        if (s->retry_at_ms < min)
            min = s->retry_at_ms;
    }
    /* Includes the slot returned: if the caller does not send it now, it is
     * still found next time; if it does, the bound is merely low. */
    cw->retry_min = min;
    return due;
}

struct m2a_confirm_window_slot *m2a_confirm_window_next_to_send(struct m2a_confirm_window *cw,
                                                                uint64_t now_ms, uint64_t *next_ms)
{
    struct m2a_confirm_window_slot *s = due_retry(cw, now_ms);
    if (!s) {
        advance_unsent(cw);
        if (cw->unsent_from < cw->count)
            s = slot_at(cw, cw->unsent_from);
    }
    if (next_ms)
        *next_ms = cw->nretry ? cw->retry_min : UINT64_MAX;
    return s;
}

void m2a_confirm_window_retry(struct m2a_confirm_window *cw, struct m2a_confirm_window_slot *slot,
                              uint64_t retry_at_ms)
{
    assert(slot->state == M2A_CONFIRM_WINDOW_INFLIGHT || slot->state == M2A_CONFIRM_WINDOW_RETRY);
    enter(cw, slot, M2A_CONFIRM_WINDOW_RETRY, retry_at_ms);
    fifo_pop_stale(cw);
}

struct m2a_confirm_window_slot *m2a_confirm_window_at(struct m2a_confirm_window *cw, uint32_t i)
{
    return i < cw->count ? slot_at(cw, i) : NULL;
}

struct m2a_confirm_window_slot *m2a_confirm_window_find(struct m2a_confirm_window *cw, uint64_t seq)
{
    uint32_t lo = 0, hi = cw->count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        struct m2a_confirm_window_slot *s = slot_at(cw, mid);
        if (s->seq == seq)
            return s;
        if (s->seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

bool m2a_confirm_window_pop_confirmed(struct m2a_confirm_window *cw, uint64_t *seq)
{
    bool popped = false;
    while (cw->count && cw->slots[cw->head].state == M2A_CONFIRM_WINDOW_CONFIRMED) {
        *seq = cw->slots[cw->head].seq;
        retire(cw, &cw->slots[cw->head]);
        cw->head = (cw->head + 1) % cw->cap;
        cw->count--;
        if (cw->unsent_from)
            cw->unsent_from--;
        popped = true;
    }
    return popped;
}

void m2a_confirm_window_trim(struct m2a_confirm_window *cw, uint64_t now_ms)
{
    if (!cw->trim_armed || cw->large_sized != cw->trim_seen) {
        cw->trim_armed = true;
        cw->trim_seen = cw->large_sized;
        cw->trim_ms = now_ms;
        return;
    }
    if (now_ms - cw->trim_ms < M2A_CONFIRM_WINDOW_IDLE_MS)
        return;
    /* No large record for a while: the stream is over (for now), and
     * nothing idle is kept for it. */
    for (uint32_t i = 0; i < cw->npool; i++) {
        cw->held -= cw->pool[i].cap;
        cw->spare -= cw->pool[i].cap;
        m2a_buf_free(&cw->pool[i]);
    }
    cw->npool = 0;
    /* The next slot may hold a large buffer prepared for a record that was
     * not pushed (a read that failed). */
    if (cw->count < cw->cap) {
        struct m2a_confirm_window_slot *s = slot_at(cw, cw->count);
        if (s->rec.cap > M2A_CONFIRM_WINDOW_KEEP_BYTES) {
            cw->held -= s->rec.cap;
            cw->spare -= s->rec.cap;
            m2a_buf_free(&s->rec);
        }
    }
    cw->trim_ms = now_ms;
}

void m2a_confirm_window_requeue(struct m2a_confirm_window *cw)
{
    for (uint32_t i = 0; i < cw->count; i++) {
        struct m2a_confirm_window_slot *s = slot_at(cw, i);
        if (s->state == M2A_CONFIRM_WINDOW_INFLIGHT || s->state == M2A_CONFIRM_WINDOW_RETRY) {
            s->state = M2A_CONFIRM_WINDOW_UNSENT;
            s->tag = 0;
        }
    }
    cw->inflight = 0;
    cw->nretry = 0;
    cw->retry_min = UINT64_MAX;
    cw->unsent_from = 0;
    cw->fhead = cw->flen = 0;
}
