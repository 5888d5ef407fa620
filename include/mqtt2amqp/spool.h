/* spool.h - the persistent retry queue between the MQTT and AMQP sides.
 *
 * Append-only segment files hold CRC-protected records, each an encoded
 * envelope with a sequence number (layout: spool_format.h). A checkpoint
 * file records the highest sequence number whose record and all before it
 * are confirmed by RabbitMQ or given up (written to a temp file, fsynced,
 * renamed). Segments whose records are all confirmed are deleted. Opening
 * the spool scans it, verifies every record, truncates a torn tail and
 * positions the reader after the checkpoint so the unconfirmed rest is
 * replayed.
 *
 * Threads: exactly one writer thread (the MQTT thread: append, flush, tick)
 * and one reader thread (the AMQP thread: read, commit, maintain). One
 * owner per resource: the writer owns the segment it appends to and the
 * batch; the reader owns everything else on disk: it alone commits, writes
 * the checkpoint, deletes segments, and discards records under
 * drop_oldest. When the writer needs room it asks (m2a_spool_append /
 * m2a_spool_flush post a request and wake the reader through
 * m2a_spool_maint_fd) and the reader does the work on its own thread in
 * m2a_spool_maintain, then wakes the writer through m2a_spool_room_fd. The
 * two share the segment index, the published end, the committed position,
 * the byte count and the request, under one mutex held only for those.
 *
 * How long a writer waits for room under drop_oldest: one turn of the
 * reader's loop, which is a poll() wake-up when the reader is idle or
 * between publishes, since the loop polls m2a_spool_maint_fd in every state
 * and calls m2a_spool_maintain every turn. The reader serves nothing while
 * it is inside a blocking call; in the AMQP thread (amqp_out.c, amqp_conn.c) those are:
 *  - a connect attempt: TCP connect, and over TLS the TLS handshake,
 *    together up to CONNECT_TIMEOUT_S = 5 s; the AMQP handshake up to 5 s;
 *    channel.open, each topology declaration and confirm.select up to
 *    RPC_TIMEOUT_S = 10 s each when the broker accepts but does not answer:
 *    5 + 5 + 10 x (2 + exchanges + queues + bindings) s at worst. A broker
 *    that is down or refuses costs nothing, a host that drops packets 5 s.
 *  - a reload's topology declarations on a live connection (10 s each);
 *  - a polite close (CLOSE_TIMEOUT_MS = 1 s);
 *  - a publish into a socket that takes nothing: up to two heartbeat
 *    intervals (60 s with the default 30 s heartbeat; 30 s without
 *    heartbeats), on plain TCP and over TLS alike (amqp_publish.c).
 * Nothing is lost while the writer waits: the MQTT thread holds its batch
 * and its PUBACKs, and the broker keeps queueing in the session. */
#ifndef MQTT2AMQP_SPOOL_H
#define MQTT2AMQP_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/spool_format.h"
#include "mqtt2amqp/spool_io.h"

struct m2a_spool;

struct m2a_spool_opts {
    const char *dir;        /* created if missing (one level) */
    uint64_t max_bytes;     /* bound on bytes in segments not yet deleted; 0: none */
    uint64_t segment_bytes; /* rotate to a new segment past this size */
    enum m2a_fsync_policy fsync;
    /* M2A_OVERFLOW_BLOCK: an append that does not fit fails with
     * M2A_ERR_FULL (nothing added).
     * M2A_OVERFLOW_DROP_OLDEST: an append that does not fit is accepted into
     * the batch; the reader then discards, oldest first, whole segments
     * whose records it has not been handed (never the one being written),
     * counts their records in m2a_spool_stats.dropped and never hands them
     * out. Records the reader has been handed stay until they are committed
     * (they are in the AMQP side's confirm window), so a crash before their
     * confirm replays them: exactly the counted records are lost. */
    enum m2a_overflow overflow;
    /* The file-system calls (spool_io.h); NULL: the system calls. Not
     * copied: must outlive the spool. */
    const struct m2a_spool_io *io;
};

/* What m2a_spool_open() found on disk. */
struct m2a_spool_recovery {
    uint64_t segments;        /* segment files found */
    uint64_t records;         /* valid records found (confirmed or not) */
    uint64_t unconfirmed;     /* records that will be replayed */
    uint64_t truncated_bytes; /* torn tail bytes removed */
    uint64_t corrupt_records; /* damaged records skipped */
    bool checkpoint_invalid;  /* checkpoint damaged: committed taken as 0, all replayed */
};

struct m2a_spool_stats {
    uint64_t messages; /* records appended, not committed and not discarded */
    uint64_t bytes;    /* bytes in segment files not yet deleted */
    uint64_t segments;
    uint64_t next_seq; /* sequence number the next append gets */
    uint64_t committed_seq;
    uint64_t dropped; /* records discarded by overflow drop_oldest since open */
};

/* Opens (creating if needed) and recovers the spool in opts->dir. Holds an
 * exclusive lock on the directory (a second bridge on the same spool is
 * refused). rec may be NULL. Returns 0 or an m2a_err with a sentence in err. */
int m2a_spool_open(const struct m2a_spool_opts *opts, struct m2a_spool **out,
                   struct m2a_spool_recovery *rec, char *err, size_t errlen);

