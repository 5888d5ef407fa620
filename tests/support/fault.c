/* fault.c - paced publisher, delivery check and fault table of the fault
 * suites; see fault.h. (Moved out of tests/fault/test_faults.c so that every
 * fault suite writes the same rows.) */
#include "fault.h"

#include <check.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check_main.h"
#include "mqtt2amqp/err.h"
#include "mqtt2amqp/util.h"

/* ---- paced publisher ---------------------------------------------------- */

static void pflow_ambiguous_range(struct th_pflow *f, long lo, long hi, bool *room)
{
    pthread_mutex_lock(&f->mu);
    *room = f->namb < TH_PFLOW_MAX_AMBIG;
    if (*room) {
        f->amb[f->namb][0] = lo;
        f->amb[f->namb][1] = hi;
        f->namb++;
    }
    pthread_mutex_unlock(&f->mu);
}

static void *pflow_main(void *arg)
{
    struct th_pflow *f = arg;
    while (!atomic_load(&f->stop) && atomic_load(&f->next) < f->max) {
        if (atomic_load(&f->hold)) {
            atomic_store(&f->holding, true);
            th_sleep_ms(TH_PFLOW_PACE_MS);
            continue;
        }
        atomic_store(&f->holding, false);
        uint64_t t0 = m2a_now_ms();
        long first = atomic_load(&f->next), n = TH_PFLOW_CHUNK;
        if (first + n > f->max)
            n = f->max - first;
        struct th_pub p = {.port = f->port,
                           .topics = f->topics,
                           .ntopics = f->ntopics,
                           .first = first,
                           .count = n,
                           .payload_size = 100,
                           .qos = 1,
                           .timeout_ms = 10000,
                           .quiet = true};
        long acked = th_mqtt_publish(&p);
        if (acked < 0) {
            /* Never connected: nothing of this chunk was sent; retry it. */
            if (!f->tolerant) {
                atomic_store(&f->failed, true);
                break;
            }
            th_sleep_ms(TH_PFLOW_PACE_MS);
            continue;
        }
        if (acked < n) {
            fprintf(stderr, "pflow: chunk at %ld cut short (%ld/%ld acknowledged)\n", first, acked,
                    n);
            bool room;
            pflow_ambiguous_range(f, first + acked, first + n, &room);
            if (!f->tolerant || !room) {
                atomic_store(&f->failed, true);
                atomic_store(&f->next, first + acked);
                break;
            }
        }
        atomic_store(&f->next, first + n);
        uint64_t spent = m2a_now_ms() - t0;
        if (spent < TH_PFLOW_PACE_MS)
            th_sleep_ms((int)(TH_PFLOW_PACE_MS - spent)); /* pacing, not synchronisation */
    }
    return NULL;
}

void th_pflow_start(struct th_pflow *f, int port, const char *const *topics, size_t ntopics,
                    bool tolerant, long max)
{
    memset(f, 0, sizeof(*f));
    f->port = port;
    f->topics = topics;
    f->ntopics = ntopics;
    f->tolerant = tolerant;
    f->max = max;
    pthread_mutex_init(&f->mu, NULL);
    if (pthread_create(&f->thread, NULL, pflow_main, f) != 0)
        abort();
}

long th_pflow_stop(struct th_pflow *f)
{
    atomic_store(&f->stop, true);
    pthread_join(f->thread, NULL);
    long n = atomic_load(&f->next);
    fprintf(stderr, "pflow: published seq 0..%ld (%d ambiguous ranges)\n", n - 1, f->namb);
    return n;
}

static bool pflow_holding(void *arg)
{
    return atomic_load(&((struct th_pflow *)arg)->holding);
}

int th_pflow_hold(struct th_pflow *f, bool on)
{
    atomic_store(&f->holding, false);
    atomic_store(&f->hold, on);
    return on ? th_poll_until(pflow_holding, f, TH_PFLOW_WAIT_MS) : 0;
}

struct pflow_wait {
    struct th_pflow *f;
    long n;
};

static bool pflow_reached(void *arg)
{
    struct pflow_wait *w = arg;
    return atomic_load(&w->f->next) >= w->n || atomic_load(&w->f->failed);
}

int th_pflow_wait_more(struct th_pflow *f, long more)
{
    struct pflow_wait w = {f, atomic_load(&f->next) + more};
    th_poll_until(pflow_reached, &w, TH_PFLOW_WAIT_MS);
    return atomic_load(&f->next) >= w.n ? 0 : M2A_ERR_TIMEOUT;
}

bool th_pflow_ambiguous(struct th_pflow *f, long seq)
{
    pthread_mutex_lock(&f->mu);
    bool in = false;
    for (int i = 0; i < f->namb && !in; i++)
        in = seq >= f->amb[i][0] && seq < f->amb[i][1];
    pthread_mutex_unlock(&f->mu);
    return in;
}

/* ---- checking ----------------------------------------------------------- */

/* Counts the copies of each seq, and classifies every extra copy. */
static unsigned *count_copies(long n, const struct th_msgs *got, struct th_fres *r)
{
    unsigned *count = xcalloc(n > 0 ? (size_t)n : 1, sizeof(unsigned));
    size_t *first = xcalloc(n > 0 ? (size_t)n : 1, sizeof(size_t));
    for (size_t i = 0; i < got->n; i++) {
        const struct th_msg *m = &got->v[i];
        long s = m->seq;
        if (s < 0 || s >= n) {
            r->unexpected++;
            continue;
        }
        if (count[s]++ == 0) {
            first[s] = i;
            continue;
        }
        const char *id0 = got->v[first[s]].message_id;
        bool same = id0 && m->message_id && strcmp(id0, m->message_id) == 0;
        if (same && m->redelivered)
            r->dup_consumer++;
        else if (same)
            r->dup_republished++;
        else
            r->dup_respooled++;
    }
    free(first);
    return count;
}

