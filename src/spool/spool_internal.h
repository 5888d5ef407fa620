/* spool_internal.h - the spool's state, shared by its own files only:
 * spool.c (the writer half, the reader half, the shared state) and
 * spool_recover.c (what runs at open). Not for other modules.
 *
 * Ownership of each field is written next to it: immutable after open,
 * shared under mu, the writer thread's, or the reader thread's. Recovery
 * runs inside m2a_spool_open, before either thread exists. */
#ifndef MQTT2AMQP_SPOOL_INTERNAL_H
#define MQTT2AMQP_SPOOL_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "mqtt2amqp/spool.h"
#include "mqtt2amqp/util.h"

struct m2a_spool_seg {
    uint64_t first; /* from the file name */
    uint64_t last;  /* highest seq published in it; first - 1 when none */
    uint64_t size;  /* bytes published (the reader never reads past it) */
};

struct m2a_spool_gap { /* sequence numbers above the committed one with no record */
    uint64_t lo, hi;
};

struct m2a_spool_split { /* a record in the batch that starts a new segment */
    size_t off;
    uint64_t seq;
    int fd;
};

struct m2a_spool {
    /* Immutable after open. */
    struct m2a_spool_opts opts;
    const struct m2a_spool_io *io;
    char *dir;
    int dirfd;
    int lockfd;
    int notifyfd; /* eventfd, writer -> reader: records published */
    int maintfd;  /* eventfd, writer -> reader: room wanted */
    int roomfd;   /* eventfd, reader -> writer: room made, or the request answered */
    char id[M2A_SPOOL_ID_LEN + 1];

    /* Shared, under mu. Only the writer adds segments, raises bytes and
     * pub_seq; only the reader removes segments, lowers bytes, and moves
     * committed, dropped and gaps (so each side reads its own without mu). */
    pthread_mutex_t mu;
    struct m2a_spool_seg *segs; /* ascending; the last one is the writer's */
    size_t nsegs, segs_cap;
    uint64_t bytes;   /* sum of segs[].size */
    uint64_t pub_seq; /* highest seq visible to the reader */
    uint64_t committed;
    uint64_t dropped;
    struct m2a_spool_gap *gaps; /* damage found at open, segments discarded since */
    size_t ngaps, gaps_cap;
    uint64_t room_want;     /* bytes the writer wants to add; 0: no request */
    bool room_rotate;       /* the reader could free the segment being written if it were not */
    _Atomic uint64_t w_seq; /* copy of w_next for stats */

    char pad1[64]; /* keep the writer's and reader's hot fields apart */

    /* Writer thread. */
    struct m2a_buf batch;
    /* Bytes of the batch written already (a large record and the batch
     * before it, m2a_spool_append): in w_fd from w_size on, not synced, not
     * published; batch.data holds what follows them. */
    uint64_t w_early;
    struct m2a_spool_split *splits;
    size_t nsplits, splits_cap;
    uint64_t w_next;        /* seq the next append gets */
    uint64_t w_batch_first; /* seq of the batch's first record */
    int w_fd;               /* current segment */
    uint64_t w_first, w_last, w_size;
    uint64_t w_bytes; /* s->bytes as last seen: only the reader lowers it */
    uint64_t w_sync_ms;
    bool w_unsynced, w_dir_unsynced;
    bool w_force_rotate; /* truncation after a failed write failed */

    char pad2[64];

    /* Reader thread. */
    uint64_t ckpt_durable; /* committed seq in the checkpoint on disk */
    uint64_t ckpt_ms;      /* when the checkpoint was last written */
    uint64_t *doomed;      /* segments to unlink */
    size_t doomed_cap;
    int r_fd;
    bool r_positioned;
    bool r_has_next; /* a later segment exists: r_first's size is final */
    uint64_t r_first, r_limit;
    unsigned char *r_buf;
    size_t r_cap, r_pos, r_len;
    uint64_t r_base;     /* file offset of r_buf[0] */
    bool r_after_direct; /* the last record was read past r_buf (reader_direct) */
    uint64_t r_prev;     /* seq of the last valid record passed */
    uint64_t r_floor;    /* records <= this are never handed out (committed) */
    uint64_t r_taken;    /* highest seq handed out: (committed, r_taken] is held */
    uint64_t r_hi;       /* records >= this belong to a later segment: damage */
};

/* --- helpers of spool.c used by spool_recover.c --- */

/* pwrite(2) of all n bytes at off through s->io. 0 or -1 with errno. */
int m2a_spool_pwrite_all(struct m2a_spool *s, int fd, const void *buf, size_t n, uint64_t off);

/* Writes the file name in the spool directory atomically: temp file,
 * fsync, rename, fsync of the directory. 0 or an m2a_err (errno kept). */
int m2a_spool_write_atomic(struct m2a_spool *s, const char *name, const void *data, size_t len);

/* Appends g to the segment index (caller holds mu, or is alone). */
void m2a_spool_seg_push(struct m2a_spool *s, struct m2a_spool_seg g);

/* Notes that lo..hi have no record (nothing if lo > hi; caller holds mu, or
 * is alone). */
void m2a_spool_gap_push(struct m2a_spool *s, uint64_t lo, uint64_t hi);

/* --- spool_recover.c --- */

/* Runs at open, on the opening thread, once the directory is locked: the
 * spool id, the checkpoint, every segment verified (torn tails cut, damage
 * quarantined and counted, gaps noted), confirmed segments deleted, and
 * the shared positions and the writer's next seq set. rec may be NULL. */
int m2a_spool_recover(struct m2a_spool *s, struct m2a_spool_recovery *rec, char *err,
                      size_t errlen);

#endif