/* Flushes, writes the checkpoint, closes; both threads must have stopped
 * using the spool. A batch still waiting for room (drop_oldest) is dropped:
 * it was never acknowledged. NULL is a no-op. */
void m2a_spool_close(struct m2a_spool *spool);

/* A random identifier created with the spool and kept in it; message ids are
 * "<id>-<seq>", unique per message and stable across retries and restarts. */
const char *m2a_spool_id(const struct m2a_spool *spool);

/* --- writer thread --- */

/* Adds env to the current batch and assigns it the next sequence number.
 * Nothing is visible to the reader, nor guaranteed on disk, until
 * m2a_spool_flush(). Returns 0; M2A_ERR_FULL when it does not fit under
 * overflow block, or when the batch alone would exceed max_bytes (room has
 * been asked for: see m2a_spool_room_fd); M2A_ERR_NOSPACE (disk full),
 * M2A_ERR_IO; or M2A_ERR_ARG (encoding larger than M2A_SPOOL_MAX_PAYLOAD or
 * than max_bytes: it can never be spooled, so drop or dead-letter it rather
 * than wait). On error nothing was added. Under drop_oldest a record that
 * does not fit is added, and room is asked for at once. */
int m2a_spool_append(struct m2a_spool *spool, const struct m2a_envelope *env, uint64_t *seq);

/* Ends a batch: writes the batch with one write(2) (or a few, across a
 * segment rotation), fsyncs if the policy is batch, and publishes the new
 * records to the reader (waking it through the notify fd). Must return 0
 * before the PUBACKs of the batch's messages may leave.
 * M2A_ERR_FULL (drop_oldest only): the batch does not fit yet; it is kept,
 * room has been asked for, and the caller calls m2a_spool_flush again once
 * m2a_spool_room_fd polls readable (appending nothing meanwhile).
 * Other errors: the batch is discarded (the caller must not acknowledge
 * it) and the segment is truncated back to its last good end. */
int m2a_spool_flush(struct m2a_spool *spool);

/* Readable when the reader side made room, or answered a request for room
 * (the writer then retries, and starts a new segment if that helps). */
int m2a_spool_room_fd(const struct m2a_spool *spool);

/* Periodic work on the writer thread (call at least every 100 ms): fsync
 * under the interval policy; a new segment when the current one holds only
 * confirmed records and the spool is over half full. */
int m2a_spool_tick(struct m2a_spool *spool);

/* --- reader thread --- */

/* Reads the next record after the read cursor. On 0, *seq, *data and *len
 * describe the encoded envelope (decode with m2a_envelope_decode); data is
 * valid until the next read. The record is then the reader's: it stays in
 * the spool until committed, even under drop_oldest. M2A_ERR_AGAIN when no
 * record is available yet. */
int m2a_spool_read(struct m2a_spool *spool, uint64_t *seq, const void **data, size_t *len);

/* Where m2a_spool_read_to puts a record: returns a buffer of at least len
 * bytes (never NULL), the caller's, that the spool writes the record's
 * bytes to. It may be called more than once in one read (a damaged record
 * is skipped); only the last call's buffer holds the record read. */
typedef void *(*m2a_spool_sink_fn)(void *ctx, size_t len);

/* m2a_spool_read, but the record (*len bytes) is put at the buffer
 * sink(ctx, *len) returned. A large record is read from the file straight
 * into that buffer and its CRC checked there, a piece at a time, before
 * this returns 0: no copy in between, and the spool keeps no buffer of the
 * record's size. Same errors as m2a_spool_read; on error the sink's
 * buffer may have been written. */
int m2a_spool_read_to(struct m2a_spool *spool, uint64_t *seq, size_t *len, m2a_spool_sink_fn sink,
                      void *ctx);

/* Records that every record with sequence number <= seq is confirmed (it is
 * never handed out again). The checkpoint file is rewritten at most every
 * 100 ms (and on close, and by m2a_spool_maintain); segments whose records
 * are all in the checkpoint on disk are deleted. */
int m2a_spool_commit(struct m2a_spool *spool, uint64_t seq);

/* The reader's housekeeping: call it every turn of the reader's loop,
 * whatever the loop's state (connected or not, backing off, stopping), and
 * at least every 100 ms. Writes the checkpoint if the last commit left it
 * behind for 100 ms and deletes the segments it covers; serves the
 * writer's request for room: writes the checkpoint at once if that frees a
 * segment, and under drop_oldest discards (see m2a_spool_opts.overflow);
 * then wakes the writer. One mutex round trip when there is nothing to do.
 * Returns 0 or the error of a checkpoint write (retried later). */
int m2a_spool_maintain(struct m2a_spool *spool);

/* Readable when the writer asked for room: poll it in every wait of the
 * reader's loop (m2a_spool_maintain clears it). */
int m2a_spool_maint_fd(const struct m2a_spool *spool);

/* Readable when m2a_spool_flush() published new records; the reader clears
 * it with m2a_spool_notify_clear() before reading. */
int m2a_spool_notify_fd(const struct m2a_spool *spool);
void m2a_spool_notify_clear(struct m2a_spool *spool);

/* --- any thread --- */
void m2a_spool_get_stats(struct m2a_spool *spool, struct m2a_spool_stats *out);

#endif
