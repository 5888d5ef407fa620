/* spool.h - the persistent retry queue between the MQTT and AMQP sides.
 *
 * Append-only segment files NNNNNNNNNNNNNNNNNNNN.seg (named by their first
 * sequence number) hold records: magic, length, CRC32C, sequence number and
 * an encoded envelope. A checkpoint file records the highest sequence number
 * whose record and all before it were confirmed by RabbitMQ (written to a
 * temp file, fsynced, renamed). Fully confirmed segments are deleted.
 * Opening the spool scans it, verifies every record, truncates a torn tail
 * and positions the reader after the checkpoint so the unconfirmed rest is
 * replayed.
 *
 * Threads: exactly one writer thread (the MQTT thread: append, flush, tick)
 * and one reader thread (the AMQP thread: read, rewind, commit). They share
 * only the published end position and the byte count, under one mutex. */
#ifndef MQTT2AMQP_SPOOL_H
#define MQTT2AMQP_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/config.h"
#include "mqtt2amqp/envelope.h"

struct m2a_spool;

/* Largest encoded envelope one record holds (bounds what a damaged length
 * field can make recovery or the reader allocate). */
#define M2A_SPOOL_MAX_PAYLOAD (16u * 1024u * 1024u)

struct m2a_spool_opts {
    const char *dir;        /* created if missing (one level) */
    uint64_t max_bytes;     /* bound on bytes in segments not yet deleted */
    uint64_t segment_bytes; /* rotate to a new segment past this size */
    enum m2a_fsync_policy fsync;
    /* M2A_OVERFLOW_DROP_OLDEST: an append that does not fit discards the
     * oldest segments (never the one being written) instead of failing with
     * M2A_ERR_FULL. Their records not yet handed to the reader are counted in
     * m2a_spool_stats.dropped and skipped by the reader; records it already
     * read are still its to publish (they are lost only if the process dies
     * before they are confirmed, since the checkpoint moved past them). */
    enum m2a_overflow overflow;
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
    uint64_t messages; /* records appended but not yet committed */
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

/* Flushes, writes the checkpoint, closes. NULL is a no-op. */
void m2a_spool_close(struct m2a_spool *spool);

/* A random identifier created with the spool and kept in it; message ids are
 * "<id>-<seq>", unique per message and stable across retries and restarts. */
const char *m2a_spool_id(const struct m2a_spool *spool);

/* --- writer thread --- */

/* Adds env to the current batch and assigns it the next sequence number.
 * Nothing is visible to the reader, nor guaranteed on disk, until
 * m2a_spool_flush(). Returns 0, M2A_ERR_FULL (would exceed max_bytes),
 * M2A_ERR_NOSPACE (disk full), M2A_ERR_IO, or M2A_ERR_ARG (encoding larger
 * than M2A_SPOOL_MAX_PAYLOAD or than max_bytes: it can never be spooled, so
 * drop or dead-letter it rather than wait). On error nothing was added. */
int m2a_spool_append(struct m2a_spool *spool, const struct m2a_envelope *env, uint64_t *seq);

/* Ends a batch: writes the batch with one write(2) (or a few, across a
 * segment rotation), fsyncs if the policy is batch, and publishes the new
 * records to the reader (waking it through the notify fd). Must return 0
 * before the PUBACKs of the batch's messages may leave. On error the batch
 * is discarded (the caller must not acknowledge it) and the segment is
 * truncated back to its last good end. */
int m2a_spool_flush(struct m2a_spool *spool);

/* Periodic work on the writer thread (call at least every 100 ms): fsync
 * under the interval policy. */
int m2a_spool_tick(struct m2a_spool *spool);

/* --- reader thread --- */

/* Reads the next record after the read cursor. On 0, *seq, *data and *len
 * describe the encoded envelope (decode with m2a_envelope_decode); data is
 * valid until the next read or rewind. M2A_ERR_AGAIN when no record is
 * available yet. */
int m2a_spool_read(struct m2a_spool *spool, uint64_t *seq, const void **data, size_t *len);

/* Moves the read cursor back to just after the committed position, so the
 * next reads replay every unconfirmed record (after a reconnect). */
void m2a_spool_rewind(struct m2a_spool *spool);

/* Records that every record with sequence number <= seq is confirmed. The
 * checkpoint file is rewritten at most every 100 ms (and on close);
 * segments whose records are all confirmed are deleted. */
int m2a_spool_commit(struct m2a_spool *spool, uint64_t seq);

/* Readable when m2a_spool_flush() published new records; the reader clears
 * it with m2a_spool_notify_clear() before reading. */
int m2a_spool_notify_fd(const struct m2a_spool *spool);
void m2a_spool_notify_clear(struct m2a_spool *spool);

/* --- any thread --- */
void m2a_spool_get_stats(struct m2a_spool *spool, struct m2a_spool_stats *out);

#endif
