/* fault.h - what the fault suites share (tests/fault/test_*.c): a paced
 * publisher of numbered QoS 1 messages that survives a broker going away,
 * the check of what arrived by sequence number (lost, duplicated,
 * unexpected, and where the duplicates came from), and the fault table,
 * one row per case, in M2A_TEST_STATE/fault-table.txt.
 *
 * The table: one line per row, tab-separated: fault, iterations, sent,
 * delivered, lost, duplicated, seconds, notes. Each row is appended with one
 * write(), before the case's asserts, so a failing case still shows its
 * figures. A suite calls th_fault_table_begin() first: it empties the table
 * unless M2A_FAULT_TABLE_APPEND=1 is set, which ctest sets for every fault
 * suite (the fixture fault.table empties it once per run), so the rows of
 * all the suites of one run end up in one table (scripts/test.sh prints it).
 *
 * Threads: the publisher thread owns its libmosquitto handles (one
 * connection per chunk); the test thread reads its atomics, and the
 * ambiguous ranges under f->mu. */
#ifndef M2A_TEST_FAULT_H
#define M2A_TEST_FAULT_H

#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "harness.h"

#define TH_FAULT_TABLE      M2A_TEST_STATE "/fault-table.txt"
#define TH_PFLOW_CHUNK      200 /* messages per publisher connection ... */
#define TH_PFLOW_PACE_MS    100 /* ... at most once per this: <= 2000 msg/s */
#define TH_PFLOW_WAIT_MS    60000
#define TH_PFLOW_MAX_AMBIG  64
#define TH_FAULT_LOST_SHOWN 16

/* ---- paced publisher ---------------------------------------------------- */

/* Publishes seq 0, 1, 2 ... in chunks of TH_PFLOW_CHUNK, one connection per
 * chunk, seq s to topics[s % ntopics], 100-byte payloads. A chunk cut short
 * by a broker going away leaves a range whose messages may or may not have
 * reached the broker: with `tolerant` it is recorded as ambiguous (checked
 * neither way) and publishing goes on; otherwise the thread stops and sets
 * failed. */
struct th_pflow {
    int port;
    const char *const *topics; /* not copied: must outlive the flow */
    size_t ntopics;
    bool tolerant;
    long max;
    _Atomic long next; /* seqs below are published (acknowledged or ambiguous) */
    _Atomic bool stop, failed;
    _Atomic bool hold, holding; /* the test asks for a pause between chunks */
    pthread_mutex_t mu;
    long amb[TH_PFLOW_MAX_AMBIG][2]; /* [lo, hi) ranges, under mu */
    int namb;
    pthread_t thread;
};

/* Starts the publisher thread (f is zeroed first). Aborts if it cannot. */
void th_pflow_start(struct th_pflow *f, int port, const char *const *topics, size_t ntopics,
                    bool tolerant, long max);
/* Stops it after the chunk under way and joins it; returns how many seqs
 * were published (0 .. n-1, acknowledged or ambiguous). */
long th_pflow_stop(struct th_pflow *f);
/* Pauses publishing between two chunks (returns once no chunk is under
 * way), or resumes it. */
int th_pflow_hold(struct th_pflow *f, bool on);
/* Waits (TH_PFLOW_WAIT_MS) until `more` seqs beyond those published now are
 * published. M2A_ERR_TIMEOUT if not, or if the thread failed. */
int th_pflow_wait_more(struct th_pflow *f, long more);
/* True if seq lies in a range left ambiguous by a chunk cut short. */
bool th_pflow_ambiguous(struct th_pflow *f, long seq);

/* ---- checking ----------------------------------------------------------- */

struct th_fres {
    long sent;       /* acknowledged by Mosquitto, so owed to RabbitMQ */
    long delivered;  /* of those, distinct seqs that arrived */
    long lost;       /* of those, never arrived */
    long duplicated; /* extra copies */
    long unexpected; /* outside 0..n-1, or no seq */
    long amb, amb_delivered;
    /* Where the extra copies came from: the consumer's own redelivery
     * (RabbitMQ requeued what our consumer had not acked), the bridge
     * re-publishing a spool record (same message_id), or Mosquitto
     * redelivering a message a bridge had spooled (a new message_id). */
    long dup_consumer, dup_republished, dup_respooled;
    long lost_seq[TH_FAULT_LOST_SHOWN]; /* the first lost seqs */
    long lost_min, lost_max;
};

/* Checks got against seqs 0 .. n-1 of f (ambiguous ones counted apart; f
 * may be NULL: a burst without ambiguous ranges).
 * With print, prints a "delivery: ..." summary and where duplicates
 * cluster. */
struct th_fres th_fault_check(struct th_pflow *f, long n, const struct th_msgs *got, bool print);
/* Prints the first lost seqs, then asserts (check) that something was
 * sent, nothing lost and nothing unexpected. A macro: a failure names the
 * test's line. */
#define TH_FAULT_ASSERT_NOTHING_LOST(r)                                                            \
    do {                                                                                           \
        const struct th_fres *th_r_ = (r);                                                         \
        th_fault_print_lost(th_r_);                                                                \
        ck_assert_int_gt(th_r_->sent, 0);                                                          \
        ck_assert_int_eq(th_r_->lost, 0);                                                          \
        ck_assert_int_eq(th_r_->unexpected, 0);                                                    \
    } while (0)
void th_fault_print_lost(const struct th_fres *r);

/* ---- the table ---------------------------------------------------------- */

/* Empties the table, unless M2A_FAULT_TABLE_APPEND=1 (see above). */
void th_fault_table_begin(void);
/* Appends a row: fault, iterations, r's sent/delivered/lost/duplicated,
 * the seconds since t0_ms (m2a_now_ms() when the case started), notes. */
void th_fault_row(const char *fault, int iterations, const struct th_fres *r, uint64_t t0_ms,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Prints the header and every row of the table on stdout. */
void th_fault_table_print(void);

/* The main() of a fault suite: empties the table (th_fault_table_begin),
 * runs cases[] (NULL-terminated; only the one named by M2A_FAULT_ONLY if
 * set) in one test case of timeout_s seconds, prints "\n<title>: all
 * passed" or "FAILURES" and the table. Returns how many failed. */
int th_fault_run(const char *suite, const char *title, const TTest *const *cases, int timeout_s);

#endif
