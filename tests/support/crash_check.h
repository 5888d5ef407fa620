/* crash_check.h - the spool's power-loss checker (issue 13): traffic
 * through the real spool API, recorded through its file-system seam
 * (iotrace.h) with a marker for everything the spool promised; then, at
 * every point of the recording, the file states a power loss could leave
 * there (crashfs.h), each opened as the bridge opens its spool at start,
 * and what it recovers held against what had been promised by then:
 *  - the spool opens (the bridge starts);
 *  - every record whose PUBACK had left under fsync batch (with interval:
 *    every record flushed before the last completed interval sync) is
 *    replayed, unless it was confirmed (a commit had begun) or drop_oldest
 *    counted it dropped: the lost ones must be records the run counted as
 *    dropped, and no more of them than it had counted by then;
 *  - every record replayed is one the run wrote, byte for byte (its CRC
 *    checked by the spool, its content compared with what was written), in
 *    order, none written after the crash point;
 *  - appending, flushing, reading and committing then work, and the new
 *    records get sequence numbers above every one handed to the reader
 *    before the crash under fsync batch (message ids stay unique; under
 *    interval and never a reused id is counted, not failed: the records
 *    it names may be lost, as documented).
 * One state is opened once however many crash points can leave it (states
 * are told apart by a hash of their files). */
#ifndef M2A_TEST_CRASH_CHECK_H
#define M2A_TEST_CRASH_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mqtt2amqp/envelope.h"
#include "mqtt2amqp/spool.h"
#include "iotrace.h"

/* The markers a run puts in the trace (th_iotrace_mark kinds). */
enum th_crash_mark {
    TH_MARK_RUN = 1,   /* a: the seed, b: the largest body; how contents are made */
    TH_MARK_POLICY,    /* a: enum m2a_fsync_policy, b: enum m2a_overflow */
    TH_MARK_LIMITS,    /* a: max_bytes, b: segment_bytes */
    TH_MARK_FLUSH,     /* a..b: the batch m2a_spool_flush is about to write */
    TH_MARK_ACK,       /* a..b: the flush returned 0: the batch's PUBACKs leave */
    TH_MARK_SYNCED,    /* a: records <= a are covered by a completed interval sync */
    TH_MARK_READ,      /* a: m2a_spool_read handed out record a */
    TH_MARK_COMMIT,    /* a: m2a_spool_commit(a) is about to be called */
    TH_MARK_MAINT,     /* m2a_spool_maintain is about to be called */
    TH_MARK_MAINT_END, /* ... has returned; a: m2a_spool_stats.dropped then */
    TH_MARK_DRAINED,   /* a: the run ended with every record 1..a read or dropped */
    TH_MARK_FAILED,    /* a..b: the flush failed (injected): the batch was never acked */
    TH_MARK_VERSION,   /* a: records flushed from here on have content version a */
};

/* Content versions a run may write (a failed flush starts a new one). */
#define TH_CRASH_VERSIONS 64

/* The envelope of record seq, in the given content version, in a run with
 * this seed and largest body: a body of up to max_body bytes made from all
 * of them (body: scratch of max_body + 32 bytes, pointed to by the
 * result). A failed flush's records are written again in a new version,
 * with other bytes and lengths, as redelivered messages would be. */
struct m2a_envelope th_crash_envelope(uint64_t seed, unsigned max_body, uint64_t seq,
                                      unsigned version, char *body);

/* --- a recorded run with traffic --- */

struct th_crash_traffic {
    enum m2a_fsync_policy fsync;
    enum m2a_overflow overflow;
    uint64_t max_bytes, segment_bytes;
    uint64_t records;   /* the writer appends 1..records */
    unsigned max_batch; /* records per flush: 1..max_batch */
    unsigned max_body;
    uint64_t min_ms;     /* spread the records over at least this long (interval syncs) */
    unsigned stall_ms;   /* the reader stops now and then for up to this long (0: 20) */
    unsigned fail_every; /* about one flush in this many fails half way (disk full); 0: none */
    uint64_t seed;
    unsigned skip;     /* TH_IO_SKIP_*: barriers the recorder swallows (self-tests) */
    bool existing_dir; /* the spool's directory is there (and durable) before the run */
    bool writer_only;  /* no reader: no commits, no checkpoints (a deterministic trace) */
};

struct th_crash_run_stats {
    uint64_t appended, read, dropped, flushes, failed_flushes, commits, interval_syncs;
    uint64_t gap_discards; /* drop_oldest discards behind records the reader held */
    uint64_t segments_made, segments_deleted;
    double seconds;
    char err[256]; /* why the run failed */
};

/* Runs the traffic on a spool in dir (created) with a writer thread (append,
 * flush, tick, like the MQTT side) and a reader thread (read, commit,
 * maintain, like the AMQP side), recording every call and the markers into
 * the process's trace (th_iotrace_get), then closes the spool. The calls
 * reach the disk without syncs (th_io_nosync): the model decides what is
 * durable. The writer's calls follow from the seed alone; how the reader's
 * interleave depends on timing. 0, or -1 with st->err. */
int th_crash_record(const struct th_crash_traffic *tr, const char *dir,
                    struct th_crash_run_stats *st);

/* --- a scripted run on one thread, recorded and marked as the traffic's --- */

/* Marks the run's parameters (call it first, after th_iotrace_start). */
void th_crash_mark_run(const struct m2a_spool_opts *o, uint64_t seed, unsigned max_body);
/* Appends the next n records in the given content version (a new version
 * must be marked first: TH_MARK_VERSION) and flushes them. 0 or the first
 * error (an append's, or the flush's: then the batch is marked FAILED). */
int th_crash_append_flush(struct m2a_spool *s, uint64_t seed, unsigned max_body, unsigned version,
                          uint64_t n);
/* Maintains, reads every record available (checking each against version
 * 0), and with commit confirms them. 0 or M2A_ERR_IO. */
int th_crash_read_commit(struct m2a_spool *s, uint64_t seed, unsigned max_body, bool commit);
/* The bytes record seq takes on disk in that version. */
size_t th_crash_record_size(uint64_t seed, unsigned max_body, uint64_t seq, unsigned version);

/* --- the check --- */

struct th_crash_budget {
    unsigned states_per_point; /* at most this many states per crash point (>= 2) */
    unsigned exhaustive_units; /* every subset when at most this many units are pending */
    uint64_t seed;             /* for the sampled states */
    const char *work_dir;      /* scratch for states (NULL: a temp dir, on /dev/shm if any) */
    unsigned max_reports;      /* failures described on stderr */
    bool reopen;               /* also close and reopen after the usability check */
};

struct th_crash_report {
    size_t calls, points, changes; /* trace calls, crash points, points where states changed */
    size_t checks;                 /* (crash point, state) pairs checked */
    size_t states;                 /* distinct states, each opened by the spool */
    size_t failures;               /* failed checks */
    size_t fail_open, fail_lost, fail_altered, fail_unusable, fail_reused;
    size_t reused_noted; /* ids reused under interval / never: allowed */
    size_t max_units, torn_points, dir_points;
    double seconds;
    char first[2048]; /* the first failure, described */
};

/* Checks every crash point of trace t (recorded with the markers above).
 * 0 when it could run (failures or not: see r->failures); -1 when the
 * model cannot explain the trace (r->first says why). */
int th_crash_check(const struct th_iotrace *t, const struct th_crash_budget *b,
                   struct th_crash_report *r);

/* One line of figures: "calls N, points N, states N, checks N, failures N ...". */
void th_crash_report_line(const struct th_crash_report *r, char *buf, size_t len);

#endif
