/* malloc_count.c - libm2a-bench-malloc-count.so, an LD_PRELOAD allocation
 * counter for profiling the bridge (bench/profile.sh):
 *
 *   LD_PRELOAD=.../libm2a-bench-malloc-count.so mqtt2amqp -c ...
 *
 * Counts malloc/calloc/realloc/free/posix_memalign/aligned_alloc calls of
 * every thread (relaxed atomics) and prints the totals to stderr when the
 * process exits, and on demand: after SIGUSR2 a thread of its own prints
 * them within 20 ms (the handler only sets a flag). Forwards to glibc's
 * __libc_* entry points, so it needs no dlsym (which itself allocates). */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void *__libc_malloc(size_t n);
void *__libc_calloc(size_t n, size_t size);
void *__libc_realloc(void *p, size_t n);
void __libc_free(void *p);
void *__libc_memalign(size_t align, size_t n);

static _Atomic unsigned long n_malloc, n_calloc, n_realloc, n_free, n_memalign;
static volatile sig_atomic_t dump_wanted;

static void dump(const char *why)
{
    char line[256];
    int len = snprintf(line, sizeof(line),
                       "malloc-count (%s): malloc=%lu calloc=%lu realloc=%lu memalign=%lu "
                       "free=%lu\n",
                       why, atomic_load(&n_malloc), atomic_load(&n_calloc), atomic_load(&n_realloc),
                       atomic_load(&n_memalign), atomic_load(&n_free));
    if (len > 0)
        (void)!write(2, line, (size_t)len < sizeof(line) ? (size_t)len : sizeof(line) - 1);
}

/* Polls the flag: the threads being counted may sit in poll() for a while. */
static void *dumper(void *arg)
{
    (void)arg;
    struct timespec ts = {0, 20 * 1000 * 1000};
    for (;;) {
        nanosleep(&ts, NULL);
        if (dump_wanted) {
            dump_wanted = 0;
            dump("SIGUSR2");
        }
    }
    return NULL;
}

static void on_usr2(int sig)
{
    (void)sig;
    dump_wanted = 1;
}

__attribute__((constructor)) static void init(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr2;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &sa, NULL);
    pthread_t t;
    if (pthread_create(&t, NULL, dumper, NULL) == 0)
        pthread_detach(t);
}

__attribute__((destructor)) static void fini(void)
{
    dump("exit");
}

void *malloc(size_t n)
{
    atomic_fetch_add_explicit(&n_malloc, 1, memory_order_relaxed);
    return __libc_malloc(n);
}

void *calloc(size_t n, size_t size)
{
    atomic_fetch_add_explicit(&n_calloc, 1, memory_order_relaxed);
    return __libc_calloc(n, size);
}

void *realloc(void *p, size_t n)
{
    atomic_fetch_add_explicit(&n_realloc, 1, memory_order_relaxed);
    return __libc_realloc(p, n);
}

void free(void *p)
{
    if (p)
        atomic_fetch_add_explicit(&n_free, 1, memory_order_relaxed);
    __libc_free(p);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    atomic_fetch_add_explicit(&n_memalign, 1, memory_order_relaxed);
    void *p = __libc_memalign(align, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}

void *aligned_alloc(size_t align, size_t n)
{
    atomic_fetch_add_explicit(&n_memalign, 1, memory_order_relaxed);
    return __libc_memalign(align, n);
}