struct th_fres th_fault_check(struct th_pflow *f, long n, const struct th_msgs *got, bool print)
{
    struct th_fres r = {0};
    unsigned *count = count_copies(n, got, &r);
    long dup_lo = -1, dup_ranges = 0;
    for (long s = 0; s < n; s++) {
        if (count[s] > 1)
            r.duplicated += count[s] - 1;
        /* Where duplicates cluster says which fault made them. */
        if (print && count[s] > 1 && dup_lo < 0)
            dup_lo = s;
        if (print && dup_lo >= 0 && (count[s] <= 1 || s == n - 1)) {
            if (dup_ranges++ < 12)
                fprintf(stderr, "duplicated: seq %ld..%ld\n", dup_lo, count[s] > 1 ? s : s - 1);
            dup_lo = -1;
        }
        if (f && th_pflow_ambiguous(f, s)) {
            r.amb++;
            r.amb_delivered += count[s] > 0;
        } else if (count[s] == 0) {
            if (r.lost < TH_FAULT_LOST_SHOWN)
                r.lost_seq[r.lost] = s;
            if (r.lost == 0)
                r.lost_min = s;
            r.lost_max = s;
            r.sent++;
            r.lost++;
        } else {
            r.sent++;
            r.delivered++;
        }
    }
    free(count);
    if (print)
        printf("delivery: sent=%ld delivered=%ld lost=%ld duplicated=%ld unexpected=%ld "
               "ambiguous=%ld (delivered %ld); duplicates: %ld consumer redeliveries, %ld "
               "re-published by the bridge, %ld redelivered by Mosquitto and spooled again\n",
               r.sent, r.delivered, r.lost, r.duplicated, r.unexpected, r.amb, r.amb_delivered,
               r.dup_consumer, r.dup_republished, r.dup_respooled);
    fflush(stdout);
    return r;
}

void th_fault_print_lost(const struct th_fres *r)
{
    for (long i = 0; i < r->lost && i < TH_FAULT_LOST_SHOWN; i++)
        fprintf(stderr, "lost seq %ld\n", r->lost_seq[i]);
    if (r->lost > 0)
        fprintf(stderr, "lost %ld in seq %ld..%ld\n", r->lost, r->lost_min, r->lost_max);
}

/* ---- the table ---------------------------------------------------------- */

void th_fault_table_begin(void)
{
    const char *append = getenv("M2A_FAULT_TABLE_APPEND");
    if (!append || strcmp(append, "1") != 0)
        unlink(TH_FAULT_TABLE);
}

void th_fault_row(const char *fault, int iterations, const struct th_fres *r, uint64_t t0_ms,
                  const char *fmt, ...)
{
    char note[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(note, sizeof(note), fmt, ap);
    va_end(ap);
    char *line = xasprintf("%s\t%d\t%ld\t%ld\t%ld\t%ld\t%.0f\t%s\n", fault, iterations, r->sent,
                           r->delivered, r->lost, r->duplicated,
                           (double)(m2a_now_ms() - t0_ms) / 1000.0, note);
    int fd = open(TH_FAULT_TABLE, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) {
        (void)!write(fd, line, strlen(line)); /* one write: rows never interleave */
        close(fd);
    }
    fprintf(stderr, "ROW %s", line);
    free(line);
}

void th_fault_table_print(void)
{
    char *t = th_read_file(TH_FAULT_TABLE, NULL);
    printf("%-36s %10s %8s %10s %6s %10s %5s  %s\n", "fault", "iterations", "sent", "delivered",
           "lost", "duplicated", "secs", "notes");
    for (char *save = NULL, *l = t ? strtok_r(t, "\n", &save) : NULL; l;
         l = strtok_r(NULL, "\n", &save)) {
        char *f[8] = {0};
        int nf = 0;
        for (char *s2 = NULL, *x = strtok_r(l, "\t", &s2); x && nf < 8;
             x = strtok_r(NULL, "\t", &s2))
            f[nf++] = x;
        if (nf < 7)
            continue;
        printf("%-36s %10s %8s %10s %6s %10s %5s  %s\n", f[0], f[1], f[2], f[3], f[4], f[5], f[6],
               nf > 7 ? f[7] : "");
    }
    fflush(stdout);
    free(t);
}

int th_fault_run(const char *suite, const char *title, const TTest *const *cases, int timeout_s)
{
    th_fault_table_begin();
    Suite *su = suite_create(suite);
    TCase *tc = tcase_create(suite);
    tcase_set_timeout(tc, timeout_s);
    const char *only = getenv("M2A_FAULT_ONLY");
    for (size_t i = 0; cases[i]; i++)
        if (!only || !*only || strcmp(only, cases[i]->name) == 0)
            tcase_add_test(tc, cases[i]);
    suite_add_tcase(su, tc);
    int failed = m2a_check_failures(su);
    printf("\n%s: %s\n", title, failed ? "FAILURES" : "all passed");
    th_fault_table_print();
    return failed;
}
